"""Transfer-learning baselines: Baseline and Baseline++ (Chen et al. 2019, "A Closer Look at
Few-shot Classification").

Training is ordinary supervised learning, not episodes: batches of training images with their
global class labels (`training_batch` asks the sampler for them), through the backbone and a
`num_classes`-way head. At test time that head is dropped; for each task a new `ways`-way head
is fitted on the support set only, with the backbone frozen, and classifies the query:
`head=linear` is Baseline, `head=cosine` is Baseline++ (class weights with a learned norm per
class, as torch's weight norm, times cosine-normalised features and a scale factor).

The test-time fit is the authors' code (CloserLookFewShot, methods/baselinefinetune.py): SGD,
lr 0.01, momentum 0.9, dampening 0.9, weight decay 0.001, 100 passes over the support set in
shuffled mini-batches of 4. All tasks of an evaluation batch are fitted at once: each head is
its own slice of one [B, ways, D] tensor, and SGD is elementwise, so this is B separate fits.
Features of a task's support and query come from one backbone pass (as ProtoNet here), since
the backbone's batch norm normalises with the statistics of the batch at hand; query labels
are never read before scoring.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from metalearn.algorithms.base import Classifier, MetaLearner, TaskMetrics, accuracy
from metalearn.data.episodes import EpisodeSampler, Episodes
from metalearn.errors import ConfigError
from metalearn.models.norm import batch_stats

HEADS = ("linear", "cosine")


def chen_scale(classes: int) -> float:
    # the authors' distLinear: 2 up to 200 classes, 10 above (Omniglot's thousands of classes)
    return 2.0 if classes <= 200 else 10.0


def head_logits(z: torch.Tensor, weight: torch.Tensor, extra: torch.Tensor, head: str,
                scale: float) -> torch.Tensor:
    """z [..., N, D] with heads weight [..., W, D] -> logits [..., N, W].

    linear: extra is the bias [..., W]; cosine: extra is the per-class norm g [..., W], the
    weight is g * v / |v| (weight norm) and features are L2-normalised.
    """
    if head == "linear":
        return z @ weight.transpose(-1, -2) + extra[..., None, :]
    w = extra[..., None] * weight / weight.norm(dim=-1, keepdim=True)
    z = z / (z.norm(dim=-1, keepdim=True) + 1e-5)
    return scale * (z @ w.transpose(-1, -2))


def init_head(shape: tuple[int, ...], head: str, generator: torch.Generator | None = None,
              device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """nn.Linear's default init (uniform within 1/sqrt(D)); weight norm's g starts at |v|."""
    bound = 1 / math.sqrt(shape[-1])
    weight = (torch.rand(shape, generator=generator, device=device) * 2 - 1) * bound
    if head == "linear":
        extra = (torch.rand(shape[:-1], generator=generator, device=device) * 2 - 1) * bound
    else:
        extra = weight.norm(dim=-1)
    return weight, extra


class Baseline(MetaLearner):
    def __init__(self, backbone: nn.Module, ways: int, num_classes: int | None, head: str = "linear",
                 scale: float | None = None, finetune_epochs: int = 100,
                 finetune_batch_size: int = 4, finetune_lr: float = 0.01,
                 finetune_momentum: float = 0.9, finetune_dampening: float = 0.9,
                 finetune_weight_decay: float = 0.001, finetune_seed: int = 0) -> None:
        super().__init__()
        if head not in HEADS:
            raise ConfigError(f"algo.head={head!r}: choose linear (Baseline) or cosine (Baseline++)")
        if num_classes is None or num_classes < 2:
            raise ConfigError(f"algo.num_classes={num_classes}: the pre-training head needs the "
                              f"number of training classes (null = the training split's)")
        self.backbone, self.ways, self.num_classes, self.head = backbone, ways, num_classes, head
        self.scale = scale
        weight, extra = init_head((num_classes, backbone.out_features), head)
        self.weight, self.extra = nn.Parameter(weight), nn.Parameter(extra)
        self.finetune_epochs, self.finetune_batch_size = finetune_epochs, finetune_batch_size
        self.finetune_sgd = {"lr": finetune_lr, "momentum": finetune_momentum,
                             "dampening": finetune_dampening,
                             "weight_decay": finetune_weight_decay}
        self.finetune_seed = finetune_seed

    def check_ways(self, ways: int) -> None:
        pass  # each task gets a new head of its own ways

    def training_batch(self, sampler: EpisodeSampler, n: int) -> Episodes:
        """n training images with global labels, each one "task" of one support image."""
        if sampler.split.num_classes > self.num_classes:
            raise ConfigError(f"algo.num_classes={self.num_classes} but the training split has "
                              f"{sampler.split.num_classes} classes: raise it or set it to null")
        x, y = sampler.sample_images(n)
        return Episodes(x[:, None], y[:, None], x[:, None][:, :0], y[:, None][:, :0])

    def _scale(self, classes: int) -> float:
        return self.scale if self.scale is not None else chen_scale(classes)

    def forward(self, episodes: Episodes) -> TaskMetrics:
        """Supervised loss of each task's support images under the global-class head."""
        b, s = episodes.support_y.shape
        z = self.backbone(episodes.support_x.flatten(0, 1))
        logits = head_logits(z, self.weight, self.extra, self.head, self._scale(self.num_classes))
        y = episodes.support_y.flatten()
        loss = F.cross_entropy(logits, y, reduction="none").view(b, s).mean(1)
        acc = (logits.detach().argmax(-1) == y).float().view(b, s).mean(1)
        return TaskMetrics(loss, acc)

    def fit_heads(self, zs: torch.Tensor, ys: torch.Tensor,
                  ways: int) -> tuple[torch.Tensor, torch.Tensor]:
        """New heads [B, ways, D] fitted on support features zs [B, S, D] with labels ys [B, S]."""
        b, s, d = zs.shape
        # seeded per call: a task's result does not depend on what was evaluated before it
        g = torch.Generator(device=zs.device).manual_seed(self.finetune_seed)
        weight, extra = (t.requires_grad_() for t in init_head((b, ways, d), self.head, g, zs.device))
        opt = torch.optim.SGD([weight, extra], **self.finetune_sgd)
        scale = self._scale(ways)
        with torch.enable_grad():
            for _ in range(self.finetune_epochs):
                order = torch.rand(b, s, generator=g, device=zs.device).argsort(1)
                for i in range(0, s, self.finetune_batch_size):
                    idx = order[:, i : i + self.finetune_batch_size]
                    z = zs.gather(1, idx[..., None].expand(-1, -1, d))
                    logits = head_logits(z, weight, extra, self.head, scale)
                    # sum over tasks of each task's mean loss: every head gets its own gradient
                    loss = F.cross_entropy(logits.flatten(0, 1), ys.gather(1, idx).flatten(),
                                           reduction="none").view(b, -1).mean(1).sum()
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
        return weight.detach(), extra.detach()

    def query_logits(self, episodes: Episodes) -> torch.Tensor:
        """[B, Q, ways] logits of each task's query from a head fitted on its support only."""
        with torch.no_grad():
            feats = [self.backbone(torch.cat([sx, qx]))
                     for sx, qx in zip(episodes.support_x, episodes.query_x)]
        s = episodes.support_x.shape[1]
        zs = torch.stack([f[:s] for f in feats])
        zq = torch.stack([f[s:] for f in feats])
        ways = int(episodes.support_y.max()) + 1
        weight, extra = self.fit_heads(zs, episodes.support_y, ways)
        return head_logits(zq, weight, extra, self.head, self._scale(ways))

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor) -> Classifier:
        """A head fitted on the support features; queries normalised with the support set's
        BatchNorm statistics, so each prediction is independent of the other queries."""
        stats, ways = [], int(support_y.max()) + 1
        with torch.no_grad(), batch_stats(stats, "record"):
            support = self.backbone(support_x)
        weight, extra = self.fit_heads(support[None], support_y[None], ways)

        def classify(query_x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad(), batch_stats(stats, "reuse"):
                zq = self.backbone(query_x)
            return head_logits(zq[None], weight, extra, self.head, self._scale(ways))[0]
        return classify

    def evaluate(self, episodes: Episodes) -> TaskMetrics:
        logits = self.query_logits(episodes)
        loss = F.cross_entropy(logits.transpose(1, 2), episodes.query_y, reduction="none").mean(1)
        return TaskMetrics(loss, accuracy(logits, episodes.query_y))
