"""Where metrics go: always `metrics.jsonl` in the run dir, and W&B when `logger=wandb`.

W&B must never cost a run: if it cannot start online it falls back to an offline run; if it
fails mid-run, training goes on with a single warning and the local files stay complete.
One W&B run per Hydra job, also when a multirun executes every job in one process: each
job starts its run with `reinit` and `finish()` is called from the loop's `finally`.
"""
from __future__ import annotations

import json
import netrc
import os
import sys
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from omegaconf import DictConfig, OmegaConf

from metalearn.engine.io import disk_errors


def resolve_mode(mode: str) -> str:
    """`auto` = WANDB_MODE when set, else online with an API key (env or `wandb login`), else offline."""
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_MODE"):
        return "offline" if os.environ["WANDB_MODE"] == "dryrun" else os.environ["WANDB_MODE"]
    return "online" if _has_api_key() else "offline"


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host or "") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def job_identity(cfg: DictConfig) -> tuple[str | None, str | None]:
    """(run name, group) for this Hydra job: the job's overrides name the run; a multirun's
    sweep dir groups its jobs, else the experiment preset does. (None, None) outside Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
    except (ImportError, ValueError):  # not launched by @hydra.main (tests, notebooks)
        return None, None
    name = hc.job.override_dirname or None
    if hc.mode == RunMode.MULTIRUN:
        sweep = Path(hc.sweep.dir)
        group = f"{sweep.parent.name}_{sweep.name}" if sweep.parent.name else sweep.name
    else:
        group = hc.runtime.choices.get("experiment")
    return name, group


class RunLogger:
    def __init__(self, cfg: DictConfig, out_dir: Path, metrics_offset: int = 0,
                 enabled: bool = True) -> None:
        """`metrics_offset`: bytes of an earlier metrics.jsonl to keep (what a resumed
        checkpoint had seen), so lines logged after that checkpoint are not duplicated.
        `enabled=False` (non-zero ranks under torchrun) logs nothing."""
        self.out_dir = out_dir
        self.run = None
        self._broken = None  # a run that failed mid-job: no more logging, still finished
        self.mode = None
        self._final: dict[str, Any] = {}
        self.lcfg = cfg.get("logger") or {}
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
        self.metrics_file = open(path, "a", buffering=1)
        if self.lcfg.get("backend", "none") == "wandb":
            self._start_wandb(cfg)

    def _start_wandb(self, cfg: DictConfig) -> None:
        lcfg = self.lcfg
        mode = resolve_mode(lcfg.get("mode", "auto"))
        name, group = job_identity(cfg)
        kwargs = dict(
            project=lcfg.get("project", "metalearn"), entity=lcfg.get("entity"),
            name=lcfg.get("name") or name, group=lcfg.get("group") or group,
            tags=list(lcfg.get("tags") or []), dir=str(self.out_dir),
            reinit="finish_previous", config=OmegaConf.to_container(cfg, resolve=True),
            id=lcfg.get("run_id"), resume="allow" if lcfg.get("run_id") else None)
        try:
            import wandb

            try:
                self.run = self._init(wandb, mode, kwargs)
            except Exception as e:
                if mode != "online":
                    raise
                # Unreachable server, bad key, timeout: keep the run locally, sync it later.
                self._warn(f"W&B could not start online ({type(e).__name__}: {e}); "
                           "logging offline instead")
                self.run = self._init(wandb, "offline", kwargs)
                mode = "offline"
            self.mode = mode
            self.run.define_metric("val/acc", summary="max")
        except Exception as e:
            self._fail(f"W&B could not start ({type(e).__name__}: {e})")

    def _init(self, wandb: Any, mode: str, kwargs: dict[str, Any]) -> Any:
        settings = wandb.Settings(silent=True, init_timeout=self.lcfg.get("init_timeout", 60))
        return wandb.init(mode=mode, settings=settings, **kwargs)

    def _warn(self, message: str) -> None:
        warnings.warn(message, RuntimeWarning, stacklevel=4)

    def _fail(self, why: str) -> None:
        """Stop using W&B for the rest of the job (one warning), but still finish the run."""
        self._warn(f"{why}; training goes on, metrics are still written to "
                   f"{self.metrics_file.name}. Set logger=none to silence this.")
        self._broken, self.run = self.run, None

    @property
    def metrics_offset(self) -> int:
        return self.metrics_file.tell() if self.metrics_file is not None else 0

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if self.metrics_file is None:
            return
        with disk_errors(self.metrics_file.name):  # a full disk: one line, exit 74
            self.metrics_file.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.run is not None:
            try:
                self.run.log(metrics, step=step)
            except Exception as e:
                self._fail(f"W&B logging failed ({type(e).__name__}: {e})")

    def summary(self, values: dict[str, Any]) -> None:
        self._final.update(values)
        if self.run is not None:
            try:
                self.run.summary.update(values)
            except Exception as e:
                self._fail(f"W&B summary failed ({type(e).__name__}: {e})")

    @property
    def run_id(self) -> str | None:
        return self.run.id if self.run is not None else None

    def _log_checkpoint(self) -> None:
        import wandb

        best = self.out_dir / "best.pt"
        if not best.exists():
            return
        meta = {k: v for k, v in self._final.items() if isinstance(v, (int, float, str))}
        art = wandb.Artifact(f"model-{self.run.id}", type="model", metadata=meta)
        art.add_file(str(best))
        self.run.log_artifact(art, aliases=["best"])

    def finish(self, exit_code: int = 0, preempted: bool = False) -> None:
        if self.metrics_file is not None:
            try:
                self.metrics_file.close()
            except OSError:
                pass  # the failed write was reported by log(); a second error would mask it
        if self.run is not None and exit_code == 0 and self.lcfg.get("log_checkpoint", False):
            try:
                self._log_checkpoint()
            except Exception as e:
                self._fail(f"W&B checkpoint upload failed ({type(e).__name__}: {e})")
        run, broken = self.run or self._broken, self.run is None
        self.run = self._broken = None
        if run is None:
            return
        # Finish even a run that failed mid-job: an unfinished run would swallow the next
        # job's metrics in a one-process multirun.
        try:
            run_dir = Path(run.dir).parent
            if preempted:  # shown as "preempted" in W&B until the resumed job continues it
                run.mark_preempting()
            run.finish(exit_code=exit_code)
        except Exception as e:
            if not broken:  # a broken run has had its warning
                self._warn(f"W&B finish failed ({type(e).__name__}: {e})")
            return
        if self.mode == "offline":
            print(f"W&B run saved offline; upload it with: wandb sync {run_dir}", file=sys.stderr)
