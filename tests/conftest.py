import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import metalearn  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = str(ROOT / "metalearn" / "configs")
# CI lays the shared data beside the checkout; METALEARN_DATA_DIR overrides.
DATA_DIR = Path(os.environ.get("METALEARN_DATA_DIR", ROOT.parent / "shared" / "data"))

# Tiny runs for tests: a few iterations, few episodes, no W&B, CPU.
FAST = ["dataset=synthetic", "logger=none", "device=cpu", "trainer.iterations=4",
        "trainer.meta_batch_size=2", "trainer.eval_every=2", "trainer.val_episodes=4",
        "trainer.test_episodes=6", "trainer.eval_batch_size=3", "task.query=2"]


@pytest.fixture(autouse=True)
def _isolate(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    torch.set_num_threads(2)


def compose_cfg(*overrides: str):
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        return compose("train", overrides=list(overrides))


def has_omniglot() -> bool:
    return (DATA_DIR / "omniglot-py" / "images_background").is_dir()


needs_omniglot = pytest.mark.skipif(not has_omniglot(), reason=f"Omniglot not found in {DATA_DIR}")
