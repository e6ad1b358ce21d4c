"""Where metrics go: always `metrics.jsonl` in the run dir, plus the `logger` group's tracker.

`logger=<name>` builds a `Tracker` from its `_target_` (`logger=none`: none; `logger=wandb`:
`WandbTracker`). A tracker must never cost a run: if W&B cannot start online it falls back
to an offline run; if a tracker fails at any point, training goes on with a single warning
and the local files stay complete. One W&B run per Hydra job, also when a multirun executes
every job in one process: each job starts its run with `reinit` and `finish()` is called
from the loop's `finally`.
"""
from __future__ import annotations

import json
import logging
import netrc
import os
import socket
import warnings
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlparse

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

from metalearn.io import disk_errors, note_written

# Keys of results.json -> names in a tracker's summary (the namespaces of the logged metrics).
SUMMARY_NAMES = {"best_val_acc": "val/best_acc", "best_iteration": "val/best_iteration"}
# Overrides that pick what the run's name already says, or that do not change the result.
_NOT_IN_NAME = ("experiment", "algorithm", "dataset", "logger", "hydra.", "paths.", "resume",
                "device")


def summary_name(key: str) -> str:
    """`test_acc` -> `test/acc`, `best_val_acc` -> `val/best_acc`, `wall_time_s` ->
    `run/wall_time_s`; names already namespaced (`test/cub/acc`) stay as they are."""
    if "/" in key:
        return key
    if key in SUMMARY_NAMES:
        return SUMMARY_NAMES[key]
    prefix, _, rest = key.partition("_")
    return f"{prefix}/{rest}" if prefix in ("test", "val", "train") and rest else f"run/{key}"


def run_identity(cfg: DictConfig) -> tuple[str | None, str | None]:
    """(run name, group) for this Hydra job; (None, None) outside Hydra.

    The name is the experiment preset, else `<algorithm>/<dataset>`, followed by the values
    of the swept keys: those a multirun sweeps (comma lists, ranges, a sweeper's search
    space), else the job's own command-line overrides (a W&B agent passes its sweep's
    parameters so). A multirun's sweep dir groups its jobs, else the experiment preset does.
    """
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
    except (ImportError, ValueError):  # not launched by @hydra.main (tests, notebooks)
        return None, None
    choices = hc.runtime.choices
    base = choices.get("experiment") or f"{choices.get('algorithm')}/{choices.get('dataset')}"
    job = [o.split("=", 1) for o in hc.overrides.task if "=" in o]
    job = [(k.lstrip("+~"), v) for k, v in job]
    if hc.mode == RunMode.MULTIRUN:
        sweep = Path(hc.sweep.dir)
        group = f"{sweep.parent.name}_{sweep.name}" if sweep.parent.name else sweep.name
        swept = _swept_keys(sweep, hc)
        job = [(k, v) for k, v in job if k in swept]
    else:
        group = choices.get("experiment")
    shown = [f"{k}={v}" for k, v in job if not k.startswith(_NOT_IN_NAME)]
    return " ".join([base, *shown]), group


def _swept_keys(sweep_dir: Path, hc: Any) -> set[str]:
    """Keys the multirun varies: sweep overrides in the sweep dir's multirun.yaml (what the
    command line asked for) and the sweeper's own search space (`hydra.sweeper.params`)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys = set((OmegaConf.select(hc, "sweeper.params") or {}).keys())
    try:
        asked = OmegaConf.load(sweep_dir / "multirun.yaml").hydra.overrides.task
        overrides = OverridesParser.create().parse_overrides(list(asked))
    except Exception:  # no multirun.yaml (a custom launcher): every override names the job
        return keys | {o.split("=", 1)[0].lstrip("+~") for o in hc.overrides.task}
    return keys | {o.key_or_group for o in overrides if o.is_sweep_override()}


def _base_url(wandb: Any) -> str:
    # The environment first: wandb.setup() keeps the settings of the first run in a process.
    return os.environ.get("WANDB_BASE_URL") or wandb.setup().settings.base_url


class Tracker:
    """A metrics destination besides metrics.jsonl; this one (`logger=none`) keeps nothing."""

    label = "the logger"
    run_id: str | None = None
    identity: tuple[str | None, str | None] = (None, None)  # (name, group)

    def start(self, cfg: DictConfig, out_dir: Path) -> None:
        pass

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        pass

    def summary(self, values: dict[str, Any]) -> None:
        pass

    def finish(self, exit_code: int, preempted: bool, broken: bool) -> None:
        """Called once at the end, also after a failure (`broken`), so nothing stays open."""


class RunLogger:
    def __init__(self, cfg: DictConfig, out_dir: Path, metrics_offset: int = 0,
                 enabled: bool = True) -> None:
        """`metrics_offset`: bytes of an earlier metrics.jsonl to keep (what a resumed
        checkpoint had seen), so lines logged after that checkpoint are not duplicated.
        `enabled=False` (non-zero ranks under torchrun) logs nothing."""
        self.out_dir = out_dir
        self.tracker: Tracker | None = None
        self.broken = False
        self.metrics_file = None
        if not enabled:
            return
        path = out_dir / "metrics.jsonl"
        if path.exists():
            if path.stat().st_size < metrics_offset:
                warnings.warn(f"{path} is shorter than when the checkpoint was saved: some "
                              f"metric lines before the resume point are missing", stacklevel=2)
            else:
                os.truncate(path, metrics_offset)
        note_written(path)
        self.metrics_file = open(path, "a", buffering=1)
        if cfg.get("logger") is not None:
            self.tracker = instantiate(cfg.logger)
            self._call("could not start", self.tracker.start, cfg, out_dir)

    def _call(self, what: str, method: Any, *args: Any) -> None:
        if self.tracker is None or self.broken:
            return
        try:
            method(*args)
        except Exception as e:  # a tracker's failures come in every type; none stops training
            self.broken = True
            warnings.warn(f"{self.tracker.label} {what} ({type(e).__name__}: {e}); training "
                          f"goes on, metrics are still written to {self.metrics_file.name}. "
                          f"Set logger=none to silence this.", RuntimeWarning, stacklevel=3)

    @property
    def metrics_offset(self) -> int:
        return self.metrics_file.tell() if self.metrics_file is not None else 0

    @property
    def run_id(self) -> str | None:
        return None if self.tracker is None or self.broken else self.tracker.run_id

    @property
    def identity(self) -> tuple[str | None, str | None]:
        return (None, None) if self.tracker is None or self.broken else self.tracker.identity

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if self.metrics_file is None:
            return
        with disk_errors(self.metrics_file.name):  # a full disk: one line, exit 74
            self.metrics_file.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.tracker is not None:
            self._call("logging failed", self.tracker.log, step, metrics)

    def summary(self, values: dict[str, Any]) -> None:
        """results.json's values, under the logged metrics' names (`test/acc`, not
        `test_acc` beside it)."""
        if self.tracker is not None:
            named = {summary_name(k): v for k, v in values.items()}
            self._call("summary failed", self.tracker.summary, named)

    def finish(self, exit_code: int = 0, preempted: bool = False) -> None:
        if self.metrics_file is not None:
            try:
                self.metrics_file.close()
            except OSError:
                pass  # the failed write was reported by log(); a second error would mask it
        tracker, self.tracker = self.tracker, None
        if tracker is None:
            return
        try:
            tracker.finish(exit_code, preempted, self.broken)
        except Exception as e:
            if not self.broken:  # a broken tracker has had its warning
                warnings.warn(f"{tracker.label} finish failed ({type(e).__name__}: {e})",
                              RuntimeWarning, stacklevel=2)


class WandbTracker(Tracker):
    """Weights & Biases. `mode`: auto = $WANDB_MODE when set, else online with an API key
    (WANDB_API_KEY or `wandb login`), else offline into the run dir (`wandb sync` later)."""

    label = "W&B"

    def __init__(self, project: str = "metalearn", entity: str | None = None,
                 name: str | None = None, group: str | None = None, tags: Sequence[str] = (),
                 mode: str = "auto", connect_timeout: float = 5.0, init_timeout: float = 60.0,
                 run_id: str | None = None, log_checkpoint: bool = False) -> None:
        self.project, self.entity, self.name, self.group = project, entity, name, group
        self.tags, self.requested_mode, self.connect_timeout = list(tags), mode, connect_timeout
        self.init_timeout, self.resume_id, self.log_checkpoint = init_timeout, run_id, log_checkpoint
        self.run: Any = None
        self.mode: str | None = None  # what it resolved to: online, offline or disabled
        self.out_dir: Path | None = None
        self.final: dict[str, Any] = {}

    @property
    def run_id(self) -> str | None:  # type: ignore[override]
        return self.run.id if self.run is not None else None

    @property
    def identity(self) -> tuple[str | None, str | None]:  # type: ignore[override]
        # saved in the checkpoint: a resumed job's own Hydra choices would name it otherwise
        return (self.run.name, self.run.group or None) if self.run is not None else (None, None)

    def start(self, cfg: DictConfig, out_dir: Path) -> None:
        import wandb

        self.out_dir = out_dir
        note_written(out_dir / "wandb")  # wandb.init(dir=out_dir) makes it
        name, group = run_identity(cfg)
        kwargs = dict(project=self.project, entity=self.entity, name=self.name or name,
                      group=self.group or group, tags=self.tags, dir=str(out_dir),
                      reinit="finish_previous", config=OmegaConf.to_container(cfg, resolve=True),
                      id=self.resume_id, resume="allow" if self.resume_id else None)
        mode = self._resolve_mode(wandb)
        if mode == "online":
            try:
                self._check_reachable(wandb)
                self.run = self._init(wandb, mode, kwargs)
            except Exception as e:  # unreachable server, bad key, timeout: keep the run locally
                warnings.warn(f"W&B could not start online ({type(e).__name__}: {e}); logging "
                              f"offline instead", RuntimeWarning, stacklevel=4)
                mode = "offline"
        if self.run is None:
            self.run = self._init(wandb, mode, kwargs)
        self.mode = mode

    def _resolve_mode(self, wandb: Any) -> str:
        if self.requested_mode != "auto":
            return self.requested_mode
        env = os.environ.get("WANDB_MODE")
        if env:
            return "offline" if env == "dryrun" else env
        if os.environ.get("WANDB_API_KEY"):
            return "online"
        host = urlparse(_base_url(wandb)).hostname or ""
        try:
            return "online" if netrc.netrc().authenticators(host) is not None else "offline"
        except (OSError, netrc.NetrcParseError):
            return "offline"

    def _check_reachable(self, wandb: Any) -> None:
        """One TCP connect to the server first: an unreachable one fails in `connect_timeout`
        seconds, where `wandb.init` would wait its whole `init_timeout`."""
        url = urlparse(_base_url(wandb))
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            socket.create_connection((url.hostname, port), timeout=self.connect_timeout).close()
        except OSError as e:
            raise ConnectionError(f"cannot reach {url.scheme}://{url.netloc}: {e}") from None

    def _init(self, wandb: Any, mode: str, kwargs: dict[str, Any]) -> Any:
        settings = wandb.Settings(silent=True, init_timeout=self.init_timeout)
        return wandb.init(mode=mode, settings=settings, **kwargs)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        self.run.log(metrics, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        self.final.update(values)
        self.run.summary.update(values)

    def _upload_best(self, run: Any) -> None:
        import wandb

        best = self.out_dir / "best.pt"
        if not best.exists():
            return
        meta = {k: v for k, v in self.final.items() if isinstance(v, (int, float, str))}
        art = wandb.Artifact(f"model-{run.id}", type="model", metadata=meta)
        art.add_file(str(best))
        run.log_artifact(art, aliases=["best"])

    def finish(self, exit_code: int, preempted: bool, broken: bool) -> None:
        run, self.run = self.run, None
        if run is None:
            return
        try:
            if exit_code == 0 and self.log_checkpoint and not broken:
                self._upload_best(run)
        finally:
            # Finish even a run that failed mid-job: an unfinished run would swallow the next
            # job's metrics in a one-process multirun.
            run_dir = Path(run.dir).parent
            if preempted:  # shown as "preempted" in W&B until the resumed job continues it
                run.mark_preempting()
            run.finish(exit_code=exit_code)
        if self.mode == "offline":
            # each process of a resumed run writes its own folder under the same id: sync all
            folders = sorted(run_dir.parent.glob(f"offline-run-*-{run.id}")) or [run_dir]
            log.info("W&B run saved offline; upload it with: wandb sync %s",
                     " ".join(str(f) for f in folders))
