"""A real `train.py -m` multirun: one output dir, one result and one W&B run per job, and the
offline comparison report over it."""
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.sweeps.conftest import TINY, train_cli
from tests.wandb_files import find_run_file, read_run


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """2 jobs in one process (Hydra's basic launcher), W&B offline (logger=wandb)."""
    tmp = tmp_path_factory.mktemp("multirun")
    sweep_dir = tmp / "2026-01-01" / "12-00-00"
    args = [a for a in TINY if a != "logger=none"]
    train_cli("-m", *args, "algo.inner_lr=0.05,0.3", f"hydra.sweep.dir={sweep_dir}", cwd=tmp)
    return sweep_dir


def test_multirun_gives_each_job_its_dir_results_and_wandb_run(sweep):
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [j.name for j in jobs] == ["0", "1"]
    runs = {}
    for job in jobs:
        results = json.loads((job / "results.json").read_text())
        run = read_run(find_run_file(job))
        runs[run["config"]["algo"]["inner_lr"]] = run
        # each job's W&B run holds only its own metrics (no leak from the previous job)
        assert len(list(job.glob("wandb/offline-run-*"))) == 1
        assert any("train/loss" in h for h in run["history"])
        val = [h["val/acc"] for h in run["history"] if "val/acc" in h]
        # results.json's values under the logged metrics' names, each once
        assert val and run["summary"]["val/best_acc"] == pytest.approx(max(val))
        assert run["summary"]["val/best_acc"] == pytest.approx(results["best_val_acc"])
        assert run["summary"]["test/acc"] == pytest.approx(results["test_acc"])
        assert [k for k in run["summary"] if "/" not in k and not k.startswith("_")] == []
    assert set(runs) == {0.05, 0.3}
    # named by algorithm/dataset and the swept key, grouped by the sweep dir
    for lr, run in runs.items():
        assert run["run"]["name"] == f"maml/synthetic algo.inner_lr={lr}"
        assert run["run"]["group"] == "2026-01-01_12-00-00"
    assert runs[0.05]["run"]["id"] != runs[0.3]["run"]["id"]


def test_compare_runs_prints_sorted_table_and_writes_png_csv_md(sweep, tmp_path):
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "compare_runs.py"),
                           str(sweep), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = [l for l in proc.stdout.splitlines() if l.startswith("| ") and "inner_lr=" in l]
    assert len(rows) == 2
    assert [r.split("|")[3].strip() for r in rows] in (["algo.inner_lr=0.05", "algo.inner_lr=0.3"],
                                                       ["algo.inner_lr=0.3", "algo.inner_lr=0.05"])
    best = [float(r.split("|")[4]) for r in rows]
    assert best == sorted(best, reverse=True)  # best validation first
    results = {j.name: json.loads((sweep / j.name / "results.json").read_text())
               for j in sweep.iterdir() if j.name.isdigit()}
    assert max(best) == pytest.approx(100 * max(r["best_val_acc"] for r in results.values()),
                                      abs=0.006)
    assert "±" in rows[0]
    png = (out / "compare.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    csv_lines = (out / "compare.csv").read_text().splitlines()
    assert len(csv_lines) == 3 and csv_lines[0].startswith("run,differs,val/best_acc,test/acc,")
    assert (out / "compare.md").read_text().count("algo.inner_lr=") == 2


def test_compare_runs_without_runs_fails_clearly(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "compare_runs.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.startswith("error: no runs")


def test_a_failing_job_does_not_end_the_multirun(tmp_path):
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "-m", *TINY, "task.ways=30,5",
         f"hydra.sweep.dir={sweep}"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert proc.returncode != 0  # the multirun still reports the failure...
    assert "error: task.ways=30 but the val split has only 16 classes" in proc.stderr
    assert not (sweep / "0" / "results.json").exists()
    assert (sweep / "1" / "results.json").exists()  # ...after running the next job


def test_swept_keys_are_the_sweep_overrides_and_the_sweepers_search_space(tmp_path):
    from omegaconf import OmegaConf

    from metalearn.tracking import _swept_keys

    asked = ["dataset=synthetic", "algo.inner_lr=0.1,0.2", "task.shots=range(1,3)", "seed=0",
             "+trainer.extra=choice(a,b)"]
    OmegaConf.save({"hydra": {"overrides": {"task": asked}}}, tmp_path / "multirun.yaml")
    hc = OmegaConf.create({"sweeper": {"params": {"optimizer.lr": "interval(0.001, 0.01)"}},
                           "overrides": {"task": ["algo.inner_lr=0.1"]}})
    assert _swept_keys(tmp_path, hc) == {"algo.inner_lr", "task.shots", "trainer.extra",
                                         "optimizer.lr"}
