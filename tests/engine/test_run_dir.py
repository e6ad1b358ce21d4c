"""The run lock (atomic takeover, heartbeat, expiry wherever the owner ran) and overwrite=true
deleting exactly what the earlier run's manifest lists (issue 21, items 2 and 3)."""
import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from metalearn import io
from metalearn.engine import rundir
from metalearn.engine.loop import train
from metalearn.errors import ConfigError, TrainingError
from tests.conftest import FAST, compose_cfg

TINY = [*FAST, "dataset.image_size=12", "backbone.hidden=8", "trainer.iterations=2"]
HOST = socket.gethostname()


def age(path: Path, seconds: float) -> None:
    old = time.time() - seconds
    os.utime(path, (old, old))


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_stale_lock_taken_over_by_many_at_once_has_one_holder(tmp_path, monkeypatch):
    judge = rundir._stale

    def slow_judge(*a):  # everyone decides "stale" before anyone takes it: the racy moment
        why = judge(*a)
        time.sleep(0.02)
        return why

    monkeypatch.setattr(rundir, "_stale", slow_judge)
    for trial in range(5):
        run = tmp_path / f"run{trial}"
        run.mkdir()
        (run / "run.lock").write_text("garbage")
        age(run / "run.lock", 3600)
        n, holding, most, wins = 6, [0], [0], [0]
        lock, gate = threading.Lock(), threading.Barrier(6)

        def contender():
            gate.wait()
            try:
                with pytest.warns(UserWarning), rundir.claim(run):
                    with lock:
                        holding[0] += 1
                        wins[0] += 1
                        most[0] = max(most[0], holding[0])
                    time.sleep(0.2)
                    with lock:
                        holding[0] -= 1
            except TrainingError:
                pass

        threads = [threading.Thread(target=contender) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert wins[0] >= 1 and most[0] == 1, f"trial {trial}: {most[0]} held the lock at once"
        assert not list(run.glob("run.lock*"))  # no lock, no renamed-aside copy left


@pytest.mark.parametrize("content", [b"", b"garbage", b'{"pid": "x"}'])
def test_an_empty_or_garbage_lock_is_refused_until_it_ages(tmp_path, content):
    (tmp_path / "run.lock").write_bytes(content)
    with pytest.raises(TrainingError, match=rf"clear it with: rm {tmp_path / 'run.lock'}"):
        with rundir.claim(tmp_path):
            pass
    age(tmp_path / "run.lock", rundir.STALE_DEFAULT_S + 5)
    with pytest.warns(UserWarning, match="no heartbeat for"), rundir.claim(tmp_path):
        assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()


def test_another_hosts_lock_clears_once_its_heartbeat_stops(tmp_path):
    (tmp_path / "run.lock").write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    with pytest.raises(TrainingError, match="in use by PID 1 on elsewhere .*rm "):
        with rundir.claim(tmp_path):
            pass
    age(tmp_path / "run.lock", rundir.STALE_DEFAULT_S + 5)
    with pytest.warns(UserWarning, match="no heartbeat"), rundir.claim(tmp_path):
        pass
    assert not (tmp_path / "run.lock").exists()


def test_a_pid_from_another_namespace_is_not_taken_for_dead(tmp_path):
    pid = dead_pid()
    (tmp_path / "run.lock").write_text(json.dumps({"pid": pid, "host": HOST,
                                                   "pidns": "pid:[1]"}))  # a container's
    with pytest.raises(TrainingError, match=rf"in use by PID {pid} on {HOST}"):
        with rundir.claim(tmp_path):
            pass
    (tmp_path / "run.lock").write_text(json.dumps({"pid": pid, "host": HOST,
                                                   "pidns": rundir._pid_namespace()}))
    with pytest.warns(UserWarning, match=rf"PID {pid} on this host, is gone"):
        with rundir.claim(tmp_path):
            pass


def test_the_owner_heartbeat_keeps_its_lock_fresh(tmp_path, monkeypatch):
    monkeypatch.setenv(rundir.STALE_ENV, "1")
    with rundir.claim(tmp_path):
        age(tmp_path / "run.lock", 30)  # as if the run had been busy a long while
        time.sleep(0.5)
        assert time.time() - (tmp_path / "run.lock").stat().st_mtime < 1
        with pytest.raises(TrainingError, match="in use by PID"):
            with rundir.claim(tmp_path):
                pass
    assert not (tmp_path / "run.lock").exists()


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("finished") / "run"
    train(compose_cfg(*TINY), run)
    return run


def test_overwrite_deletes_exactly_what_the_run_wrote(finished, tmp_path):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    wrote = set(io.read_manifest(run))
    assert {"config.yaml", "metrics.jsonl", "best.pt", "last.pt", "results.json"} <= wrote
    mine = {"notes.txt": "mine", "plot.png": "mine", "eval-mine.json": "{}", "stream.json": "{}"}
    for name, text in mine.items():
        (run / name).write_text(text)
    elsewhere = tmp_path / "scratch"  # wandb/ linked to another disk, its files the user's
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("x")
    (run / "wandb").symlink_to(elsewhere)
    io.note_written(run / "wandb")
    io.note_written(run / "eval-test-5w1s2q-6ep-best.json")  # as metalearn-eval records it
    (run / "eval-test-5w1s2q-6ep-best.json").write_text("{}")
    results = train(compose_cfg(*TINY, "seed=1", "trainer.iterations=1", "overwrite=true"), run)
    assert results["iterations"] == 1
    assert {n: (run / n).read_text() for n in mine} == mine
    assert (elsewhere / "keep.txt").exists() and (run / "wandb").is_symlink()
    assert not (run / "eval-test-5w1s2q-6ep-best.json").exists()
    assert not (run / "last.prev.pt").exists()  # the old run's, rotated
    assert {json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()} \
        == {1}


def test_overwrite_refuses_project_looking_files_without_a_manifest(tmp_path):
    files = {"config.yaml": "a: 1", "results.json": "{}", "best.pt": "x", "eval-x.json": "{}",
             "online_curve.png": "png"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "wandb").mkdir()
    with pytest.raises(ConfigError, match=r"no manifest.json .* nothing was deleted\. Remove "
                                          r"the old run's files by hand \(e.g\. cd .* rm -r"):
        train(compose_cfg(*TINY, "overwrite=true"), tmp_path)
    assert {n: (tmp_path / n).read_text() for n in files} == files
    assert (tmp_path / "wandb").is_dir() and not (tmp_path / "manifest.json").exists()


# Every entry names something under tmp_path: with the check broken (as a mutation test does,
# as root) an entry like "/etc" would delete the machine's own files.
@pytest.mark.parametrize("entry", ["../victim", "<absolute victim>", "sub/x", ".."])
def test_a_manifest_reaching_outside_the_run_dir_deletes_nothing(tmp_path, entry):
    run, victim = tmp_path / "run", tmp_path / "victim"
    run.mkdir()
    victim.write_text("mine")
    entry = str(victim) if entry == "<absolute victim>" else entry
    (run / "results.json").write_text("{}")
    (run / "manifest.json").write_text(json.dumps({"files": ["results.json", entry]}))
    with pytest.raises(ConfigError, match="not a name inside the run directory; nothing was "
                                          "deleted"):
        rundir.prepare(run, resume=False, overwrite=True)
    assert victim.read_text() == "mine" and (run / "results.json").exists()
