"""What every meta-learner offers the training loop and the inference API.

A meta-learner owns its model, takes a batch of tasks and returns each task's query loss and
accuracy, plus the objective the loop back-propagates when that is not the loss (Reptile's
update is no loss's gradient). It knows nothing of files, loggers or devices: the loop moves
data and the module. `adapt` is the prediction side: one task's labelled support set in, a
classifier of query images out. Adding an algorithm is one file here plus one YAML in
metalearn/configs/algorithm/.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import nn

from metalearn.data.episodes import EpisodeSampler, Episodes
from metalearn.errors import ConfigError


class TaskMetrics(NamedTuple):
    loss: torch.Tensor  # [B] query loss per task, as reported
    acc: torch.Tensor   # [B] query accuracy per task
    # [B] what `forward`'s caller back-propagates (summed over tasks, scaled to their mean);
    # None: the loss itself, differentiable in `forward`
    objective: torch.Tensor | None = None

    @property
    def to_minimise(self) -> torch.Tensor:
        return self.loss if self.objective is None else self.objective


# query images [Q, C, H, W] -> logits [Q, ways], each query's row independent of the others
Classifier = Callable[[torch.Tensor], torch.Tensor]


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(-1) == labels).float().mean(-1)


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

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor) -> Classifier:
        """Prediction: adapt as at test time to one task's support set (images [S, C, H, W],
        labels [S] in 0..n-1) and return its classifier of query images.

        BatchNorm normalises the queries with the support set's statistics
        (`models.norm.batch_stats`), so a query's prediction does not depend on which other
        queries it is classified with.
        """
        raise NotImplementedError

    def embedding(self) -> nn.Module:
        """The network that maps images to features (what test-time fine-tuning trains)."""
        return self.backbone

    def on_iteration(self, iteration: int) -> None:
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
