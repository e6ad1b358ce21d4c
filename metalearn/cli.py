"""What every command-line app shares: a failure a user can fix as one `error:` line and an
exit code (docs/faults.md: 2 bad input, 74 a disk refused a write, 75 stopped with a resumable
state), including what Hydra rejects before an app runs (a typo'd key, a missing config option,
an output folder that cannot be written)."""
from __future__ import annotations

import difflib
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import yaml
from hydra.errors import (ConfigCompositionException, MissingConfigException,
                          OverrideParseException)
from omegaconf.errors import OmegaConfBaseException

from metalearn.engine.preemption import PREEMPTED_EXIT_CODE, Preempted
from metalearn.errors import user_error
from metalearn.io import disk_error

# metalearn.launch (torchrun that returns 75) points this at a folder: each worker that stops
# resumable drops a file there, since torchrun itself only reports "a worker failed" (1).
EXIT_DIR_ENV = "METALEARN_EXIT_DIR"


def report(e: BaseException) -> int | None:
    """Print `e` as one line and return the exit code, or None for a bug (traceback)."""
    stop = _preempted(e)
    if stop is not None:
        say(f"preempted: {stop}")
        return PREEMPTED_EXIT_CODE if stop.saved else 128 + stop.signum
    if isinstance(e, ConfigCompositionException) and isinstance(e.__cause__, OmegaConfBaseException):
        say(f"error: {_unknown_key(e)}")
        return 2
    if isinstance(e, MissingConfigException) and e.options:
        group, _, choice = (e.missing_cfg_file or "").rpartition("/")
        close = difflib.get_close_matches(choice, e.options, n=1)
        hint = f"did you mean {group}={close[0]}? " if close else ""
        say(f"error: {group}={choice}: no such option; {hint}choose one of {', '.join(e.options)}")
        return 2
    if isinstance(e, MissingConfigException):  # a group that does not exist (no options)
        groups = sorted(p.name for p in (Path(__file__).parent / "configs").iterdir()
                        if p.is_dir() and not p.name.startswith("_"))
        say(f"error: {str(e).splitlines()[0]}: no such config group; the groups are "
            f"{', '.join(groups)} (python train.py --help lists their options)")
        return 2
    line = _parse_error(e)
    if line is not None:
        say(f"error: {line}")
        return 2
    err = user_error(e) or disk_error(e, None)
    if err is None:
        return None
    say(f"error: {err}")
    return err.exit_code


def _preempted(e: BaseException | None) -> Preempted | None:
    """The stop behind `e`: a signal handler raises wherever the signal lands, also inside a
    library that wraps what it catches (OmegaConf's `_get_impl` during start-up)."""
    while e is not None and not isinstance(e, Preempted):
        e = e.__cause__ or e.__context__
    return e


def _parse_error(e: BaseException) -> str | None:
    """A command line or config file Hydra could not read, as one line (Hydra's own messages
    span several lines, or are a traceback)."""
    if isinstance(e, OverrideParseException):
        why = e.message.splitlines()[0].removeprefix("LexerNoViableAltException: ")
        return (f"{e.override}: not a valid override ({why}); write key=value, e.g. "
                f"trainer.iterations=100 or task.ways=[5,20]")
    if isinstance(e, ValueError) and str(e).startswith("Config group override must be"):
        return f"an override without a key (such as =5): write key=value ({e})"
    while e is not None and not isinstance(e, yaml.YAMLError):
        e = e.__cause__ or e.__context__
    if isinstance(e, yaml.MarkedYAMLError):
        mark = e.problem_mark or e.context_mark
        where = f"{mark.name}, line {mark.line + 1}: " if mark else ""
        if isinstance(e, yaml.constructor.ConstructorError) and "python/" in str(e.problem):
            return (f"{where}a !!python tag; configs are plain YAML and never build Python "
                    f"objects (use a _target_ node)")
        return f"{where}not valid YAML ({e.problem or e.context}); fix the file"
    return None


def say(line: str) -> None:
    """One line on stderr, whatever it holds: a non-UTF-8 file name decodes to lone
    surrogates, which a strict stream refuses to encode."""
    sys.stderr.write(line.encode("utf-8", "backslashreplace").decode("utf-8") + "\n")
    sys.stderr.flush()


def _unknown_key(e: ConfigCompositionException) -> str:
    """`trainer.iteration=5` -> "... did you mean trainer.iterations?" (the closest sibling)."""
    cause, msg = e.__cause__, str(e)
    given = msg.split("'")[1] if msg.count("'") >= 2 else str(cause.full_key)
    value = msg.split(f"+{given}=", 1)[1].splitlines()[0] if f"+{given}=" in msg else None
    key, full = str(cause.key), str(cause.full_key or cause.key)
    siblings = [str(k) for k in cause.parent_node.keys()] if cause.parent_node is not None else []
    if "." not in full:  # a group left out of the config (experiment: null) is no key there
        siblings += [p.name for p in (Path(__file__).parent / "configs").iterdir()
                     if p.is_dir() and not p.name.startswith("_")]
    close = difflib.get_close_matches(key, [k for k in siblings if k != "hydra"], n=1)
    what = given if value is None else f"{given}={value}"
    if not close:
        return f"{what}: unknown key {full!r}; python train.py --cfg job lists every key"
    # `trainr.iterations`: the typo is the first part; keep the rest as given
    return f"{what}: unknown key {full!r}; did you mean {full[:-len(key)]}{close[0]}{given[len(full):]}?"


@contextmanager
def hydra_raises() -> Iterator[None]:
    """Let errors out of hydra.main instead of its own printed traceback and exit(1)."""
    before = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = before
