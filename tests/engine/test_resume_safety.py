"""Checkpoints never run code, one writer per run directory, no finished run written over, and
resume that applies (or refuses) what the command line says: each a one-line error."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from metalearn import checkpoint, io
from metalearn.engine import rundir
from metalearn.engine.loop import train
from metalearn.errors import ConfigError, TrainingError
from tests.conftest import FAST, ROOT, compose_cfg

from tests.engine.conftest import TINY


class Payload:
    """Unpickling this runs `touch <marker>`, as a planted checkpoint would run anything."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def plant(path: Path, marker: Path) -> None:
    torch.save({"format": checkpoint.FORMAT, "version": checkpoint.VERSION, "iteration": 99,
                "model": Payload(marker)}, path)


def cli(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), *args], capture_output=True,
                          text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})


@pytest.fixture
def copy(run_copy) -> Path:
    return run_copy


@pytest.mark.parametrize("name", checkpoint.RESUMABLE)
@pytest.mark.parametrize("mode", ["true", "auto", "dir"])
def test_a_planted_pickle_never_runs_under_any_resume(tmp_path, name, mode):
    run, marker = tmp_path / "run", tmp_path / "marker"
    run.mkdir()
    plant(run / name, marker)
    resume = str(run) if mode == "dir" else mode
    with pytest.raises(checkpoint.ForeignCheckpoint, match=rf"refusing to load {run / name}: "
                                                           r"it holds more than tensors"):
        train(compose_cfg(*TINY, f"resume={resume}"), run if mode != "dir" else tmp_path / "x")
    assert not marker.exists()


def test_a_planted_pickle_beside_good_checkpoints_still_stops_the_run(copy, tmp_path):
    marker = tmp_path / "marker"
    plant(copy / "last.prev.pt", marker)  # last.pt is fine: falling back to it hides an attack
    with pytest.raises(checkpoint.ForeignCheckpoint, match="refusing to load"):
        train(compose_cfg(*TINY, "resume=auto"), copy)
    assert not marker.exists()


def test_planted_pickles_give_one_error_line_from_train_and_evaluate(copy, tmp_path):
    marker = tmp_path / "marker"
    for name in checkpoint.RESUMABLE:
        plant(copy / name, marker)
    for proc in (cli("train.py", *TINY, "resume=true", f"hydra.run.dir={copy}"),
                 cli("scripts/evaluate.py", f"run_dir={copy}")):
        assert proc.returncode == 2, proc.stderr[-2000:]
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("error: refusing to load") and "Traceback" not in proc.stderr
    assert not marker.exists()


def test_a_file_from_another_program_or_version_is_named_as_such(copy):
    torch.save({"weights": torch.zeros(2), "iteration": 3}, copy / "last.pt")
    with pytest.raises(checkpoint.ForeignCheckpoint,
                       match=r"last\.pt is not a metalearn checkpoint \(expected a dict with "
                             r"format='metalearn-checkpoint', found a dict with keys weights"):
        train(compose_cfg(*TINY, "resume=true"), copy)
    torch.save(torch.nn.Linear(2, 2).state_dict(), copy / "last.pt")  # a bare state_dict
    with pytest.raises(checkpoint.ForeignCheckpoint, match="not a metalearn checkpoint"):
        checkpoint.load(copy / "last.pt")
    old = checkpoint.load(copy / "best.pt")
    old["version"] = 1
    torch.save(old, copy / "last.pt")
    with pytest.raises(checkpoint.ForeignCheckpoint, match="version 1 metalearn checkpoint; "
                                                           "this metalearn reads version 2"):
        train(compose_cfg(*TINY, "resume=true"), copy)


def test_a_busy_run_directory_is_refused_and_a_dead_owners_lock_taken_over(copy):
    here = {"host": socket.gethostname(), "pidns": rundir._pid_namespace()}
    with subprocess.Popen(["sleep", "60"]) as alive:
        (copy / "run.lock").write_text(json.dumps({"pid": alive.pid, **here}))
        with pytest.raises(TrainingError, match=rf"{copy} is in use by PID {alive.pid} on .*"
                                                rf"clear it with: rm {copy / 'run.lock'}"):
            train(compose_cfg(*TINY, "resume=true"), copy)
        alive.kill()
    (copy / "run.lock").write_text(json.dumps({"pid": alive.pid, "host": "elsewhere"}))
    with pytest.raises(TrainingError, match="in use by PID .* on elsewhere"):  # cannot check it
        train(compose_cfg(*TINY, "resume=true"), copy)
    assert json.loads((copy / "run.lock").read_text())["host"] == "elsewhere"  # left alone

    (copy / "run.lock").write_text(json.dumps({"pid": alive.pid, **here}))
    (copy / ".last.pt.x1y2.tmp").write_bytes(b"half a checkpoint")  # a kill mid-save left it
    with pytest.warns(UserWarning, match=rf"PID {alive.pid} on this host, is gone"):
        train(compose_cfg(*TINY, "resume=true"), copy)  # finished: only re-tests best.pt
    assert not (copy / "run.lock").exists() and not list(copy.glob(".*.tmp"))


def test_a_finished_or_resumable_run_is_kept_unless_overwrite(copy):
    before = {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file()}
    with pytest.raises(ConfigError, match=r"holds a finished run \(results.json\): continue it "
                                          r"with resume=true .* overwrite=true"):
        train(compose_cfg(*TINY), copy)
    (copy / "results.json").unlink()
    with pytest.raises(ConfigError, match="holds a resumable run"):
        train(compose_cfg(*TINY, "seed=1"), copy)
    assert {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file()} == \
        {k: v for k, v in before.items() if k != "results.json"}

    io.note_written(copy / "eval-test-5w1s2q-6ep-best.json")  # as metalearn-eval records it
    (copy / "eval-test-5w1s2q-6ep-best.json").write_text("{}")  # scored the old weights
    (copy / ".hydra").mkdir()  # Hydra's, written before train() runs: not the old run's
    results = train(compose_cfg(*TINY, "seed=1", "trainer.iterations=1", "overwrite=true"), copy)
    assert results["iterations"] == 1 and (copy / ".hydra").is_dir()
    assert not (copy / "eval-test-5w1s2q-6ep-best.json").exists()
    assert not (copy / "last.prev.pt").exists()  # rotated from the old run otherwise
    assert {json.loads(l)["step"] for l in (copy / "metrics.jsonl").read_text().splitlines()} \
        == {1}  # nothing of the old run's
    with pytest.raises(ConfigError, match="contradict"):
        train(compose_cfg(*TINY, "resume=true", "overwrite=true"), copy)


def test_resume_dir_applies_safe_overrides_and_refuses_others(copy, tmp_path):
    for bad in (["seed=3"], ["algorithm=protonet"], ["algo.first_order=true"]):
        with pytest.raises(ConfigError, match=rf"{bad[0].lstrip('+').split('=')[0]} cannot "
                                              r"change in a resumed run"):
            train(compose_cfg(*TINY, f"resume={copy}", *bad), tmp_path / "x", overrides=bad)
    overrides = ["trainer.iterations=5", "trainer.eval_every=3"]
    results = train(compose_cfg(f"resume={copy}", *overrides), tmp_path / "x",
                    overrides=[f"resume={copy}", *overrides])
    assert results["iterations"] == 5 and checkpoint.load(copy / "last.pt")["iteration"] == 5
    assert "eval_every: 3" in (copy / "config.yaml").read_text()
    lines = [json.loads(l) for l in (copy / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines if "val/acc" in l] == [2, 3, 5]  # the new cadence

    # under train.py the command line is read from Hydra: never silently ignored
    proc = cli("train.py", f"resume={copy}", "seed=3", f"hydra.run.dir={tmp_path / 'y'}")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "error: resume=<run dir> continues that run with its own config; seed cannot change")


def test_resuming_a_cosine_run_with_more_iterations_follows_the_longer_schedule(tmp_path):
    quick = [*TINY, "algorithm=protonet", "scheduler=cosine", "trainer.log_every=1",
             "trainer.eval_every=100", "trainer.val_episodes=2", "trainer.test_episodes=2",
             "trainer.meta_batch_size=1"]

    def lrs(run):
        return {l["step"]: l["train/lr"] for l in map(json.loads, (run / "metrics.jsonl")
                                                        .read_text().splitlines())
                if "train/lr" in l}

    train(compose_cfg(*quick, "trainer.iterations=40"), tmp_path / "fresh")
    train(compose_cfg(*quick, "trainer.iterations=20"), tmp_path / "short")
    assert lrs(tmp_path / "short")[20] == pytest.approx(0.0, abs=1e-12)  # annealed to eta_min over 20 iterations
    train(compose_cfg(*quick, "trainer.iterations=40", "resume=true"), tmp_path / "short")
    fresh, resumed = lrs(tmp_path / "fresh"), lrs(tmp_path / "short")
    assert [resumed[i] for i in range(21, 41)] == [fresh[i] for i in range(21, 41)]
    assert resumed[21] > 0.0
