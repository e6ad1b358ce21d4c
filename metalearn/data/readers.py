"""Helpers shared by the format loaders: safe pickles, parallel image decoding, class grouping.

Dataset pickles come from Google Drive / Dropbox mirrors, which serve an HTML quota or login
page with a 200 status, and a plain `pickle.load` runs whatever code a file names. So pickles
are read by an unpickler that only builds numpy arrays and plain containers, and every
failure becomes a `DataError` that names the file and says where to get a good copy.
"""
from __future__ import annotations

import io
import os
import pickle
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from metalearn.data.base import SPLITS, ImageSplit
from metalearn.data.cache import cached_splits, fingerprint
from metalearn.errors import ConfigError, DataError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp",
                              ".ppm", ".pgm"})
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as PIL's convert("L")
DATA_DIR_HINT = ("set dataset.root=... or paths.data_dir=... (default: the METALEARN_DATA_DIR "
                 "environment variable, else ./data)")

# Everything a pickle of numpy arrays, lists, dicts and strings needs, under numpy 1 and 2 names.
_SAFE_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("collections", "OrderedDict"), ("_codecs", "encode"),
    # Protocol <= 2 spells some plain types as globals (e.g. empty bytes as __builtin__.bytes()).
    *((m, n) for m in ("builtins", "__builtin__")
      for n in ("bytes", "bytearray", "set", "frozenset", "complex")),
}


class _ForbiddenGlobal(pickle.UnpicklingError):
    pass


class _DataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _SAFE_GLOBALS:
            raise _ForbiddenGlobal(f"{module}.{name}")
        if module.startswith("numpy.core."):  # numpy 2 warns on the old module path
            module = "numpy._core." + module[len("numpy.core."):]
        return super().find_class(module, name)


def looks_like_html(head: bytes) -> bool:
    start = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return start.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or (
        start.startswith(b"<") and b"<html" in start[:1024])


def _head(path: Path, n: int = 1024) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def load_pickle(path: Path, source: str) -> Any:
    """Unpickle data (arrays, lists, dicts, str/bytes) only; Python 2 pickles are read as latin1.

    `source` is where a good copy comes from, for the error message.
    """
    if looks_like_html(_head(path)):
        raise DataError(f"{path} is an HTML page, not a pickle (a failed or quota-limited "
                        f"download); download it again from {source}")
    try:
        with open(path, "rb") as f:
            return _DataUnpickler(f, encoding="latin1").load()
    except _ForbiddenGlobal as e:
        raise DataError(f"{path} is not a dataset pickle: it names Python code ({e}) where only "
                        f"arrays and lists belong, so it was not loaded; download it again from "
                        f"{source}") from None
    except Exception as e:  # corrupt pickles fail with many exception types
        raise DataError(f"{path} is truncated or corrupt ({type(e).__name__}: {e}); download it "
                        f"again from {source}") from None


def str_keys(obj: Any, path: Path, required: Sequence[str]) -> dict[str, Any]:
    """A pickled dict with bytes keys (Python 2 / encoding='bytes') turned into str keys."""
    if not isinstance(obj, dict):
        raise DataError(f"{path} holds a {type(obj).__name__}, expected a dict with keys "
                        f"{list(required)}: it is not the expected file")
    out = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
    missing = [k for k in required if k not in out]
    if missing:
        raise DataError(f"{path} lacks the keys {missing} (it has {sorted(map(str, out))[:8]}): "
                        f"it is not the expected file")
    return out


def as_bytes(blob: Any) -> bytes | memoryview:
    # Python 2 pickles read as latin1 turn encoded images into str; numpy buffers pass as-is.
    if isinstance(blob, str):
        return blob.encode("latin1")
    if isinstance(blob, np.ndarray):
        return memoryview(np.ascontiguousarray(blob)).cast("B")
    return blob


def _open(src: Path | bytes | memoryview) -> Image.Image:
    return Image.open(src if isinstance(src, Path) else io.BytesIO(src))


def decode_image(src: Path | bytes | memoryview, size: int | None, mode: str) -> np.ndarray:
    """One image as uint8 [H, W, C]: converted to `mode` ('RGB' or 'L'), resized to size x size.

    Resizing ignores the aspect ratio, as the mini-ImageNet (Ravi & Larochelle) and CUB few-shot
    preprocessing does; LANCZOS matches Ravi & Larochelle's script.
    """
    with _open(src) as im:
        im = im.convert(mode)
        if size is not None and im.size != (size, size):
            im = im.resize((size, size), Image.LANCZOS)
        arr = np.asarray(im, dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def _head_of(src: Path | bytes | memoryview) -> bytes:
    if not isinstance(src, Path):
        return bytes(src[:1024])
    try:
        return _head(src)
    except OSError:
        return b""


def _describe_bad(src: Path | bytes | memoryview, where: str, err: Exception) -> DataError:
    if looks_like_html(_head_of(src)):
        return DataError(f"{where} is an HTML page, not an image: download or copy it again, or "
                         f"delete it")
    return DataError(f"cannot read image {where} ({type(err).__name__}: {err}): replace it with a "
                     f"good copy or delete it")


def decode_images(sources: Sequence[Path | bytes | memoryview], size: int | None, mode: str,
                  describe: Callable[[int], str] | None = None) -> torch.Tensor:
    """Decode many images into one preallocated uint8 [N, C, H, W] tensor, on all cores.

    PIL releases the GIL while decoding and resizing, so threads scale; writing each image
    straight into its slot of one array means the decoded set is held once, not twice.
    `describe(i)` names in-memory images in error messages.
    """
    if not sources:
        raise DataError("no images to decode")

    def where(i: int) -> str:
        return describe(i) if describe is not None else str(sources[i])

    def one(i: int) -> np.ndarray:
        try:
            return decode_image(sources[i], size, mode).transpose(2, 0, 1)
        except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, ... on bad files
            raise _describe_bad(sources[i], where(i), e) from None

    first = one(0)
    out = np.empty((len(sources),) + first.shape, dtype=np.uint8)
    out[0] = first

    def fill(i: int) -> None:
        img = one(i)
        if img.shape != first.shape:  # size=None keeps native sizes, which must then agree
            raise DataError(f"image {where(i)} is {img.shape[2]}x{img.shape[1]} but "
                            f"{where(0)} is {first.shape[2]}x{first.shape[1]}: set "
                            f"dataset.image_size to resize them all")
        out[i] = img

    def fill_block(block: range) -> None:
        for i in block:
            fill(i)

    # Blocks, not one task per image: ~800k futures would cost memory, and after a bad image
    # the blocks not yet started are cancelled instead of decoded for nothing.
    blocks = [range(s, min(s + 256, len(sources))) for s in range(1, len(sources), 256)]
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        futures = [pool.submit(fill_block, b) for b in blocks]
        try:
            for f in futures:
                f.result()
        finally:
            pool.shutdown(cancel_futures=True)
    return torch.from_numpy(out)


def nhwc_to_nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()


def resize_uint8(images: torch.Tensor, size: int, chunk: int = 1024) -> torch.Tensor:
    """Antialiased bilinear resize of uint8 [N, C, H, W] arrays already in memory."""
    if images.shape[-2:] == (size, size):
        return images
    out = torch.empty(images.shape[:2] + (size, size), dtype=torch.uint8)
    for s in range(0, images.shape[0], chunk):
        x = F.interpolate(images[s : s + chunk].float(), size=(size, size), mode="bilinear",
                          antialias=True, align_corners=False)
        out[s : s + chunk] = x.round_().clamp_(0, 255).to(torch.uint8)
    return out


def adapt_images(images: torch.Tensor, shape: tuple[int, int, int],
                 chunk: int = 1024) -> torch.Tensor:
    """uint8 [N, C, H, W] of another domain or source -> uint8 [N, *shape] (channels, then square
    size): gray -> RGB repeats the channel, RGB -> gray is the luminance `LUMA`."""
    channels, size = shape[0], shape[-1]
    have = images.shape[1]
    if have != channels and (have, channels) not in ((1, 3), (3, 1)):
        raise ConfigError(f"cannot map {have}-channel images onto a model trained on "
                          f"{channels}-channel ones: only gray <-> RGB is defined")
    out = torch.empty((images.shape[0], channels, size, size), dtype=torch.uint8)
    luma = torch.tensor(LUMA, dtype=torch.float32).view(1, 3, 1, 1)
    for s in range(0, images.shape[0], chunk):
        x = resize_uint8(images[s : s + chunk], size)
        if (have, channels) == (1, 3):
            x = x.expand(-1, 3, -1, -1)
        elif (have, channels) == (3, 1):
            x = (x.float() * luma).sum(1, keepdim=True).round_().clamp_(0, 255).to(torch.uint8)
        out[s : s + chunk] = x
    return out


def grouped_split(images: torch.Tensor, labels: Sequence[int] | np.ndarray,
                  class_names: Sequence[str], name: str) -> ImageSplit:
    """ImageSplit from images in any order; labels index `class_names`, unused names dropped."""
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    used, dense = torch.unique(labels, return_inverse=True)
    names = [class_names[int(c)] for c in used]
    if (dense[1:] >= dense[:-1]).all():  # already grouped: no copy of a multi-GB array
        return ImageSplit(images, dense, names, name)
    order = torch.sort(dense, stable=True).indices
    return ImageSplit(images[order], dense[order], names, name)


def subset_classes(split: ImageSplit, class_ids: Sequence[int], name: str) -> ImageSplit:
    """The classes `class_ids` of `split` (in that order) as a new split with labels 0..K-1."""
    ids = torch.as_tensor(list(class_ids), dtype=torch.int64)
    index = torch.cat([torch.arange(int(split.offsets[c]), int(split.offsets[c] + split.counts[c]))
                       for c in ids.tolist()])
    labels = torch.repeat_interleave(torch.arange(len(ids)), split.counts[ids])
    return ImageSplit(split.images[index], labels, [split.class_names[c] for c in ids], name)


def channel_stats(images: torch.Tensor, chunk: int = 256) -> tuple[tuple[float, ...],
                                                                     tuple[float, ...]]:
    """Per-channel mean/std in [0, 1] units of uint8 [N, C, H, W], without a float copy of N."""
    c = images.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    squares = torch.zeros(c, dtype=torch.float64)
    for s in range(0, images.shape[0], chunk):
        x = images[s : s + chunk].to(torch.float64).div_(255).transpose(0, 1).reshape(c, -1)
        total += x.sum(1)
        squares += x.pow(2).sum(1)
    n = images.numel() / c
    mean = total / n
    std = (squares / n - mean.pow(2)).clamp_min(1e-12).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


def require_dir(path: Path, dataset: str, layout: str) -> None:
    if not path.is_dir():
        raise DataError(f"{dataset} not found: {path} does not exist. Expected {layout}; "
                        f"{DATA_DIR_HINT}")


def image_files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir()
                  if f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith(".")
                  and f.is_file())


def class_folders(folder: Path) -> list[Path]:
    # Hidden folders (.git, .ipynb_checkpoints, old .metalearn-cache dirs) are not classes.
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def read_class_folders(folders: Sequence[Path], image_size: int | None, mode: str,
                       cache_name: str, fix: str) -> ImageSplit:
    """Every image of `folders` (one class each), decoded once into one split and cached.

    `mode` is PIL's 'RGB' or 'L'; `fix` ends the error for a folder with no images.
    """
    per_class = [image_files(d) for d in folders]
    for d, fs in zip(folders, per_class):
        if not fs:
            raise DataError(f"class folder {d} holds no images (.jpg, .png, ...): {fix}")
    files = [f for fs in per_class for f in fs]
    key = fingerprint(files, image_size=image_size, mode=mode, v=1)

    def build() -> dict[str, ImageSplit]:
        labels = [c for c, fs in enumerate(per_class) for _ in fs]
        return {"all": grouped_split(decode_images(files, image_size, mode), labels,
                                     [d.name for d in folders], "all")}

    return cached_splits(cache_name, key, build)["all"]


def split_by_ratio(n: int, ratios: Sequence[float], seed: int,
                   what: str) -> dict[str, list[int]]:
    """Class ids 0..n-1 split at random into train/val/test by `ratios` (fractions of classes)."""
    if len(ratios) != 3 or min(ratios) <= 0 or abs(sum(ratios) - 1) > 1e-6:
        raise ConfigError(f"dataset.split_ratios={list(ratios)}: give three positive fractions "
                          f"(train, val, test) that add up to 1")
    n_val, n_test = round(n * ratios[1]), round(n * ratios[2])
    sizes = [n - n_val - n_test, n_val, n_test]
    if min(sizes) < 1:
        raise DataError(f"{what} has {n} classes, which split by {list(ratios)} into {sizes} "
                        f"classes: every split needs at least one; add classes or change "
                        f"dataset.split_ratios")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return {s: sorted(ids.tolist()) for s, ids in zip(SPLITS, torch.split(perm, sizes))}


def split_by_lists(names: Sequence[str], lists: dict[str, Sequence[str]], where: dict[str, str],
                   absent: str) -> dict[str, list[int]]:
    """Class ids per split from lists of class names; `where[s]` names list s in errors,
    `absent` says where a listed class was looked for."""
    ids = {n: i for i, n in enumerate(names)}
    out = {}
    for s in SPLITS:
        listed = list(dict.fromkeys(lists.get(s) or []))
        if not listed:
            raise DataError(f"{where[s]} lists no classes, so the {s} split would be empty: "
                            f"add class names")
        unknown = [c for c in listed if c not in ids]
        if unknown:
            raise DataError(f"{where[s]} lists {len(unknown)} classes with no {absent}, e.g. "
                            f"{unknown[0]!r} (there are e.g. {list(names)[:5]}): fix the names")
        out[s] = [ids[c] for c in listed]
    return out


def check_disjoint(splits: dict[str, ImageSplit], dataset: str) -> None:
    seen: dict[str, str] = {}
    for name, split in splits.items():
        for c in split.class_names:
            if c in seen:
                raise DataError(f"{dataset}: class '{c}' is in both the {seen[c]} and the {name} "
                                f"split lists; edit them so that each class is in one split")
            seen[c] = name
