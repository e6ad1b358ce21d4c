"""A learnable few-shot dataset made in memory, for smoke runs and tests (no files).

Each class is a random binary pattern in a central square (with `noise` of its pixels
flipped per image); every pixel outside that square is fresh noise. Raw-pixel matching is
near chance, so accuracy above it must be meta-learned: where to look, what to ignore.
"""
from __future__ import annotations

import torch

from metalearn.data.base import FewShotDataset, ImageSplit


def _split(n_classes: int, per_class: int, channels: int, size: int, signal: int, noise: float,
           g: torch.Generator, name: str) -> ImageSplit:
    shape = (n_classes, per_class, channels, size, size)
    images = torch.rand(shape, generator=g) < 0.5
    protos = torch.rand(n_classes, 1, channels, signal, signal, generator=g) < 0.5
    flips = torch.rand(n_classes, per_class, channels, signal, signal, generator=g) < noise
    lo = (size - signal) // 2
    images[..., lo : lo + signal, lo : lo + signal] = protos ^ flips
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    return ImageSplit(images.to(torch.uint8).mul_(255).flatten(0, 1), labels,
                      [f"{name}{i:03d}" for i in range(n_classes)], name)


def load_synthetic(classes: tuple = (64, 16, 20), images_per_class: int = 20, channels: int = 1,
                   image_size: int = 28, signal_size: int = 8, noise: float = 0.15,
                   seed: int = 0) -> FewShotDataset:
    g = torch.Generator().manual_seed(seed)
    train, val, test = (_split(n, images_per_class, channels, image_size, signal_size, noise, g, nm)
                        for n, nm in zip(classes, ("train", "val", "test")))
    return FewShotDataset("synthetic", train, val, test, mean=(0.5,) * channels,
                          std=(0.5,) * channels)
