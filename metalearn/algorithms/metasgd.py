"""Meta-SGD (Li, Zhou, Chen & Li 2017) through learn2learn's `MetaSGD` wrapper.

MAML whose inner step size is a learned tensor the shape of each parameter (a per-weight lr
and, through its sign, direction), meta-trained with the initialisation.
"""
from __future__ import annotations

import learn2learn as l2l
import torch
import torch.nn.functional as F
from torch import nn

from metalearn.algorithms.base import MetaLearner, TaskMetrics, score_tasks
from metalearn.data.episodes import Episodes


class MetaSGD(MetaLearner):
    def __init__(self, backbone: nn.Module, ways: int, inner_lr: float = 0.4,
                 adaptation_steps: int = 1, test_adaptation_steps: int | None = None,
                 first_order: bool = False) -> None:
        super().__init__()
        self.ways = ways
        model = nn.Sequential(backbone, nn.Linear(backbone.out_features, ways))
        self.meta = l2l.algorithms.MetaSGD(model, lr=inner_lr, first_order=first_order)
        self.adaptation_steps = adaptation_steps
        self.test_adaptation_steps = test_adaptation_steps or adaptation_steps
        self.first_order = first_order

    def _adapt(self, x: torch.Tensor, y: torch.Tensor, steps: int, first_order: bool):
        learner = self.meta.clone()
        for _ in range(steps):
            learner.adapt(F.cross_entropy(learner(x), y), first_order=first_order)
        return learner

    def forward(self, episodes: Episodes) -> TaskMetrics:
        def logits(t: int) -> torch.Tensor:
            learner = self._adapt(episodes.support_x[t], episodes.support_y[t],
                                  self.adaptation_steps, self.first_order)
            return learner(episodes.query_x[t])
        return score_tasks(episodes, logits)

    def evaluate(self, episodes: Episodes) -> TaskMetrics:
        def logits(t: int) -> torch.Tensor:
            with torch.enable_grad():
                learner = self._adapt(episodes.support_x[t], episodes.support_y[t],
                                      self.test_adaptation_steps, first_order=True)
            with torch.no_grad():
                return learner(episodes.query_x[t])
        return score_tasks(episodes, logits)
