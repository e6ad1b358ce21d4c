"""scikit-learn's handwritten digits (`sklearn.datasets.load_digits`: 1,797 images of the 10
digits, 8x8, 17 gray levels, from UCI's optdigits) as a few-shot dataset.

A real handwriting domain that ships inside scikit-learn (`pip install metalearn[digits]`),
so a cross-domain target needs no download: Omniglot-trained models are scored on it with
`eval.datasets=[digits]`, every one of its 10 classes a test class (`eval.split=all`). As a
dataset of its own, its classes are split by `split_ratios` like an image folder's. Ink is
bright on black, as in Omniglot's decoded images; images are resized to `image_size`.
"""
from __future__ import annotations

from typing import Sequence

import torch

from metalearn.data.base import SPLITS, FewShotDataset
from metalearn.data.readers import (channel_stats, grouped_split, resize_uint8, split_by_ratio,
                                    subset_classes)
from metalearn.errors import ConfigError


def load_digits(image_size: int = 28, split_ratios: Sequence[float] = (0.6, 0.2, 0.2),
                split_seed: int = 0, mean: Sequence[float] | None = None,
                std: Sequence[float] | None = None) -> FewShotDataset:
    """`mean`/`std` null: computed from the train split's pixels."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError:
        raise ConfigError("dataset=digits needs scikit-learn: pip install 'metalearn[digits]' "
                          "(or pip install scikit-learn)") from None
    bunch = sklearn_digits()  # read from the package itself: no network
    x = torch.from_numpy(bunch.images).float().mul_(255 / 16).round_().to(torch.uint8)
    images = resize_uint8(x.unsqueeze(1), image_size)
    everything = grouped_split(images, bunch.target, [str(d) for d in range(10)], "digits")
    ids = split_by_ratio(everything.num_classes, split_ratios, split_seed, "digits")
    splits = {s: subset_classes(everything, ids[s], s) for s in SPLITS}
    if mean is None or std is None:
        mean, std = channel_stats(splits["train"].images)
    return FewShotDataset.from_splits("digits", splits, mean, std)
