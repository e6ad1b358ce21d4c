"""Any `<root>/<class>/<image>` tree as a few-shot dataset.

Classes (not images) are split into train/val/test, as few-shot evaluation needs unseen
classes: by the class folder names listed in <root>/{train,val,test}.txt when those files exist
(one name per line, `#` comments; unlisted folders are left out), else at random by
`split_ratios` with `split_seed`. Images are converted to RGB (channels=3) or grayscale
(channels=1) and resized to image_size x image_size ignoring the aspect ratio. The images are
decoded once for all classes and cached, so changing the split does not decode again.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from metalearn.data.base import FewShotDataset, ImageSplit
from metalearn.data.cache import cached_splits, fingerprint
from metalearn.data.readers import (channel_stats, check_disjoint, class_folders, decode_images,
                                    grouped_split, image_files, subset_classes)
from metalearn.errors import ConfigError, DataError

SPLITS = ("train", "val", "test")
LAYOUT = "<root>/<class name>/<image>.{jpg,png,...} (optionally <root>/{train,val,test}.txt)"


def load_imagefolder(path: str | Path, image_size: int = 84, channels: int = 3,
                     split_ratios: Sequence[float] = (0.64, 0.16, 0.20), split_seed: int = 0,
                     mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                     name: str = "imagefolder") -> FewShotDataset:
    """`mean`/`std` null: computed from the train split's pixels."""
    if channels not in (1, 3):
        raise ConfigError(f"dataset.channels={channels}: use 3 (RGB) or 1 (grayscale)")
    root = Path(path).expanduser()
    if not root.is_dir():  # readers.require_dir's hint names dataset.root, not dataset.path
        raise DataError(f"image folder dataset not found: {root} does not exist. Expected "
                        f"{LAYOUT}; set dataset.path=<your folder>")
    folders = class_folders(root)
    if not folders:
        raise DataError(f"{root} has no class folders: expected {LAYOUT}; set dataset.path=<your folder>")
    per_class = [image_files(d) for d in folders]
    for d, fs in zip(folders, per_class):
        if not fs:
            raise DataError(f"class folder {d} holds no images (.jpg, .png, ...): add images or "
                            f"move the folder out of {root}")
    key = fingerprint([f for fs in per_class for f in fs], image_size=image_size,
                      channels=channels, v=1)

    def build() -> dict[str, ImageSplit]:
        files = [f for fs in per_class for f in fs]
        labels = [c for c, fs in enumerate(per_class) for _ in fs]
        images = decode_images(files, image_size, "RGB" if channels == 3 else "L")
        return {"all": grouped_split(images, labels, [d.name for d in folders], "all")}

    everything = cached_splits("imagefolder", key, build)["all"]
    names = [d.name for d in folders]
    if any((root / f"{s}.txt").exists() for s in SPLITS):
        assignment = _from_split_files(root, names)
    else:
        assignment = _by_ratio(len(names), split_ratios, split_seed, root)
    parts = {s: subset_classes(everything, ids, s) for s, ids in assignment.items()}
    check_disjoint(parts, str(root))
    if mean is None or std is None:
        mean, std = channel_stats(parts["train"].images)
    return FewShotDataset(name, parts["train"], parts["val"], parts["test"], tuple(mean),
                          tuple(std))


def _by_ratio(n: int, ratios: Sequence[float], seed: int, root: Path) -> dict[str, list[int]]:
    if len(ratios) != 3 or min(ratios) <= 0 or abs(sum(ratios) - 1) > 1e-6:
        raise ConfigError(f"dataset.split_ratios={list(ratios)}: give three positive fractions "
                          f"(train, val, test) that add up to 1")
    n_val, n_test = round(n * ratios[1]), round(n * ratios[2])
    sizes = [n - n_val - n_test, n_val, n_test]
    if min(sizes) < 1:
        raise DataError(f"{root} has {n} class folders, which split by {list(ratios)} into "
                        f"{sizes} classes: every split needs at least one; add class folders "
                        f"or change dataset.split_ratios")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return {s: sorted(ids.tolist()) for s, ids in zip(SPLITS, torch.split(perm, sizes))}


def _from_split_files(root: Path, names: list[str]) -> dict[str, list[int]]:
    ids = {n: i for i, n in enumerate(names)}
    out = {}
    for s in SPLITS:
        path = root / f"{s}.txt"
        if not path.is_file():
            raise DataError(f"{path} is missing: with split files, {root} needs all of train.txt, "
                            f"val.txt and test.txt (one class folder name per line)")
        listed = [ln.split("#", 1)[0].strip() for ln in path.read_text().splitlines()]
        listed = [ln for ln in listed if ln]
        if not listed:
            raise DataError(f"{path} lists no class folders, so the {s} split would be empty: "
                            f"add folder names, one per line")
        unknown = [c for c in listed if c not in ids]
        if unknown:
            raise DataError(f"{path} lists {len(unknown)} classes with no folder in {root}, "
                            f"e.g. {unknown[0]!r}: fix the names or add the folders")
        out[s] = [ids[c] for c in dict.fromkeys(listed)]
    return out
