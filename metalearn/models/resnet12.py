"""ResNet-12 of MetaOptNet (Lee et al. 2019), the usual backbone for mini/tiered-ImageNet, CIFAR-FS.

Four residual blocks of 64-160-320-640 channels; each block is three 3x3 conv + BatchNorm
(LeakyReLU 0.1 between), a 1x1 conv + BatchNorm shortcut, LeakyReLU after the sum, then a 2x2
max-pool, so 84 px inputs end at 5x5 and 32 px at 2x2. Regularisation follows MetaOptNet:
with `drop_block`, DropBlock (Ghiasi et al. 2018) on blocks 3-4 and dropout on blocks 1-2;
without it, dropout on every block. DropBlock's rate ramps up linearly over the first
DROPBLOCK_WARMUP training forward passes, as in MetaOptNet.
BatchNorm is the batch-statistics `metalearn.models.norm.BatchNorm2d` the MAML family needs.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from metalearn.errors import ConfigError
from metalearn.models.norm import BatchNorm2d

DROPBLOCK_WARMUP = 40_000  # MetaOptNet: 20 epochs x 2000 batches


def drop_block(x: torch.Tensor, gamma: float | torch.Tensor, block_size: int) -> torch.Tensor:
    """Zero block_size x block_size squares seeded with probability gamma; rescale the rest."""
    h, w = x.shape[-2:]
    seeds = (torch.rand(x.shape[0], x.shape[1], h - block_size + 1, w - block_size + 1,
                        device=x.device) < gamma).to(x.dtype)
    # A seed at (i, j) drops [i, i+bs) x [j, j+bs): pad by bs-1 all round and max-pool bs x bs.
    pad = block_size - 1
    dropped = F.max_pool2d(F.pad(seeds, (pad, pad, pad, pad)), block_size, stride=1)
    keep = 1 - dropped
    return x * keep * (keep.numel() / keep.sum().clamp_min(1.0))


class Block(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, drop_rate: float, use_drop_block: bool,
                 dropblock_size: int) -> None:
        super().__init__()
        convs = []
        for i in range(3):
            convs += [nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3,
                                padding=1, bias=False), BatchNorm2d(out_channels)]
            if i < 2:
                convs.append(nn.LeakyReLU(0.1))
        self.body = nn.Sequential(*convs)
        self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False),
                                      BatchNorm2d(out_channels))
        self.drop_rate, self.use_drop_block = drop_rate, use_drop_block
        self.dropblock_size = dropblock_size
        self.register_buffer("steps", torch.zeros((), dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.max_pool2d(F.leaky_relu(self.body(x) + self.shortcut(x), 0.1), 2)
        if self.drop_rate <= 0 or not self.training:
            return out
        if not self.use_drop_block:
            return F.dropout(out, self.drop_rate, training=True)
        # A shared tensor counter, not an int: MAML's per-task clones share buffers, so their
        # forwards advance the original's warm-up too; and reading it never syncs a GPU.
        self.steps += 1
        size = out.shape[-1]
        block = min(self.dropblock_size, size)  # 32 px inputs end smaller than the block
        rate = self.drop_rate * (self.steps / DROPBLOCK_WARMUP).clamp(max=1.0)
        # Seed rate giving `rate` of the units dropped (Ghiasi et al. 2018, eq. 1).
        gamma = rate / block**2 * size**2 / (size - block + 1) ** 2
        return drop_block(out, gamma, block)


class ResNet12(nn.Module):
    def __init__(self, in_channels: int, image_size: int,
                 channels: Sequence[int] = (64, 160, 320, 640), drop_rate: float = 0.0,
                 drop_block: bool = False, dropblock_size: int = 5, avg_pool: bool = True) -> None:
        super().__init__()
        if len(channels) != 4:
            raise ConfigError(f"backbone.channels={list(channels)}: ResNet-12 has 4 blocks, give "
                              f"4 widths")
        final = image_size // 16
        if final < 1:
            raise ConfigError(f"ResNet-12 halves the image 4 times: image_size={image_size} is "
                              f"below 16 px; use a bigger dataset.image_size or backbone=conv4")
        widths = [in_channels, *channels]
        self.blocks = nn.Sequential(*(
            Block(widths[i], widths[i + 1], drop_rate, drop_block and i >= 2, dropblock_size)
            for i in range(4)))
        self.avg_pool = avg_pool
        self.out_features = channels[-1] * (1 if avg_pool else final * final)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(x)
        return h.mean(dim=(2, 3)) if self.avg_pool else h.flatten(1)
