"""Checkpoints that are never half-written (temp file, fsync, atomic rename), and resuming.

A run directory holds `last.pt` (every `trainer.checkpoint_every` iterations and at each
validation), `last.prev.pt` (the one before it) and `best.pt` (best validation accuracy). Each
holds the full training state, RNG streams included, so any of them can resume the run.
"""
from __future__ import annotations

import os
import random
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from metalearn.engine.io import disk_errors
from metalearn.errors import ConfigError, TrainingError

RESUMABLE = ("last.pt", "last.prev.pt", "best.pt")
# Keys a resumed run may change: where/how it runs and how long, not what it learns.
FREE_KEYS = ("resume", "device", "trainer.iterations", "paths.", "logger.")


def save(state: dict[str, Any], path: Path, keep_previous: bool = False) -> None:
    """A failed write (disk full, read-only, ...) raises DiskError and leaves `path` as it was."""
    with disk_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())
            if keep_previous and path.exists():
                os.replace(path, path.with_suffix(".prev.pt"))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def save_rotating(state: dict[str, Any], path: Path) -> None:
    """Save `path`, keeping its previous version as `<stem>.prev.pt`: a fallback if the new
    file is later damaged (e.g. a disk quota hit after the rename)."""
    save(state, path, keep_previous=True)


def load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except FileNotFoundError:
        raise TrainingError(f"checkpoint {path} does not exist") from None
    except Exception as e:
        raise TrainingError(f"checkpoint {path} is corrupt or truncated ({type(e).__name__}: "
                            f"{e}); delete it or use another checkpoint") from None


def latest(run_dir: Path, verbose: bool = True) -> tuple[dict[str, Any], Path] | None:
    """The newest readable checkpoint among last/last.prev/best, or None if there is none.
    A damaged one is reported and skipped."""
    found, broken = [], []
    for name in RESUMABLE:
        path = run_dir / name
        if path.exists():
            try:
                found.append((load(path), path))
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
        print(f"resuming from {path} (iteration {state['iteration']})")
    return state, path


def resume_config(cfg: DictConfig, state: dict[str, Any], use_saved: bool) -> DictConfig:
    """The config to continue with: the checkpoint's own (`resume=<dir>`) or the given one,
    which must then match the checkpoint's except for FREE_KEYS."""
    saved = OmegaConf.create(state["config"])
    if use_saved:
        with open_dict(saved):
            saved.resume, saved.device = cfg.resume, cfg.device
        cfg = saved
    else:
        diff = [f"{k} ({a!r} in the checkpoint, {b!r} now)"
                for k, (a, b) in _differences(OmegaConf.to_container(saved, resolve=True),
                                              OmegaConf.to_container(cfg, resolve=True)).items()
                if not k.startswith(FREE_KEYS)]
        if diff:
            raise ConfigError("resume: the config differs from the checkpoint's at "
                              + ", ".join(diff) + ". Resume with the original overrides "
                              "(or resume=<run dir> to reuse its config), or start a new run")
    if cfg.trainer.iterations < state["iteration"]:
        raise ConfigError(f"trainer.iterations={cfg.trainer.iterations} but the checkpoint is at "
                          f"iteration {state['iteration']}: raise trainer.iterations")
    if state.get("wandb_run_id") and cfg.logger.get("backend") == "wandb" \
            and not cfg.logger.get("run_id"):
        with open_dict(cfg):
            cfg.logger.run_id = state["wandb_run_id"]  # same W&B run, resume="allow"
    return cfg


def _differences(a: Any, b: Any, prefix: str = "") -> dict[str, tuple[Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: dict[str, tuple[Any, Any]] = {}
        for k in a.keys() | b.keys():
            out.update(_differences(a.get(k), b.get(k), f"{prefix}{k}."))
        return out
    return {} if a == b else {prefix.rstrip("."): (a, b)}


def rng_state(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "generators": {k: g.get_state() for k, g in generators.items()}}


def restore_rng(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for k, g in generators.items():
        g.set_state(state["generators"][k])
