"""Meta-SGD (Li, Zhou, Chen & Li 2017).

MAML whose inner step size is a learned tensor the shape of each parameter (a per-weight lr
and, through its sign, direction), meta-trained with the initialisation from `inner_lr`. Both
engines run it: only `step_lr` differs from MAML (learn2learn's `MetaSGD` update).
"""
from __future__ import annotations

import torch
from torch import nn

from metalearn.algorithms.maml import MAML


class MetaSGD(MAML):
    # checkpoints from before the shared base hold learn2learn's MetaSGD wrapper
    renamed_keys = {"meta.module.": "model.", "meta.lrs.": "lrs."}

    def __init__(self, backbone: nn.Module, ways: int, inner_lr: float = 0.4,
                 adaptation_steps: int = 1, test_adaptation_steps: int | None = None,
                 first_order: bool = False, engine: str = "auto") -> None:
        super().__init__(backbone, ways, inner_lr, adaptation_steps, test_adaptation_steps,
                         first_order, engine=engine)
        self.lrs = nn.ParameterList([nn.Parameter(torch.full_like(p, self.inner_lr))
                                     for p in self.model.parameters()])

    def step_lr(self, name: str, step: int) -> torch.Tensor:
        return self.lrs[self.param_index[name]]
