"""MAML (Finn, Abbeel & Levine 2017), with two engines that compute the same thing.

The model is backbone + a linear head over `ways` classes; each task takes
`adaptation_steps` SGD steps on its support set and is scored on its queries. The
meta-gradient flows through the adaptation (second order) unless `first_order`.

Engines (`algo.engine`):
  * `l2l`: learn2learn's `MAML` wrapper, one `clone()`/`adapt()` per task: the reference.
  * `batched`: all tasks at once with torch.func (`algorithms/functional.py`); same
    meta-gradient to float64 round-off, several times faster on a GPU.
  * `auto`: `batched` on CUDA; on CPU `CPU_ENGINE` (see there).
Subclasses (Meta-SGD, ANIL, MAML++) reuse the batched engine by overriding `inner_update`
and/or `adapts`.
"""
from __future__ import annotations

import learn2learn as l2l
import torch
import torch.nn.functional as F
from torch import nn

from metalearn.algorithms.base import MetaLearner, TaskMetrics, accuracy
from metalearn.algorithms.functional import Params, adapt_batched
from metalearn.data.episodes import Episodes
from metalearn.errors import ConfigError

ENGINES = ("auto", "batched", "l2l")
# On a CPU, time goes to convolutions and vmap buys little: ENGINEERING.md §4 measured 0.8-1.1x
# at full sizes; scripts/benchmark.py --small measured 1.5-2.8x on tiny nets (docs/performance.md).
# Kept on learn2learn's engine until a full-size CPU measurement settles it: float32 training
# trajectories of the two engines differ chaotically, and the CPU learning tests are tuned on l2l.
CPU_ENGINE = "l2l"


class MAML(MetaLearner):
    def __init__(self, backbone: nn.Module, ways: int, inner_lr: float = 0.4,
                 adaptation_steps: int = 1, test_adaptation_steps: int | None = None,
                 first_order: bool = False, engine: str = "auto") -> None:
        super().__init__()
        if engine not in ENGINES:
            raise ConfigError(f"algo.engine={engine!r}: choose one of {', '.join(ENGINES)}")
        model = nn.Sequential(backbone, nn.Linear(backbone.out_features, ways))
        self.maml = l2l.algorithms.MAML(model, lr=inner_lr, first_order=first_order)
        self.adaptation_steps = adaptation_steps
        self.test_adaptation_steps = test_adaptation_steps or adaptation_steps
        self.first_order = first_order
        self.engine = engine

    @property
    def inner_lr(self) -> float:
        return self.maml.lr

    @property
    def model(self) -> nn.Module:
        """The network whose parameters adapt (the batched engine calls it functionally)."""
        return self.maml.module

    def engine_for(self, device: torch.device) -> str:
        if self.engine != "auto":
            return self.engine
        return "batched" if device.type == "cuda" else CPU_ENGINE

    # --- hooks of the batched engine (override in MAML-family subclasses) ---
    def inner_update(self, step: int, fast: Params, grads: Params) -> Params:
        """One inner SGD step on the fast weights; `step` counts from 0."""
        return {n: p - self.inner_lr * grads[n] for n, p in fast.items()}

    def adapts(self, name: str) -> bool:
        """Whether parameter `name` of `self.model` adapts in the inner loop."""
        return True

    def _batched(self, episodes: Episodes, steps: int, first_order: bool):
        return adapt_batched(self.model, episodes.support_x, episodes.support_y,
                             episodes.query_x, episodes.query_y, steps, self.inner_update,
                             first_order, self.adapts)

    # --- learn2learn engine ---
    def _adapt(self, x: torch.Tensor, y: torch.Tensor, steps: int, first_order: bool):
        learner = self.maml.clone(first_order=first_order)
        for _ in range(steps):
            learner.adapt(F.cross_entropy(learner(x), y), first_order=first_order)
        return learner

    def forward(self, episodes: Episodes) -> TaskMetrics:
        if self.engine_for(episodes.support_x.device) == "batched":
            loss, logits = self._batched(episodes, self.adaptation_steps, self.first_order)
            return TaskMetrics(loss, accuracy(logits.detach(), episodes.query_y))
        losses, accs = [], []
        for t in range(len(episodes)):
            learner = self._adapt(episodes.support_x[t], episodes.support_y[t],
                                  self.adaptation_steps, self.first_order)
            logits = learner(episodes.query_x[t])
            losses.append(F.cross_entropy(logits, episodes.query_y[t]))
            accs.append(accuracy(logits.detach(), episodes.query_y[t]))
        return TaskMetrics(torch.stack(losses), torch.stack(accs))

    def evaluate(self, episodes: Episodes) -> TaskMetrics:
        if self.engine_for(episodes.support_x.device) == "batched":
            with torch.no_grad():
                loss, logits = self._batched(episodes, self.test_adaptation_steps, True)
            return TaskMetrics(loss, accuracy(logits, episodes.query_y))
        losses, accs = [], []
        for t in range(len(episodes)):
            with torch.enable_grad():
                learner = self._adapt(episodes.support_x[t], episodes.support_y[t],
                                      self.test_adaptation_steps, first_order=True)
            with torch.no_grad():
                logits = learner(episodes.query_x[t])
                losses.append(F.cross_entropy(logits, episodes.query_y[t]))
                accs.append(accuracy(logits, episodes.query_y[t]))
        return TaskMetrics(torch.stack(losses), torch.stack(accs))
