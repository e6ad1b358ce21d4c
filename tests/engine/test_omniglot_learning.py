"""MAML really learns: 5-way 1-shot on the real Omniglot, a few CPU minutes."""
import pytest

from metalearn.engine.loop import train
from tests.conftest import DATA_DIR, compose_cfg, needs_omniglot


@needs_omniglot
@pytest.mark.slow
def test_maml_learns_real_omniglot_5w1s(tmp_path):
    cfg = compose_cfg(f"paths.data_dir={DATA_DIR}", "dataset.download=false", "logger=none",
                      "device=cpu", "experiment=omniglot_5w1s_cpu", "trainer.iterations=300",
                      "trainer.eval_every=150", "trainer.val_episodes=100",
                      "trainer.test_episodes=200")
    results = train(cfg, tmp_path)
    assert results["test_acc"] - results["test_acc_ci95"] >= 0.80, results  # chance: 0.20
