"""What every run shares, a meta-training run (`engine/loop.py`) or an online stream
(`online/run.py`): the run directory it claims, the one resume policy, its logger and the one
checkpoint writer.

A run kind is a `RunState` subclass. It declares its checkpoint files, what a checkpoint of it
must hold and what counts its progress, and which config keys beyond `SAFE_KEYS` a resume may
change; its `state_dict()` is the only place its checkpoint is built, `load_state_dict()` the
only place one is read. `open_run` claims and prepares the directory, finds the newest readable
checkpoint and settles the config to continue with; `Run.save` writes a state.
"""
from __future__ import annotations

import contextlib
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterator

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict

from metalearn import checkpoint, io, safety
from metalearn.checkpoint import ForeignCheckpoint
from metalearn.engine import rundir
from metalearn.errors import ConfigError, TrainingError
from metalearn.tracking import RunLogger

log = logging.getLogger(__name__)

# Keys any resumed run may change: where and how it runs and reports, not what it learns. A run
# kind adds its own (training: its length and reporting cadence) in `RunState.SAFE_KEYS`.
# `optimizer.fused`/`foreach` choose the kernels of the same update rule.
SAFE_KEYS = ("resume", "overwrite", "device", "threads", "paths", "logger", "optimizer.fused",
             "optimizer.foreach")


@dataclass(kw_only=True)
class RunState:
    """The bookkeeping every run's checkpoint carries; a run kind adds what it learns."""

    NAME: ClassVar[str] = "run"  # in messages: "not a <NAME>'s checkpoint"
    FILES: ClassVar[tuple[str, ...]] = ()  # [0] written each time, [1] the previous one, kept
    BEST: ClassVar[str | None] = None  # also written when `Run.save(best=True)`
    OUTPUTS: ClassVar[tuple[str, ...]] = ()  # other files only this kind writes
    KEYS: ClassVar[tuple[str, ...]] = ()  # what load_state_dict reads
    PROGRESS: ClassVar[str] = ""  # the key that counts progress: the newest file has the most
    SAFE_KEYS: ClassVar[tuple[str, ...]] = SAFE_KEYS

    config: dict[str, Any] = field(default_factory=dict)  # unresolved: `${paths.data_dir}` stays
    time_before_s: float = 0.0  # spent before this process started
    started: float = field(default_factory=time.time)
    wandb_run_id: str | None = None
    wandb_name: str | None = None  # the run's W&B name and group, kept by a resume
    wandb_group: str | None = None
    metrics_bytes: int = 0  # metrics.jsonl up to this checkpoint; a resume cuts the rest

    def elapsed(self) -> float:
        return self.time_before_s + time.time() - self.started

    def run_dict(self) -> dict[str, Any]:
        """The shared part of `state_dict()`."""
        return {"format": checkpoint.FORMAT, "version": checkpoint.VERSION,
                "wandb_run_id": self.wandb_run_id, "wandb_name": self.wandb_name,
                "wandb_group": self.wandb_group, "metrics_bytes": self.metrics_bytes,
                "config": self.config}

    def load_run_dict(self, state: dict[str, Any], time_before_s: float) -> None:
        self.wandb_run_id, self.metrics_bytes = state["wandb_run_id"], state["metrics_bytes"]
        self.wandb_name, self.wandb_group = state.get("wandb_name"), state.get("wandb_group")
        self.time_before_s, self.started = time_before_s, time.time()

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    @classmethod
    def check_resume(cls, cfg: DictConfig, state: dict[str, Any]) -> None:
        """Refuse a config this kind cannot continue `state` with (beyond the key policy)."""


def latest(run_dir: Path, kind: type[RunState],
           verbose: bool = True) -> tuple[dict[str, Any], Path] | None:
    """The newest readable checkpoint of `kind` in `run_dir`, or None if there is none. A
    damaged one (a kill or full disk mid-write) is reported and skipped; a foreign one stops."""
    found, broken = [], []
    for name in (*kind.FILES, *([kind.BEST] if kind.BEST else [])):
        path = run_dir / name
        if path.exists():
            try:
                state = checkpoint.load(path)
                missing = [k for k in kind.KEYS if k not in state]
                if missing:  # the right header is not enough: resume reads all of these
                    raise ForeignCheckpoint(
                        f"{path} is a metalearn checkpoint without {', '.join(missing)}: not a "
                        f"{kind.NAME}'s (another kind of run's, or edited); move it out of the "
                        f"run directory or start a new run")
                found.append((state, path))
            except ForeignCheckpoint:
                raise
            except TrainingError as e:
                broken.append(str(e))
    if broken and not found:
        raise TrainingError(f"no readable checkpoint in {run_dir}: " + "; ".join(broken))
    if not found:
        return None
    state, path = max(found, key=lambda sp: sp[0][kind.PROGRESS])
    if verbose:
        for msg in broken:
            warnings.warn(f"{msg}. Resuming from {path} instead", stacklevel=2)
        log.info("resuming from %s (%s %d)", path, kind.PROGRESS, state[kind.PROGRESS])
    return state, path


def resume_config(cfg: DictConfig, state: dict[str, Any], overrides: list[str] | None,
                  use_saved: bool, source: str | Path = "the checkpoint",
                  safe_keys: tuple[str, ...] = SAFE_KEYS) -> DictConfig:
    """The config to continue with. `resume=<dir>` (`use_saved`): the checkpoint's own, with
    the command line's `overrides` of `safe_keys` applied and any other override refused.
    `resume=true/auto`: the given config, which must match the checkpoint's outside
    `safe_keys`. `source`: the checkpoint's path, for messages."""
    def is_safe(key: str) -> bool:
        return any(key == k or key.startswith(k + ".") for k in safe_keys)

    if use_saved:  # the run is then built from the checkpoint's config: shipped targets only
        saved = safety.checked(state.get("config"), source)
    else:  # only compared with the given config, never built from
        saved = OmegaConf.create(state["config"])
    if use_saved:
        keys = [k for k in _override_keys(overrides or []) if not k.startswith(("hydra.", "hydra/"))]
        unsafe = [k for k in keys if not is_safe(k)]
        # the run's own command line again (every value as saved) is the same run: accepted
        if unsafe and any(not is_safe(k) for k in _differences(
                OmegaConf.to_container(saved), OmegaConf.to_container(cfg))):
            raise ConfigError(f"resume=<run dir> continues that run with its own config; "
                              f"{', '.join(unsafe)} cannot change in a resumed run (only "
                              f"{', '.join(safe_keys)}): drop the override or start a new run")
        keys = [k for k in keys if is_safe(k)]
        with open_dict(saved):
            for key in ["resume", *keys]:
                OmegaConf.update(saved, key, OmegaConf.select(cfg, key), merge=False,
                                 force_add=True)
        cfg = saved
    else:
        diff = [f"{k} ({a!r} in the checkpoint, {b!r} now)"
                for k, (a, b) in _differences(OmegaConf.to_container(saved),
                                              OmegaConf.to_container(cfg)).items()
                if not is_safe(k)]
        if diff:
            raise ConfigError("resume: the config differs from the checkpoint's at "
                              + ", ".join(sorted(diff)) + ". Resume with the original overrides "
                              "(or resume=<run dir> to reuse its config), or start a new run")
    if state.get("wandb_run_id") and "run_id" in cfg.logger and not cfg.logger.run_id:
        with open_dict(cfg):
            cfg.logger.run_id = state["wandb_run_id"]  # same W&B run, resume="allow"
            for key in ("name", "group"):  # not renamed after the resumed job's own choices
                if key in cfg.logger and not cfg.logger[key] and state.get(f"wandb_{key}"):
                    cfg.logger[key] = state[f"wandb_{key}"]
    return cfg


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


def command_line(out_dir: Path) -> list[str] | None:
    """This Hydra job's overrides if it writes to `out_dir`, else None: a Hydra app that ran
    earlier in this process (tests, notebooks) leaves its config behind, without a run
    directory, and only this job's own overrides count."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    here = OmegaConf.select(HydraConfig.get(), "runtime.output_dir", default=None,
                            throw_on_missing=False)
    if here is None or Path(here) != Path(out_dir):
        return None
    return list(HydraConfig.get().overrides.task)


@dataclass
class Run:
    """A claimed run directory: the config to run with and the checkpoint it resumes from."""

    cfg: DictConfig
    dir: Path
    kind: type[RunState]
    saved: dict[str, Any] | None = None  # the checkpoint to continue from
    is_main: bool = True  # the process that writes (rank 0 under torchrun)
    logger: RunLogger | None = None

    def start_logger(self, state: RunState) -> RunLogger:
        """The one place a run's tracker is built: metrics.jsonl cut where `state` was saved."""
        self.logger = RunLogger(self.cfg, self.dir, metrics_offset=state.metrics_bytes,
                                enabled=self.is_main)
        return self.logger

    def save(self, state: RunState, best: bool = False) -> None:
        """Write `state` to `kind.FILES[0]` (the previous one kept as `FILES[1]`) and, if
        `best`, to `kind.BEST`. After the step's log lines, so a resume cuts metrics.jsonl right
        there. Every process calls it: a state may gather from all of them."""
        if self.logger is not None:
            state.wandb_run_id, state.metrics_bytes = self.logger.run_id, self.logger.metrics_offset
            state.wandb_name, state.wandb_group = self.logger.identity
        saved = state.state_dict()
        if self.is_main:
            if best and self.kind.BEST:
                checkpoint.save(saved, self.dir / self.kind.BEST)
            checkpoint.save_rotating(saved, self.dir / self.kind.FILES[0])

    def write_text(self, name: str, text: str) -> None:
        """A file of the run's (all or nothing), listed in its manifest for a later overwrite."""
        if self.is_main:
            io.note_written(self.dir / name)  # first: a kill mid-write leaves it listed
            io.write_text(self.dir / name, text)


@contextlib.contextmanager
def open_run(cfg: DictConfig, out_dir: Path, kind: type[RunState],
             overrides: list[str] | None = None, is_main: bool = True) -> Iterator[Run]:
    """Claim the run directory for the block (one writer; an earlier run there is resumed,
    overwritten or kept), find the checkpoint to resume from and settle the config: `resume=
    <run dir>` continues that run, in its directory, with its config and the command line's
    safe `overrides`; `resume=true/auto` continues the run in `out_dir` with the same config."""
    mode = cfg.get("resume") or False
    own_dir = isinstance(mode, str) and mode != "auto"
    out_dir = rundir.resolve(mode, out_dir)
    with rundir.claim(out_dir) if is_main else contextlib.nullcontext():
        if is_main:
            rundir.prepare(out_dir, resume=bool(mode), overwrite=bool(cfg.get("overwrite")),
                           checkpoints=kind.FILES + ((kind.BEST,) if kind.BEST else ()),
                           outputs=kind.OUTPUTS)
            rundir.save_hydra_files(out_dir, cfg, resume=bool(mode))
        found = latest(out_dir, kind, verbose=is_main) if mode else None
        if found is None and mode not in (False, "auto"):
            names = ", ".join(kind.FILES + ((kind.BEST,) if kind.BEST else ()))
            raise ConfigError(f"resume={mode} but {out_dir} holds no checkpoint ({names}): "
                              f"pass the run's directory as hydra.run.dir=<dir> (or resume="
                              f"<dir>), or drop resume")
        saved = found[0] if found else None
        if found is not None:
            cfg = resume_config(cfg, saved, overrides, use_saved=own_dir, source=found[1],
                                safe_keys=kind.SAFE_KEYS)
            kind.check_resume(cfg, saved)
        run = Run(cfg, out_dir, kind, saved, is_main)
        run.write_text("config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        yield run
