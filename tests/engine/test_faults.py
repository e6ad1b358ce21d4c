"""Faults end in one line and a known exit code, and lose nothing saved (docs/faults.md):
bad config values, typos, full/read-only disks, signals, non-UTF-8 names."""
import errno
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf, open_dict

from metalearn.config_check import validate
from metalearn.data import cache
from metalearn.data.base import ImageSplit
from metalearn import checkpoint
from metalearn.engine import rundir
from metalearn.engine.loop import train
from metalearn.engine.preemption import Preempted
from metalearn.errors import ConfigError, DiskError, TrainingError
from tests.conftest import FAST, ROOT, compose_cfg, local_rendezvous
from tests.engine.test_runs import TINY, env, wait_for_checkpoint

TIMING = ("train_time_s", "wall_time_s", "cpu_time_s")


@pytest.mark.parametrize("overrides, line", [
    (["algo.inner_lr=abc"], "algo.inner_lr=abc: expected a number"),
    (["algo.inner_lr=-1"], "algo.inner_lr=-1: expected a number > 0"),
    (["algo.first_order=maybe"], "algo.first_order=maybe: expected true or false"),
    (["+algo.inner_lrr=0.1"], "algo.inner_lrr=0.1: unknown key; did you mean algo.inner_lr?"),
    (["task.ways=five"], "task.ways=five: expected an integer >= 1"),
    (["task.shots=0"], "task.shots=0: expected an integer >= 1"),
    (["task.train_ways=0"], "task.train_ways=0: expected null or an integer >= 1"),
    (["trainer.iterations=abc"], "trainer.iterations=abc: expected an integer >= 1"),
    (["trainer.iterations=-5"], "trainer.iterations=-5: expected an integer >= 1"),
    (["trainer.iterations=2.5"], "trainer.iterations=2.5: expected an integer >= 1"),
    (["trainer.val_episodes=0"], "trainer.val_episodes=0: expected an integer >= 1"),
    (["trainer.test_episodes=0"], "trainer.test_episodes=0: expected an integer >= 1"),
    (["trainer.eval_every=0"], "trainer.eval_every=0: expected an integer >= 1"),
    (["trainer.checkpoint_every=0"], "trainer.checkpoint_every=0: expected an integer >= 1"),
    (["trainer.log_every=0"], "trainer.log_every=0: expected an integer >= 1"),
    (["trainer.eval_batch_size=0"], "trainer.eval_batch_size=0: expected an integer >= 1"),
    (["trainer.chunk_size=0"], "trainer.chunk_size=0: expected null or an integer >= 1"),
    (["trainer.amp=fp16"], "trainer.amp=fp16: expected one of none, bf16"),
    (["trainer.collective_timeout_s=0"],
     "trainer.collective_timeout_s=0: expected a number of seconds > 0"),
    (["+trainer.iteration=5"], "trainer.iteration=5: unknown key; did you mean trainer.iterations?"),
    (["device=tpu"], "device=tpu: expected auto, cpu, cuda or cuda:<index>"),
    (["seed=abc"], "seed=abc: expected an integer"),
    (["optimizer.lr=0"], "optimizer.lr=0: expected a number > 0"),
    (["optimizer.weight_decay=-1"], "optimizer.weight_decay=-1: expected a number >= 0"),
    (["backbone.layers=0"], "backbone.layers=0: expected a number > 0"),
    (["dataset.image_size=big"], "dataset.image_size=big: expected an integer"),
    (["task.ways=0", "trainer.iterations=0"],
     "trainer.iterations=0: expected an integer >= 1; task.ways=0: expected an integer >= 1"),
])
def test_each_bad_value_is_one_line_naming_key_value_and_expectation(base_cfg, overrides, line):
    cfg = base_cfg.copy()
    with open_dict(cfg):  # as Hydra applies `key=value` / `+key=value` (composing is slow)
        for o in overrides:
            key, value = o.lstrip("+").split("=", 1)
            OmegaConf.update(cfg, key, yaml.safe_load(value))
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert str(e.value) == line and e.value.exit_code == 2


@pytest.fixture(scope="module")
def base_cfg():
    cfg = compose_cfg(*FAST)
    validate(cfg)
    return cfg


@pytest.mark.parametrize("group", ["algorithm", "backbone", "dataset", "optimizer", "experiment",
                                   "scheduler", "logger", "online", "debug"])
def test_every_shipped_config_passes_validation(group):
    names = sorted(p.stem for p in (ROOT / "metalearn" / "configs" / group).glob("*.yaml"))
    assert names
    for name in names:
        validate(compose_cfg(f"{group}={name}"))


def test_validation_runs_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="trainer.val_episodes=0"):
        train(compose_cfg(*FAST, "trainer.val_episodes=0"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def _cli(tmp_path, *overrides, run=None):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "logger=none", "device=cpu",
         "dataset=synthetic", *overrides, f"hydra.run.dir={run or tmp_path / 'run'}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    return proc.returncode, proc.stderr.strip().splitlines()


@pytest.mark.parametrize("override, line", [
    ("trainer.iteration=5",
     "error: trainer.iteration=5: unknown key 'trainer.iteration'; did you mean trainer.iterations?"),
    ("trainr.iterations=5",
     "error: trainr.iterations=5: unknown key 'trainr'; did you mean trainer.iterations?"),
    ("algorithm=mamll", "error: algorithm=mamll: no such option; did you mean algorithm=maml? "
                        "choose one of " + ", ".join(sorted(
                            p.stem for p in (ROOT / "metalearn/configs/algorithm").glob("*.yaml")))),
    ("algo.inner_lr=abc", "error: algo.inner_lr=abc: expected a number"),
    ("experimnet=omniglot_5w1s_cpu",  # a config group, absent from the composed config
     "error: experimnet=omniglot_5w1s_cpu: unknown key 'experimnet'; did you mean experiment?"),
])
def test_train_py_answers_typos_and_bad_values_with_one_line(tmp_path, override, line):
    code, err = _cli(tmp_path, override)
    assert (code, err) == (2, [line])


def test_a_preset_naming_a_group_that_does_not_exist_is_one_line(tmp_path):
    (tmp_path / "conf" / "experiment").mkdir(parents=True)
    (tmp_path / "conf" / "experiment" / "mine.yaml").write_text(
        "# @package _global_\ndefaults:\n  - /datset: omniglot\n")
    code, err = _cli(tmp_path, "experiment=mine", f"hydra.searchpath=[file://{tmp_path / 'conf'}]")
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("error: In 'experiment/mine': Could not find 'datset/omniglot': no "
                             "such config group; the groups are ")
    assert "algorithm, backbone, dataset" in err[0]


@pytest.mark.parametrize("target", ["folder", "missing"])
def test_resume_of_a_folder_that_is_no_run_writes_nothing_into_it(tmp_path, target):
    folder = tmp_path / "mine"
    if target == "folder":
        folder.mkdir()
        (folder / "notes.txt").write_text("mine")
    code, err = _cli(tmp_path, f"resume={folder}", run=folder)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: resume={folder}: {folder} ") and "nothing was written" in err[0]
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"] if target == "folder" \
        else not folder.exists()


def test_a_refused_command_leaves_the_runs_hydra_record_as_it_was(tmp_path):
    run = tmp_path / "run"
    code, err = _cli(tmp_path, *TINY[1:], "trainer.iterations=2", "trainer.eval_every=2", run=run)
    assert code == 0, err
    record = {p.name: p.read_bytes() for p in (run / ".hydra").iterdir()}
    assert set(record) == {"config.yaml", "hydra.yaml", "overrides.yaml"}
    assert b"trainer.iterations=2" in record["overrides.yaml"]
    code, err = _cli(tmp_path, *TINY[1:], "seed=7", run=run)  # a finished run: refused
    assert code == 2 and "holds a finished run" in err[-1]
    here = {"host": socket.gethostname(), "pidns": rundir._pid_namespace()}
    with subprocess.Popen(["sleep", "60"]) as alive:  # a busy run: refused
        (run / "run.lock").write_text(json.dumps({"pid": alive.pid, **here}))
        code, err = _cli(tmp_path, *TINY[1:], "seed=8", "resume=true", run=run)
        alive.kill()
    assert code != 0 and "is in use by PID" in err[-1]
    assert {p.name: p.read_bytes() for p in (run / ".hydra").iterdir()} == record


def test_sigterm_during_start_up_is_one_line_and_exit_143(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *TINY, f"hydra.run.dir={run}"],
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env())
    deadline = time.time() + 120
    while not (run / "train.log").exists() and time.time() < deadline:  # the job has begun:
        time.sleep(0.01)  # torch, the data and the learner take seconds more to be ready
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1].strip().splitlines()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err[-1] == ("preempted: received SIGTERM during start-up, before any checkpoint was "
                       "saved: nothing to resume, run the same command again to start over")
    assert not (run / "last.pt").exists()


def test_a_stop_a_library_wrapped_is_still_one_line_and_its_exit_code(capsys):
    from omegaconf.errors import ConfigKeyError

    from metalearn.cli import report

    try:  # a SIGTERM landing inside OmegaConf, which re-raises what it catches as its own
        try:
            raise Preempted(signal.SIGTERM, 0, "", None)
        except Preempted as stop:
            raise ConfigKeyError("wrapped") from stop
    except ConfigKeyError as e:
        assert report(e) == 128 + signal.SIGTERM
    assert capsys.readouterr().err.startswith("preempted: received SIGTERM during start-up")


def test_a_full_disk_under_hydras_own_writes_names_no_none():
    from metalearn.io import disk_error
    err = disk_error(OSError(errno.ENOSPC, "No space left on device"), None)  # no filename
    assert str(err).startswith("cannot write the run directory's files: No space left on device. "
                               "Free space")


def test_an_unwritable_output_dir_is_one_line_not_a_hydra_traceback(tmp_path):
    target = Path("/sys/metalearn-test-run")  # sysfs: no new folders, not even for root
    code, err = _cli(tmp_path, run=target)
    assert code == 74 and len(err) == 1, err
    assert err[0].startswith(f"error: cannot write {target}: ") and "hydra.run.dir=" in err[0]


class FullDisk:
    """The `nth` file opened for writing whose name contains `name` fails at its `write`-th
    write with `err`, as a full (read-only, over-quota) disk does: a short write, then OSError."""

    def __init__(self, monkeypatch, name: str, nth: int, err: int, write: int = 1):
        self.name, self.nth, self.err, self.write_no, self.opened = name, nth, err, write, 0
        self.kept: dict[str, bytes] = {}  # checkpoints as they were when the disk filled
        real_open, real_fdopen = io.open, os.fdopen

        def wrap(f, path):
            if self.name not in Path(str(path)).name:
                return f
            self.opened += 1
            return _Failing(f, self, Path(str(path))) if self.opened == self.nth else f

        def fake_open(file, mode="r", *a, **kw):
            f = real_open(file, mode, *a, **kw)
            return wrap(f, file) if any(c in mode for c in "wax+") else f

        def fake_fdopen(fd, mode="r", *a, **kw):
            f = real_fdopen(fd, mode, *a, **kw)
            return wrap(f, os.readlink(f"/proc/self/fd/{fd}")) if "w" in mode else f

        monkeypatch.setattr(io, "open", fake_open)
        monkeypatch.setattr("builtins.open", fake_open)
        monkeypatch.setattr(os, "fdopen", fake_fdopen)


class _Failing:
    def __init__(self, f, disk, path):
        self._f, self._disk, self._path, self._writes = f, disk, path, 0

    def write(self, data):
        self._writes += 1
        if self._writes == self._disk.write_no:
            self._disk.kept = {p.name: p.read_bytes() for p in self._path.parent.glob("*.pt")}
            self._f.write(data[: len(data) // 2])
            raise OSError(self._disk.err, os.strerror(self._disk.err))
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def outcome(run: Path):
    results = json.loads((run / "results.json").read_text())
    return ({k: v for k, v in results.items() if k not in TIMING},
            (run / "metrics.jsonl").read_text().splitlines())


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    run = tmp_path_factory.mktemp("straight") / "run"
    train(compose_cfg(*FAST, "trainer.checkpoint_every=1"), run)
    return outcome(run)


@pytest.mark.parametrize("name, nth, write, err", [
    ("config.yaml", 1, 1, errno.EROFS),      # before anything: nothing lost
    ("metrics.jsonl", 1, 3, errno.ENOSPC),   # mid-run, before a checkpoint
    ("last.pt", 3, 2, errno.ENOSPC),         # mid-checkpoint: torch's RuntimeError path
    ("best.pt", 1, 1, errno.EDQUOT),
    ("results.json", 1, 1, errno.EACCES),    # after the test: every checkpoint is there
])
def test_a_failed_write_is_one_disk_error_keeps_checkpoints_and_resumes_identically(
        tmp_path, monkeypatch, straight, name, nth, write, err):
    run = tmp_path / "run"
    base = [*FAST, "trainer.checkpoint_every=1"]
    with monkeypatch.context() as m:
        disk = FullDisk(m, name, nth, err, write)
        with pytest.raises(DiskError) as e:
            train(compose_cfg(*base), run)
    assert e.value.exit_code == 74
    assert str(e.value).startswith(f"cannot write {run / name}: {os.strerror(err)}"), e.value
    assert "\n" not in str(e.value)
    for kept, data in disk.kept.items():  # the last good checkpoints are untouched
        assert (run / kept).read_bytes() == data, kept
    assert not list(run.glob(".*.tmp"))  # no half-written temp file left behind

    train(compose_cfg(*base, "resume=auto"), run)  # space freed: continue
    assert outcome(run) == straight


def test_a_full_cache_disk_degrades_to_no_cache_and_leaves_no_temp_file(tmp_path, monkeypatch):
    monkeypatch.setenv("METALEARN_CACHE_DIR", str(tmp_path / "cache"))
    split = ImageSplit(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.arange(4), list("abcd"),
                       "all")
    with monkeypatch.context() as m:
        FullDisk(m, ".tmp", 1, errno.ENOSPC)
        with pytest.warns(UserWarning, match="could not write the dataset cache .*without it"):
            got = cache.cached_splits("toy", "k", lambda: {"all": split})
    assert torch.equal(got["all"].images, split.images)
    assert list((tmp_path / "cache").iterdir()) == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the disk has room again: cached, silently
        cache.cached_splits("toy", "k", lambda: {"all": split})
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["toy-k.pt"]


POISONED = ["algo._target_=tests.engine.poisoned.PoisonedMAML", "trainer.log_every=1",
            "trainer.iterations=20", "trainer.checkpoint_every=1", "trainer.eval_every=10"]


def test_nan_from_the_first_iteration_does_not_promise_a_checkpoint(tmp_path):
    with pytest.raises(TrainingError, match="No checkpoint was saved yet$"):
        train(compose_cfg(*FAST, *POISONED, "trainer.max_bad_steps=2", "+algo.poison_from=1"),
              tmp_path / "run")
    assert not (tmp_path / "run" / "last.pt").exists()


def test_a_stop_while_nan_steps_are_skipped_names_the_iteration_saved(tmp_path, monkeypatch):
    from tests.engine import poisoned

    real = poisoned.PoisonedMAML.on_iteration

    def on_iteration(self, iteration):  # the cluster stops us at iteration 6
        real(self, iteration)
        if iteration == 6:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(poisoned.PoisonedMAML, "on_iteration", on_iteration)
    with pytest.raises(Preempted) as e:
        train(compose_cfg(*FAST, *POISONED, "+algo.poison_from=4"), tmp_path / "run")
    assert e.value.saved and checkpoint.load(tmp_path / "run" / "last.pt")["iteration"] == 3
    assert "stopped at iteration 6; the last checkpoint saved is iteration 3" in str(e.value)


def _launch(run: Path, *overrides):
    """`python -m metalearn.launch` (torchrun that passes 75 on): 2 gloo workers on CPU."""
    return subprocess.Popen(
        [sys.executable, "-m", "metalearn.launch", *local_rendezvous(), "--nproc_per_node=2",
         "--shutdown-timeout=60", str(ROOT / "train.py"), *TINY, *overrides,
         f"hydra.run.dir={run}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env())


def _workers(pid: int) -> dict[int, int]:
    """rank -> pid of the launcher's worker processes."""
    out = {}
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        rank = [e for e in environ if e.startswith(b"RANK=")]
        if rank:
            out[int(rank[0][5:])] = int(child)
    return out


@pytest.mark.slow
def test_sigterm_to_the_launcher_exits_75_after_every_worker_saved(tmp_path):
    run = tmp_path / "run"
    proc = _launch(run, "trainer.iterations=400", "trainer.checkpoint_every=5")
    wait_for_checkpoint(proc, run, 2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 75, err[-3000:]
    assert err.count("preempted: received SIGTERM") == 2
    assert len(checkpoint.load(run / "last.pt")["rng"]) == 2


@pytest.mark.slow
def test_a_frozen_worker_ends_the_job_in_bounded_time_with_a_resumable_state(tmp_path):
    run = tmp_path / "run"
    overrides = ["trainer.checkpoint_every=1", "trainer.collective_timeout_s=15"]
    proc = _launch(run, "trainer.iterations=400", *overrides)
    wait_for_checkpoint(proc, run, 2)
    frozen = _workers(proc.pid)[1]
    os.kill(frozen, signal.SIGSTOP)
    start = time.time()
    try:
        _, err = proc.communicate(timeout=300)
    finally:
        if Path(f"/proc/{frozen}").exists():
            os.kill(frozen, signal.SIGKILL)
    # the timeout, then torchrun's shutdown of the frozen worker (SIGTERM, then SIGKILL)
    assert proc.returncode == 75 and time.time() - start < 15 + 60 + 60, err[-3000:]
    assert "error: rank 0: " in err
    assert "did not complete within trainer.collective_timeout_s=15 s" in err
    saved = checkpoint.load(run / "last.pt")["iteration"]

    proc = _launch(run, f"trainer.iterations={saved + 2}", *overrides, "resume=auto")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert json.loads((run / "results.json").read_text())["iterations"] == saved + 2


def test_a_class_folder_with_a_non_utf8_name_loads(tmp_path, monkeypatch):
    from PIL import Image

    from metalearn.data.imagefolder import load_imagefolder

    monkeypatch.setenv("METALEARN_CACHE_DIR", str(tmp_path / "cache"))
    names = [b"bad\xff", b"a", b"b", b"c", b"d", b"e"]
    for i, name in enumerate(names):
        folder = os.path.join(os.fsencode(tmp_path / "root"), name)
        os.makedirs(folder)
        for j in range(2):
            Image.new("L", (8, 8), color=40 * i + j).save(os.path.join(folder, b"%d.png" % j))
    data = load_imagefolder(tmp_path / "root", image_size=8, channels=1)
    got = {n for s in (data.train, data.val, data.test) for n in s.class_names}
    assert got == {os.fsdecode(n) for n in names}


def _signal_at(monkeypatch, signum, when):
    """Send `signum` to this process when `when(iteration)` first holds (from the loop)."""
    from metalearn.algorithms.maml import MAML

    real, sent = MAML.on_iteration, []

    def on_iteration(self, iteration):
        real(self, iteration)
        if when(iteration) and not sent:
            sent.append(iteration)
            os.kill(os.getpid(), signum)

    monkeypatch.setattr(MAML, "on_iteration", on_iteration)


def test_ctrl_c_saves_the_iteration_and_resumes_identically(tmp_path, monkeypatch, straight):
    run = tmp_path / "run"
    base = [*FAST, "trainer.checkpoint_every=1"]
    with monkeypatch.context() as m:
        _signal_at(m, signal.SIGINT, lambda it: it == 3)
        with pytest.raises(Preempted) as e:
            train(compose_cfg(*base), run)
    assert e.value.saved and "received SIGINT: stopped after iteration 3" in str(e.value)
    assert checkpoint.load(run / "last.pt")["iteration"] == 3
    train(compose_cfg(*base, "resume=auto"), run)
    assert outcome(run) == straight


def test_a_signal_during_the_final_test_stops_at_once_with_everything_saved(
        tmp_path, monkeypatch, straight):
    import metalearn.engine.evaluation as evaluation

    run = tmp_path / "run"
    base = [*FAST, "trainer.checkpoint_every=1"]
    real = evaluation.evaluate

    def evaluate(algo, sampler, episodes, *a, **kw):
        if episodes == 6:  # trainer.test_episodes: the final test
            os.kill(os.getpid(), signal.SIGTERM)
        return real(algo, sampler, episodes, *a, **kw)

    with monkeypatch.context() as m:
        m.setattr(evaluation, "evaluate", evaluate)
        with pytest.raises(Preempted) as e:
            train(compose_cfg(*base), run)
    assert e.value.saved and "stopped after iteration 4" in str(e.value)
    assert not (run / "results.json").exists()
    train(compose_cfg(*base, "resume=auto"), run)
    assert outcome(run) == straight


@pytest.mark.parametrize("saved, code", [(3, 75), (None, 128 + signal.SIGTERM)])
def test_the_exit_code_says_whether_there_is_something_to_resume(saved, code, capsys):
    from metalearn.cli import report

    assert report(Preempted(signal.SIGTERM, 5, "out/run 1/last.pt", saved)) == code
    err = capsys.readouterr().err
    assert err.startswith("preempted: received SIGTERM")
    # a command that continues this run: resume=auto would start a new timestamped one
    assert ("to continue: python train.py resume='out/run 1'\n" in err) == (saved is not None)


@pytest.fixture
def small_disk(tmp_path):
    """A real 3 MB tmpfs: room for a checkpoint or two, not for a whole run."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root (CAP_SYS_ADMIN)")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_a_really_full_disk_is_one_line_and_resumes_elsewhere_identically(
        tmp_path, small_disk, straight):
    import shutil

    base = [*FAST, "trainer.checkpoint_every=1"]
    with pytest.raises(DiskError, match=r"^cannot write .*\.pt: (No space left on device|the "
                                        r"write stopped short)") as e:
        train(compose_cfg(*base), small_disk / "run")
    assert not list((small_disk / "run").glob(".*.tmp"))
    moved = tmp_path / "moved"
    shutil.copytree(small_disk / "run", moved)  # the user frees space: here, a bigger disk
    train(compose_cfg(*base, "resume=auto"), moved)
    assert outcome(moved) == straight, e.value
