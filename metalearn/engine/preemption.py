"""Stop cleanly when the cluster asks: finish the iteration, save `last.pt`, exit 75.

SLURM sends SIGTERM when it preempts or cancels a job, and `--signal=USR1@90` (submitit:
USR2) shortly before the time limit. A handler only sets a flag; the loop checks it at the
end of each iteration, so a checkpoint is never written from inside a half-done step.
"""
from __future__ import annotations

import signal
import threading
from typing import Any

# EX_TEMPFAIL from sysexits.h: "try again later". Distinct from 143 (killed by an unhandled
# SIGTERM), so a wrapper can tell "saved, requeue me" from "died".
PREEMPTED_EXIT_CODE = 75
SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class Preempted(Exception):
    """Raised after `last.pt` was saved because a stop signal arrived."""

    def __init__(self, signum: int, iteration: int, checkpoint: str) -> None:
        self.signum = signum
        super().__init__(f"received {signal.Signals(signum).name}: stopped after iteration "
                         f"{iteration} and saved {checkpoint}; run the same command with "
                         f"resume=auto (or resume=true) to continue")


class StopSignals:
    """Context manager: while active, SIGTERM/SIGUSR1/SIGUSR2 set `signum` instead of killing."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum

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
        if callable(previous):
            previous(self.signum, None)
