"""A tiny finished run, trained once per test module, and a copy of it per test."""
import shutil
from pathlib import Path

import pytest

from metalearn.engine.loop import train
from tests.conftest import FAST, compose_cfg

TINY = [*FAST, "dataset.image_size=12", "backbone.hidden=8", "trainer.iterations=2"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("finished") / "run"
    train(compose_cfg(*TINY), run)
    return run


@pytest.fixture
def run_copy(finished, tmp_path) -> Path:
    shutil.copytree(finished, tmp_path / "run")
    return tmp_path / "run"
