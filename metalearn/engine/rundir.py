"""One writer per run directory, and no run silently written over another.

`claim(run_dir)` holds `run.lock` while a run writes there, touching it as a heartbeat: a second
run into the same directory is refused; a lock is taken over (atomically: one taker wins) once
its owner is known dead on this host and PID namespace, or its heartbeat is older than
METALEARN_LOCK_STALE_S (10 min), wherever the owner ran. `prepare(run_dir, ...)` refuses a
directory that already holds a metalearn run unless the run is resumed or `overwrite=true`
asks to start over, which deletes exactly what the old run's `manifest.json` lists. Hydra's
log (`<job>.log`, appended to) and `.hydra/` are not the run's files: `save_hydra_files` writes
`.hydra/` once this run holds the lock and `prepare` has let it in.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import threading
import time
import uuid
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from metalearn import io
from metalearn.checkpoint import remove_temp_files
from metalearn.io import MANIFEST, read_manifest
from metalearn.errors import ConfigError, TrainingError

log = logging.getLogger(__name__)

LOCK = "run.lock"
# What every metalearn run writes (eval-*.json: scripts/evaluate.py); a finished run has
# results.json. Each run kind adds its own checkpoints and outputs (engine/run.py: RunState).
RUN_FILES = ("results.json", "metrics.jsonl", "config.yaml")
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


STALE_ENV = "METALEARN_LOCK_STALE_S"
STALE_DEFAULT_S = 600.0


def stale_after() -> float:
    """Seconds without a heartbeat after which a lock counts as its dead owner's, wherever that
    ran (another node, another PID namespace, a kill -9): METALEARN_LOCK_STALE_S, else 10 min."""
    try:
        value = float(os.environ.get(STALE_ENV, STALE_DEFAULT_S))
    except ValueError:
        raise ConfigError(f"{STALE_ENV}={os.environ[STALE_ENV]!r}: must be a number of "
                          f"seconds") from None
    if not value > 0:
        raise ConfigError(f"{STALE_ENV}={value:g}: must be > 0")
    return value


def _pid_namespace() -> str | None:
    # Two containers on one host can share a hostname yet not see each other's PIDs.
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


TAKEOVER_STALE_S = 30.0  # a takeover takes milliseconds; one this old was abandoned


@contextmanager
def claim(run_dir: Path) -> Iterator[None]:
    """Hold `run_dir/run.lock` for the block, touching it as a heartbeat so a lock whose owner
    vanished (wherever it ran) expires after `stale_after()` seconds."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path, max_age = run_dir / LOCK, stale_after()
    me = {"pid": os.getpid(), "host": socket.gethostname(), "pidns": _pid_namespace(),
          "token": uuid.uuid4().hex}  # the token: one process may claim twice (threads, tests)
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            seen = _look(path)
            if seen is None:
                continue  # removed between our open and our look: try again
            why = _stale(seen, me, max_age)
            if why is None:
                raise TrainingError(_busy(run_dir, path, seen, max_age)) from None
            if _take_away(path, seen):
                warnings.warn(f"{path}: {why}; taking the run directory over", stacklevel=3)
            continue  # create anew with O_EXCL: of several takers only one gets it
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(path, me, stop, max_age),
                            name="run.lock heartbeat", daemon=True)
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()
        if _owner(path) == me:
            path.unlink(missing_ok=True)


def _heartbeat(path: Path, me: dict, stop: threading.Event, max_age: float) -> None:
    # A thread, not the training loop: one slow evaluation must not make a live run look dead.
    while not stop.wait(min(60.0, max(max_age / 10, 0.05))):
        if _owner(path) != me:
            log.warning("%s is no longer this run's (taken over or removed while the run was "
                        "stalled?): another run may write to %s too", path, path.parent)
            return
        try:
            os.utime(path)
        except OSError:
            pass  # the next beat tries again; the owner check above reports a lost lock


def _look(path: Path) -> tuple[os.stat_result, bytes] | None:
    try:
        with open(path, "rb") as f:
            return os.fstat(f.fileno()), f.read(4096)
    except FileNotFoundError:
        return None


def _parse(raw: bytes) -> dict | None:
    try:
        owner = json.loads(raw)
    except ValueError:
        return None
    return owner if isinstance(owner, dict) and {"pid", "host"} <= owner.keys() else None


def _stale(seen: tuple[os.stat_result, bytes], me: dict, max_age: float) -> str | None:
    """Why the lock seen is stale, or None while its owner may be alive."""
    st, raw = seen
    age = time.time() - st.st_mtime
    if age > max_age:
        return f"no heartbeat for {age:.0f}s (more than {max_age:g}s: its owner is gone)"
    owner = _parse(raw)
    if owner is None:
        return None  # empty or unreadable: a run may be starting; it expires by age
    if (owner["host"] == me["host"] and owner.get("pidns") is not None
            and owner.get("pidns") == me["pidns"] and not _alive(owner)):
        return f"its owner, PID {owner['pid']} on this host, is gone (a crash?)"
    return None


def _take_away(path: Path, seen: tuple[os.stat_result, bytes]) -> bool:
    """Remove the stale lock `seen`, if it is still the one at `path`; False if another taker
    was first or holds the takeover now.

    Takers go one at a time through `run.lock.takeover` (created with O_EXCL): a rename-aside
    dance lets a third process create the lock in the window in which a slower taker puts back
    the fresh lock it had moved, and then two runs hold it. Inside the takeover only the lock
    still identical to the one judged stale is removed; the new lock is then created with
    O_EXCL like any other, so of all takers and fresh starters exactly one gets it."""
    mutex = path.with_name(LOCK + ".takeover")
    try:
        os.close(os.open(mutex, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        try:  # a taker that died inside its few milliseconds of takeover
            if time.time() - mutex.stat().st_mtime > TAKEOVER_STALE_S:
                mutex.unlink(missing_ok=True)
        except FileNotFoundError:
            pass
        time.sleep(0.01)
        return False
    try:
        now = _look(path)
        same = now is not None and now[1] == seen[1] and \
            (now[0].st_ino, now[0].st_mtime_ns) == (seen[0].st_ino, seen[0].st_mtime_ns)
        if same:
            path.unlink(missing_ok=True)
        return same
    finally:
        mutex.unlink(missing_ok=True)


def _busy(run_dir: Path, path: Path, seen: tuple[os.stat_result, bytes], max_age: float) -> str:
    owner = _parse(seen[1])
    who = (f"PID {owner['pid']} on {owner['host']}" if owner else
           "a run that is starting (or an unreadable lock file)")
    age = max(0.0, time.time() - seen[0].st_mtime)
    return (f"{run_dir} is in use by {who} (lock file {path}, last heartbeat {age:.0f}s ago; "
            f"stale after {max_age:g}s, {STALE_ENV}): wait for that run to end or choose another "
            f"hydra.run.dir; if no process uses it, clear it with: rm {path}")


def _owner(path: Path) -> dict | None:
    try:
        return _parse(path.read_bytes())
    except OSError:
        return None


def _alive(owner: dict) -> bool:
    """False only if the owner's PID (in our PID namespace) is known to be gone."""
    try:
        os.kill(int(owner["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):  # another user's; garbage
        return True
    return True


def existing_run(run_dir: Path, names: tuple[str, ...] = ()) -> list[Path]:
    """What looks like a metalearn run's in `run_dir` (nothing of Hydra's): what its manifest
    lists, and files by the names a run writes, every run's and `names` (a run from before
    manifests, or a user's)."""
    listed = [run_dir / n for n in read_manifest(run_dir) or () if _inside(run_dir, n)]
    named = [run_dir / n for n in RUN_FILES + names + RUN_DIRS] + \
        [p for g in RUN_GLOBS for p in sorted(run_dir.glob(g))]
    return [p for p in dict.fromkeys(listed + named) if p.exists() or p.is_symlink()]


def _inside(run_dir: Path, name: str) -> bool:
    # One plain name per entry: a manifest edited (or shipped) to reach ../ or /home is refused.
    return bool(name) and name not in (".", "..", MANIFEST, LOCK) and "/" not in name \
        and "\\" not in name and "\0" not in name and (run_dir / name).parent == run_dir


def prepare(run_dir: Path, resume: bool, overwrite: bool, checkpoints: tuple[str, ...] = (),
            outputs: tuple[str, ...] = ()) -> None:
    """Make `run_dir` ready for this run (called by the lock holder): stray temp files go; an
    earlier run is continued (`resume`), removed (`overwrite`) or protected (refused). Then
    `manifest.json` records what this run writes (io.note_written), for a later overwrite.
    `checkpoints`, `outputs`: the names this kind of run writes besides every run's."""
    if resume and overwrite:
        raise ConfigError("resume and overwrite=true contradict each other: drop one")
    remove_temp_files(run_dir, checkpoints)
    found = existing_run(run_dir, checkpoints + outputs)
    if found and not resume:
        if not overwrite:
            what = ("a finished run (results.json)" if (run_dir / "results.json").exists() else
                    "a resumable run" if any((run_dir / n).exists() for n in checkpoints) else
                    "files of an earlier run")
            raise ConfigError(f"{run_dir} holds {what}: continue it with resume=true (or resume="
                              f"auto), start it over with overwrite=true (deletes what that run "
                              f"wrote), or choose another hydra.run.dir")
        _remove_earlier_run(run_dir, found)
    if not (run_dir / MANIFEST).exists():
        io.write_text(run_dir / MANIFEST, json.dumps({"written_by": "metalearn", "files": []}))


def _remove_earlier_run(run_dir: Path, found: list[Path]) -> None:
    """Delete exactly what the earlier run's manifest lists, after checking all of it."""
    names = read_manifest(run_dir)
    if names is None:
        state = "an unreadable manifest.json" if (run_dir / MANIFEST).exists() else \
            "no manifest.json (a run from an older metalearn, or files of your own)"
        raise ConfigError(
            f"overwrite=true: {run_dir} holds {', '.join(p.name for p in found)} but {state}, "
            f"so what the project wrote cannot be told from yours; nothing was deleted. Remove "
            f"the old run's files by hand (e.g. cd {run_dir} && rm -r "
            f"{' '.join(p.name for p in found)}) or choose another hydra.run.dir")
    bad = [n for n in names if not _inside(run_dir, n)]
    if bad:
        raise ConfigError(f"overwrite=true: {run_dir / MANIFEST} lists {bad[0]!r}, not a name "
                          f"inside the run directory; nothing was deleted. Remove the old run's "
                          f"files by hand or choose another hydra.run.dir")
    targets = [run_dir / n for n in names if (run_dir / n).exists() or (run_dir / n).is_symlink()]
    links = [p for p in targets if p.is_symlink()]
    for p in links:  # a user's link (e.g. wandb/ on another disk): not ours to follow or cut
        log.warning("overwrite=true: keeping %s, a symlink to %s (what it points to is not "
                    "this run's to delete)", p, os.readlink(p))
    gone = [p for p in targets if p not in links]
    log.warning("overwrite=true: removing the earlier run's %s from %s",
                ", ".join(p.name for p in gone) or "(nothing left)", run_dir)
    for p in gone:
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    (run_dir / MANIFEST).unlink()


HYDRA_SUBDIR = ".hydra"


def save_hydra_files(out_dir: Path, cfg, resume: bool) -> None:
    """Hydra's record of the command (`.hydra/config.yaml`, `hydra.yaml`, `overrides.yaml`), as
    Hydra writes it, but by the lock holder after `prepare`: a refused command never touches a
    busy or finished run's record, and a resumed run keeps the one of the command that started
    it. Outside a Hydra app (train() from Python) there is nothing to record."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.instance().cfg
    here = OmegaConf.select(hydra_cfg, "hydra.runtime.output_dir", default=None)
    folder = out_dir / HYDRA_SUBDIR
    if here is None or Path(here).resolve() != out_dir.resolve() or \
            (resume and (folder / "overrides.yaml").exists()):
        return
    with io.disk_errors(folder):
        folder.mkdir(exist_ok=True)
    for name, node in (("config.yaml", cfg), ("hydra.yaml", hydra_cfg),
                       ("overrides.yaml", hydra_cfg.hydra.overrides.task)):
        io.write_text(folder / name, OmegaConf.to_yaml(node))

