"""The Conv-4 backbone of Vinyals et al. 2016 / Finn et al. 2017.

Small images (Omniglot 28x28): 64 filters, stride-2 convolutions, spatial mean at the end.
Larger images (mini-ImageNet 84x84): 32 filters, 2x2 max-pool after each block, flattened.
`hidden=None, max_pool=None` choose by image size as the papers did; `flatten` (null: with
max-pool) flattens the last feature map instead of averaging it.
"""
from __future__ import annotations

import torch
from torch import nn

from metalearn.models.norm import BatchNorm2d


class Conv4(nn.Module):
    def __init__(self, in_channels: int, image_size: int, hidden: int | None = None,
                 layers: int = 4, max_pool: bool | None = None,
                 flatten: bool | None = None) -> None:
        super().__init__()
        small = image_size <= 32
        self.max_pool = (not small) if max_pool is None else max_pool
        # Finn et al. average the last feature map of the strided net; Nichol et al. flatten it
        self.flatten = self.max_pool if flatten is None else flatten
        hidden = hidden or (64 if small else 32)
        blocks = []
        for i in range(layers):
            stride = 1 if self.max_pool else 2
            blocks += [nn.Conv2d(in_channels if i == 0 else hidden, hidden, 3, stride, 1),
                       BatchNorm2d(hidden), nn.ReLU()]
            if self.max_pool:
                blocks.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*blocks)
        with torch.no_grad():
            self.out_features = self._embed(torch.zeros(2, in_channels, image_size, image_size)).shape[1]

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        return h.flatten(1) if self.flatten else h.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._embed(x)
