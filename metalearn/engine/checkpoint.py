"""A training run's checkpoints: what they hold and how a run resumes from them. The file
format (atomic save, a load that runs no code) is `metalearn/checkpoint.py`.

A run directory holds `last.pt` (every `trainer.checkpoint_every` iterations and at each
validation), `last.prev.pt` (the one before it) and `best.pt` (best validation accuracy). Each
holds the full `TrainingState`, RNG streams included, so any of them can resume the run.
Files are read with `torch.load(weights_only=True)`: a checkpoint holds only tensors and plain
containers of str/int/float/bool/None, so a tampered file cannot execute anything.
"""
from __future__ import annotations

import random
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from metalearn.engine import run
from metalearn.engine.distributed import World
from metalearn.io import RESUMABLE
from metalearn.errors import ConfigError

# What TrainingState.state_dict() writes and a resume reads.
TRAINING_KEYS = ("model", "optimizer", "iteration", "best_val_acc", "best_iteration",
                 "skipped_steps", "train_time_s", "wandb_run_id", "metrics_bytes", "config", "rng")


@dataclass
class TrainingState(run.RunState):
    """Everything a run needs to continue bit for bit. `state_dict()` is the only place that
    builds a checkpoint and `load_state_dict()` the only place that reads one. The lr scheduler
    is not part of it: it is a function of `iteration`, rebuilt for the run's (maybe new) length.
    `state_dict()` gathers every rank's RNG streams, so all ranks call it."""

    NAME = "training run"
    FILES = RESUMABLE[:2]  # last.pt, last.prev.pt
    BEST = RESUMABLE[2]
    KEYS = TRAINING_KEYS
    PROGRESS = "iteration"
    # beyond every run's (engine/run.py): how long it runs and how often it reports;
    # `trainer.iterations` is safe because the lr schedule is rebuilt for the new length
    SAFE_KEYS = (*run.SAFE_KEYS, "trainer.iterations", "trainer.eval_every",
                 "trainer.log_every", "trainer.checkpoint_every", "eval")

    model: nn.Module
    optimizer: torch.optim.Optimizer
    generators: dict[str, torch.Generator]
    world: World = field(default_factory=World)
    preprocessing: dict[str, Any] = field(default_factory=dict)  # what metalearn.inference applies
    iteration: int = 0
    best_val_acc: float = -1.0
    best_iteration: int = 0
    skipped_steps: int = 0
    saved_iteration: int | None = None  # what last.pt holds (not saved): what a stop may promise

    def state_dict(self) -> dict[str, Any]:
        return {**self.run_dict(),
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "iteration": self.iteration, "best_val_acc": self.best_val_acc,
                "best_iteration": self.best_iteration, "skipped_steps": self.skipped_steps,
                "train_time_s": self.elapsed(), "preprocessing": self.preprocessing,
                "rng": self.world.gather(rng_state(self.generators))}  # every rank's streams

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Everything but `config`, which `resume_config` read before anything was built."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.iteration, self.best_val_acc = state["iteration"], state["best_val_acc"]
        self.best_iteration, self.skipped_steps = state["best_iteration"], state["skipped_steps"]
        self.load_run_dict(state, time_before_s=state["train_time_s"])
        self.saved_iteration = state["iteration"]
        if len(state["rng"]) == self.world.size:
            restore_rng(state["rng"][self.world.rank], self.generators)
        elif self.world.is_main:
            warnings.warn(f"the checkpoint was written by {len(state['rng'])} processes, this run "
                          f"has {self.world.size}: training continues, with fresh task streams")

    @classmethod
    def check_resume(cls, cfg: DictConfig, state: dict[str, Any]) -> None:
        if cfg.trainer.iterations < state["iteration"]:
            raise ConfigError(f"trainer.iterations={cfg.trainer.iterations} but the checkpoint "
                              f"is at iteration {state['iteration']}: raise trainer.iterations")


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
