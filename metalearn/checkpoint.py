"""The checkpoint file format: written atomically, read without running any code.

A checkpoint is a dict of tensors and plain containers of str/int/float/bool/None with
`format` and `version` keys, saved with `torch.save` and read with
`torch.load(weights_only=True)`, so a tampered file cannot execute anything. What a training
run puts in it is `metalearn.engine.checkpoint.TrainingState`; inference reads only `model`,
`config` and `preprocessing`.
"""
from __future__ import annotations

import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from metalearn.errors import TrainingError
from metalearn.io import RESUMABLE, disk_errors, note_written  # noqa: F401  (RESUMABLE: re-exported)

FORMAT, VERSION = "metalearn-checkpoint", 2


class ForeignCheckpoint(TrainingError):
    """A file that is not a checkpoint this version of metalearn wrote: never skipped silently."""


def save(state: dict[str, Any], path: Path, keep_previous: bool = False) -> None:
    """A failed write (disk full, read-only, ...) raises DiskError and leaves `path` as it was."""
    with disk_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())
            if keep_previous and path.exists():
                note_written(path.with_suffix(".prev.pt"))  # before: a kill between leaves it listed
                os.replace(path, path.with_suffix(".prev.pt"))
            note_written(path)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def save_rotating(state: dict[str, Any], path: Path) -> None:
    """Save `path`, keeping its previous version as `<stem>.prev.pt`: a fallback if the new
    file is later damaged (e.g. a disk quota hit after the rename)."""
    save(state, path, keep_previous=True)


def remove_temp_files(run_dir: Path, names: tuple[str, ...]) -> None:
    """Temp files a kill mid-`save` of one of `names` left behind (each the size of a
    checkpoint)."""
    for name in names:
        for tmp in run_dir.glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)


def _not_torch_file(path: Path) -> TrainingError | None:
    """A file torch.save never wrote (metrics.jsonl, config.yaml, an image) is no checkpoint at
    all: "corrupt ... delete it" would send the user to delete their own file."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return None
    if head[:2] == b"PK" or head[:1] == b"\x80":  # zip (torch >= 1.6) or a pickle's PROTO
        return None
    return TrainingError(f"{path} is not a checkpoint (not a file torch.save wrote): give a "
                         f".pt checkpoint such as last.pt or best.pt, or a run directory")


def load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A metalearn checkpoint, read as data only. Raises ForeignCheckpoint for anything else."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise TrainingError(f"checkpoint {path} does not exist") from None
    except pickle.UnpicklingError as e:  # torch's weights-only unpickler refused it
        imported = re.search(r"GLOBAL (\S+)", str(e))
        if imported is None:
            raise _not_torch_file(path) or TrainingError(f"checkpoint {path} is corrupt or truncated (not a readable "
                                f"pickle); delete it or use another checkpoint") from None
        raise ForeignCheckpoint(
            f"refusing to load {path}: it holds more than tensors and plain values (it imports "
            f"{imported[1]}), so it was not written by metalearn and loading it could run code; "
            f"delete it, or start a new run elsewhere") from None
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise _not_torch_file(path) or TrainingError(f"checkpoint {path} is corrupt or truncated ({type(e).__name__}: "
                            f"{first}); delete it or use another checkpoint") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = (f"a dict with keys {', '.join(map(str, list(state)[:5]))}"
                 if isinstance(state, dict) else f"a {type(state).__name__}")
        raise ForeignCheckpoint(f"{path} is not a metalearn checkpoint (expected a dict with "
                                f"format={FORMAT!r}, found {found}); delete it or move it out "
                                f"of the run directory")
    if state.get("version") != VERSION:
        raise ForeignCheckpoint(f"{path} is a version {state.get('version')} metalearn "
                                f"checkpoint; this metalearn reads version {VERSION}: continue it "
                                f"with the metalearn that wrote it, or start a new run")
    return state
