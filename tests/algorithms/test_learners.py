"""Every algorithm learns on synthetic tasks, through the real loop and the real CLI; a new
algorithm is one Python file + one YAML, found by these tests with no edit."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from metalearn.engine.loop import train
from tests.conftest import CONFIGS, FAST, ROOT, compose_cfg

# every algorithm config is tested: a new YAML joins these tests by being there
ALGORITHMS = sorted(p.stem for p in Path(CONFIGS, "algorithm").glob("*.yaml"))
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
         "snail": ["dataset.signal_size=16", "optimizer.lr=0.001", "algo.tc_filters=32"],
         # Reptile's outer step is SGD with lr = epsilon. The paper's 1 overshoots in so few
         # iterations; with 5 test steps a random net already fine-tunes well on these easy
         # tasks, so the learned initialisation is judged after one step.
         "reptile": ["optimizer=sgd", "optimizer.momentum=0", "optimizer.lr=0.5",
                     "algo.inner_optimizer=sgd", "algo.inner_lr=0.1", "algo.adaptation_steps=3",
                     "algo.test_adaptation_steps=1"]}
# transfer learners draw batches of images, not tasks: a batch of 32 is the size of 4 tasks
for _name in ("baseline", "baseline_pp"):
    EXTRA[_name] = ["trainer.meta_batch_size=32"]
ITERATIONS = {"snail": 100, "baseline": 100, "baseline_pp": 100}


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


def test_algorithm_list_is_discovered():
    assert {"maml", "protonet", "snail", "reptile"} <= set(ALGORITHMS)


TOY = """
import torch
import torch.nn.functional as F
from torch import nn

from metalearn.algorithms.base import MetaLearner, TaskMetrics, accuracy


class Toy(MetaLearner):
    \"\"\"One linear head shared by all tasks: no adaptation at all.\"\"\"

    def __init__(self, backbone: nn.Module, ways: int, scale: float = 1.0) -> None:
        super().__init__()
        self.backbone, self.ways, self.scale = backbone, ways, scale
        self.head = nn.Linear(backbone.out_features, ways)

    def forward(self, episodes):
        logits = torch.stack([self.head(self.backbone(x)) for x in episodes.query_x]) * self.scale
        loss = F.cross_entropy(logits.flatten(0, 1), episodes.query_y.flatten(),
                               reduction="none").view(episodes.query_y.shape).mean(1)
        return TaskMetrics(loss, accuracy(logits.detach(), episodes.query_y))

    def evaluate(self, episodes):
        with torch.no_grad():
            return self(episodes)
"""


def test_a_new_algorithm_is_one_file_and_one_yaml_with_no_other_edit(tmp_path):
    (tmp_path / "toy_algorithm.py").write_text(TOY)
    (tmp_path / "configs" / "algorithm").mkdir(parents=True)
    (tmp_path / "configs" / "algorithm" / "toy.yaml").write_text(textwrap.dedent("""\
        # @package algo
        _target_: toy_algorithm.Toy
        scale: 1.0
        """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *FAST, "algorithm=toy", "algo.scale=0.5",
         f"hydra.searchpath=[file://{tmp_path / 'configs'}]", "dataset.image_size=12",
         "backbone.hidden=8", f"hydra.run.dir={tmp_path}/run"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = tmp_path / "run"
    assert json.loads((run / "results.json").read_text())["iterations"] == 4
    state = torch.load(run / "best.pt", weights_only=False)
    assert state["config"]["algo"] == {"_target_": "toy_algorithm.Toy", "scale": 0.5}
    assert "head.weight" in state["model"]
