"""The main job beside learn2learn's own MAML loop, on the same machine at the same time.

    python scripts/compare_l2l.py [--minutes 12] [--out results/comparisons/main_job_vs_l2l.json]

Two processes run at once, one thread each, one core each: `train.py
experiment=omniglot_5w1s_cpu` (the README's main job), and learn2learn's example loop
(examples/vision/maml_omniglot.py: Taskset with NWays/KShots/LoadData/RemapLabels,
`MAML(model, lr=0.5)`, per task `clone()` + `adapt()` + query loss `.backward()`, meta-batch
32, Adam 0.003, 2 images per class split into adaptation and evaluation halves) on the same
network and the same Omniglot training classes, for the same wall budget (its training stops
early enough for its test to end within it). Both are scored on the main job's 600 test
episodes (`trainer.eval_seed`). Prints one line each and
writes a JSON with both.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAIN_JOB = ["experiment=omniglot_5w1s_cpu", "logger=none", "device=cpu"]


def l2l_loop(budget_s: float, out: Path) -> None:
    """learn2learn's example loop for `budget_s` of wall time, then the main job's test."""
    import torch
    import torch.nn.functional as F
    from hydra import compose, initialize_config_dir
    from torch.utils.data import TensorDataset

    from metalearn.engine.evaluation import evaluate  # first: it silences gym's import notice
    from metalearn.engine.loop import build, samplers, seed_everything
    import learn2learn as l2l

    started = time.time()
    with initialize_config_dir(config_dir=str(ROOT / "metalearn" / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=MAIN_JOB + ["algo.inner_lr=0.5",
                                                     "algo.first_order_iterations=0"])
    seed_everything(cfg.seed)
    device = torch.device("cpu")
    data, algo = build(cfg, device)
    shape = (1, -1, 1, 1)  # the same normalisation as the main job's Preprocess
    x = (data.train.images.float() / 255 - torch.tensor(data.mean).view(shape)) \
        / torch.tensor(data.std).view(shape)
    y = data.train.labels
    dataset = l2l.data.MetaDataset(TensorDataset(x, y))
    ways, shots = cfg.task.ways, cfg.task.shots
    tasks = l2l.data.Taskset(dataset, task_transforms=[
        l2l.data.transforms.NWays(dataset, ways), l2l.data.transforms.KShots(dataset, 2 * shots),
        l2l.data.transforms.LoadData(dataset), l2l.data.transforms.RemapLabels(dataset),
        l2l.data.transforms.ConsecutiveLabels(dataset)], num_tasks=-1)
    maml = l2l.algorithms.MAML(algo.model, lr=0.5, first_order=False)
    opt = torch.optim.Adam(maml.parameters(), 0.003)
    meta_batch, iterations = 32, 0
    while time.time() - started < budget_s:
        opt.zero_grad()
        for _ in range(meta_batch):  # fast_adapt of the example
            bx, by = tasks.sample()
            idx = torch.zeros(bx.size(0), dtype=torch.bool)
            idx[torch.arange(shots * ways) * 2] = True
            learner = maml.clone()
            learner.adapt(F.cross_entropy(learner(bx[idx]), by[idx]))
            (F.cross_entropy(learner(bx[~idx]), by[~idx]) / meta_batch).backward()
        opt.step()
        iterations += 1
    train_s = time.time() - started
    tc = cfg.trainer
    test = evaluate(algo, samplers(cfg, data, device)["test"], tc.test_episodes,
                    tc.eval_batch_size, tc.eval_seed)
    out.write_text(json.dumps({"test_acc": test["acc"], "test_acc_ci95": test["acc_ci95"],
                               "iterations": iterations, "meta_batch_size": meta_batch,
                               "train_time_s": train_s, "wall_time_s": time.time() - started,
                               "cpu_time_s": time.process_time()}))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=12.0,
                   help="wall budget of the learn2learn loop, its test included")
    p.add_argument("--work", type=Path, default=ROOT / "outputs" / "compare_l2l")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "comparisons" / "main_job_vs_l2l.json")
    p.add_argument("--l2l-worker", type=float, metavar="SECONDS", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.l2l_worker is not None:
        a.work.mkdir(parents=True, exist_ok=True)
        l2l_loop(a.l2l_worker, a.work / "l2l.json")
        return 0
    a.work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    run_dir = a.work / "metalearn"
    test_s = 90  # what the 600-episode test takes the learn2learn loop on one core
    started = time.time()
    ours = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *MAIN_JOB,
                             f"hydra.run.dir={run_dir}", "overwrite=true"], env=env, cwd=ROOT)
    theirs = subprocess.Popen([sys.executable, __file__, "--work", str(a.work),
                               "--l2l-worker", str(a.minutes * 60 - test_s)], env=env, cwd=ROOT)
    rc = ours.wait(), theirs.wait()
    if any(rc):
        print(f"error: a run failed (exit codes {rc}); see its output above", file=sys.stderr)
        return 1
    mine = json.loads((run_dir / "results.json").read_text())
    l2l_res = json.loads((a.work / "l2l.json").read_text())
    import yaml
    report = {"metalearn": mine, "learn2learn_loop": l2l_res,
              "metalearn_config": yaml.safe_load((run_dir / "config.yaml").read_text()),
              "command": "python scripts/compare_l2l.py " + " ".join(argv or sys.argv[1:]),
              "wall_time_s": time.time() - started}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=1) + "\n")
    for name, r in (("metalearn main job", mine), ("learn2learn loop", l2l_res)):
        print(f"{name}: {100 * r['test_acc']:.2f} ± {100 * r['test_acc_ci95']:.2f}% "
              f"after {r['iterations']} iterations, {r['wall_time_s'] / 60:.1f} min wall")
    return 0


if __name__ == "__main__":
    sys.exit(main())
