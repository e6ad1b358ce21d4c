"""Omniglot (Lake et al. 2015) from torchvision's extracted-folder layout.

Expected: <root>/omniglot-py/images_{background,evaluation}/<Alphabet>/<characterNN>/*.png.
torchvision's `Omniglot` refuses these folders unless its zips sit beside them with the right
md5, so the folders are read directly; torchvision is used only to download when they are
absent. Preprocessing follows Finn et al. 2017: 28x28 (LANCZOS), ink = 1, and the four 90°
rotations of every character as separate classes, after the characters are split, so no
split ever sees a rotation of another split's character.

Two splits of the 1623 characters: `seeded` (default) shuffles all of them with `split_seed`
into `split_sizes` (Vinyals et al. 2016 / Finn et al. 2017); `lake` is Lake et al.'s
background/evaluation split: the 964 characters of the 30 `images_background` alphabets train,
the 659 of the 20 `images_evaluation` alphabets test, so every test character comes from an
alphabet never seen in training. Its validation set is `val_alphabets` whole background
alphabets drawn with `split_seed`, so validation too measures transfer to unseen alphabets.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from metalearn.data.base import FewShotDataset, ImageSplit, download
from metalearn.data.cache import cached_splits, fingerprint
from metalearn.errors import DataError

FOLDERS = ("images_background", "images_evaluation")
LAYOUT = "<data_dir>/omniglot-py/images_{background,evaluation}/<Alphabet>/<characterNN>/*.png"


def _download(data_dir: Path) -> None:
    from torchvision.datasets import Omniglot

    download(lambda: [Omniglot(str(data_dir), background=b, download=True) for b in (True, False)],
             "Omniglot", data_dir,
             f"Put the extracted folders at {LAYOUT} and point paths.data_dir (or the "
             f"METALEARN_DATA_DIR environment variable) at <data_dir>")


def _characters(base: Path) -> list[Path]:
    return sorted(c for folder in FOLDERS for c in (base / folder).glob("*/*") if c.is_dir())


def _decode(chars: list[Path], image_size: int) -> ImageSplit:
    images, labels = [], []
    for label, char in enumerate(chars):
        files = sorted(char.glob("*.png"))
        if not files:
            raise DataError(f"Omniglot character folder {char} holds no .png files")
        for f in files:
            try:
                with Image.open(f) as im:
                    im = im.convert("L").resize((image_size, image_size), Image.LANCZOS)
                    images.append(255 - np.asarray(im, dtype=np.uint8))
            except (OSError, ValueError) as e:
                raise DataError(f"cannot read image {f}: {e}. Replace or delete it") from None
            labels.append(label)
    names = [f"{c.parent.name}/{c.name}" for c in chars]
    return ImageSplit(torch.from_numpy(np.stack(images))[:, None], torch.tensor(labels), names,
                      "omniglot")


def _with_rotations(chars: ImageSplit, ids: torch.Tensor, name: str) -> ImageSplit:
    images, labels, names = [], [], []
    for new, c in enumerate(ids.tolist()):
        start, count = int(chars.offsets[c]), int(chars.counts[c])
        block = chars.images[start : start + count]
        for r in range(4):
            images.append(torch.rot90(block, r, dims=(2, 3)))
            labels.append(torch.full((count,), 4 * new + r))
            names.append(f"{chars.class_names[c]}/rot{90 * r:03d}")
    return ImageSplit(torch.cat(images), torch.cat(labels), names, name)


SPLITS = ("seeded", "lake")


def _lake_ids(chars: list[Path], val_alphabets: int, seed: int) -> list[torch.Tensor]:
    """Character ids (indices into the sorted `chars`) of train/val/test in Lake's split."""
    folder = [c.parent.parent.name for c in chars]
    background = sorted({c.parent.name for c, f in zip(chars, folder) if f == FOLDERS[0]})
    if not 0 < val_alphabets < len(background):
        raise DataError(f"dataset.val_alphabets={val_alphabets}: the Lake split needs between 1 "
                        f"and {len(background) - 1} of the {len(background)} background alphabets "
                        f"for validation")
    order = torch.randperm(len(background), generator=torch.Generator().manual_seed(seed))
    val = {background[i] for i in order[:val_alphabets].tolist()}
    ids: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for i, (c, f) in enumerate(zip(chars, folder)):
        part = "test" if f == FOLDERS[1] else "val" if c.parent.name in val else "train"
        ids[part].append(i)
    return [torch.tensor(ids[p]) for p in ("train", "val", "test")]


def load_omniglot(root: str | Path, image_size: int = 28, split_sizes: tuple = (1100, 100, 423),
                  split_seed: int = 0, rotations: bool = True, download: bool = True,
                  split: str = "seeded", val_alphabets: int = 5) -> FewShotDataset:
    if split not in SPLITS:
        raise DataError(f"dataset.split={split!r}: choose seeded (characters shuffled into "
                        f"split_sizes) or lake (background alphabets train, evaluation test)")
    data_dir = Path(root).expanduser()
    base = data_dir / "omniglot-py"
    if not all((base / f).is_dir() for f in FOLDERS):
        if not download:
            raise DataError(f"Omniglot not found: expected {LAYOUT} with data_dir={data_dir}. "
                            f"Set paths.data_dir=... or METALEARN_DATA_DIR, or dataset.download=true")
        _download(data_dir)
    chars = _characters(base)
    if not chars:
        raise DataError(f"no character folders found in {base}: expected {LAYOUT}")
    key = fingerprint([f for c in chars for f in c.glob("*.png")], image_size=image_size, v=1)
    everything = cached_splits("omniglot", key,
                               lambda: {"all": _decode(chars, image_size)})["all"]
    if split == "lake":
        ids = _lake_ids(chars, val_alphabets, split_seed)
    else:
        n = everything.num_classes
        sizes = list(split_sizes)
        if sum(sizes) != n:
            raise DataError(f"dataset.split_sizes={sizes} must add up to the {n} characters "
                            f"found in {base} (1623 in the full Omniglot)")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
        ids = torch.split(perm, sizes)
    build = _with_rotations if rotations else _without_rotations
    train, val, test = (build(everything, i.sort().values, nm)
                        for i, nm in zip(ids, ("train", "val", "test")))
    # ink as 1 (Finn et al. 2017): the files' pixels were inverted
    return FewShotDataset("omniglot", train, val, test, mean=(0.0,), std=(1.0,), invert=True)


def _without_rotations(chars: ImageSplit, ids: torch.Tensor, name: str) -> ImageSplit:
    index = torch.cat([torch.arange(int(chars.offsets[c]), int(chars.offsets[c] + chars.counts[c]))
                       for c in ids.tolist()])
    labels = torch.repeat_interleave(torch.arange(len(ids)), chars.counts[ids])
    return ImageSplit(chars.images[index], labels, [chars.class_names[c] for c in ids], name)
