"""The one in-memory form every dataset format is turned into.

Format readers (omniglot.py, miniimagenet.py, ...) stop at `FewShotDataset`; from there an
episode is an index draw (`episodes.py`). Keeping images as uint8 keeps a mini-ImageNet split
at ~1.3 GB instead of 5 GB of float32.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from metalearn.errors import DataError

# The meta-splits every dataset has, classes disjoint between them.
SPLITS = ("train", "val", "test")


@dataclass
class ImageSplit:
    """All images of one meta-split, grouped by class.

    images: uint8 [N, C, H, W]; labels: int64 [N], class ids 0..K-1, non-decreasing, so each
    class is one contiguous run (classes may differ in size).
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    name: str = "split"
    counts: torch.Tensor = field(init=False)
    offsets: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError(f"{self.name} split: images must be uint8 [N, C, H, W], got "
                            f"{self.images.dtype} {tuple(self.images.shape)}")
        if len(self.class_names) == 0 or self.images.shape[0] == 0:
            raise DataError(f"{self.name} split is empty: no classes/images were found")
        self.labels = self.labels.to(torch.int64)
        if self.labels.shape != (self.images.shape[0],):
            raise DataError(f"{self.name} split: {self.labels.shape[0]} labels for "
                            f"{self.images.shape[0]} images")
        if (self.labels[1:] < self.labels[:-1]).any():
            raise DataError(f"{self.name} split: images must be grouped by class")
        self.counts = torch.bincount(self.labels, minlength=len(self.class_names))
        if (self.counts == 0).any():
            empty = self.class_names[int((self.counts == 0).nonzero()[0])]
            raise DataError(f"{self.name} split: class '{empty}' has no images")
        self.offsets = torch.cumsum(self.counts, 0) - self.counts

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def to(self, device: torch.device | str) -> "ImageSplit":
        self.images = self.images.to(device)
        self.labels = self.labels.to(device)
        self.counts = self.counts.to(device)
        self.offsets = self.offsets.to(device)
        return self


@dataclass
class FewShotDataset:
    """Train/val/test splits with disjoint classes, plus per-channel normalisation."""

    name: str
    train: ImageSplit
    val: ImageSplit
    test: ImageSplit
    mean: tuple[float, ...]
    std: tuple[float, ...]
    invert: bool = False  # the reader inverted the files' pixels (Omniglot: ink is 1)

    def __post_init__(self) -> None:
        shapes = {s.image_shape for s in self.splits().values()}
        if len(shapes) != 1:
            raise DataError(f"{self.name}: splits have different image shapes {shapes}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise DataError(f"{self.name}: mean/std need {self.channels} values")

    @classmethod
    def from_splits(cls, name: str, splits: dict[str, ImageSplit], mean: tuple[float, ...],
                    std: tuple[float, ...]) -> "FewShotDataset":
        return cls(name, *(splits[s] for s in SPLITS), tuple(mean), tuple(std))

    def splits(self) -> dict[str, ImageSplit]:
        return {s: getattr(self, s) for s in SPLITS}

    def preprocessing(self) -> dict[str, Any]:
        """How the images were made from files, and how many classes training saw, as plain
        values (saved in checkpoints): what a saved model needs to read a new image."""
        channels, size, _ = self.image_shape
        return {"channels": channels, "image_size": size,
                "resize": "LANCZOS",  # what every reader here resizes with
                "invert": self.invert,
                "mean": [float(m) for m in self.mean], "std": [float(s) for s in self.std],
                "train_classes": self.train.num_classes}

    def samplers(self, train: tuple[int, int], test: tuple[int, int], query: int, seed: int,
                 device: torch.device | str = "cpu") -> dict[str, Any]:
        """The episode samplers a run draws from: "train" with `train` (ways, shots), and the
        ones `evaluate_split` scores with `test` (ways, shots), "val" and "test" here (a
        dataset that scores parts of a split names them "val/<part>"); seeded seed, seed+1, ..."""
        from metalearn.data.episodes import EpisodeSampler  # episodes imports this module
        return {name: EpisodeSampler(split, *(train if name == "train" else test), query,
                                     self.mean, self.std, seed=seed + i, device=device)
                for i, (name, split) in enumerate(self.splits().items())}

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.train.image_shape

    @property
    def channels(self) -> int:
        return self.train.image_shape[0]


def download(fetch: Callable[[], object], what: str, where: Path, fix: str) -> None:
    """Run a torchvision download; a failure is one DataError saying where to put the files."""
    try:
        fetch()
    except Exception as e:  # network errors come in many types
        raise DataError(f"{what} not found under {where} and the download failed "
                        f"({type(e).__name__}: {e}). {fix}") from None
