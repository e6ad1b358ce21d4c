"""Prototypical Networks (Snell, Swersky & Zemel 2017).

Each class is the mean of its support embeddings (its prototype); a query's logits are its
negative squared Euclidean distances to the prototypes. No inner loop: meta-training is plain
backprop through the embedding, and any number of ways works at test time.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from metalearn.algorithms.base import Classifier, MetaLearner, TaskMetrics, accuracy
from metalearn.data.episodes import Episodes
from metalearn.models.norm import batch_stats


def prototype_logits(support: torch.Tensor, support_y: torch.Tensor, query: torch.Tensor,
                     ways: int) -> torch.Tensor:
    """support [S, D], support_y [S] in 0..ways-1, query [Q, D] -> logits [Q, ways]."""
    onehot = F.one_hot(support_y, ways).to(support.dtype)               # [S, W]
    protos = onehot.t() @ support / onehot.sum(0)[:, None]              # [W, D]
    return -torch.cdist(query, protos).pow(2)


class ProtoNet(MetaLearner):
    def __init__(self, backbone: nn.Module, ways: int) -> None:
        super().__init__()
        self.backbone, self.ways = backbone, ways

    def check_ways(self, ways: int) -> None:
        pass  # prototypes are built per task: no head fixes the number of classes

    def _task(self, sx, sy, qx, qy) -> tuple[torch.Tensor, torch.Tensor]:
        # One backbone pass over support + query per task, as in Snell et al.'s code.
        z = self.backbone(torch.cat([sx, qx]))
        logits = prototype_logits(z[: len(sx)], sy, z[len(sx):], int(sy.max()) + 1)
        return F.cross_entropy(logits, qy), accuracy(logits.detach(), qy)

    def forward(self, episodes: Episodes) -> TaskMetrics:
        out = [self._task(episodes.support_x[t], episodes.support_y[t], episodes.query_x[t],
                          episodes.query_y[t]) for t in range(len(episodes))]
        return TaskMetrics(torch.stack([l for l, _ in out]), torch.stack([a for _, a in out]))

    def evaluate(self, episodes: Episodes) -> TaskMetrics:
        with torch.no_grad():
            m = self(episodes)
        return TaskMetrics(m.loss.detach(), m.acc)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor) -> Classifier:
        stats, ways = [], int(support_y.max()) + 1
        with torch.no_grad(), batch_stats(stats, "record"):
            support = self.backbone(support_x)

        def classify(query_x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad(), batch_stats(stats, "reuse"):
                return prototype_logits(support, support_y, self.backbone(query_x), ways)
        return classify
