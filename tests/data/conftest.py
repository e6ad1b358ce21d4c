from __future__ import annotations

import sys
from pathlib import Path

import pytest

# Test modules import the writers as `fixtures`: learn2learn installs a top-level `tests`
# package into site-packages that can shadow this repo's `tests`, so `tests.data.fixtures` is
# not reliable. Putting this folder on sys.path works under `pytest` and `python -m pytest`.
HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)


@pytest.fixture
def private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """A fresh METALEARN_CACHE_DIR, so fixture caches never pile up in ~/.cache."""
    path = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("METALEARN_CACHE_DIR", str(path))
    return path
