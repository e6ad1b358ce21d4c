"""Meta-SGD (Li, Zhou, Chen & Li 2017) through learn2learn's `MetaSGD` wrapper.

MAML whose inner step size is a learned tensor the shape of each parameter (a per-weight lr
and, through its sign, direction), meta-trained with the initialisation. Both of MAML's
engines run it (`algo.engine`): only the wrapper the l2l engine clones and the lr of the
batched engine's inner step differ.
"""
from __future__ import annotations

import learn2learn as l2l
import torch
from torch import nn

from metalearn.algorithms.maml import MAML


class MetaSGD(MAML):
    def __init__(self, backbone: nn.Module, ways: int, inner_lr: float = 0.4,
                 adaptation_steps: int = 1, test_adaptation_steps: int | None = None,
                 first_order: bool = False, engine: str = "auto") -> None:
        super().__init__(backbone, ways, inner_lr, adaptation_steps, test_adaptation_steps,
                         first_order, engine=engine)
        # Same network, learn2learn's MetaSGD around it; `meta` keeps checkpoint keys stable.
        self.meta = l2l.algorithms.MetaSGD(self.maml.module, lr=inner_lr, first_order=first_order)
        del self.maml

    @property
    def wrapper(self) -> nn.Module:
        return self.meta

    def step_lr(self, name: str, step: int) -> torch.Tensor:
        return self.meta.lrs[self.param_index[name]]
