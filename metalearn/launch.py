"""`torchrun` that returns 75 when its workers stopped with a resumable state.

torchrun reports any worker failure as exit code 1, so a requeue script checking for 75
(preempted, or a frozen peer timed out) would give up. Same arguments as torchrun:

    python -m metalearn.launch --standalone --nproc_per_node=2 train.py dataset=omniglot

Exit code: 0 done; 75 a worker stopped with a resumable state and every other one either did
too or was killed by a signal (a frozen peer, which torchrun kills): run the same command with
resume=auto; otherwise torchrun's own failure (1).
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import parse_args, run

from metalearn.engine.preemption import PREEMPTED_EXIT_CODE
from metalearn.threads import USER_OMP_ENV
from metalearn.cli import EXIT_DIR_ENV


def main(argv: list[str] | None = None) -> int:
    status = Path(tempfile.mkdtemp(prefix="metalearn-exit-"))
    os.environ[EXIT_DIR_ENV] = str(status)  # the workers inherit it
    # torchrun sets OMP_NUM_THREADS=1 for its workers: threads=auto must not take it for the user's
    os.environ.setdefault(USER_OMP_ENV, os.environ.get("OMP_NUM_THREADS", ""))
    try:
        run(parse_args(argv))
        return 0
    except ChildFailedError as e:
        # A frozen worker is killed by torchrun's shutdown (a negative code): the others saved.
        codes = {f.exitcode for f in e.failures.values()}
        if PREEMPTED_EXIT_CODE in codes and all(c < 0 for c in codes - {PREEMPTED_EXIT_CODE}):
            return PREEMPTED_EXIT_CODE
        print(e.format_msg(), file=sys.stderr)
        return 1
    except SignalException:  # torchrun itself was told to stop; it passed that to the workers
        return PREEMPTED_EXIT_CODE if any(status.iterdir()) else 1
    finally:
        shutil.rmtree(status, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
