"""train.py with the batched engine and the speed switches; the engine benchmark script."""
import json
import math
import os
import subprocess
import sys

import torch
from omegaconf import OmegaConf

from metalearn.engine.loop import train
from tests.conftest import FAST, ROOT, compose_cfg
from tests.models.test_backbones import trained_parameters


# Runs train.py as its shim does, counting calls into each engine: the batched engine's
# guard (called once per adapt_batched) and learn2learn's per-task `clone_module`.
SPY = """
import atexit, json, os, runpy, sys
import learn2learn as l2l
import metalearn.algorithms.functional as functional
calls = {"batched": 0, "l2l_clone": 0}
import metalearn.algorithms.gbml as gbml
guard, clone = functional.require_exact_norms, l2l.clone_module
def counted_guard(model):
    calls["batched"] += 1
    return guard(model)
def counted_clone(*args, **kwargs):
    calls["l2l_clone"] += 1
    return clone(*args, **kwargs)
functional.require_exact_norms, gbml.l2l.clone_module = counted_guard, counted_clone
atexit.register(lambda: open(os.environ["ENGINE_CALLS"], "w").write(json.dumps(calls)))
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_train_py(tmp_path, *overrides):
    calls = tmp_path / "calls.json"
    proc = subprocess.run(
        [sys.executable, "-c", SPY, str(ROOT / "train.py"), *FAST, *overrides,
         f"hydra.run.dir={tmp_path}/run"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
        env={**os.environ, "ENGINE_CALLS": str(calls)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(calls.read_text())


def test_train_py_with_batched_engine_end_to_end(tmp_path):
    calls = run_train_py(tmp_path, "algo.engine=batched")
    # 4 training steps, 2 validations and 1 test, all batched; learn2learn never clones
    assert calls["batched"] >= 4 + 2 + 1 and calls["l2l_clone"] == 0
    run = tmp_path / "run"
    results = json.loads((run / "results.json").read_text())
    assert results["iterations"] == 4 and 0 <= results["test_acc"] <= 1
    assert "engine: batched" in (run / "config.yaml").read_text()
    losses = [r["train/loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text()
                                             .splitlines()) if "train/loss" in r]
    # 5-way chance is ln 5 = 1.61: a first loss far from it means a broken forward
    assert losses and 0.8 < losses[0] < 3.2 and all(map(math.isfinite, losses))
    cfg = OmegaConf.load(run / "config.yaml")
    assert trained_parameters(cfg, run), "training changed no weight"


def test_train_py_with_l2l_engine_never_calls_the_batched_one(tmp_path):
    calls = run_train_py(tmp_path, "algo.engine=l2l")
    assert calls["batched"] == 0 and calls["l2l_clone"] >= 4 * 2


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
