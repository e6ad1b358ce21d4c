"""A training run's checkpoints: what they hold and how a run resumes from them. The file
format (atomic save, a load that runs no code) is `metalearn/checkpoint.py`.

A run directory holds `last.pt` (every `trainer.checkpoint_every` iterations and at each
validation), `last.prev.pt` (the one before it) and `best.pt` (best validation accuracy). Each
holds the full `TrainingState`, RNG streams included, so any of them can resume the run.
Files are read with `torch.load(weights_only=True)`: a checkpoint holds only tensors and plain
containers of str/int/float/bool/None, so a tampered file cannot execute anything.
"""
from __future__ import annotations

import logging
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from metalearn import safety
from metalearn.checkpoint import FORMAT, VERSION, ForeignCheckpoint, load
from metalearn.engine.distributed import World
from metalearn.io import RESUMABLE
from metalearn.errors import ConfigError, TrainingError

log = logging.getLogger(__name__)

# What TrainingState.state_dict() writes and a resume reads.
TRAINING_KEYS = ("model", "optimizer", "iteration", "best_val_acc", "best_iteration",
                 "skipped_steps", "train_time_s", "wandb_run_id", "metrics_bytes", "config", "rng")
# Keys a resumed run may change: where/how it runs, how long, how often it reports; not what it
# learns. `trainer.iterations` is safe because the lr schedule is rebuilt for the new length;
# `optimizer.fused`/`foreach` choose the kernels of the same update rule.
SAFE_KEYS = ("resume", "overwrite", "device", "threads", "trainer.iterations", "trainer.eval_every",
             "trainer.log_every", "trainer.checkpoint_every", "paths", "logger", "eval",
             "optimizer.fused", "optimizer.foreach")


@dataclass
class TrainingState:
    """Everything a run needs to continue bit for bit. `state_dict()` is the only place that
    builds a checkpoint and `load_state_dict()` the only place that reads one. The lr scheduler
    is not part of it: it is a function of `iteration`, rebuilt for the run's (maybe new) length.
    `state_dict()` gathers every rank's RNG streams, so all ranks call it."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    generators: dict[str, torch.Generator]
    world: World = field(default_factory=World)
    config: dict[str, Any] = field(default_factory=dict)  # unresolved: `${trainer.iterations}` stays
    preprocessing: dict[str, Any] = field(default_factory=dict)  # what metalearn.inference applies
    iteration: int = 0
    best_val_acc: float = -1.0
    best_iteration: int = 0
    skipped_steps: int = 0
    train_time_s: float = 0.0  # before this process started
    wandb_run_id: str | None = None
    wandb_name: str | None = None   # the run's W&B name and group, kept by a resume
    wandb_group: str | None = None
    metrics_bytes: int = 0  # metrics.jsonl up to this checkpoint; a resume cuts the rest
    started: float = field(default_factory=time.time)
    saved_iteration: int | None = None  # what last.pt holds (not saved): what a stop may promise

    def elapsed(self) -> float:
        return self.train_time_s + time.time() - self.started

    def state_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION,
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "iteration": self.iteration, "best_val_acc": self.best_val_acc,
                "best_iteration": self.best_iteration, "skipped_steps": self.skipped_steps,
                "train_time_s": self.elapsed(), "wandb_run_id": self.wandb_run_id,
                "wandb_name": self.wandb_name, "wandb_group": self.wandb_group,
                "metrics_bytes": self.metrics_bytes, "config": self.config,
                "preprocessing": self.preprocessing,
                "rng": self.world.gather(rng_state(self.generators))}  # every rank's streams

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Everything but `config`, which `resume_config` read before anything was built."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.iteration, self.best_val_acc = state["iteration"], state["best_val_acc"]
        self.best_iteration, self.skipped_steps = state["best_iteration"], state["skipped_steps"]
        self.train_time_s, self.started = state["train_time_s"], time.time()
        self.wandb_run_id, self.metrics_bytes = state["wandb_run_id"], state["metrics_bytes"]
        self.wandb_name, self.wandb_group = state.get("wandb_name"), state.get("wandb_group")
        self.saved_iteration = state["iteration"]
        if len(state["rng"]) == self.world.size:
            restore_rng(state["rng"][self.world.rank], self.generators)
        elif self.world.is_main:
            warnings.warn(f"the checkpoint was written by {len(state['rng'])} processes, this run "
                          f"has {self.world.size}: training continues, with fresh task streams")


def latest(run_dir: Path, verbose: bool = True) -> tuple[dict[str, Any], Path] | None:
    """The newest readable checkpoint among last/last.prev/best, or None if there is none.
    A damaged one (a kill or full disk mid-write) is reported and skipped; a foreign one stops."""
    found, broken = [], []
    for name in RESUMABLE:
        path = run_dir / name
        if path.exists():
            try:
                state = load(path)
                missing = [k for k in TRAINING_KEYS if k not in state]
                if missing:  # the right header is not enough: resume reads all of these
                    raise ForeignCheckpoint(
                        f"{path} is a metalearn checkpoint without {', '.join(missing)}: not a "
                        f"training run's (an online run's, or edited); move it out of the run "
                        f"directory or start a new run")
                found.append((state, path))
            except ForeignCheckpoint:
                raise
            except TrainingError as e:
                broken.append(str(e))
    if broken and not found:
        raise TrainingError(f"no readable checkpoint in {run_dir}: " + "; ".join(broken))
    if not found:
        return None
    state, path = max(found, key=lambda sp: sp[0]["iteration"])
    if verbose:
        for msg in broken:
            warnings.warn(f"{msg}. Resuming from {path} instead", stacklevel=2)
        log.info("resuming from %s (iteration %d)", path, state["iteration"])
    return state, path


def resume_config(cfg: DictConfig, state: dict[str, Any], overrides: list[str] | None,
                  use_saved: bool, source: str | Path = "the checkpoint") -> DictConfig:
    """The config to continue with. `resume=<dir>` (`use_saved`): the checkpoint's own, with
    the command line's `overrides` of SAFE_KEYS applied and any other override refused.
    `resume=true/auto`: the given config, which must match the checkpoint's outside SAFE_KEYS.
    `source`: the checkpoint's path, for messages."""
    if use_saved:  # the run is then built from the checkpoint's config: shipped targets only
        saved = safety.checked(state.get("config"), source)
    else:  # only compared with the given config, never built from
        saved = OmegaConf.create(state["config"])
    if use_saved:
        keys = [k for k in _override_keys(overrides or []) if not k.startswith(("hydra.", "hydra/"))]
        unsafe = [k for k in keys if not _is_safe(k)]
        # the run's own command line again (every value as saved) is the same run: accepted
        if unsafe and any(not _is_safe(k) for k in _differences(
                OmegaConf.to_container(saved), OmegaConf.to_container(cfg))):
            raise ConfigError(f"resume=<run dir> continues that run with its own config; "
                              f"{', '.join(unsafe)} cannot change in a resumed run (only "
                              f"{', '.join(SAFE_KEYS)}): drop the override or start a new run")
        keys = [k for k in keys if _is_safe(k)]
        with open_dict(saved):
            for key in ["resume", *keys]:
                OmegaConf.update(saved, key, OmegaConf.select(cfg, key), merge=False,
                                 force_add=True)
        cfg = saved
    else:
        diff = [f"{k} ({a!r} in the checkpoint, {b!r} now)"
                for k, (a, b) in _differences(OmegaConf.to_container(saved),
                                              OmegaConf.to_container(cfg)).items()
                if not _is_safe(k)]
        if diff:
            raise ConfigError("resume: the config differs from the checkpoint's at "
                              + ", ".join(diff) + ". Resume with the original overrides "
                              "(or resume=<run dir> to reuse its config), or start a new run")
    if cfg.trainer.iterations < state["iteration"]:
        raise ConfigError(f"trainer.iterations={cfg.trainer.iterations} but the checkpoint is at "
                          f"iteration {state['iteration']}: raise trainer.iterations")
    if state.get("wandb_run_id") and "run_id" in cfg.logger and not cfg.logger.run_id:
        with open_dict(cfg):
            cfg.logger.run_id = state["wandb_run_id"]  # same W&B run, resume="allow"
            for key in ("name", "group"):  # not renamed after the resumed job's own choices
                if key in cfg.logger and not cfg.logger[key] and state.get(f"wandb_{key}"):
                    cfg.logger[key] = state[f"wandb_{key}"]
    return cfg


def _is_safe(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in SAFE_KEYS)


def _override_keys(overrides: list[str]) -> list[str]:
    """The config keys (or groups: `logger=none` -> logger) a Hydra command line sets."""
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as e:  # the same line already composed, so this is not expected
        raise ConfigError(f"cannot parse the overrides {overrides}: {e}") from None
    return [o.key_or_group.split("@")[0] for o in parsed]


def _differences(a: Any, b: Any, prefix: str = "") -> dict[str, tuple[Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: dict[str, tuple[Any, Any]] = {}
        for k in a.keys() | b.keys():
            out.update(_differences(a.get(k), b.get(k), f"{prefix}{k}."))
        return out
    return {} if a == b else {prefix.rstrip("."): (a, b)}


def rng_state(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(),  # (version, tuple of ints, None): plain values
            "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "generators": {k: g.get_state() for k, g in generators.items()}}


def restore_rng(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for k, g in generators.items():
        g.set_state(state["generators"][k])
