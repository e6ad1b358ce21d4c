"""mini-ImageNet (Vinyals et al. 2016) with the Ravi & Larochelle 2017 split: 64/16/20 classes.

Two layouts of `root` are recognised:
  * learn2learn's pickles mini-imagenet-cache-{train,validation,test}.pkl, each a dict with
    'image_data' (uint8 [N, 84, 84, 3]) and 'class_dict' ({synset: [image indices]});
  * Ravi & Larochelle's images/*.jpg with {train,val,test}.csv (header `filename,label`);
    images are resized to image_size x image_size (LANCZOS, aspect ignored) as their script does.
Classes are ordered by synset name in both, so a class id means the same thing either way.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from metalearn.data import stats
from metalearn.data.base import SPLITS, FewShotDataset, ImageSplit
from metalearn.data.cache import cached_splits, fingerprint
from metalearn.data.readers import (DATA_DIR_HINT, check_disjoint, decode_images, grouped_split,
                                    load_pickle, nhwc_to_nchw, require_dir, resize_uint8,
                                    str_keys)
from metalearn.errors import ConfigError, DataError

PICKLES = {"train": "mini-imagenet-cache-train.pkl", "val": "mini-imagenet-cache-validation.pkl",
           "test": "mini-imagenet-cache-test.pkl"}
CSVS = {s: f"{s}.csv" for s in SPLITS}
PICKLE_SOURCE = ("https://zenodo.org/record/7978538 (learn2learn's mirror, files "
                 "mini-imagenet-cache-*.pkl)")
CSV_REPO = "https://github.com/twitter-research/meta-learning-lstm/tree/master/data/miniImagenet"
CSV_SOURCE = f"{CSV_REPO} (the CSVs; the images are cut from ImageNet by that repo's script)"
LAYOUT = ("<root>/mini-imagenet-cache-{train,validation,test}.pkl (learn2learn) or "
          "<root>/images/*.jpg + <root>/{train,val,test}.csv (Ravi & Larochelle), with "
          "root=<data_dir>/mini-imagenet by default")


def load_miniimagenet(root: str | Path, image_size: int = 84,
                      layout: str = "auto") -> FewShotDataset:
    """`layout`: auto | pickle | csv."""
    root = Path(root).expanduser()
    require_dir(root, "mini-ImageNet", LAYOUT)
    layout = _detect(root) if layout == "auto" else layout
    if layout == "pickle":
        splits = _from_pickles(root, image_size)
    elif layout == "csv":
        splits = _from_csvs(root, image_size)
    else:
        raise ConfigError(f"dataset.layout={layout!r}: use auto, pickle or csv")
    check_disjoint(splits, "mini-ImageNet")
    return FewShotDataset.from_splits("miniimagenet", splits, *stats.MINIIMAGENET)


def _detect(root: Path) -> str:
    if any((root / f).exists() for f in PICKLES.values()):
        return "pickle"
    if (root / "images").is_dir() or any((root / f).exists() for f in CSVS.values()):
        return "csv"
    raise DataError(f"no mini-ImageNet files in {root}: expected {LAYOUT}. Get the pickles from "
                    f"{PICKLE_SOURCE}; {DATA_DIR_HINT}")


# learn2learn's pickles already hold decoded 84x84 uint8 arrays, which load as fast as a cache
# file would, so they skip `cached_splits` rather than copy ~1.7 GB into the cache dir.
def _from_pickles(root: Path, image_size: int) -> dict[str, ImageSplit]:
    missing = [PICKLES[s] for s in SPLITS if not (root / PICKLES[s]).is_file()]
    if missing:
        raise DataError(f"{', '.join(missing)} missing from {root}: the pickle layout needs all "
                        f"three of {sorted(PICKLES.values())}; download them from {PICKLE_SOURCE}")
    return {s: _read_pickle(root / PICKLES[s], s, image_size) for s in SPLITS}


def _read_pickle(path: Path, split: str, image_size: int) -> ImageSplit:
    blob = str_keys(load_pickle(path, PICKLE_SOURCE), path, ("image_data", "class_dict"))
    images, class_dict = blob["image_data"], blob["class_dict"]
    if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4
            and images.shape[-1] == 3):
        got = (f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray)
               else type(images).__name__)
        raise DataError(f"{path}: 'image_data' should be uint8 [N, H, W, 3], got {got}; download "
                        f"it again from {PICKLE_SOURCE}")
    if not isinstance(class_dict, dict) or not class_dict or len(images) == 0:
        raise DataError(f"{path} holds no classes or no images (the {split} split is empty); "
                        f"download it again from {PICKLE_SOURCE}")
    names = sorted(class_dict, key=str)
    labels = np.full(len(images), -1, dtype=np.int64)
    for c, name in enumerate(names):
        index = np.asarray(class_dict[name], dtype=np.int64)
        if index.size and (index.min() < 0 or index.max() >= len(images)):
            raise DataError(f"{path}: class {name!r} lists image indices outside "
                            f"0..{len(images) - 1}; the file is corrupt: download it again from "
                            f"{PICKLE_SOURCE}")
        labels[index] = c
    keep = np.flatnonzero(labels >= 0)  # images no class claims are left out
    order = keep[np.argsort(labels[keep], kind="stable")]
    tensor = resize_uint8(nhwc_to_nchw(images[order]), image_size)
    str_names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return grouped_split(tensor, labels[order], str_names, split)


def _read_csv(root: Path, split: str) -> tuple[list[Path], list[str]]:
    path = root / CSVS[split]
    if not path.is_file():
        raise DataError(f"{path} is missing: the Ravi & Larochelle layout needs images/ plus "
                        f"train.csv, val.csv and test.csv (header filename,label) in {root}; get "
                        f"the CSVs from {CSV_SOURCE}")
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        rows = [r for r in csv.reader(f) if r]
    if not rows or [c.strip() for c in rows[0]] != ["filename", "label"]:
        head = ",".join(rows[0])[:60] if rows else "nothing"
        raise DataError(f"{path} should start with the header 'filename,label', found {head!r}; "
                        f"get the CSVs from {CSV_SOURCE}")
    body = rows[1:]
    if not body:
        raise DataError(f"{path} lists no images, so the {split} split would be empty; get the "
                        f"CSVs from {CSV_SOURCE}")
    for line, r in enumerate(body, start=2):
        if len(r) != 2:
            raise DataError(f"{path} line {line} has {len(r)} fields, expected filename,label")
    files = [root / "images" / r[0].strip() for r in body]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise DataError(f"{path} lists {len(missing)} images that are not in {root / 'images'}, "
                        f"e.g. {missing[0].name}: add them (the images are cut from ImageNet by "
                        f"{CSV_REPO})")
    return files, [r[1].strip() for r in body]


def _from_csvs(root: Path, image_size: int) -> dict[str, ImageSplit]:
    listed = {s: _read_csv(root, s) for s in SPLITS}
    files = [f for fs, _ in listed.values() for f in fs]
    csvs = [root / CSVS[s] for s in SPLITS]
    key = fingerprint(csvs + files, image_size=image_size, layout="csv", v=1)

    def build() -> dict[str, ImageSplit]:
        out = {}
        for s, (fs, labels) in listed.items():
            names = sorted(set(labels))
            ids = {n: i for i, n in enumerate(names)}
            out[s] = grouped_split(decode_images(fs, image_size, "RGB"),
                                   [ids[n] for n in labels], names, s)
        return out

    return cached_splits("miniimagenet", key, build)

