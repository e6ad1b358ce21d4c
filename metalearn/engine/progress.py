"""Training progress for people and for cluster logs.

On a terminal: a tqdm bar, with the log lines printed above it. Anywhere else (SLURM, `> file`):
no bar, whose `\\r` redraws would fill the log, only log lines. Either way the lines go through
Python `logging`, which Hydra's `job_logging` sends to the console and to `<run dir>/train.log`:
the run's setting, a training line every few `trainer.log_every` iterations (thinned to at most
`MAX_LINES` per run, so a 60k-iteration run's log stays small), every validation and the result.
"""
from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from pathlib import Path
from typing import Iterator

from omegaconf import DictConfig
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from metalearn import threads

log = logging.getLogger("metalearn.train")

MAX_LINES = 200  # training lines per run, whatever its length


def line_every(iterations: int, log_every: int) -> int:
    """Iterations between training lines: a multiple of `log_every`, at most MAX_LINES lines."""
    log_every = max(1, log_every)
    return log_every * max(1, math.ceil(iterations / log_every / MAX_LINES))


def describe(cfg: DictConfig) -> str:
    """One line naming what runs: algorithm, data, task, budget and device."""
    t, tc = cfg.task, cfg.trainer
    name = lambda node: str(node.get("_target_", "?")).rsplit(".", 1)[-1]  # noqa: E731
    return (f"{name(cfg.algo)} on {name(cfg.dataset)} with {name(cfg.backbone)}, "
            f"{t.ways}-way {t.shots}-shot ({t.query} queries), {tc.iterations} iterations of "
            f"{tc.meta_batch_size} tasks, {name(cfg.optimizer)} lr {cfg.optimizer.get('lr')}, "
            f"device {cfg.device}, seed {cfg.seed}, {threads.summary()}")


class Progress:
    """Iterates over a run's iterations like `tqdm`, reporting as fits where output goes.

    The loop uses it as it used tqdm (`for it in bar`, `bar.set_postfix(...)`, `bar.close()`),
    plus `bar.validation(it, metrics)`.
    """

    def __init__(self, cfg: DictConfig, out_dir: Path, first: int, enabled: bool = True,
                 terminal: bool | None = None):
        self.first, self.total = first, cfg.trainer.iterations
        self.every = line_every(self.total, cfg.trainer.log_every)
        self.enabled = enabled
        self.terminal = sys.stderr.isatty() if terminal is None else terminal
        self.postfix: dict[str, str] = {}
        self._start = time.time()
        if enabled:
            log.info("run: %s", describe(cfg))
            log.info("writing to %s%s", Path(out_dir).resolve(),
                     f" (resuming at iteration {first})" if first > 1 else "")

    def __iter__(self) -> Iterator[int]:
        steps = range(self.first, self.total + 1)
        bar = tqdm(steps, desc="meta-train", dynamic_ncols=True, initial=self.first - 1,
                   total=self.total, disable=not (self.enabled and self.terminal))
        self._bar = bar
        redirect = logging_redirect_tqdm() if self.terminal else contextlib.nullcontext()
        with redirect:
            for it in bar:
                yield it
                if self.enabled and (it % self.every == 0 or it in (1, self.total)):
                    self._line(it)
        bar.close()

    def set_postfix(self, **values: str) -> None:
        self.postfix = values
        if self.terminal and self.enabled:
            self._bar.set_postfix(values, refresh=False)

    def validation(self, it: int, metrics: dict[str, float]) -> None:
        if self.enabled:
            log.info("iteration %d/%d validation: %s", it, self.total,
                     " ".join(f"{k.split('/')[-1]} {v:.4f}" for k, v in metrics.items()))

    def close(self) -> None:
        pass  # the bar closes when the iteration ends; kept so the loop reads as with tqdm

    def _line(self, it: int) -> None:
        done = it - self.first + 1
        rate = done / max(time.time() - self._start, 1e-9)
        eta = (self.total - it) / rate
        log.info("iteration %d/%d %s | %.2f it/s, %s left", it, self.total,
                 " ".join(f"{k} {v}" for k, v in self.postfix.items()), rate,
                 time.strftime("%H:%M:%S", time.gmtime(eta)) if eta < 86400 else f"{eta / 3600:.0f} h")
