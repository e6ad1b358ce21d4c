"""Errors a user can fix: train.py prints their message as one line and exits non-zero."""


class MetalearnError(Exception):
    """Base class: the message must say what is wrong and how to fix it."""


class DataError(MetalearnError):
    """Missing, corrupt or unusable data on disk."""


class ConfigError(MetalearnError):
    """A setting that cannot work (e.g. more ways than classes)."""


class TrainingError(MetalearnError):
    """Training cannot go on (e.g. the loss became NaN)."""
