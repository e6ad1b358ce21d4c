"""Test-time fine-tuning of a trained learner's whole embedding on each task's support set
(Chen et al. 2019; Guo et al. 2020, "A Broader Study of Cross-Domain Few-Shot Learning": under
a large domain shift, fine-tuning every layer is the strong baseline).

Wraps any trained `MetaLearner` (`metalearn-eval ... adapter=finetune`): per task, a copy of its
embedding (`learner.embedding()`) gets a cosine head whose class weights start at the support
set's normalised class means (so before any step it is nearest-class-mean on those features),
and both are trained with SGD on the support images, each step on a fresh random shift (and
flip, if asked) of them. Queries are then classified by the fine-tuned copy. Nothing of the
trained learner changes. The schedule and optimiser follow Guo et al.'s fine-tuning baseline:
SGD, lr 0.01, momentum 0.9, weight decay 0.001, 100 steps.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from metalearn.algorithms.base import Classifier, MetaLearner, TaskMetrics, accuracy
from metalearn.data.episodes import Episodes
from metalearn.errors import ConfigError
from metalearn.models.norm import batch_stats

AUGMENTS = ("none", "shift", "shift_flip")


def class_means(z: torch.Tensor, y: torch.Tensor, ways: int) -> torch.Tensor:
    """[ways, D]: the mean of the rows of `z` of each label 0..ways-1."""
    return torch.stack([z[y == c].mean(0) for c in range(ways)])


def augmented(x: torch.Tensor, how: str, g: torch.Generator, pad: int = 2) -> torch.Tensor:
    """`x` [N, C, H, W] shifted by up to `pad` pixels (zero padding), each image its own shift;
    flipped left-right at random with `shift_flip`."""
    if how == "none":
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy, dx = (torch.randint(0, 2 * pad + 1, (n,), generator=g).tolist() for _ in range(2))
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    if how == "shift_flip":
        flip = torch.rand(n, generator=g) < 0.5
        out = torch.where(flip.view(-1, 1, 1, 1).to(out.device), out.flip(-1), out)
    return out


class FineTune(MetaLearner):
    name = "finetune"

    def __init__(self, learner: MetaLearner, steps: int = 100, lr: float = 0.01,
                 momentum: float = 0.9, weight_decay: float = 0.001, augment: str = "shift",
                 scale: float = 10.0, seed: int = 0) -> None:
        super().__init__()
        if augment not in AUGMENTS:
            raise ConfigError(f"adapter.augment={augment!r}: choose one of {', '.join(AUGMENTS)}")
        self.learner, self.ways = learner, learner.ways
        self.steps, self.lr, self.momentum, self.weight_decay = steps, lr, momentum, weight_decay
        self.augment, self.scale, self.seed = augment, scale, seed

    def check_ways(self, ways: int) -> None:
        pass  # a new head per task: any number of classes

    def forward(self, episodes: Episodes) -> TaskMetrics:
        raise ConfigError(f"adapter={self.name} adapts a trained learner at test time; it does "
                          "not meta-train (use it with metalearn-eval on a saved run)")

    def _tune(self, sx: torch.Tensor, sy: torch.Tensor, g: torch.Generator,
              qx: torch.Tensor | None = None) -> tuple[nn.Module, torch.Tensor]:
        """A fine-tuned copy of the embedding and its cosine head's weights [ways, D]; `qx`, the
        task's unlabeled queries where known, goes to `_loss`."""
        # eval mode throughout, as every learner adapts at test time: batch-statistics BN is the
        # same in both modes, and training-only layers (dropout, FWT's noise) stay off
        net = copy.deepcopy(self.learner.embedding()).eval()
        ways = int(sy.max()) + 1
        with torch.no_grad():
            z = F.normalize(net(sx), dim=-1)
            weight = class_means(z, sy, ways)
        weight = nn.Parameter(weight)
        params = [*net.parameters(), weight]
        opt = torch.optim.SGD(params, lr=self.lr, momentum=self.momentum,
                              weight_decay=self.weight_decay)
        with torch.enable_grad():
            for _ in range(self.steps):
                logits = self._logits(net(augmented(sx, self.augment, g)), weight)
                loss = self._loss(logits, sy, net, weight, qx)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        return net, weight.detach()

    def _loss(self, logits: torch.Tensor, sy: torch.Tensor, net: nn.Module,
              weight: torch.Tensor, qx: torch.Tensor | None) -> torch.Tensor:
        """One step's objective from the support logits; the queries are unused here (a
        transductive adapter adds a term on them, algorithms/transductive.py)."""
        return F.cross_entropy(logits, sy)

    def _logits(self, z: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(z, dim=-1) @ F.normalize(weight, dim=-1).t()

    def evaluate(self, episodes: Episodes) -> TaskMetrics:
        g = torch.Generator().manual_seed(self.seed)
        losses, accs = [], []
        for t in range(len(episodes)):
            net, weight = self._tune(episodes.support_x[t], episodes.support_y[t], g,
                                     episodes.query_x[t])
            with torch.no_grad():  # queries with their own batch statistics, as MAML's test
                logits = self._logits(net(episodes.query_x[t]), weight)
            losses.append(F.cross_entropy(logits, episodes.query_y[t]))
            accs.append(accuracy(logits, episodes.query_y[t]))
        return TaskMetrics(torch.stack(losses), torch.stack(accs))

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor) -> Classifier:
        net, weight = self._tune(support_x, support_y, torch.Generator().manual_seed(self.seed))
        stats: list = []
        with torch.no_grad(), batch_stats(stats, "record"):
            net(support_x)

        def classify(query_x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad(), batch_stats(stats, "reuse"):
                return self._logits(net(query_x), weight)
        return classify
