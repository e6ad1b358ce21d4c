"""CIFAR-FS (Bertinetto et al. 2019) and FC100 (Oreshkin et al. 2018), both cut from CIFAR-100.

CIFAR-FS splits the 100 fine classes at random into 64/16/20; FC100 splits the 20 superclasses
12/4/4 (60/20/20 classes) so that test classes share no superclass with training ones. Both use
all 600 images (train + test parts of CIFAR-100) of each class, at 32x32.

Layouts of `root` (default <data_dir>), first match wins:
  * CIFAR-100 python: <root>/cifar-100-python/{train,test,meta} (the official tarball,
    also what torchvision downloads; `download=true` fetches it through torchvision);
  * CIFAR-FS only, learn2learn's: <root>/cifarfs/cifar100/data/<class>/*.png;
  * FC100 only, MetaOptNet's / learn2learn's: <root>/FC100_{train,val,test}.pickle
    (dicts with 'data' uint8 [N, 32, 32, 3] and 'labels', CIFAR-100 fine label ids).
The class splits are fixed lists below; files' own split lists are not trusted.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from metalearn.data import stats
from metalearn.data.base import SPLITS, FewShotDataset, ImageSplit, download
from metalearn.data.cache import cached_splits, fingerprint
from metalearn.data.readers import (DATA_DIR_HINT, check_disjoint, class_folders, grouped_split,
                                    load_pickle, read_class_folders, resize_uint8, str_keys,
                                    subset_classes)
from metalearn.errors import DataError

CIFAR100_HIERARCHY = {
    "aquatic_mammals": ["beaver", "dolphin", "otter", "seal", "whale"],
    "fish": ["aquarium_fish", "flatfish", "ray", "shark", "trout"],
    "flowers": ["orchid", "poppy", "rose", "sunflower", "tulip"],
    "food_containers": ["bottle", "bowl", "can", "cup", "plate"],
    "fruit_and_vegetables": ["apple", "mushroom", "orange", "pear", "sweet_pepper"],
    "household_electrical_devices": ["clock", "keyboard", "lamp", "telephone", "television"],
    "household_furniture": ["bed", "chair", "couch", "table", "wardrobe"],
    "insects": ["bee", "beetle", "butterfly", "caterpillar", "cockroach"],
    "large_carnivores": ["bear", "leopard", "lion", "tiger", "wolf"],
    "large_man-made_outdoor_things": ["bridge", "castle", "house", "road", "skyscraper"],
    "large_natural_outdoor_scenes": ["cloud", "forest", "mountain", "plain", "sea"],
    "large_omnivores_and_herbivores": ["camel", "cattle", "chimpanzee", "elephant", "kangaroo"],
    "medium_mammals": ["fox", "porcupine", "possum", "raccoon", "skunk"],
    "non-insect_invertebrates": ["crab", "lobster", "snail", "spider", "worm"],
    "people": ["baby", "boy", "girl", "man", "woman"],
    "reptiles": ["crocodile", "dinosaur", "lizard", "snake", "turtle"],
    "small_mammals": ["hamster", "mouse", "rabbit", "shrew", "squirrel"],
    "trees": ["maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"],
    "vehicles_1": ["bicycle", "bus", "motorcycle", "pickup_truck", "train"],
    "vehicles_2": ["lawn_mower", "rocket", "streetcar", "tank", "tractor"],
}
# CIFAR-100's fine label ids index this alphabetical list (FC100 pickles store those ids).
CIFAR100_FINE = sorted(c for cs in CIFAR100_HIERARCHY.values() for c in cs)

# Bertinetto et al. 2019, github.com/bertinetto/r2d2 (splits/bertinetto/{train,val,test}.txt).
CIFARFS_SPLIT = {
    "train": ["train", "skyscraper", "turtle", "raccoon", "spider", "orange", "castle",
              "keyboard", "clock", "pear", "girl", "seal", "elephant", "apple", "aquarium_fish",
              "bus", "mushroom", "possum", "squirrel", "chair", "tank", "plate", "wolf", "road",
              "mouse", "boy", "shrew", "couch", "sunflower", "tiger", "caterpillar", "lion",
              "streetcar", "lawn_mower", "tulip", "forest", "dolphin", "cockroach", "bear",
              "porcupine", "bee", "hamster", "lobster", "bowl", "can", "bottle", "trout",
              "snake", "bridge", "pine_tree", "skunk", "lizard", "cup", "kangaroo", "oak_tree",
              "dinosaur", "rabbit", "orchid", "willow_tree", "ray", "palm_tree", "mountain",
              "house", "cloud"],
    "val": ["otter", "motorcycle", "television", "lamp", "crocodile", "shark", "butterfly",
            "beaver", "beetle", "tractor", "flatfish", "maple_tree", "camel", "crab", "sea",
            "cattle"],
    "test": ["baby", "bed", "bicycle", "chimpanzee", "fox", "leopard", "man", "pickup_truck",
             "plain", "poppy", "rocket", "rose", "snail", "sweet_pepper", "table", "telephone",
             "wardrobe", "whale", "woman", "worm"],
}
# Oreshkin et al. 2018 (TADAM) superclass split: superclass ids {1..6, 9, 10, 15, 17..19} /
# {8, 11, 13, 16} / {0, 7, 12, 14}.
FC100_SUPERCLASSES = {
    "train": ["fish", "flowers", "food_containers", "fruit_and_vegetables",
              "household_electrical_devices", "household_furniture",
              "large_man-made_outdoor_things", "large_natural_outdoor_scenes", "reptiles", "trees",
              "vehicles_1", "vehicles_2"],
    "val": ["large_carnivores", "large_omnivores_and_herbivores", "non-insect_invertebrates",
            "small_mammals"],
    "test": ["aquatic_mammals", "insects", "medium_mammals", "people"],
}
FC100_SPLIT = {s: [c for sc in scs for c in CIFAR100_HIERARCHY[sc]]
               for s, scs in FC100_SUPERCLASSES.items()}

CIFAR_SOURCE = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz (extract it in <root>)"
FC100_SOURCE = "https://zenodo.org/record/7978538 (fc100.zip, learn2learn's mirror)"
CIFAR_LAYOUT = "<root>/cifar-100-python/{train,test,meta}"


def load_cifarfs(root: str | Path, image_size: int = 32, download: bool = True) -> FewShotDataset:
    root = Path(root).expanduser()
    l2l = root / "cifarfs" / "cifar100" / "data"
    if _python_dir(root) is None and l2l.is_dir():
        everything = _from_class_folders(l2l, image_size)
    else:
        everything = _from_python(root, image_size, download, "CIFAR-FS",
                                  f"{CIFAR_LAYOUT} or <root>/cifarfs/cifar100/data/<class>/*.png")
    return _dataset("cifarfs", everything, CIFARFS_SPLIT)


def load_fc100(root: str | Path, image_size: int = 32, download: bool = True) -> FewShotDataset:
    root = Path(root).expanduser()
    pickles = [root / f"FC100_{s}.pickle" for s in SPLITS]
    if _python_dir(root) is None and any(p.exists() for p in pickles):
        splits = _from_fc100_pickles(pickles, image_size)
        check_disjoint(splits, "FC100")
        return FewShotDataset.from_splits("fc100", splits, *stats.CIFAR100)
    everything = _from_python(root, image_size, download, "FC100",
                              f"{CIFAR_LAYOUT} or <root>/FC100_{{train,val,test}}.pickle")
    return _dataset("fc100", everything, FC100_SPLIT)


def _dataset(name: str, everything: ImageSplit, split: dict[str, list[str]]) -> FewShotDataset:
    ids = {c: i for i, c in enumerate(everything.class_names)}
    absent = [c for s in SPLITS for c in split[s] if c not in ids]
    if absent:
        raise DataError(f"{name}: the data has no class {absent[0]!r} ({len(absent)} of the "
                        f"split's classes are missing): it is not complete CIFAR-100; download "
                        f"it again from {CIFAR_SOURCE}")
    parts = {s: subset_classes(everything, [ids[c] for c in split[s]], s) for s in SPLITS}
    return FewShotDataset.from_splits(name, parts, *stats.CIFAR100)


def _python_dir(root: Path) -> Path | None:
    for d in (root / "cifar-100-python", root):
        if (d / "meta").is_file():
            return d
    return None


def _download(root: Path, dataset: str, layouts: str) -> None:
    from torchvision.datasets import CIFAR100

    download(lambda: CIFAR100(str(root), train=True, download=True), f"{dataset}: CIFAR-100",
             root, f"Put {CIFAR_SOURCE} there so that {layouts} exists; {DATA_DIR_HINT}")


def _from_python(root: Path, image_size: int, download: bool, dataset: str,
                 layouts: str) -> ImageSplit:
    base = _python_dir(root)
    if base is None:
        if not download:
            raise DataError(f"{dataset} not found: expected {layouts} with root={root}; get "
                            f"{CIFAR_SOURCE} or set dataset.download=true; {DATA_DIR_HINT}")
        _download(root, dataset, layouts)
        base = _python_dir(root)
        assert base is not None, "torchvision extracts cifar-100-python/ into root"
    files = [base / n for n in ("meta", "train", "test")]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise DataError(f"{base} lacks {', '.join(missing)}: expected {CIFAR_LAYOUT}; extract "
                        f"{CIFAR_SOURCE} again")
    key = fingerprint(files, image_size=image_size, v=1)
    return cached_splits("cifar100", key, lambda: {"all": _read_python(base, image_size)})["all"]


def _read_python(base: Path, image_size: int) -> ImageSplit:
    meta_path = base / "meta"
    meta = str_keys(load_pickle(meta_path, CIFAR_SOURCE), meta_path, ("fine_label_names",))
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta["fine_label_names"]]
    images, labels = [], []
    for part in ("train", "test"):
        path = base / part
        blob = str_keys(load_pickle(path, CIFAR_SOURCE), path, ("data", "fine_labels"))
        data = np.asarray(blob["data"])
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DataError(f"{path}: 'data' should be uint8 [N, 3072], got {data.dtype} "
                            f"{data.shape}; extract {CIFAR_SOURCE} again")
        if len(blob["fine_labels"]) != len(data):
            raise DataError(f"{path} has {len(data)} images but {len(blob['fine_labels'])} "
                            f"labels; extract {CIFAR_SOURCE} again")
        images.append(data.reshape(-1, 3, 32, 32))  # rows are R, G, B planes of 32x32
        labels.append(np.asarray(blob["fine_labels"], dtype=np.int64))
    y = np.concatenate(labels)
    if y.size == 0 or y.min() < 0 or y.max() >= len(names):
        raise DataError(f"{base}: fine labels outside 0..{len(names) - 1} or no images; extract "
                        f"{CIFAR_SOURCE} again")
    x = resize_uint8(torch.from_numpy(np.concatenate(images)), image_size)
    return grouped_split(x, y, names, "all")


def _from_class_folders(data: Path, image_size: int) -> ImageSplit:
    folders = class_folders(data)
    if not folders:
        raise DataError(f"{data} holds no class folders: expected <root>/cifarfs/cifar100/data/"
                        f"<class>/*.png; download CIFAR-100 again from {CIFAR_SOURCE}")
    return read_class_folders(folders, image_size, "RGB", "cifarfs-folders",
                              f"download CIFAR-100 again from {CIFAR_SOURCE}")


def _from_fc100_pickles(pickles: list[Path], image_size: int) -> dict[str, ImageSplit]:
    missing = [p.name for p in pickles if not p.is_file()]
    if missing:
        raise DataError(f"{', '.join(missing)} missing from {pickles[0].parent}: the FC100 "
                        f"pickle layout needs all three; download them from {FC100_SOURCE}")
    key = fingerprint(pickles, image_size=image_size, v=1)

    def build() -> dict[str, ImageSplit]:
        return {s: _read_fc100_pickle(p, s, image_size) for s, p in zip(SPLITS, pickles)}

    return cached_splits("fc100", key, build)


def _read_fc100_pickle(path: Path, split: str, image_size: int) -> ImageSplit:
    blob = str_keys(load_pickle(path, FC100_SOURCE), path, ("data", "labels"))
    data, labels = np.asarray(blob["data"]), np.asarray(blob["labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 4 or data.shape[-1] != 3:
        raise DataError(f"{path}: 'data' should be uint8 [N, 32, 32, 3], got {data.dtype} "
                        f"{data.shape}; download it again from {FC100_SOURCE}")
    if len(data) == 0 or len(data) != len(labels):
        raise DataError(f"{path} has {len(data)} images and {len(labels)} labels (the {split} "
                        f"split would be empty or mislabeled); download it again from "
                        f"{FC100_SOURCE}")
    if labels.min() < 0 or labels.max() >= len(CIFAR100_FINE):
        raise DataError(f"{path}: labels should be CIFAR-100 fine ids 0..99; download it again "
                        f"from {FC100_SOURCE}")
    x = resize_uint8(torch.from_numpy(np.ascontiguousarray(data.transpose(0, 3, 1, 2))),
                     image_size)
    return grouped_split(x, labels, CIFAR100_FINE, split)
