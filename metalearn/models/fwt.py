"""Feature-wise transformation layers (Tseng et al. 2020, "Cross-Domain Few-Shot
Classification via Learned Feature-Wise Transformation") around any backbone.

After every batch-statistics BatchNorm of the wrapped backbone, a training forward multiplies
each channel by gamma ~ N(1, softplus(theta_gamma)) and adds beta ~ N(0, softplus(theta_beta)),
one draw per channel and per forward: the features of a task see the kind of shift a new domain
brings, so the network learns features that survive it. In eval mode the layers are the
identity, so a trained run is evaluated, fine-tuned or used for prediction like any other.

This is the paper's hand-tuned variant ("FT", theta_gamma = 0.3, theta_beta = 0.5); its
learned variant tunes the thetas on a held-out source domain and needs several training
domains. As in the paper the noise is for meta-training only: every test-time adaptation here
(the learner's own, adapter=finetune, adapter=tsa) runs in eval mode. Under the batched engine
each task of a meta-batch draws its own noise (vmap's randomness="different").
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from metalearn.errors import ConfigError
from metalearn.models.norm import BatchNorm2d


class FeatureWiseTransform(nn.Module):
    """x [N, C, ...] -> gamma_c * x + beta_c in training mode, x in eval mode."""

    def __init__(self, num_features: int, gamma: float, beta: float) -> None:
        super().__init__()
        self.num_features = num_features
        # fixed hyperparameters, not parameters: the meta-optimiser must not shrink the noise
        self.gamma_std = F.softplus(torch.tensor(float(gamma))).item()
        self.beta_std = F.softplus(torch.tensor(float(beta))).item()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        shape = (1, self.num_features, *[1] * (x.dim() - 2))
        gamma = 1 + self.gamma_std * torch.randn(shape, dtype=x.dtype, device=x.device)
        beta = self.beta_std * torch.randn(shape, dtype=x.dtype, device=x.device)
        return torch.addcmul(beta, x, gamma)

    def extra_repr(self) -> str:
        return f"{self.num_features}, gamma_std={self.gamma_std:.3f}, beta_std={self.beta_std:.3f}"


class FWT(nn.Module):
    """`inner` (a backbone factory taking in_channels and image_size, e.g. a `_partial_`
    backbone config) built, with a `FeatureWiseTransform` after each of its BatchNorms."""

    def __init__(self, in_channels: int, image_size: int,
                 inner: Callable[..., nn.Module], gamma: float = 0.3, beta: float = 0.5) -> None:
        super().__init__()
        if not callable(inner):
            raise ConfigError("backbone=fwt: backbone.inner must build a backbone "
                              "(a config with _target_ and _partial_: true)")
        self.net = inner(in_channels=in_channels, image_size=image_size)
        self.out_features = self.net.out_features
        if not _insert(self.net, gamma, beta):
            raise ConfigError(f"backbone=fwt: {type(self.net).__name__} has no "
                              "metalearn.models.norm.BatchNorm2d to put the transformations after")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _insert(module: nn.Module, gamma: float, beta: float) -> int:
    """Replace each BatchNorm2d child by (BatchNorm2d, FeatureWiseTransform); the count."""
    count = 0
    for name, child in module.named_children():
        if isinstance(child, BatchNorm2d):
            setattr(module, name, nn.Sequential(
                child, FeatureWiseTransform(child.num_features, gamma, beta)))
            count += 1
        else:
            count += _insert(child, gamma, beta)
    return count
