"""Where metrics go: always `metrics.jsonl` in the run dir, and W&B when `logger=wandb`.

W&B must never cost a run: if it cannot start or fails mid-run, training goes on with a
single warning and the local files stay complete.
"""
from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf


class RunLogger:
    def __init__(self, cfg: DictConfig, out_dir: Path, metrics_offset: int = 0,
                 enabled: bool = True) -> None:
        """`metrics_offset`: bytes of an earlier metrics.jsonl to keep (what a resumed
        checkpoint had seen), so lines logged after that checkpoint are not duplicated.
        `enabled=False` (non-zero ranks under torchrun) logs nothing."""
        self.out_dir = out_dir
        self.run = None
        self.mode = None
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
        lcfg = cfg.get("logger") or {}
        if lcfg.get("backend", "none") == "wandb":
            self._start_wandb(cfg, lcfg)

    def _start_wandb(self, cfg: DictConfig, lcfg: DictConfig) -> None:
        mode = lcfg.get("mode", "auto")
        if mode == "auto":
            mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
        try:
            import wandb

            self.run = wandb.init(
                project=lcfg.get("project", "metalearn"), entity=lcfg.get("entity"),
                name=lcfg.get("name"), group=lcfg.get("group"), tags=list(lcfg.get("tags") or []),
                mode=mode, dir=str(self.out_dir), reinit="finish_previous",
                config=OmegaConf.to_container(cfg, resolve=True), id=lcfg.get("run_id"),
                resume="allow" if lcfg.get("run_id") else None,
                settings=wandb.Settings(silent=True, init_timeout=lcfg.get("init_timeout", 60)))
            self.mode = mode
            self.run.define_metric("val/acc", summary="max")
        except Exception as e:
            self._fail(f"W&B could not start ({type(e).__name__}: {e})")

    def _fail(self, why: str) -> None:
        warnings.warn(f"{why}; training goes on, metrics are still written to "
                      f"{self.metrics_file.name}. Set logger=none to silence this.", stacklevel=3)
        self.run = None

    @property
    def metrics_offset(self) -> int:
        return self.metrics_file.tell() if self.metrics_file is not None else 0

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if self.metrics_file is None:
            return
        self.metrics_file.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.run is not None:
            try:
                self.run.log(metrics, step=step)
            except Exception as e:
                self._fail(f"W&B logging failed ({type(e).__name__}: {e})")

    def summary(self, values: dict[str, Any]) -> None:
        if self.run is not None:
            try:
                self.run.summary.update(values)
            except Exception as e:
                self._fail(f"W&B summary failed ({type(e).__name__}: {e})")

    @property
    def run_id(self) -> str | None:
        return self.run.id if self.run is not None else None

    def finish(self, exit_code: int = 0, preempted: bool = False) -> None:
        if self.metrics_file is not None:
            self.metrics_file.close()
        if self.run is None:
            return
        run_dir = self.run.dir
        try:
            if preempted:  # shown as "preempted" in W&B until the resumed job continues it
                self.run.mark_preempting()
            self.run.finish(exit_code=exit_code)
        except Exception as e:
            warnings.warn(f"W&B finish failed ({type(e).__name__}: {e})", stacklevel=2)
        if self.mode == "offline":
            print(f"W&B run saved offline; upload it with: wandb sync {Path(run_dir).parent}",
                  file=sys.stderr)
        self.run = None
