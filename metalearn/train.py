"""The training app: `metalearn-train ...` or `python train.py ...` from a clone (Hydra overrides).

Every failure a user can fix ends as one `error:` line and an exit code (docs/faults.md):
2 bad input, 74 a disk refused a write, 75 stopped with a resumable state (requeue with
resume=auto). That includes what Hydra rejects before the app runs (a typo'd key, a missing
config option, an output folder that cannot be written).
"""
from __future__ import annotations

import difflib
import os
import shutil
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import hydra
from hydra.core.hydra_config import HydraConfig
import yaml
from hydra.errors import (ConfigCompositionException, MissingConfigException,
                          OverrideParseException)
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

import metalearn  # noqa: F401  (silences gym's import banner before learn2learn loads)
from metalearn.engine.io import ONLINE_STATE, RESUMABLE, disk_error
from metalearn.engine.preemption import PREEMPTED_EXIT_CODE, Preempted, stopped_during_startup
from metalearn.errors import MetalearnError
from metalearn.threads import USER_OMP_ENV

# metalearn.launch (torchrun that returns 75) points this at a folder: each worker that stops
# resumable drops a file there, since torchrun itself only reports "a worker failed" (1).
EXIT_DIR_ENV = "METALEARN_EXIT_DIR"


@hydra.main(config_path="configs", config_name="train", version_base="1.3")
def app(cfg: DictConfig) -> float:
    started = False
    try:
        # The settings' table first: a typo'd value is answered before torch is imported.
        from metalearn.config_check import validate
        validate(cfg, targets=False)
        started = True
        if cfg.get("online"):
            from metalearn.online.run import run_online as run
        else:
            from metalearn.engine.loop import train as run
        results = run(cfg, Path(HydraConfig.get().runtime.output_dir))
    except Exception as e:
        code = report(e)  # here, not in main(): Hydra would add "Error executing job ..."
        if code is None:
            raise  # a bug: its traceback
        if not started:
            _discard_unused_run_dir()
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            e.reported_exit_code = code  # type: ignore[attr-defined]  (main: no second line)
            raise  # the sweeper records a failed job and decides
        _record_exit(code)
        sys.exit(code)
    return results.get("best_val_acc", results.get("online_acc"))  # what sweepers optimise


def _discard_unused_run_dir() -> None:
    """A command refused before any work leaves no run dir behind: Hydra made it, with its
    `.hydra/` and log, before the config was checked. A directory holding anything else (a run
    to resume, the current directory) is left as it is."""
    hc = HydraConfig.get()
    if hc.mode != RunMode.RUN:
        return
    out = Path(hc.runtime.output_dir)
    own = {name for name in (hc.output_subdir, f"{hc.job.name}.log") if name}
    try:
        if out.resolve() == Path.cwd().resolve() or not {p.name for p in out.iterdir()} <= own:
            return
        for name in own:
            shutil.rmtree(out / name) if (out / name).is_dir() else (out / name).unlink(missing_ok=True)
        out.rmdir()
    except OSError:
        pass  # only tidying up: the error line was already printed


def main() -> None:
    """Run the app; turn what a user can fix into one line and an exit code."""
    # before a launcher (joblib) gives its workers an OMP_NUM_THREADS of its own
    os.environ.setdefault(USER_OMP_ENV, os.environ.get("OMP_NUM_THREADS", ""))
    # Until training's own handlers (engine/preemption.py) take over, a SIGTERM (a scheduler
    # cancelling the job while it starts) is one line and exit 143, not a silent death.
    signal.signal(signal.SIGTERM, stopped_during_startup)
    refused = _resume_target_refused(sys.argv[1:])
    if refused:
        say(f"error: {refused}")
        sys.exit(2)
    try:
        with hydra_raises(), _quick_help(any(a in ("--help", "-h") for a in sys.argv[1:])):
            app()
    except Exception as e:
        code = getattr(e, "reported_exit_code", None) or report(e)
        if code is None:
            raise
        _record_exit(code)
        sys.exit(code)


def _resume_target_refused(args: list[str]) -> str | None:
    """`resume=<dir>` that is no run to continue, refused before Hydra writes its `.hydra/` and
    train.log into that directory (a folder of the user's, or a typo that it would create)."""
    values = [a.split("=", 1)[1] for a in args if a.startswith("resume=")]
    if not values or values[-1].lower() in ("", "true", "false", "auto", "null") or "," in values[-1]:
        return None  # a boolean mode, or a multirun sweep over values (checked per job)
    path = Path(values[-1]).expanduser()
    if path.is_file() or any((path / n).is_file() for n in (*RESUMABLE, *ONLINE_STATE)):
        return None  # a file is refused with its own advice in the run; a run continues
    names = ", ".join((*RESUMABLE, *ONLINE_STATE))
    what = "does not exist" if not path.exists() else f"holds no checkpoint ({names})"
    return (f"resume={values[-1]}: {path} {what}, so there is no run to continue; nothing was "
            f"written. Pass a run's directory (resume=outputs/runs/<date>/<time>), or drop resume")


def report(e: BaseException) -> int | None:
    """Print `e` as one line and return the exit code, or None for a bug (traceback)."""
    if isinstance(e, Preempted):
        say(f"preempted: {e}")
        return PREEMPTED_EXIT_CODE if e.saved else 128 + e.signum
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


def user_error(e: BaseException | None) -> MetalearnError | None:
    """The MetalearnError behind `e`: hydra.utils.instantiate wraps what a target raises."""
    while e is not None and not isinstance(e, MetalearnError):
        e = e.__cause__
    return e


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


@contextmanager
def _quick_help(enabled: bool) -> Iterator[None]:
    """Hydra's --help lists every config group by copying its whole config repository once per
    group and option kind (over a hundred copies here, seconds): with no overrides involved
    every copy is the same, so one is made and reused. Hydra's help text is unchanged."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    original = getattr(ConfigLoaderImpl, "_parse_overrides_and_create_caching_repo", None)
    if not enabled or original is None:
        yield
        return
    made: dict[Any, Any] = {}

    def reused(self: Any, config_name: str | None, overrides: list[str]) -> Any:
        if config_name is not None or overrides:
            return original(self, config_name, overrides)
        if id(self) not in made:
            made[id(self)] = original(self, config_name, overrides)
        return made[id(self)]

    ConfigLoaderImpl._parse_overrides_and_create_caching_repo = reused
    try:
        yield
    finally:
        ConfigLoaderImpl._parse_overrides_and_create_caching_repo = original


def _record_exit(code: int) -> None:
    folder = os.environ.get(EXIT_DIR_ENV)
    if folder and code == PREEMPTED_EXIT_CODE:
        try:
            Path(folder, f"rank-{os.environ.get('RANK', '0')}").write_text(str(code))
        except OSError:
            pass  # the launcher then reports a plain failure (1): nothing is lost


if __name__ == "__main__":
    main()
