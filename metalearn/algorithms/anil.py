"""ANIL, "Almost No Inner Loop" (Raghu, Raghu, Bengio & Vinyals 2020).

MAML where the inner loop adapts only the linear head: the backbone embeds the support and
query images once per task (the base's `features` hook), the head takes the SGD steps on
those features, and the backbone is trained only by the outer (meta) update. Both engines
are the base's: per task on `l2l`, all tasks' embeddings and heads at once on `batched`.
"""
from __future__ import annotations

import torch
from torch import nn

from metalearn.algorithms.gbml import GBML


class ANIL(GBML):
    # checkpoints from before the shared base hold learn2learn's wrapper around the head
    renamed_keys = {"head.module.": "model."}

    def __init__(self, backbone: nn.Module, ways: int, inner_lr: float = 0.4,
                 adaptation_steps: int = 1, test_adaptation_steps: int | None = None,
                 first_order: bool = False, engine: str = "auto") -> None:
        super().__init__(ways, inner_lr, adaptation_steps, test_adaptation_steps, first_order,
                         engine)
        self.backbone = backbone
        self.model = nn.Linear(backbone.out_features, ways)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)
