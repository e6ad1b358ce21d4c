"""Batch-statistics BatchNorm written with primitive ops.

MAML-style meta-learners normalise with the statistics of the batch at hand, in training and
at test time alike (Finn et al. 2017), so no running statistics are kept. Written with
mean/var/rsqrt instead of `F.batch_norm` because the latter's vmap batching rule gives silently
wrong second-order gradients (pytorch/functorch#534); this form is exact under vmap, so every
engine computes the same function.

MAML++ (Antoniou et al. 2019) gives each inner-loop step its own BN weights and biases:
`per_step(n)` turns weight/bias into [n, C] tables and the row used is the step set by the
learner with `inner_step(i)`. A module-level step keeps it out of every backbone's
`forward` signature, so any backbone built from this layer gets per-step BN for free.

Third-party backbones (timm, torchvision) come with torch BatchNorm: `convert_batchnorm`
swaps it for this layer, and the batched engine calls `require_exact_norms` so that an
unconverted one is an error, not a wrong meta-gradient.
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from metalearn.errors import ConfigError

# A plain global, not a ContextVar: torch.compile traces a global's mutation but not
# ContextVar.set (the engine's compiled meta-batch enters inner_step). Single-threaded by design.
_step = 0
_STATS: ContextVar[tuple[str, list] | None] = ContextVar("batch_stats", default=None)


@contextmanager
def inner_step(step: int) -> Iterator[None]:
    """Forward passes inside use the per-step BN parameters of `step` (clamped to the last)."""
    global _step
    previous, _step = _step, step
    try:
        yield
    finally:
        _step = previous


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
    """Over [N, C, ...] inputs of any rank, so it also stands in for a torch BatchNorm1d/3d."""

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        self.num_features, self.eps = num_features, eps
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = (0, *range(2, x.dim()))
        frozen = _STATS.get()
        if frozen is not None and frozen[0] == "reuse":
            mean, var = frozen[1].pop()
            centred = x - mean
        else:
            # two passes, not var_mean: as exact, and var_mean's Welford kernel is slower on CPU
            mean = x.mean(dim=dims, keepdim=True)
            centred = x - mean
            var = (centred * centred).mean(dim=dims, keepdim=True)
            if frozen is not None:
                frozen[1].append((mean, var))
        scale = torch.rsqrt(var + self.eps)
        if self.weight is None:
            return centred * scale
        w, b = self.weight, self.bias
        if w.dim() == 2:  # per-step tables
            step = min(_step, w.shape[0] - 1)
            w, b = w[step], b[step]
        shape = (1, -1, *[1] * (x.dim() - 2))
        # the affine map folded into the per-channel scale: one pass over x instead of three
        return torch.addcmul(b.view(shape), centred, scale * w.view(shape))

    def per_step(self, steps: int) -> None:
        """One weight/bias row per inner step, each starting from the current values."""
        if self.weight is None:
            return
        self.weight = nn.Parameter(self.weight.detach().flatten()[-self.num_features:].repeat(steps, 1))
        self.bias = nn.Parameter(self.bias.detach().flatten()[-self.num_features:].repeat(steps, 1))

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """`module` with every torch BatchNorm (1d/2d/3d, SyncBatchNorm, timm's BatchNormAct2d)
    replaced by `BatchNorm2d`, in place; returns it (the replacement if `module` is one).

    Weight, bias and eps are copied; running statistics are dropped, since this layer always
    normalises with the batch at hand (see the module docstring), in eval mode too.
    """
    if isinstance(module, _BatchNorm):
        return _exact(module)
    for name, child in module.named_children():
        new = convert_batchnorm(child)
        if new is not child:
            setattr(module, name, new)
    return module


def _exact(bn: _BatchNorm) -> nn.Module:
    # timm's BatchNormAct2d fuses dropout and activation after the normalisation: keep them
    tail = [getattr(bn, a) for a in ("drop", "act") if isinstance(getattr(bn, a, None), nn.Module)]
    if not tail and type(bn).forward not in (_BatchNorm.forward, nn.SyncBatchNorm.forward):
        raise ConfigError(f"convert_batchnorm: {type(bn).__name__} overrides BatchNorm's forward, "
                          f"so swapping it could change the network; replace it by hand with "
                          f"metalearn.models.norm.BatchNorm2d")
    new = BatchNorm2d(bn.num_features, bn.eps, affine=bn.affine)
    if bn.affine:
        with torch.no_grad():
            new.weight.copy_(bn.weight)
            new.bias.copy_(bn.bias)
        new.to(bn.weight.device, bn.weight.dtype)
    return nn.Sequential(new, *tail) if tail else new


# torch norms whose vmap batching rule gives silently wrong second-order gradients (for
# BatchNorm pytorch/functorch#534; LayerNorm likewise, tests/models/test_norm.py shows both)
INEXACT_UNDER_VMAP = (_BatchNorm, nn.LayerNorm)


def require_exact_norms(module: nn.Module) -> None:
    """Raise ConfigError if `module` holds a torch BatchNorm or LayerNorm: the batched engine's
    guard, since vmap gives them wrong second-order meta-gradients."""
    found = [f"{name or '<model>'} ({type(m).__name__})" for name, m in module.named_modules()
             if isinstance(m, INEXACT_UNDER_VMAP)]
    if found:
        raise ConfigError(
            f"algo.engine=batched cannot run a model holding torch BatchNorm/LayerNorm "
            f"({', '.join(found[:3])}{', ...' if len(found) > 3 else ''}): vmap gives them wrong "
            f"second-order meta-gradients. Convert BatchNorm with "
            f"metalearn.models.norm.convert_batchnorm(backbone) (backbone=timm and resnet18 do), "
            f"or use algo.engine=l2l")
