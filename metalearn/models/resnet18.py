"""torchvision's ResNet-18 (He et al. 2016), the deeper backbone of cross-domain few-shot work
(Chen et al. 2019; Tseng et al. 2020), with BatchNorm converted to the exact batch-statistics
`metalearn.models.norm.BatchNorm2d`.

The ImageNet stem (7x7 stride-2 conv, then max-pool) shrinks an 84 px image 4x before the first
block; small images (CIFAR, Omniglot) use the CIFAR-ResNet stem: one 3x3 stride-1 conv, no
max-pool. `small_stem=None` picks it for images of 32 px or less. Random init; for ImageNet
weights use `backbone=timm backbone.name=resnet18` (timm's `resnet18.tv_in1k` are these).
"""
from __future__ import annotations

import torch
import torchvision
from torch import nn

from metalearn.models.norm import convert_batchnorm


class ResNet18(nn.Module):
    def __init__(self, in_channels: int, image_size: int, small_stem: bool | None = None) -> None:
        super().__init__()
        small = image_size <= 32 if small_stem is None else small_stem
        net = torchvision.models.resnet18()
        net.conv1 = (nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False) if small else
                     nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False))
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        if small:
            net.maxpool = nn.Identity()
        net.fc = nn.Identity()
        self.net = convert_batchnorm(net)
        self.out_features = 512

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
