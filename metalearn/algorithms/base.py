"""What every meta-learner offers the training loop.

A meta-learner owns its model, takes a batch of tasks and returns each task's query loss and
accuracy. It knows nothing of files, loggers or devices: the loop moves data and the module.
Adding an algorithm is one file here plus one YAML in metalearn/configs/algorithm/.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from metalearn.data.episodes import EpisodeSampler, Episodes
from metalearn.errors import ConfigError


class TaskMetrics(NamedTuple):
    loss: torch.Tensor  # [B] query loss per task (differentiable in `forward`)
    acc: torch.Tensor   # [B] query accuracy per task


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(-1) == labels).float().mean(-1)


def score_tasks(episodes: Episodes, query_logits) -> TaskMetrics:
    """Per-task query loss and accuracy, `query_logits(t)` giving task t's query logits."""
    losses, accs = [], []
    for t in range(len(episodes)):
        logits, labels = query_logits(t), episodes.query_y[t]
        losses.append(F.cross_entropy(logits, labels))
        accs.append(accuracy(logits.detach(), labels))
    return TaskMetrics(torch.stack(losses), torch.stack(accs))


class MetaLearner(nn.Module):
    ways: int  # the ways it was built for

    def forward(self, episodes: Episodes) -> TaskMetrics:
        """Meta-training: query metrics whose loss carries the meta-gradient."""
        raise NotImplementedError

    def evaluate(self, episodes: Episodes) -> TaskMetrics:
        """Meta-testing: adapt as at test time; returns detached metrics."""
        raise NotImplementedError

    def training_batch(self, sampler: EpisodeSampler, n: int) -> Episodes:
        """What one training step learns from: n episodes; transfer learners draw images."""
        return sampler.sample(n)

    def on_iteration(self, iteration: int, total: int) -> None:
        """Hook for schedules that depend on training progress (e.g. MAML++ annealing)."""

    def check_ways(self, ways: int) -> None:
        """Raise ConfigError unless this learner can classify `ways`-way tasks.

        A learner with a `ways`-output head (the MAML family) can only do the ways it was built
        for; metric and sequence learners override this.
        """
        if ways != self.ways:
            raise ConfigError(
                f"{type(self).__name__} has a {self.ways}-way output head, so it cannot run "
                f"{ways}-way tasks: use task.ways={self.ways} (and no other task.train_ways)")
