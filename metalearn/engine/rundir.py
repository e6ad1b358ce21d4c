"""One writer per run directory, and no run silently written over another.

`claim(run_dir)` holds `run.lock` (owner PID and host) while a run writes there: a second run
into the same directory is refused; a lock whose owner died on this host (a crash, kill -9) is
taken over with a warning. `prepare(run_dir, ...)` refuses a directory that already holds a
metalearn run unless the run is resumed or `overwrite=true` asks to start over, which removes
the old run's files first. Hydra's own files (`.hydra/`, `<job>.log`) are not a run: Hydra
writes them into every run directory before the run starts.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from metalearn.engine.checkpoint import RESUMABLE, remove_temp_files
from metalearn.errors import ConfigError, TrainingError

log = logging.getLogger(__name__)

LOCK = "run.lock"
# What a metalearn run writes (eval-*.json: scripts/evaluate.py; online.*: an online stream);
# a finished run has results.json.
ONLINE_STATE = ("online.pt", "online.prev.pt")
RUN_FILES = ("results.json", *RESUMABLE, *ONLINE_STATE, "metrics.jsonl", "config.yaml",
             "stream.json", "online_curve.png")
RUN_GLOBS = ("eval-*.json",)
RUN_DIRS = ("wandb",)


def resolve(resume: object, run_dir: Path) -> Path:
    """The directory a run writes to: the one `resume=<run dir>` names, else `run_dir`."""
    if not isinstance(resume, str) or resume in ("", "auto"):
        return Path(run_dir)
    if Path(resume).is_file():
        raise ConfigError(f"resume={resume}: a file, not a run directory; pass the directory "
                          f"that holds it (resume={Path(resume).parent}), which continues from "
                          f"its newest checkpoint")
    if not Path(resume).is_dir():
        raise ConfigError(f"resume={resume}: no such directory; pass a run's output directory")
    return Path(resume)


@contextmanager
def claim(run_dir: Path) -> Iterator[None]:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _owner(path)
            if owner is None or _alive(owner, me["host"]):
                who = (f"PID {owner['pid']} on {owner['host']}" if owner
                       else "a run that is starting")
                raise TrainingError(
                    f"{run_dir} is in use by {who} (lock file {path}): wait for that run to end "
                    f"or choose another hydra.run.dir; delete the lock file only if no run "
                    f"writes there") from None
            warnings.warn(f"{path}: its owner, PID {owner['pid']} on this host, is gone (a "
                          f"crash?); taking the run directory over", stacklevel=3)
            path.unlink(missing_ok=True)  # then retry: another process may take it first
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    try:
        yield
    finally:
        if _owner(path) == me:
            path.unlink(missing_ok=True)


def _owner(path: Path) -> dict | None:
    try:
        owner = json.loads(path.read_text())
        return owner if isinstance(owner, dict) and {"pid", "host"} <= owner.keys() else None
    except (OSError, ValueError):  # gone, or being written by a run that is starting
        return None


def _alive(owner: dict, host: str) -> bool:
    """True unless the owner is known to be dead: on another host it cannot be checked."""
    if owner["host"] != host:
        return True
    try:
        os.kill(int(owner["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def existing_run(run_dir: Path) -> list[Path]:
    """The files of a metalearn run in `run_dir` (nothing of Hydra's)."""
    found = [run_dir / n for n in RUN_FILES + RUN_DIRS if (run_dir / n).exists()]
    return found + [p for g in RUN_GLOBS for p in sorted(run_dir.glob(g))]


def prepare(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Make `run_dir` ready for this run (called by the lock holder): stray temp files go; an
    earlier run is continued (`resume`), removed (`overwrite`) or protected (refused)."""
    if resume and overwrite:
        raise ConfigError("resume and overwrite=true contradict each other: drop one")
    remove_temp_files(run_dir)
    found = existing_run(run_dir)
    if resume or not found:
        return
    if not overwrite:
        what = ("a finished run (results.json)" if (run_dir / "results.json").exists() else
                "a resumable run" if any((run_dir / n).exists()
                                         for n in (*RESUMABLE, *ONLINE_STATE)) else
                "files of an earlier run")
        raise ConfigError(f"{run_dir} holds {what}: continue it with resume=true (or resume="
                          f"auto), start it over with overwrite=true (deletes "
                          f"{', '.join(p.name for p in found)}), or choose another hydra.run.dir")
    log.warning("overwrite=true: removing the earlier run's %s from %s",
                ", ".join(p.name for p in found), run_dir)
    for p in found:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
