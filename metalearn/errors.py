"""Errors a user can fix: train.py prints their message as one line and exits with `exit_code`.

Exit codes (docs/faults.md): 2 = bad input (config, data, training), 74 = a disk refused a
write (EX_IOERR), 75 = stopped with a resumable state, run again with resume=auto (EX_TEMPFAIL).
"""


class MetalearnError(Exception):
    """Base class: the message must say what is wrong and how to fix it."""

    exit_code = 2


class DataError(MetalearnError):
    """Missing, corrupt or unusable data on disk."""


class ConfigError(MetalearnError):
    """A setting that cannot work (e.g. more ways than classes)."""


class TrainingError(MetalearnError):
    """Training cannot go on (e.g. the loss became NaN)."""


class DiskError(MetalearnError):
    """A write failed: disk full, read-only, no permission, quota (EX_IOERR from sysexits.h)."""

    exit_code = 74


class WorkerLost(TrainingError):
    """Another torchrun worker froze or died; this one stopped, its last checkpoint resumes."""

    exit_code = 75


def user_error(e: BaseException | None) -> MetalearnError | None:
    """The MetalearnError behind `e`: hydra.utils.instantiate wraps what a target raises."""
    while e is not None and not isinstance(e, MetalearnError):
        e = e.__cause__
    return e
