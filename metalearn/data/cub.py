"""CUB-200-2011 birds (Wah et al. 2011): 200 species, 11,788 images, resized to 84x84.

Reads <root>/CUB_200_2011/images/<NNN.Species_Name>/*.jpg (the official tarball extracted in
root; also found at root/images or learn2learn's root/cubirds200/CUB_200_2011/images).
Two class splits, chosen by `split`:
  * closer_look (default): 100/50/50, Chen et al. 2019 ("A Closer Look at Few-shot
    Classification"), the usual CUB few-shot benchmark: of the folders in sorted order, even
    positions train, positions 1 mod 4 val, 3 mod 4 test;
  * meta_dataset: 140/30/30 of Triantafillou et al. 2020, the split learn2learn's CUBirds200
    uses (its ImageNet-duplicate filtering is not applied).
Both are defined by the species number NNN, so a missing folder cannot shift the others.
Images are resized without keeping the aspect ratio, as those works' 84x84 pipelines do.
"""
from __future__ import annotations

import re
from pathlib import Path

from metalearn.data import stats
from metalearn.data.base import SPLITS, FewShotDataset
from metalearn.data.readers import DATA_DIR_HINT, class_folders, read_class_folders, subset_classes
from metalearn.errors import ConfigError, DataError

SOURCE = "https://data.caltech.edu/records/65de6-vp158 (CUB_200_2011.tgz, extract it in <root>)"
LAYOUT = "<root>/CUB_200_2011/images/<NNN.Species_Name>/*.jpg, with root=<data_dir> by default"

_META_DATASET_VAL = {44, 51, 52, 55, 57, 61, 64, 66, 68, 72, 76, 80, 84, 96, 113, 121, 127, 136,
                     140, 145, 150, 155, 159, 162, 172, 176, 178, 198, 199, 200}
_META_DATASET_TEST = {8, 9, 15, 20, 28, 30, 35, 39, 45, 46, 82, 85, 94, 101, 103, 112, 118, 122,
                      128, 133, 134, 137, 147, 148, 163, 168, 169, 170, 193, 194}


def _closer_look(number: int) -> str:
    position = number - 1  # species 001..200 sit at sorted positions 0..199
    return "train" if position % 2 == 0 else "val" if position % 4 == 1 else "test"


def _meta_dataset(number: int) -> str:
    return "val" if number in _META_DATASET_VAL else \
        "test" if number in _META_DATASET_TEST else "train"


SPLIT_RULES = {"closer_look": _closer_look, "meta_dataset": _meta_dataset}


def _images_dir(root: Path) -> Path:
    for d in (root / "CUB_200_2011" / "images", root / "images",
              root / "cubirds200" / "CUB_200_2011" / "images"):
        if d.is_dir():
            return d
    raise DataError(f"CUB-200-2011 not found under {root}: expected {LAYOUT}. Download {SOURCE}; "
                    f"{DATA_DIR_HINT}")


def load_cub(root: str | Path, image_size: int = 84, split: str = "closer_look") -> FewShotDataset:
    if split not in SPLIT_RULES:
        raise ConfigError(f"dataset.split={split!r}: use one of {sorted(SPLIT_RULES)}")
    images_dir = _images_dir(Path(root).expanduser())
    folders = class_folders(images_dir)
    numbers = [_species_number(d) for d in folders]
    everything = read_class_folders(folders, image_size, "RGB", "cub",
                                    f"restore it from {SOURCE} or remove the folder")
    rule = SPLIT_RULES[split]
    parts = {}
    for s in SPLITS:
        ids = [c for c, n in enumerate(numbers) if rule(n) == s]
        if not ids:
            raise DataError(f"CUB {split} split: none of the {len(folders)} class folders in "
                            f"{images_dir} belongs to the {s} split (200 are expected): "
                            f"extract {SOURCE} completely")
        parts[s] = subset_classes(everything, ids, s)
    return FewShotDataset.from_splits("cub", parts, *stats.IMAGENET)


def _species_number(folder: Path) -> int:
    m = re.match(r"(\d{3})\.", folder.name)
    if m is None or not 1 <= int(m.group(1)) <= 200:
        raise DataError(f"unexpected folder {folder}: CUB class folders are named "
                        f"NNN.Species_Name with NNN in 001..200; move it out of "
                        f"{folder.parent}")
    return int(m.group(1))
