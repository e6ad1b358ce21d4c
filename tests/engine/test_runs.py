"""Runs that survive: SIGKILL + resume is bit-identical, SIGTERM saves and exits 75, damaged
checkpoints fall back, NaN steps are skipped and never checkpointed."""
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from metalearn import checkpoint
from metalearn.engine.checkpoint import TrainingState
from metalearn.engine.run import latest
from metalearn.engine.loop import train
from metalearn.engine.preemption import PREEMPTED_EXIT_CODE
from metalearn.errors import ConfigError, TrainingError
from tests.conftest import FAST, ROOT, compose_cfg

TINY = ["dataset=synthetic", "dataset.image_size=16", "logger=none", "device=cpu",
        "trainer.meta_batch_size=2", "trainer.val_episodes=4", "trainer.test_episodes=6",
        "trainer.eval_batch_size=3", "task.query=2", "trainer.log_every=1"]
# long enough to be interrupted mid-way (~3 s of iterations), short enough for a test
LONG = [*TINY, "trainer.iterations=150", "trainer.eval_every=20", "trainer.checkpoint_every=7"]
TIMING = ("train_time_s", "wall_time_s", "cpu_time_s")


def env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def cli(run: Path, *overrides, **kw):
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *overrides,
                             f"hydra.run.dir={run}"], env=env(), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def wait_for_checkpoint(proc, run: Path, min_iteration: int) -> None:
    """Block until `last.pt` is at `min_iteration` or later while the run still trains."""
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        lines = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").exists() else []
        if (run / "last.pt").exists() and lines and json.loads(lines[-1])["step"] >= min_iteration:
            return
        time.sleep(0.005)
    pytest.fail(f"the run ended or stalled before iteration {min_iteration}: "
                f"{proc.communicate()[1][-2000:]}")


def outcome(run: Path):
    results = json.loads((run / "results.json").read_text())
    return ({k: v for k, v in results.items() if k not in TIMING},
            (run / "metrics.jsonl").read_text().splitlines(),
            {name: checkpoint.load(run / name) for name in ("last.pt", "best.pt")})


def assert_same_state(a, b, where=""):
    """Every tensor bit for bit (torch.equal), every other value equal."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, np.ndarray):  # numpy's RNG state
        assert a.dtype == b.dtype and np.array_equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            if k not in ("train_time_s", "metrics_bytes", "resume"):  # timing; how it was started
                assert_same_state(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run = tmp_path_factory.mktemp("straight") / "run"
    proc = cli(run, *LONG)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    return outcome(run)


def test_sigkill_then_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, uninterrupted):
    run = tmp_path / "run"
    proc = cli(run, *LONG)
    wait_for_checkpoint(proc, run, 25)  # past a validation and a few checkpoints
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (run / "results.json").exists()
    killed_at = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"]
    saved_at = checkpoint.load(run / "last.pt")["iteration"]
    assert saved_at < tc_iterations(LONG)

    proc = cli(run, *LONG, "resume=auto")  # what a requeued SLURM job runs
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    assert f"resuming from {run / 'last.pt'} (iteration {saved_at})" in out

    results, lines, ckpts = outcome(run)
    ref_results, ref_lines, ref_ckpts = uninterrupted
    assert results == ref_results
    assert lines == ref_lines, f"killed at {killed_at}, resumed from {saved_at}"
    assert_same_state(ckpts, ref_ckpts)


def tc_iterations(overrides):
    return int(next(o for o in overrides if o.startswith("trainer.iterations=")).split("=")[1])


def test_sigterm_saves_last_and_exits_with_the_preemption_code(tmp_path, uninterrupted):
    run = tmp_path / "run"
    proc = cli(run, *LONG)
    wait_for_checkpoint(proc, run, 10)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == PREEMPTED_EXIT_CODE, err[-2000:]
    last = checkpoint.load(run / "last.pt")
    step = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"]
    # the iteration under way was finished and saved, not lost
    assert last["iteration"] == step and f"stopped after iteration {step}" in err
    assert not (run / "results.json").exists()
    # the advice printed is a command that continues this run, whatever its directory's name
    advice = err.split("to continue: ", 1)[1].splitlines()[0]
    assert advice == f"python train.py resume={run}"
    proc = subprocess.Popen([sys.executable, *shlex.split(advice)[1:]], env=env(), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    results, lines, ckpts = outcome(run)
    assert (results, lines) == uninterrupted[:2]
    assert_same_state(ckpts, uninterrupted[2])


def test_a_truncated_checkpoint_is_reported_and_an_older_one_resumes(tmp_path):
    run = tmp_path / "run"
    base = [*FAST, "trainer.eval_every=3", "trainer.checkpoint_every=2"]
    train(compose_cfg(*base, "trainer.iterations=6"), run)  # saves at 2, 3, 4, 6
    assert checkpoint.load(run / "last.prev.pt")["iteration"] == 4
    data = (run / "last.pt").read_bytes()
    (run / "last.pt").write_bytes(data[: len(data) // 2])

    with pytest.warns(UserWarning, match=r"last\.pt is corrupt or truncated.*Resuming from"):
        state, path = latest(run, TrainingState)
    assert path.name == "best.pt" if state["iteration"] == 6 else path.name == "last.prev.pt"
    with pytest.warns(UserWarning, match="corrupt or truncated"):
        results = train(compose_cfg(*base, "trainer.iterations=8", "resume=true"), run)
    assert results["iterations"] == 8 and checkpoint.load(run / "last.pt")["iteration"] == 8

    for name in checkpoint.RESUMABLE:
        (run / name).write_bytes(b"not a checkpoint")
    with pytest.raises(TrainingError, match="no readable checkpoint"):
        train(compose_cfg(*base, "trainer.iterations=8", "resume=true"), run)


def test_resume_refuses_a_changed_config_and_reuses_a_run_dir_config(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(ConfigError, match="holds no checkpoint"):
        train(compose_cfg(*FAST, "resume=true"), run)
    train(compose_cfg(*FAST, "trainer.iterations=2", "seed=7"), run)
    with pytest.raises(ConfigError, match=r"differs from the checkpoint's at seed \(7 in"):
        train(compose_cfg(*FAST, "trainer.iterations=4", "resume=true"), run)
    # resume=<run dir>: that run's own config (seed 7), its own directory
    results = train(compose_cfg("resume=" + str(run), "trainer.iterations=2"), tmp_path / "x")
    assert results["iterations"] == 2 and not (tmp_path / "x").exists()
    assert "seed: 7" in (run / "config.yaml").read_text()


def test_nan_steps_are_skipped_then_stop_the_run_keeping_the_last_good_checkpoint(tmp_path):
    poisoned = ["algo._target_=tests.engine.poisoned.PoisonedMAML", "trainer.max_bad_steps=3",
                "trainer.iterations=20", "trainer.checkpoint_every=2", "trainer.eval_every=2",
                "trainer.log_every=1"]
    run = tmp_path / "blowup"
    with pytest.raises(TrainingError, match=r"NaN/Inf for 3 iterations in a row \(up to "
                                            r"iteration 7.*last good checkpoint is kept"):
        train(compose_cfg(*FAST, *poisoned, "+algo.poison_from=5"), run)
    last = checkpoint.load(run / "last.pt")
    assert last["iteration"] == 4  # iterations 5-7 were bad: never saved
    assert all(torch.isfinite(t).all() for t in last["model"].values())
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [l["train/skipped_steps"] for l in lines if "train/skipped_steps" in l] == [1, 2, 3]

    # one bad step: skipped, weights untouched by it, the run goes on
    results = train(compose_cfg(*FAST, *poisoned, "+algo.poison_from=3",
                                "+algo.poison_until=3"), tmp_path / "blip")
    assert results["skipped_steps"] == 1 and results["iterations"] == 20
    assert all(torch.isfinite(t).all()
               for t in checkpoint.load(tmp_path / "blip" / "last.pt")["model"].values())


def test_an_absurd_inner_lr_stops_with_one_clear_line(tmp_path):
    proc = cli(tmp_path / "run", *TINY, "trainer.iterations=20", "trainer.max_bad_steps=2",
               "algo.inner_lr=1e30")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err[-2000:]
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: meta-loss or meta-gradient was NaN/Inf for 2 iterations")


def test_a_resumed_run_continues_the_same_wandb_run(tmp_path, caplog):
    from tests.wandb_files import read_run

    run = tmp_path / "run"
    # the name and group a preset gave the first job; the resumed job has no preset
    train(compose_cfg(*FAST, "logger=wandb", "trainer.iterations=2",
                      "logger.name=omniglot_5w1s_cpu", "logger.group=paper"), run)
    first_id = checkpoint.load(run / "last.pt")["wandb_run_id"]
    assert first_id
    caplog.set_level("INFO", logger="metalearn.tracking")
    train(compose_cfg(*FAST, "logger=wandb", "trainer.iterations=4", "resume=true"), run)
    files = sorted(run.glob("wandb/*run-*/run-*.wandb"))
    assert [f.name for f in files] == [f"run-{first_id}.wandb"] * 2  # resume="allow", same id
    assert checkpoint.load(run / "last.pt")["wandb_run_id"] == first_id
    for f in files:
        assert {k: read_run(f)["run"][k] for k in ("id", "name", "group")} == {
            "id": first_id, "name": "omniglot_5w1s_cpu", "group": "paper"}
    # the upload command names both folders of the id
    sync = [r.getMessage() for r in caplog.records if "wandb sync" in r.getMessage()][-1]
    assert sync.split("wandb sync ", 1)[1].split() == [str(f.parent) for f in files]
    # the resumed part logs only what came after the checkpoint: validation at 4, the test
    history = read_run(files[-1])["history"]
    assert sum("val/acc" in h for h in history) == 1 and any("test/acc" in h for h in history)
    assert sum("val/acc" in h for h in read_run(files[0])["history"]) == 1  # at 2


def test_a_file_that_is_no_checkpoint_is_not_called_corrupt(tmp_path):
    """Deleting a metrics.jsonl given by mistake would lose the user's own data."""
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 1, "train/loss": 1.61}\n')
    with pytest.raises(TrainingError, match="is not a checkpoint") as e:
        checkpoint.load(metrics)
    assert "delete" not in str(e.value) and "corrupt" not in str(e.value)
    # a checkpoint cut short is still one: corrupt
    torch.save({"format": checkpoint.FORMAT, "x": torch.zeros(1000)}, tmp_path / "cut.pt")
    data = (tmp_path / "cut.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(TrainingError, match="corrupt or truncated"):
        checkpoint.load(tmp_path / "cut.pt")


def test_results_give_the_whole_runs_train_and_wall_time_after_a_resume(tmp_path):
    run = tmp_path / "run"
    train(compose_cfg(*FAST, "trainer.iterations=2"), run)
    state = checkpoint.load(run / "last.pt")
    state["train_time_s"] = 1000.0  # a long first process
    checkpoint.save(state, run / "last.pt")
    results = train(compose_cfg(*FAST, "trainer.iterations=4", "resume=true"), run)
    assert 1000 < results["train_time_s"] <= results["wall_time_s"]
    saved = json.loads((run / "results.json").read_text())
    assert saved["train_time_s"] <= saved["wall_time_s"]
