"""N-way K-shot episodes drawn by tensor indexing from an `ImageSplit`.

One draw of a whole meta-batch is a handful of tensor ops on the split's device, so sampling
costs microseconds per task whether the split lives on the CPU or the GPU.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from metalearn.data.base import ImageSplit
from metalearn.errors import ConfigError


@dataclass
class Episodes:
    """B tasks. x: float [B, ways*n, C, H, W] (normalised); y: int64 [B, ways*n] in 0..ways-1."""

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor

    def __len__(self) -> int:
        return self.support_x.shape[0]

    def __getitem__(self, i: int | slice) -> "Episodes":
        if isinstance(i, int):
            i = slice(i, i + 1)
        return Episodes(self.support_x[i], self.support_y[i], self.query_x[i], self.query_y[i])

    def chunks(self, size: int) -> list["Episodes"]:
        return [self[s : s + size] for s in range(0, len(self), size)]

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "Episodes":
        return Episodes(self.support_x.to(device, dtype), self.support_y.to(device),
                        self.query_x.to(device, dtype), self.query_y.to(device))


class EpisodeSampler:
    """Draws meta-batches of N-way, K-shot tasks with Q disjoint query images per class."""

    def __init__(self, split: ImageSplit, ways: int, shots: int, query: int,
                 mean: tuple[float, ...], std: tuple[float, ...], seed: int = 0,
                 device: torch.device | str = "cpu") -> None:
        if ways < 1 or shots < 1 or query < 1:
            raise ConfigError(f"task.ways, task.shots and task.query must be >= 1, got "
                              f"{ways}/{shots}/{query}")
        if ways > split.num_classes:
            raise ConfigError(f"task.ways={ways} but the {split.name} split has only "
                              f"{split.num_classes} classes: lower task.ways")
        smallest = int(split.counts.argmin())
        if shots + query > int(split.counts[smallest]):
            raise ConfigError(
                f"task.shots + task.query = {shots + query} but class "
                f"'{split.class_names[smallest]}' of the {split.name} split has only "
                f"{int(split.counts[smallest])} images: lower task.shots or task.query")
        self.device = torch.device(device)
        self.split = split.to(self.device)
        self.ways, self.shots, self.query = ways, shots, query
        shape = (1, len(mean), 1, 1)
        self.mean = torch.tensor(mean, device=self.device).view(shape)
        self.std = torch.tensor(std, device=self.device).view(shape)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    def sample(self, batch_size: int) -> Episodes:
        s, g, dev = self.split, self.generator, self.device
        b, w, n = batch_size, self.ways, self.shots + self.query
        classes = torch.rand(b, s.num_classes, generator=g, device=dev).argsort(1)[:, :w]
        counts = s.counts[classes]                                   # [B, W]
        # Random keys, with positions past a class's size pushed to the end, so the n smallest
        # keys are n distinct images of that class.
        keys = torch.rand(b, w, int(s.counts.max()), generator=g, device=dev)
        keys.masked_fill_(torch.arange(keys.shape[-1], device=dev) >= counts[..., None], 2.0)
        picks = keys.topk(n, dim=-1, largest=False).indices          # [B, W, n]
        index = s.offsets[classes][..., None] + picks
        x = s.images[index].float().div_(255).sub_(self.mean).div_(self.std)  # [B, W, n, C, H, W]
        y = torch.arange(w, device=dev).view(1, w, 1).expand(b, w, n)
        k = self.shots
        return Episodes(x[:, :, :k].flatten(1, 2), y[:, :, :k].flatten(1),
                        x[:, :, k:].flatten(1, 2), y[:, :, k:].flatten(1))
