"""Task-specific adapters (Li, Liu & Bilen 2022, "Cross-domain Few-shot Learning with
Task-specific Adapters", TSA): adapt a trained network to a new domain per task by learning a
few added weights on the support set while every trained weight stays frozen.

Per task, a copy of the run's embedding (`learner.embedding()`) gets
- a residual adapter on each 3x3 convolution: `conv(x) + alpha * x`, alpha a 1x1 convolution
  (a channels_out x channels_in matrix) with the conv's stride, started at 1e-4 times the
  identity, so the network starts as it was trained;
- a pre-classifier alignment: a d x d linear map on the features, started at the identity;
and only those are trained, with Adadelta (lr 0.5 for the adapters, 1 for the alignment: the
authors' values for domains unseen in training) for 40 steps, on the support set classified
against its own class means by scaled cosine similarity (nearest-centroid, the test rule).
Queries are then classified by their cosine to the support class means of the adapted, aligned
features. With far fewer free weights than whole-network fine-tuning (adapter=finetune), it
suits 1-shot tasks, where a whole network over-fits five images.

Subclasses the finetune adapter: `_tune` returns the adapted network (alignment included) and
the support class means as the cosine head's weights, so scoring and prediction (`evaluate`,
`adapt`: queries with their own batch statistics; the predict API reuses the support set's)
are the finetune adapter's. Departures from the authors' code: batch-statistics BatchNorm (as
every learner here), and the stem convolution is adapted too when it is 3x3 (Conv-4's first).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from metalearn.algorithms.base import MetaLearner
from metalearn.algorithms.finetune import FineTune, class_means
from metalearn.errors import ConfigError


class Adapted(nn.Module):
    """A frozen 3x3 convolution plus a trainable residual 1x1 adapter (TSA's alpha)."""

    def __init__(self, conv: nn.Conv2d, init: float = 1e-4) -> None:
        super().__init__()
        self.conv = conv
        out, inp = conv.out_channels, conv.in_channels
        self.alpha = nn.Parameter(init * torch.eye(out, inp).view(out, inp, 1, 1)
                                  .to(conv.weight.device, conv.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + F.conv2d(x, self.alpha, stride=self.conv.stride)


class Aligned(nn.Module):
    """The embedding followed by the pre-classifier alignment (TSA's beta)."""

    def __init__(self, net: nn.Module, dim: int) -> None:
        super().__init__()
        self.net = net
        p = next(net.parameters())
        self.beta = nn.Parameter(torch.eye(dim, device=p.device, dtype=p.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) @ self.beta.t()


def attach_adapters(module: nn.Module) -> list[nn.Parameter]:
    """Wrap each 3x3, ungrouped, same-padded Conv2d of `module` in `Adapted`, in place; the
    adapters' weights."""
    found = []
    for name, child in module.named_children():
        if (isinstance(child, nn.Conv2d) and child.kernel_size == (3, 3)
                and child.groups == 1 and child.padding == (1, 1) and child.dilation == (1, 1)):
            adapted = Adapted(child)
            setattr(module, name, adapted)
            found.append(adapted.alpha)
        else:
            found += attach_adapters(child)
    return found


class TaskSpecificAdapters(FineTune):
    name = "tsa"

    def __init__(self, learner: MetaLearner, steps: int = 40, lr: float = 0.5,
                 lr_beta: float = 1.0, scale: float = 10.0, seed: int = 0) -> None:
        super().__init__(learner, steps=steps, lr=lr, augment="none", scale=scale, seed=seed)
        if not (lr > 0 and lr_beta > 0):
            raise ConfigError(f"adapter.lr={lr}, adapter.lr_beta={lr_beta}: both must be > 0")
        self.lr_beta = lr_beta

    def _tune(self, sx: torch.Tensor, sy: torch.Tensor, g: torch.Generator,
              qx: torch.Tensor | None = None) -> tuple[nn.Module, torch.Tensor]:
        net = copy.deepcopy(self.learner.embedding()).eval()
        net.requires_grad_(False)
        alphas = attach_adapters(net)
        if not alphas:
            raise ConfigError(f"adapter=tsa: the embedding ({type(net).__name__}) has no 3x3 "
                              f"convolution to attach an adapter to")
        with torch.no_grad():
            dim = net(sx[:1]).shape[-1]
        net = Aligned(net, dim)
        ways = int(sy.max()) + 1
        opt = torch.optim.Adadelta([{"params": alphas},
                                    {"params": [net.beta], "lr": self.lr_beta}], lr=self.lr)
        with torch.enable_grad():
            for _ in range(self.steps):
                z = net(sx)
                loss = F.cross_entropy(self._logits(z, class_means(z, sy, ways)), sy)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        with torch.no_grad():
            return net, class_means(net(sx), sy, ways)
