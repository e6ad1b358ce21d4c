"""MAML (Finn, Abbeel & Levine 2017) through learn2learn's `MAML` wrapper.

The model is backbone + a linear head over `ways` classes; each task clones the wrapper,
takes `adaptation_steps` SGD steps on its support set and is scored on its queries. The
meta-gradient flows through the adaptation (second order) unless `first_order`.
"""
from __future__ import annotations

import learn2learn as l2l
import torch
import torch.nn.functional as F
from torch import nn

from metalearn.algorithms.base import MetaLearner, TaskMetrics, accuracy
from metalearn.data.episodes import Episodes


class MAML(MetaLearner):
    def __init__(self, backbone: nn.Module, ways: int, inner_lr: float = 0.4,
                 adaptation_steps: int = 1, test_adaptation_steps: int | None = None,
                 first_order: bool = False) -> None:
        super().__init__()
        model = nn.Sequential(backbone, nn.Linear(backbone.out_features, ways))
        self.maml = l2l.algorithms.MAML(model, lr=inner_lr, first_order=first_order)
        self.adaptation_steps = adaptation_steps
        self.test_adaptation_steps = test_adaptation_steps or adaptation_steps
        self.first_order = first_order

    @property
    def inner_lr(self) -> float:
        return self.maml.lr

    def _adapt(self, x: torch.Tensor, y: torch.Tensor, steps: int, first_order: bool):
        learner = self.maml.clone(first_order=first_order)
        for _ in range(steps):
            learner.adapt(F.cross_entropy(learner(x), y), first_order=first_order)
        return learner

    def forward(self, episodes: Episodes) -> TaskMetrics:
        losses, accs = [], []
        for t in range(len(episodes)):
            learner = self._adapt(episodes.support_x[t], episodes.support_y[t],
                                  self.adaptation_steps, self.first_order)
            logits = learner(episodes.query_x[t])
            losses.append(F.cross_entropy(logits, episodes.query_y[t]))
            accs.append(accuracy(logits.detach(), episodes.query_y[t]))
        return TaskMetrics(torch.stack(losses), torch.stack(accs))

    def evaluate(self, episodes: Episodes) -> TaskMetrics:
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
