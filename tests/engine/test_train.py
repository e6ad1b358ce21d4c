"""End to end: compose the real config in-process and run the real loop on tiny settings."""
import json
import subprocess
import sys
import time

import pytest
import torch

from metalearn.engine.loop import train
from tests.wandb_files import find_run_file, read_run
from tests.conftest import FAST, ROOT, compose_cfg


def test_train_on_synthetic_writes_results_metrics_and_checkpoints(tmp_path):
    results = train(compose_cfg(*FAST), tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == pytest.approx(results)
    for key in ("test_acc", "test_acc_ci95", "best_val_acc", "iterations", "wall_time_s"):
        assert key in saved
    assert 0 <= saved["test_acc"] <= 1 and saved["test_acc_ci95"] >= 0
    assert saved["iterations"] == 4
    lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("train/loss" in l for l in lines) and any("val/acc" in l for l in lines)
    assert 0 < lines[0]["train/grad_norm"] < float("inf")  # the NaN guard's number, logged
    assert lines[-1]["test/acc"] == saved["test_acc"]
    ckpt = torch.load(tmp_path / "best.pt", weights_only=True)
    assert ckpt["best_val_acc"] == saved["best_val_acc"]
    assert (tmp_path / "config.yaml").read_text().count("inner_lr") == 1


def test_training_beats_chance_on_a_learnable_task(tmp_path):
    # Test-time adaptation alone lifts an untrained network well above chance (0.2) here, so the
    # bars are set against that, with room for other seeds and other CPUs' arithmetic; a run
    # whose meta-step does not update the weights stays below both.
    overrides = [*FAST, "trainer.eval_every=20", "trainer.val_episodes=40",
                 "trainer.test_episodes=40", "trainer.meta_batch_size=4", "dataset.image_size=16",
                 "dataset.signal_size=5", "dataset.noise=0.05", "optimizer.lr=0.003"]
    before = train(compose_cfg(*overrides, "trainer.iterations=1"), tmp_path / "a")
    after = train(compose_cfg(*overrides, "trainer.iterations=80"), tmp_path / "b")
    # same validation episodes (fixed eval_seed), so the gain is not sampling noise
    assert after["best_val_acc"] > before["best_val_acc"] + 0.08
    assert after["test_acc"] > 0.65


def test_wandb_offline_run_file_holds_config_and_history(tmp_path):
    cfg = compose_cfg(*FAST, "logger=wandb", "algo.inner_lr=0.0321")
    train(cfg, tmp_path)
    deadline = time.time() + 30  # wandb's writer process may flush just after finish() returns
    while "test/acc" not in (run := read_run(find_run_file(tmp_path)))["summary"]:
        assert time.time() < deadline, "W&B run file has no summary"
        time.sleep(0.5)
    assert run["config"]["algo"]["inner_lr"] == 0.0321
    assert any("train/loss" in h for h in run["history"])
    assert any("val/acc" in h for h in run["history"])
    assert "test/acc" in run["summary"] and "test/acc_ci95" in run["summary"]


def _cli(tmp_path, *overrides):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *overrides, f"hydra.run.dir={tmp_path}/run"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300)
    return proc.returncode, proc.stderr.strip().splitlines()


@pytest.mark.parametrize("overrides, message", [
    (["dataset=omniglot", "paths.data_dir={tmp}/nothing", "dataset.download=false"],
     "Omniglot not found.*METALEARN_DATA_DIR"),
    (["dataset=synthetic", "task.ways=30"], "task.ways=30 but the val split has only 16 classes"),
    (["dataset=synthetic", "task.shots=10", "task.query=15"], "has only 20 images"),
])
def test_bad_input_gives_one_clear_line_and_nonzero_exit(tmp_path, overrides, message):
    code, err = _cli(tmp_path, "logger=none", "device=cpu",
                     *[o.format(tmp=tmp_path) for o in overrides])
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert "Traceback" not in "\n".join(err)
    import re
    assert re.search(message, err[0]), err[0]


def test_unknown_config_option_fails(tmp_path):
    code, err = _cli(tmp_path, "algo.inner_lrr=0.1")
    assert code != 0 and any("inner_lrr" in line for line in err)
