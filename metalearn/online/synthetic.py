"""Synthetic domains for online streams and tests: `domains` groups of classes whose images
differ in statistics (background ink density and where the class pattern sits), named
"d<k>/c<i>" so streams group them like Omniglot's alphabets. Made in memory, no files."""
from __future__ import annotations

import torch

from metalearn.data.base import FewShotDataset, ImageSplit


def _split(name: str, domains: int, classes: int, per_class: int, size: int, signal: int,
           noise: float, g: torch.Generator) -> ImageSplit:
    images, names = [], []
    for d in range(domains):
        density = 0.15 + 0.7 * d / max(1, domains - 1)  # background ink shifts by domain
        shift = d % max(1, size - signal + 1)           # so does the pattern's position
        x = torch.rand(classes, per_class, 1, size, size, generator=g) < density
        protos = torch.rand(classes, 1, 1, signal, signal, generator=g) < 0.5
        flips = torch.rand(classes, per_class, 1, signal, signal, generator=g) < noise
        x[..., shift:shift + signal, shift:shift + signal] = protos ^ flips
        images.append(x.flatten(0, 1))
        names += [f"d{d:02d}/c{c:03d}" for c in range(classes)]
    labels = torch.arange(domains * classes).repeat_interleave(per_class)
    return ImageSplit(torch.cat(images).to(torch.uint8).mul_(255), labels, names, name)


def load_synthetic_domains(domains: int = 4, classes_per_domain: tuple = (16, 4, 8),
                           images_per_class: int = 20, image_size: int = 28,
                           signal_size: int = 8, noise: float = 0.1,
                           seed: int = 0) -> FewShotDataset:
    g = torch.Generator().manual_seed(seed)
    train, val, test = (_split(nm, domains, n, images_per_class, image_size, signal_size, noise, g)
                        for n, nm in zip(classes_per_domain, ("train", "val", "test")))
    return FewShotDataset("synthetic_domains", train, val, test, mean=(0.5,), std=(0.5,))
