"""train.py with the batched engine and the speed switches; the engine benchmark script."""
import json
import subprocess
import sys

import torch

from metalearn.engine.loop import train
from tests.conftest import FAST, ROOT, compose_cfg


def test_train_py_with_batched_engine_end_to_end(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *FAST, "algo.engine=batched",
         f"hydra.run.dir={tmp_path}/run"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert 0 <= results["test_acc"] <= 1 and results["iterations"] == 4
    assert "engine: batched" in (tmp_path / "run" / "config.yaml").read_text()


def test_switches_train_and_engines_agree_on_the_first_loss(tmp_path):
    runs = {}
    for name, extra in {"l2l": ["algo.engine=l2l"], "batched": ["algo.engine=batched"],
                        "switches": ["algo.engine=batched", "trainer.amp=bf16",
                                     "trainer.channels_last=true", "trainer.augment=flip",
                                     "trainer.chunk_size=1"]}.items():
        train(compose_cfg(*FAST, "trainer.iterations=2", *extra), tmp_path / name)
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        runs[name] = [json.loads(l) for l in lines]
        assert "test/acc" in runs[name][-1]
    first = {k: next(l["train/loss"] for l in v if "train/loss" in l) for k, v in runs.items()}
    assert abs(first["batched"] - first["l2l"]) < 1e-5
    assert torch.isfinite(torch.tensor(first["switches"]))


def test_benchmark_small_cpu_writes_json(tmp_path):
    out = tmp_path / "engine.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--small", "--device", "cpu",
         "--repeats", "1", "--settings", "omniglot_20w1s_2nd", "--out", str(out)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    (row,) = result["results"]
    for key in ("l2l_example_tasks_per_s", "l2l_tasks_per_s", "batched_tasks_per_s",
                "batched_speedup", "train_iteration_tasks_per_s"):
        assert row[key] > 0
    assert row["batched_grad_rel_err_f64"] < 1e-10 and row["l2l_grad_rel_err_f64"] < 1e-10
    assert "batched" in proc.stdout and "saved" in proc.stdout
