"""Decode a dataset once, keep the uint8 tensors on disk, load them in seconds next time.

The cache lives in METALEARN_CACHE_DIR (default ~/.cache/metalearn), never beside the data:
shared datasets sit on read-only or group-owned mounts, and a cache written there by one
user (or by root, who ignores write bits) would surprise everyone else.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import torch

from metalearn.data.base import ImageSplit

Splits = dict[str, ImageSplit]


def fingerprint(files: list[Path], **params: object) -> str:
    """Key from file names, sizes and mtimes plus preprocessing params: any change rebuilds."""
    h = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode())
    for f in sorted(files):
        st = f.stat()
        # fsencode: a name that is not valid UTF-8 holds surrogates, which .encode() refuses
        h.update(os.fsencode(f) + f"\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def cache_dir() -> Path:
    return Path(os.environ.get("METALEARN_CACHE_DIR", Path.home() / ".cache" / "metalearn"))


def cached_splits(name: str, key: str, build: Callable[[], Splits]) -> Splits:
    """Return `build()`'s splits, from `<cache_dir>/<name>-<key>.pt` when it exists."""
    path = cache_dir() / f"{name}-{key}.pt"
    if path.is_file():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            return {k: ImageSplit(v["images"], v["labels"], v["class_names"], k)
                    for k, v in blob.items()}
        except Exception:  # a half-written or stale cache is only a lost shortcut: rebuild
            pass
    splits = build()
    blob = {k: {"images": s.images, "labels": s.labels, "class_names": s.class_names}
            for k, s in splits.items()}
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            torch.save(blob, f)
        os.replace(tmp, path)
    # torch.save reports a full disk as RuntimeError ("unexpected pos"), not OSError
    except (OSError, RuntimeError) as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        warnings.warn(f"could not write the dataset cache {path} ({reason}); training goes on "
                      f"without it. Free space or set METALEARN_CACHE_DIR to a writable folder "
                      f"to make the next start fast", stacklevel=2)
    return splits
