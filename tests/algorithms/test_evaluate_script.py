"""scripts/evaluate.py re-scores a finished run exactly as the run scored itself."""
import json
import subprocess
import sys

import pytest
import torch

from hydra.errors import ConfigCompositionException

from metalearn import evaluate as script
from metalearn.engine.loop import train
from metalearn.errors import ConfigError
from tests.conftest import FAST, ROOT, compose_cfg

SCRIPT = str(ROOT / "scripts" / "evaluate.py")  # the shim over metalearn.evaluate


def evaluate(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)


@pytest.mark.parametrize("algorithm", ["maml", "protonet", "snail"])
def test_evaluate_reproduces_the_runs_test_number(tmp_path, algorithm):
    cfg = compose_cfg(*FAST, f"algorithm={algorithm}", "dataset.image_size=12",
                      "backbone.hidden=8", "scheduler=cosine")
    results = train(cfg, tmp_path)
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert last["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)  # annealed
    proc = evaluate(f"run_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    out = json.loads((tmp_path / "eval-test-5w1s2q-6ep-best.json").read_text())
    assert out["acc"] == pytest.approx(results["test_acc"], abs=1e-9)
    assert out["acc_ci95"] == pytest.approx(results["test_acc_ci95"], abs=1e-9)
    assert f"{100 * results['test_acc']:.2f} ±" in proc.stdout
    # more episodes and another shot count are new numbers, written to their own file
    script.run([f"run_dir={tmp_path}", "episodes=9", "task.shots=3", "checkpoint=last"])
    out = json.loads((tmp_path / "eval-test-5w3s2q-9ep-last.json").read_text())
    assert out["episodes"] == 9 and 0 <= out["acc"] <= 1


def test_other_ways_work_for_protonet_and_are_a_config_error_for_maml(tmp_path):
    common = [*FAST, "dataset.image_size=12", "backbone.hidden=8", "trainer.iterations=1"]
    train(compose_cfg(*common, "algorithm=protonet"), tmp_path / "proto")
    train(compose_cfg(*common, "algorithm=maml"), tmp_path / "maml")
    script.run([f"run_dir={tmp_path}/proto", "task.ways=10"])
    assert json.loads((tmp_path / "proto" / "eval-test-10w1s2q-6ep-best.json").read_text())["ways"] == 10
    proc = evaluate(f"run_dir={tmp_path}/maml", "task.ways=10")
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: MAML has a 5-way output head")
    with pytest.raises(ConfigError, match="config.yaml not found"):
        script.run([f"run_dir={tmp_path}/nowhere"])
    with pytest.raises(ConfigCompositionException, match="Could not override 'shots'"):
        script.run([f"run_dir={tmp_path}/maml", "shots=3"])
    assert not (tmp_path / "maml" / ".hydra").exists()  # the run's own Hydra files stay as they were
