"""Real torchrun (2 gloo processes on CPU): exact meta-gradients, sharded evaluation."""
import json
import subprocess
import sys

import torch

from metalearn.algorithms.maml import MAML
from metalearn.data.episodes import EpisodeSampler
from metalearn.data.synthetic import load_synthetic
from metalearn import checkpoint
from metalearn.engine.evaluation import evaluate
from metalearn.engine.loop import build, samplers
from metalearn.models.conv4 import Conv4
from tests.conftest import ROOT, compose_cfg, local_rendezvous
from tests.engine.test_runs import TINY, env


def meta_batch_and_learner(tasks: int = 3):
    """A float64 second-order MAML and a fixed meta-batch, identical in every process."""
    torch.manual_seed(0)
    data = load_synthetic(image_size=16)
    algo = MAML(Conv4(in_channels=1, image_size=16), ways=5, inner_lr=0.4,
                adaptation_steps=2).double()
    batch = EpisodeSampler(data.train, 5, 1, 2, data.mean, data.std, seed=3).sample(tasks)
    return algo, batch.to("cpu", torch.float64)


def torchrun(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", *local_rendezvous(),
                           "--nproc_per_node=2", *args], capture_output=True, text=True,
                          env=env(), cwd=ROOT, timeout=timeout)


def test_two_ranks_give_the_single_process_meta_gradient(tmp_path):
    # 3 tasks over 2 ranks: uneven shares (2 + 1) must still give the mean over all 3
    proc = torchrun(str(ROOT / "tests/engine/ddp_meta_grad.py"), str(tmp_path / "g.pt"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = torch.load(tmp_path / "g.pt")
    assert got["world"] == 2 and got["shard"] == (0, 2)

    algo, batch = meta_batch_and_learner()
    (algo(batch).loss.sum() / len(batch)).backward()
    want = [p.grad for p in algo.parameters()]
    num = torch.sqrt(sum(((g - w) ** 2).sum() for g, w in zip(got["grads"], want)))
    den = torch.sqrt(sum((w ** 2).sum() for w in want))
    assert den > 0 and num / den <= 1e-12, float(num / den)


def test_train_py_under_torchrun_logs_once_and_scores_the_single_process_episodes(tmp_path):
    run = tmp_path / "run"
    overrides = [*TINY, "trainer.iterations=6", "trainer.eval_every=3",
                 "trainer.meta_batch_size=3"]
    proc = torchrun(str(ROOT / "train.py"), *overrides, f"hydra.run.dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((run / "results.json").read_text())
    assert results["world_size"] == 2
    steps = [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()
             if "train/loss" in l]
    assert steps == list(range(1, 7))  # rank 0 alone logs: no line twice
    assert len(checkpoint.load(run / "last.pt")["rng"]) == 2  # both ranks' task streams

    # the 2-process test score is the one a single process gets on the same checkpoint
    torch.set_num_threads(1)  # as in the torchrun workers: same reduction order, same bits
    cfg = compose_cfg(*overrides)
    _, algo = build(cfg, torch.device("cpu"))
    algo.load_state_dict(checkpoint.load(run / "best.pt")["model"])
    test = evaluate(algo, samplers(cfg, load_synthetic(image_size=16), "cpu")["test"],
                    cfg.trainer.test_episodes, cfg.trainer.eval_batch_size, cfg.trainer.eval_seed)
    assert test["acc"] == results["test_acc"] and test["loss"] == results["test_loss"]
    assert test["acc_ci95"] == results["test_acc_ci95"]
