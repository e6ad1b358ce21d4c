"""Batch-statistics BatchNorm written with primitive ops.

MAML-style meta-learners normalise with the statistics of the batch at hand, in training and
at test time alike (Finn et al. 2017), so no running statistics are kept. Written with
mean/var/rsqrt instead of `F.batch_norm` because the latter's vmap batching rule gives silently
wrong second-order gradients (pytorch/functorch#534); this form is exact under vmap, so every
engine computes the same function.

MAML++ (Antoniou et al. 2019) gives each inner-loop step its own BN weights and biases:
`per_step(n)` turns weight/bias into [n, C] tables and the row used is the step set by the
learner with `inner_step(i)`. A context variable keeps the step out of every backbone's
`forward` signature, so any backbone built from this layer gets per-step BN for free.
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

import torch
from torch import nn

_STEP: ContextVar[int] = ContextVar("inner_step", default=0)
_STATS: ContextVar[tuple[str, list] | None] = ContextVar("batch_stats", default=None)


@contextmanager
def inner_step(step: int) -> Iterator[None]:
    """Forward passes inside use the per-step BN parameters of `step` (clamped to the last)."""
    token = _STEP.set(step)
    try:
        yield
    finally:
        _STEP.reset(token)


@contextmanager
def batch_stats(stats: list, mode: str) -> Iterator[None]:
    """`record`: each BatchNorm2d forward inside appends its batch (mean, var) to `stats`;
    `reuse`: the forwards inside normalise with those instead, layer by layer in the same
    order (prediction: queries normalised with the support set's statistics)."""
    token = _STATS.set((mode, stats if mode == "record" else stats[::-1]))
    try:
        yield
    finally:
        _STATS.reset(token)


class BatchNorm2d(nn.Module):
    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        self.num_features, self.eps = num_features, eps
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frozen = _STATS.get()
        if frozen is not None and frozen[0] == "reuse":
            mean, var = frozen[1].pop()
        else:
            mean = x.mean(dim=(0, 2, 3), keepdim=True)
            var = (x - mean).pow(2).mean(dim=(0, 2, 3), keepdim=True)
            if frozen is not None:
                frozen[1].append((mean, var))
        y = (x - mean) * torch.rsqrt(var + self.eps)
        if self.weight is not None:
            w, b = self.weight, self.bias
            if w.dim() == 2:  # per-step tables
                step = min(_STEP.get(), w.shape[0] - 1)
                w, b = w[step], b[step]
            y = y * w.view(1, -1, 1, 1) + b.view(1, -1, 1, 1)
        return y

    def per_step(self, steps: int) -> None:
        """One weight/bias row per inner step, each starting from the current values."""
        if self.weight is None:
            return
        self.weight = nn.Parameter(self.weight.detach().flatten()[-self.num_features:].repeat(steps, 1))
        self.bias = nn.Parameter(self.bias.detach().flatten()[-self.num_features:].repeat(steps, 1))

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"
