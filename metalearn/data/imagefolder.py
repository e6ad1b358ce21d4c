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


from metalearn.data.base import SPLITS, FewShotDataset
from metalearn.data.readers import (channel_stats, check_disjoint, class_folders,
                                    read_class_folders, split_by_lists,
                                    split_by_ratio, subset_classes)
from metalearn.errors import ConfigError, DataError

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
    everything = read_class_folders(folders, image_size, "RGB" if channels == 3 else "L",
                                    "imagefolder", f"add images or move the folder out of {root}")
    names = everything.class_names
    if any((root / f"{s}.txt").exists() for s in SPLITS):
        assignment = _from_split_files(root, names)
    else:
        assignment = split_by_ratio(len(names), split_ratios, split_seed, f"{root}")
    parts = {s: subset_classes(everything, ids, s) for s, ids in assignment.items()}
    check_disjoint(parts, str(root))
    if mean is None or std is None:
        mean, std = channel_stats(parts["train"].images)
    return FewShotDataset.from_splits(name, parts, mean, std)


def _from_split_files(root: Path, names: list[str]) -> dict[str, list[int]]:
    lists = {}
    for s in SPLITS:
        path = root / f"{s}.txt"
        if not path.is_file():
            raise DataError(f"{path} is missing: with split files, {root} needs all of train.txt, "
                            f"val.txt and test.txt (one class folder name per line)")
        listed = [ln.split("#", 1)[0].strip() for ln in path.read_text().splitlines()]
        lists[s] = [ln for ln in listed if ln]
    return split_by_lists(names, lists, {s: str(root / f"{s}.txt") for s in SPLITS},
                          f"folder in {root}")
