"""ANIL, "Almost No Inner Loop" (Raghu, Raghu, Bengio & Vinyals 2020).

MAML where the inner loop adapts only the linear head: the backbone embeds the support and
query images once per task, the head takes the SGD steps on those features, and the backbone
is trained only by the outer (meta) update.

Engines (`algo.engine`, as for MAML): `l2l` adapts a learn2learn `MAML` clone of the head per
task; `batched` embeds every task at once (vmap over tasks, so BN statistics stay per task)
and adapts the heads of all tasks with `functional.adapt_batched`.
"""
from __future__ import annotations

import learn2learn as l2l
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import vmap

from metalearn.algorithms.base import MetaLearner, TaskMetrics, accuracy, score_tasks
from metalearn.algorithms.functional import adapt_batched, sgd_update
from metalearn.algorithms.maml import check_engine, resolve_engine
from metalearn.data.episodes import Episodes


class ANIL(MetaLearner):
    def __init__(self, backbone: nn.Module, ways: int, inner_lr: float = 0.4,
                 adaptation_steps: int = 1, test_adaptation_steps: int | None = None,
                 first_order: bool = False, engine: str = "auto") -> None:
        super().__init__()
        self.ways = ways
        self.engine = check_engine(engine)
        self.backbone = backbone
        self.head = l2l.algorithms.MAML(nn.Linear(backbone.out_features, ways), lr=inner_lr,
                                        first_order=first_order)
        self.adaptation_steps = adaptation_steps
        self.test_adaptation_steps = test_adaptation_steps or adaptation_steps
        self.first_order = first_order

    def engine_for(self, device: torch.device) -> str:
        return resolve_engine(self.engine, device)

    def _logits(self, zs, sy, zq, steps: int, first_order: bool) -> torch.Tensor:
        head = self.head.clone(first_order=first_order)
        for _ in range(steps):
            head.adapt(F.cross_entropy(head(zs), sy), first_order=first_order)
        return head(zq)

    def _batched(self, episodes: Episodes, steps: int, first_order: bool) -> TaskMetrics:
        # support and query in separate calls: each is its own BN batch, as on the l2l engine
        embed = vmap(self.backbone, randomness="different")
        loss, logits = adapt_batched(self.head.module, embed(episodes.support_x),
                                     episodes.support_y, embed(episodes.query_x),
                                     episodes.query_y, steps, sgd_update(self.head.lr),
                                     first_order)
        return TaskMetrics(loss, accuracy(logits.detach(), episodes.query_y))

    def forward(self, episodes: Episodes) -> TaskMetrics:
        if self.engine_for(episodes.support_x.device) == "batched":
            return self._batched(episodes, self.adaptation_steps, self.first_order)

        def logits(t: int) -> torch.Tensor:
            zs, zq = self.backbone(episodes.support_x[t]), self.backbone(episodes.query_x[t])
            return self._logits(zs, episodes.support_y[t], zq, self.adaptation_steps,
                                self.first_order)
        return score_tasks(episodes, logits)

    def evaluate(self, episodes: Episodes) -> TaskMetrics:
        if self.engine_for(episodes.support_x.device) == "batched":
            with torch.no_grad():
                return self._batched(episodes, self.test_adaptation_steps, True)

        def logits(t: int) -> torch.Tensor:
            with torch.no_grad():  # the backbone is fixed at test time: no graph through it
                zs, zq = self.backbone(episodes.support_x[t]), self.backbone(episodes.query_x[t])
            with torch.enable_grad():
                return self._logits(zs, episodes.support_y[t], zq, self.test_adaptation_steps,
                                    True).detach()
        return score_tasks(episodes, logits)
