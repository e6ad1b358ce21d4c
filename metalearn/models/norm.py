"""Batch-statistics BatchNorm written with primitive ops.

MAML-style meta-learners normalise with the statistics of the batch at hand, in training and
at test time alike (Finn et al. 2017), so no running statistics are kept. Written with
mean/var/rsqrt instead of `F.batch_norm` because the latter's vmap batching rule gives silently
wrong second-order gradients (pytorch/functorch#534); this form is exact under vmap, so every
engine computes the same function.
"""
from __future__ import annotations

import torch
from torch import nn


class BatchNorm2d(nn.Module):
    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        self.num_features, self.eps = num_features, eps
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        var = (x - mean).pow(2).mean(dim=(0, 2, 3), keepdim=True)
        y = (x - mean) * torch.rsqrt(var + self.eps)
        if self.weight is not None:
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return y

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"
