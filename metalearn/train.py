"""The training app: `metalearn-train ...` or `python train.py ...` from a clone (Hydra overrides).

Every failure a user can fix ends as one `error:` line and an exit code (docs/faults.md):
2 bad input, 74 a disk refused a write, 75 stopped with a resumable state (requeue with
resume=auto). That includes what Hydra rejects before the app runs (a typo'd key, a missing
config option, an output folder that cannot be written).
"""
from __future__ import annotations

import os
import shutil
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

import metalearn  # noqa: F401  (silences gym's import banner before learn2learn loads)
from metalearn.cli import EXIT_DIR_ENV, hydra_raises, report, say
from metalearn.engine.preemption import PREEMPTED_EXIT_CODE, stopped_during_startup
from metalearn.io import RESUMABLE
from metalearn.online import STATE_FILES as ONLINE_STATE
from metalearn.threads import USER_OMP_ENV


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
