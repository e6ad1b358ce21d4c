"""Every algorithm learns on synthetic tasks, through the real loop and the real CLI."""
import subprocess
import sys

import pytest

from metalearn.engine.loop import train
from tests.conftest import FAST, ROOT, compose_cfg

ALGORITHMS = ["maml", "fomaml", "mamlpp", "metasgd", "anil", "protonet", "snail"]
LEARNABLE = [*FAST, "trainer.eval_every=15", "trainer.val_episodes=30", "trainer.test_episodes=10",
             "trainer.meta_batch_size=4", "dataset.image_size=16", "dataset.signal_size=5",
             "dataset.noise=0.05", "optimizer.lr=0.003"]
# per algorithm: its own lr/steps where the defaults are tuned for bigger runs
EXTRA = {"mamlpp": ["algo.adaptation_steps=2", "algo.test_adaptation_steps=2",
                    "algo.msl_iterations=10", "algo.first_order_iterations=5"],
         # A sequence model must learn to match embeddings and read labels at once: from a
         # backbone that cannot yet tell the synthetic classes apart (the class is a small
         # square amid noise) it sits at chance for hundreds of steps. With the class over the
         # whole image, random features separate classes and in-context learning shows in 100.
         "snail": ["dataset.signal_size=16", "optimizer.lr=0.001", "algo.tc_filters=32"]}
ITERATIONS = {"snail": 100}


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_training_beats_chance_and_the_untrained_learner(tmp_path, algorithm):
    overrides = [*LEARNABLE, f"algorithm={algorithm}", *EXTRA.get(algorithm, [])]
    before = train(compose_cfg(*overrides, "trainer.iterations=1"), tmp_path / "a")
    iterations = ITERATIONS.get(algorithm, 30)
    after = train(compose_cfg(*overrides, f"trainer.iterations={iterations}"), tmp_path / "b")
    # same validation episodes (fixed eval_seed), so the gain is not sampling noise
    assert after["best_val_acc"] > before["best_val_acc"] + 0.03
    assert after["best_val_acc"] > 0.3  # 5-way: chance is 0.2


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_train_py_runs_each_algorithm_end_to_end(tmp_path, algorithm):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *FAST, f"algorithm={algorithm}",
         "trainer.iterations=2", "dataset.image_size=12", "backbone.hidden=8",
         f"hydra.run.dir={tmp_path}/run"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "run" / "results.json").is_file()
    assert "test accuracy" in proc.stdout
