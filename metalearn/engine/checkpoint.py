"""Checkpoints that are never half-written: temp file, fsync, atomic rename."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from metalearn.errors import TrainingError


def save(state: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except FileNotFoundError:
        raise TrainingError(f"checkpoint {path} does not exist") from None
    except Exception as e:
        raise TrainingError(f"checkpoint {path} is corrupt or truncated ({type(e).__name__}: "
                            f"{e}); delete it or use another checkpoint") from None
