"""tiered-ImageNet (Ren et al. 2018): 351/97/160 classes from 20/6/8 ImageNet categories.

Reads the pickles of Ren et al.'s release, as learn2learn downloads them, from `root`:
  {train,val,test}_images_png.pkl  a list (or object array) of PNG-encoded 84x84 images
  {train,val,test}_labels.pkl      a dict with 'label_specific' (class id per image) and,
                                   optionally, 'label_specific_str' (class names by id),
                                   'label_general', 'label_general_str' (categories; unused)
The release was pickled by Python 2, hence latin1 decoding. The decoded splits take 16.5 GB
(train alone 9.5 GB): the first load decodes ~780k PNGs (minutes) and needs ~20 GB of RAM;
later loads read the cache.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from metalearn.data import stats
from metalearn.data.base import SPLITS, FewShotDataset, ImageSplit
from metalearn.data.cache import cached_splits, fingerprint
from metalearn.data.readers import (as_bytes, check_disjoint, decode_images, grouped_split,
                                    load_pickle, require_dir, str_keys)
from metalearn.errors import DataError

SOURCE = ("https://zenodo.org/record/7978538 (learn2learn's mirror: rename "
          "tiered-imagenet-<file> to <file>) or the tiered_imagenet.tar linked from "
          "github.com/renmengye/few-shot-ssl-public")
LAYOUT = ("<root>/{train,val,test}_images_png.pkl and <root>/{train,val,test}_labels.pkl, with "
          "root=<data_dir>/tiered-imagenet by default")


def _files(root: Path) -> list[Path]:
    return [root / f"{s}_{kind}.pkl" for s in SPLITS for kind in ("images_png", "labels")]


def load_tieredimagenet(root: str | Path, image_size: int = 84) -> FewShotDataset:
    root = Path(root).expanduser()
    require_dir(root, "tiered-ImageNet", LAYOUT)
    missing = [f.name for f in _files(root) if not f.is_file()]
    if missing:
        raise DataError(f"tiered-ImageNet files missing from {root}: {', '.join(missing)}. "
                        f"Expected {LAYOUT}; download them from {SOURCE}")
    key = fingerprint(_files(root), image_size=image_size, v=1)
    splits = cached_splits("tieredimagenet", key,
                           lambda: {s: _read_split(root, s, image_size) for s in SPLITS})
    check_disjoint(splits, "tiered-ImageNet")
    return FewShotDataset.from_splits("tieredimagenet", splits, *stats.MINIIMAGENET)


def _labels(path: Path) -> tuple[np.ndarray, list[str] | None]:
    meta = str_keys(load_pickle(path, SOURCE), path, ("label_specific",))
    labels = np.asarray(meta["label_specific"])
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: 'label_specific' should be a 1-D integer array, got "
                        f"{labels.dtype} {labels.shape}; download it again from {SOURCE}")
    if labels.size and labels.min() < 0:
        raise DataError(f"{path}: 'label_specific' holds negative class ids; download it again "
                        f"from {SOURCE}")
    names = meta.get("label_specific_str")
    if names is not None and labels.size and len(names) > labels.max():
        names = [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]
    else:  # absent or too short to name every class id
        names = None
    return labels.astype(np.int64), names


def _read_split(root: Path, split: str, image_size: int) -> ImageSplit:
    labels_path, images_path = root / f"{split}_labels.pkl", root / f"{split}_images_png.pkl"
    labels, names = _labels(labels_path)
    blobs = load_pickle(images_path, SOURCE)
    if not isinstance(blobs, (list, tuple, np.ndarray)):
        raise DataError(f"{images_path} holds a {type(blobs).__name__}, expected a list of "
                        f"PNG-encoded images; download it again from {SOURCE}")
    if len(blobs) == 0 or labels.size == 0:
        raise DataError(f"{images_path} / {labels_path.name} hold no images, so the {split} "
                        f"split would be empty; download them again from {SOURCE}")
    if len(blobs) != len(labels):
        raise DataError(f"{images_path} holds {len(blobs)} images but {labels_path.name} labels "
                        f"{len(labels)}: the two come from different downloads; download both "
                        f"again from {SOURCE}")
    # Decoding in class order fills the array already grouped, so it is never copied.
    order = np.argsort(labels, kind="stable")
    images = decode_images([as_bytes(blobs[i]) for i in order], image_size, "RGB",
                           describe=lambda j: f"image #{order[j]} of {images_path}")
    del blobs
    if names is None:
        names = [f"{split}{c:03d}" for c in range(int(labels.max()) + 1)]
    return grouped_split(images, labels[order], names, split)
