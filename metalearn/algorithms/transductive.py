"""Transductive fine-tuning (Dhillon et al. 2020, "A Baseline for Few-Shot Image
Classification"): the fine-tuning adapter (algorithms/finetune.py) whose per-step objective also
uses the task's unlabeled queries.

Each step's loss is the support set's cross-entropy plus `entropy_weight` (1, as in the paper)
times the mean Shannon entropy of the cosine head's predictions on the queries. Lowering that
entropy moves the decision boundaries away from the queries (low-density separation), so the
queries of the task shape the fine-tuning although their labels are never seen. Everything else
is the finetune adapter's, shared by subclassing: the per-task copy of the embedding, the cosine
head initialised at the support set's normalised class means, the SGD schedule, the shifted
support images, and the queries classified with their own batch statistics. The query batch of a
step is a forward pass of its own (the queries unshifted: they are the images to be classified),
so support and query statistics never mix in one BatchNorm batch. With `entropy_weight=0` it is
adapter=finetune exactly, and no query pass is made.

Where this departs from the paper, and why:
- Schedule: the paper fine-tunes a cross-entropy-pre-trained WRN-28-10 for 25 epochs with Adam
  at lr 5e-5; here the finetune adapter's SGD schedule (100 steps, lr 0.01), so that the entropy
  term is the only difference from adapter=finetune, and a small Conv4 trained on another
  domain moves measurably.
- Head: the paper's logits are w.z/|z| with unnormalised weights, after removing the backbone's
  last ReLU; here the finetune adapter's scaled cosine head on the embedding as it is.
- Augmentation: the support images are shifted anew each step, as in adapter=finetune.
- Cost: each step also runs the query batch forward and backward, several times a 1-shot step's
  work.

Prediction (`adapt`, the metalearn predict API) is plain fine-tuning on the support set, the
finetune adapter's: it is not transductive. The predict API's contract (MetaLearner.adapt) is
that a query's prediction does not depend on which other queries it is classified with, and
inference.py classifies in batches of `batch_size`; an entropy step inside `classify` would make
each prediction depend on that batching (and redo the fine-tuning per call). The transductive
scores are `evaluate`'s, where a task's whole query set is known.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from metalearn.algorithms.base import MetaLearner
from metalearn.algorithms.finetune import FineTune
from metalearn.errors import ConfigError


def mean_entropy(logits: torch.Tensor) -> torch.Tensor:
    """The mean over rows of the Shannon entropy (nats) of softmax(`logits`)."""
    logp = F.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1).mean()


class TransductiveFineTune(FineTune):
    name = "transductive"

    def __init__(self, learner: MetaLearner, entropy_weight: float = 1.0, steps: int = 100,
                 lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 0.001,
                 augment: str = "shift", scale: float = 10.0, seed: int = 0) -> None:
        super().__init__(learner, steps=steps, lr=lr, momentum=momentum,
                         weight_decay=weight_decay, augment=augment, scale=scale, seed=seed)
        if not entropy_weight >= 0:
            raise ConfigError(f"adapter.entropy_weight={entropy_weight}: must be >= 0")
        self.entropy_weight = entropy_weight

    def _loss(self, logits: torch.Tensor, sy: torch.Tensor, net: nn.Module,
              weight: torch.Tensor, qx: torch.Tensor | None) -> torch.Tensor:
        loss = super()._loss(logits, sy, net, weight, qx)
        if qx is None or self.entropy_weight == 0:  # adapt(): no queries to use
            return loss
        return loss + self.entropy_weight * mean_entropy(self._logits(net(qx), weight))
