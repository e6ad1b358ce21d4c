"""Writes that fail as one `DiskError` naming the path, whatever layer noticed the full disk.

A full, read-only or over-quota disk surfaces as `OSError` from Python's file API, and as a
`RuntimeError` from torch.save's zip writer ("[enforce fail at inline_container.cc] ...
unexpected pos", the OSError only as its context). Wrap a write in `disk_errors(path)` and
the caller sees one `DiskError` (exit code 74, docs/faults.md) instead.
"""
from __future__ import annotations

import errno
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from metalearn.errors import DiskError

# The checkpoints a training run can be continued from (engine/checkpoint.py: TrainingState):
# io imports no torch, so the command line is checked against these before anything starts.
RESUMABLE = ("last.pt", "last.prev.pt", "best.pt")

DISK_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EFBIG,
               errno.EIO}
_TORCH_WRITE_FAILED = ("inline_container", "file write failed", "unexpected pos")


def disk_error(e: BaseException, path: Path | str | None) -> DiskError | None:
    """The DiskError for `e` (or for what caused it), or None if `e` is not a failed write."""
    while e is not None:
        if isinstance(e, DiskError):
            return e
        if isinstance(e, OSError) and e.errno in DISK_ERRNOS:
            # Hydra's own writes (.hydra/*.yaml) fail at close, where OSError names no file
            where = path if path is not None else e.filename or "the run directory's files"
            return DiskError(f"cannot write {where}: {e.strerror or os.strerror(e.errno)}. "
                             f"{_FIX.get(e.errno, _FIX[errno.ENOSPC])}")
        if isinstance(e, RuntimeError) and any(s in str(e) for s in _TORCH_WRITE_FAILED):
            cause = disk_error(e.__cause__ or e.__context__, path)
            return cause or DiskError(f"cannot write {path}: the write stopped short (disk full "
                                      f"or quota?). {_FIX[errno.ENOSPC]}")
        e = e.__cause__ or e.__context__
    return None


_KEPT = "checkpoints already saved are kept: run again with resume=auto"
_FIX = {
    errno.ENOSPC: f"Free space (or write elsewhere: hydra.run.dir=<dir>); {_KEPT}",
    errno.EDQUOT: f"Free quota (or write elsewhere: hydra.run.dir=<dir>); {_KEPT}",
    errno.EROFS: f"Write to a writable folder: hydra.run.dir=<dir>; {_KEPT}",
    errno.EACCES: f"Write to a folder you may write to: hydra.run.dir=<dir>; {_KEPT}",
}
_FIX[errno.EPERM] = _FIX[errno.EACCES]


@contextmanager
def disk_errors(path: Path | str) -> Iterator[None]:
    """Re-raise a failed write to `path` as DiskError; anything else passes through."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        err = disk_error(e, path)
        if err is None:
            raise
        raise err from e


def write_text(path: Path, text: str) -> None:
    """`path.write_text(text)`, all or nothing: a failed write leaves the old file (or none)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with disk_errors(path):
        try:
            tmp.write_text(text)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


MANIFEST = "manifest.json"


def note_written(path: Path) -> None:
    """Add `path` (a file or folder directly in a run directory) to that run's manifest, if the
    directory has one: `overwrite=true` later deletes what the manifest lists and nothing else,
    so a user's own file of the same name is never taken for the run's."""
    manifest = path.parent / MANIFEST
    if not manifest.is_file():
        return  # not a run directory the project set up (or an older run's): nothing to claim
    names = read_manifest(path.parent)
    if names is None or path.name in names:
        return
    write_text(manifest, json.dumps({"written_by": "metalearn", "files": [*names, path.name]},
                                    indent=1))


def read_manifest(run_dir: Path) -> list[str] | None:
    """The names the run in `run_dir` wrote; None if there is no manifest or it is not one."""
    try:
        data = json.loads((run_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        return None
    return files
