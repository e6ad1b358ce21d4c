"""Stop cleanly when the cluster (or Ctrl-C) asks: finish the iteration, save `last.pt`, exit 75.

SLURM sends SIGTERM when it preempts or cancels a job, and `--signal=USR1@90` (submitit:
USR2) shortly before the time limit; a terminal sends SIGINT. A handler only sets a flag; the
loop checks it at the end of each iteration, so a checkpoint is never written from inside a
half-done step. Once everything is saved (the final test), `interrupt_now()` makes a signal
stop at once instead. A second Ctrl-C while stopping interrupts at once as usual.
"""
from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
from pathlib import Path
from typing import Any

# EX_TEMPFAIL from sysexits.h: "try again later". Distinct from 143 (killed by an unhandled
# SIGTERM), so a wrapper can tell "saved, requeue me" from "died".
PREEMPTED_EXIT_CODE = 75
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)


class Preempted(Exception):
    """Raised when a stop signal arrived; `saved` = the run can resume from `checkpoint`."""

    def __init__(self, signum: int, iteration: int, checkpoint: str,
                 saved_iteration: int | None) -> None:
        self.signum, self.iteration, self.saved = signum, iteration, saved_iteration is not None
        name = signal.Signals(signum).name
        if saved_iteration is None:
            when = f"at iteration {iteration}" if iteration else "during start-up"
            msg = (f"received {name} {when}, before any checkpoint was saved: nothing to "
                   f"resume, run the same command again to start over")
        else:
            at = (f"stopped after iteration {iteration}" if saved_iteration == iteration else
                  f"stopped at iteration {iteration}; the last checkpoint saved is iteration "
                  f"{saved_iteration}")
            # resume=auto in the same command would start a new run in a new timestamped
            # directory: the run's own directory is the one command that always continues it
            run_dir = shlex.quote(str(Path(checkpoint).parent))
            msg = (f"received {name}: {at}, in {checkpoint}; to continue: "
                   f"{_program()} resume={run_dir}")
        super().__init__(msg)


def stopped_during_startup(signum: int, frame: Any) -> None:
    """train.py's SIGTERM handler until StopSignals take over: one line instead of a silent
    death. Not a handler to hand a signal over to (StopSignals.hand_over)."""
    raise Preempted(signum, 0, "", None)


def _program() -> str:
    """How this run was started: the installed command, else train.py from a clone."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return name if name.startswith("metalearn-") else "python train.py"


class StopSignals:
    """Context manager: while active, SIGTERM/SIGINT/SIGUSR1/SIGUSR2 set `signum` instead of
    killing."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._now: tuple[int, str, int | None] | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.signum is not None:
            signal.default_int_handler(signum, frame)  # Ctrl-C twice: stop now
        self.signum = signum
        if self._now is not None:
            raise Preempted(signum, *self._now)

    def interrupt_now(self, iteration: int, checkpoint: str, saved_iteration: int | None) -> None:
        """From here on nothing is left to save: a signal raises Preempted at once (and one
        that already arrived does so now)."""
        self._now = (iteration, checkpoint, saved_iteration)
        if self.signum is not None:
            raise Preempted(self.signum, *self._now)

    def __enter__(self) -> "StopSignals":
        # signal.signal only works in the main thread (not e.g. in a threaded launcher).
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def hand_over(self) -> None:
        """Pass the signal on to whoever handled it before us (submitit requeues the job
        there and exits); with no such handler, return and let the caller exit."""
        previous = self._previous.get(self.signum)
        if callable(previous) and previous not in (signal.default_int_handler,
                                                   stopped_during_startup):
            previous(self.signum, None)
