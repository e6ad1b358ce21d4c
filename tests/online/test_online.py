"""Online meta-learning: score-before-learn order, deterministic streams, kill -9 resume,
FTML against training from scratch, and one-line errors."""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from metalearn.data.episodes import Preprocess
from metalearn import checkpoint
from metalearn.errors import ConfigError, TrainingError
from metalearn.online.buffer import TaskBuffer
from metalearn.online.learners import FTML
from metalearn.online.run import run_online
from metalearn.online.stream import DomainStream, IIDStream, domains_of
from metalearn.online.synthetic import load_synthetic_domains
from tests.conftest import ROOT, compose_cfg

# Tiny synthetic-domain streams: 12-px images, 8-filter Conv-4, 3-way 1-shot, 3 queries.
TINY = ["dataset=synthetic_domains", "dataset.image_size=12", "dataset.signal_size=6",
        "backbone.hidden=8", "logger=none", "device=cpu", "task.ways=3", "task.query=3",
        "online.efficiency.max_shots=0", "online.forgetting.domains=0"]
FAST_FTML = ["online=ftml", *TINY, "online.learner.meta_batch_size=2", "online.learner.steps_per_round=1"]
IID = ["online/stream=iid", "online.stream.rounds=4"]


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _weights(run_dir):
    return checkpoint.load(run_dir / "online.pt")["learner"]["algo"]


def test_each_round_is_scored_before_the_learner_learns_from_it(tmp_path, monkeypatch):
    events = []
    score, add = FTML.score, TaskBuffer.add
    monkeypatch.setattr(FTML, "score", lambda self, ep: (events.append("score"), score(self, ep))[1])
    monkeypatch.setattr(TaskBuffer, "add", lambda self, r: (events.append(f"add{r}"), add(self, r))[1])
    run_online(compose_cfg(*FAST_FTML, *IID), tmp_path / "full")
    assert events == [e for r in range(4) for e in ("score", f"add{r}")]
    # Independently: round 4's score is what the parameters after round 3 give on task 4.
    cfg3 = compose_cfg(*FAST_FTML, "online/stream=iid", "online.stream.rounds=3")
    run_online(cfg3, tmp_path / "three")
    from metalearn.engine.loop import build

    data, algo = build(cfg3, torch.device("cpu"))
    stream = IIDStream(rounds=4).draw(data.train, 3, 1, 3, seed=0)
    task4 = Preprocess(data.mean, data.std)(stream.episodes(data.train, [3], 1, 3))
    algo.load_state_dict(_weights(tmp_path / "three"))
    before = algo.evaluate(task4)
    algo.load_state_dict(_weights(tmp_path / "full"))
    after = algo.evaluate(task4)
    logged = _rows(tmp_path / "full")[3]
    assert logged["online/loss"] == pytest.approx(float(before.loss[0]), abs=1e-6)
    assert logged["online/acc"] == pytest.approx(float(before.acc[0]))
    assert abs(float(after.loss[0]) - float(before.loss[0])) > 1e-4  # the order is visible


def test_streams_and_buffer_are_deterministic_under_a_seed():
    split = load_synthetic_domains(domains=4, classes_per_domain=(6, 2, 2), image_size=12,
                                   signal_size=6).train
    spec = DomainStream(tasks_per_domain=3)
    a, b = spec.draw(split, 3, 2, 3, seed=7), spec.draw(split, 3, 2, 3, seed=7)
    c = spec.draw(split, 3, 2, 3, seed=8)
    assert torch.equal(a.classes, b.classes) and torch.equal(a.images, b.images)
    assert a.domain_names == b.domain_names and not torch.equal(a.classes, c.classes)
    assert a.domain.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]  # domains in sequence
    pools = domains_of(split)
    for cls, d in zip(a.classes, a.domain):
        assert set(cls.tolist()) <= set(pools[a.domain_names[d]])
    assert all(len(set(img.tolist())) == 5 for img in a.images.flatten(0, 1))  # distinct images
    # the i.i.d. stream of more rounds starts with the same tasks
    short, long = IIDStream(rounds=3).draw(split, 3, 1, 3, 0), IIDStream(rounds=5).draw(split, 3, 1, 3, 0)
    assert torch.equal(short.classes, long.classes[:3])

    buf = TaskBuffer(size=4)
    for r in range(6):
        buf.add(r)
    assert buf.tasks == [2, 3, 4, 5]  # oldest dropped first
    draw = [buf.sample(3, torch.Generator().manual_seed(1)) for _ in range(2)]
    assert draw[0] == draw[1] and len(set(draw[0])) == 3
    recent = TaskBuffer(size=10, sampling="recent", decay=0.5)
    for r in range(10):
        recent.add(r)
    picks = recent.sample(400, torch.Generator().manual_seed(0))
    assert picks.count(9) > 150 and picks.count(0) < 5


def test_resume_after_kill_9_equals_an_uninterrupted_stream(tmp_path):
    over = [*FAST_FTML, "online/stream=iid", "online.stream.rounds=5",
            "online.checkpoint_every=2", "online.efficiency.max_shots=2",
            "online.efficiency.threshold=0.5"]
    run_online(compose_cfg(*over), tmp_path / "straight")
    killed = tmp_path / "killed"
    # Killed mid-round 4 (round 3 logged, last checkpoint after round 2).
    code = ("import os, signal, sys\n"
            "from metalearn.online.buffer import TaskBuffer\n"
            "add = TaskBuffer.add\n"
            "def dying(self, r):\n"
            "    if r == 3: os.kill(os.getpid(), signal.SIGKILL)\n"
            "    add(self, r)\n"
            "TaskBuffer.add = dying\n"
            "from metalearn.train import main\n"
            f"sys.argv = ['train.py', *{over!r}, 'hydra.run.dir={killed}']\n"
            "main()\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert len(_rows(killed)) == 3 and checkpoint.load(killed / "online.pt")["round"] == 2
    run_online(compose_cfg(*over, f"resume={killed}"), killed)
    assert _rows(killed) == _rows(tmp_path / "straight")
    a, b = _weights(killed), _weights(tmp_path / "straight")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    res = [json.loads((d / "results.json").read_text()) for d in (killed, tmp_path / "straight")]
    for r in res:
        r.pop("wall_time_s")
    assert res[0] == res[1]


@pytest.mark.slow
def test_ftml_beats_training_from_scratch_on_a_synthetic_stream(tmp_path):
    # 16-px images whose class lives in a 4-px square (placed by domain) amid random pixels:
    # a fresh network fitting one shot per class latches onto noise, a meta-learner learns
    # where to look.
    over = ["dataset=synthetic_domains", "dataset.image_size=16", "dataset.signal_size=4",
            "dataset.noise=0.0", "backbone.hidden=8", "logger=none", "device=cpu", "task.ways=3",
            "task.query=3", "online.efficiency.max_shots=0", "online.forgetting.domains=0",
            "online.stream.split=train", "online.stream.domains=2",
            "online.stream.tasks_per_domain=4"]
    ftml = run_online(compose_cfg("online=ftml", *over, "online.learner.steps_per_round=3",
                                  "online.learner.meta_batch_size=4"), tmp_path / "ftml")
    scratch = run_online(compose_cfg("online=scratch", *over, "online.learner.finetune_steps=20"),
                         tmp_path / "scratch")
    assert (tmp_path / "ftml" / "stream.json").read_text() == \
        (tmp_path / "scratch" / "stream.json").read_text()  # same tasks, same order
    assert (tmp_path / "ftml" / "online_curve.png").stat().st_size > 1000
    assert ftml["online_acc"] > scratch["online_acc"] + 0.05, (ftml, scratch)


@pytest.mark.parametrize("override, message", [
    ("online.buffer.size=0", "online.buffer.size=0: expected a number > 0"),
    ("+online.learner.steps_per_roud=2", "did you mean online.learner.steps_per_round"),
    ("task.ways=17", "only 0 domains of the train split have task.ways=17 classes or more"),
    ("online.stream.domains=5", "online.stream.domains=5 but only 4 domains"),
    ("online.buffer.sampling=lifo", "choose one of uniform, recent"),
])
def test_impossible_settings_fail_with_one_clear_line(tmp_path, override, message):
    cfg = compose_cfg(*FAST_FTML, "online.stream.split=train", override)
    with pytest.raises(ConfigError, match=message):
        run_online(cfg, tmp_path)


def test_a_finished_stream_is_never_written_over_and_a_busy_directory_is_refused(tmp_path):
    run = tmp_path / "run"
    first = run_online(compose_cfg(*FAST_FTML, *IID), run)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    with pytest.raises(ConfigError, match="holds a finished run .* overwrite=true"):
        run_online(compose_cfg(*FAST_FTML, *IID), run)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    (run / "run.lock").write_text(json.dumps({"pid": os.getpid(), "host": os.uname().nodename}))
    with pytest.raises(TrainingError, match="is in use by PID"):
        run_online(compose_cfg(*FAST_FTML, *IID, "overwrite=true"), run)
    (run / "run.lock").unlink()
    again = run_online(compose_cfg(*FAST_FTML, *IID, "overwrite=true"), run)
    assert {k: v for k, v in again.items() if k != "wall_time_s"} == \
        {k: v for k, v in first.items() if k != "wall_time_s"}
    assert len(_rows(run)) == len(_rows(tmp_path / "run")) == 4 + 1  # 4 rounds + the summary row


def test_frozen_scores_a_saved_checkpoint_and_needs_one(tmp_path):
    with pytest.raises(ConfigError, match="set online.checkpoint="):
        run_online(compose_cfg("online=frozen", *TINY, *IID), tmp_path / "a")
    run_online(compose_cfg(*FAST_FTML, *IID), tmp_path / "ftml")
    pt = tmp_path / "meta.pt"
    checkpoint.save({"format": checkpoint.FORMAT, "version": checkpoint.VERSION,  # a metalearn .pt
                     "model": _weights(tmp_path / "ftml")}, pt)
    res = run_online(compose_cfg("online=frozen", *TINY, *IID, f"online.checkpoint={pt}"),
                     tmp_path / "frozen")
    assert _weights(tmp_path / "frozen").keys() == _weights(tmp_path / "ftml").keys()
    assert all(torch.equal(_weights(tmp_path / "frozen")[k], v)
               for k, v in _weights(tmp_path / "ftml").items())  # never updated
    assert res["rounds"] == 4


def test_train_log_follows_the_stream(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *FAST_FTML,
                           "online.stream.split=train", "online.stream.tasks_per_domain=2",
                           f"hydra.run.dir={tmp_path}"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = (tmp_path / "train.log").read_text()
    for line in ["online: FTML on 8 rounds", "round 2/8 acc", "round 8/8 acc", "done: acc",
                 "online accuracy"]:
        assert line in log, line


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def test_an_online_checkpoint_round_trips_through_online_state(tmp_path):
    from metalearn.engine.run import Run
    from metalearn.online.run import _setup
    from metalearn.online.state import OnlineState

    cfg = compose_cfg(*FAST_FTML, "online/stream=iid", "online.stream.rounds=3",
                      "online.checkpoint_every=2")
    run_online(cfg, tmp_path / "run")
    saved = checkpoint.load(tmp_path / "run" / "online.pt")
    assert saved["round"] == 3 and set(OnlineState.KEYS) <= saved.keys()
    # a fresh learner, buffer and RNGs, restored from the file: the same state, written again
    (tmp_path / "again").mkdir()
    on = _setup(Run(cfg, tmp_path / "again", OnlineState, saved))
    again = on.state.state_dict()
    for d in (saved, again):
        d["history"] = {**d["history"], "elapsed_s": None}  # time, not state
    assert again.keys() == saved.keys() and _same(again, saved)
    assert on.state.round == 3 and on.first == 3  # the stream goes on after round 3
    with pytest.raises(ConfigError, match="the stream drawn now differs"):
        OnlineState(on.state.learner, on.state.buffer, on.state.generators,
                    stream=on.state.stream + 1).load_state_dict(saved)


def test_training_and_online_resumes_share_one_policy(tmp_path):
    """One resume policy: the same change is refused alike by both kinds of run, the same
    where-and-how keys are free, and both write through the same checkpoint writer."""
    from metalearn.engine.loop import train
    from tests.engine.conftest import TINY

    runs = {"training": (lambda *o, **kw: train(compose_cfg(*TINY, *o), kw["at"], kw.get("ov"))),
            "online": (lambda *o, **kw: run_online(compose_cfg(*FAST_FTML, *IID, *o), kw["at"],
                                                   kw.get("ov")))}
    written = []
    save = checkpoint.save

    def spy(state, path, keep_previous=False):
        written.append((path.name, keep_previous))
        save(state, path, keep_previous)

    messages = {}
    for kind, start in runs.items():
        run = tmp_path / kind
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(checkpoint, "save", spy)
            start(at=run)
        with pytest.raises(ConfigError) as same_dir:
            start("seed=3", "resume=true", at=run)
        with pytest.raises(ConfigError) as run_dir:
            start(f"resume={run}", "seed=3", at=tmp_path / "x", ov=[f"resume={run}", "seed=3"])
        messages[kind] = [str(e.value).replace(str(run), "<run>") for e in (same_dir, run_dir)]
        # what only says where and how the run goes is accepted by both
        start(f"resume={run}", "threads=1", at=tmp_path / "x", ov=[f"resume={run}", "threads=1"])
    assert messages["training"][0] == messages["online"][0] == (
        "resume: the config differs from the checkpoint's at seed (0 in the checkpoint, 3 now). "
        "Resume with the original overrides (or resume=<run dir> to reuse its config), or start "
        "a new run")
    head = ("resume=<run dir> continues that run with its own config; seed cannot change in a "
            "resumed run (only resume, overwrite, device, threads, paths, logger, "
            "optimizer.fused, optimizer.foreach")
    tail = "): drop the override or start a new run"
    assert messages["online"][1] == head + tail
    assert messages["training"][1] == head + (", trainer.iterations, trainer.eval_every, "
                                              "trainer.log_every, trainer.checkpoint_every, "
                                              "eval") + tail
    rotated = {name for name, keep in written if keep}
    assert rotated == {"last.pt", "online.pt"}, written


def test_a_damaged_online_checkpoint_falls_back_to_the_previous_one(tmp_path):
    over = [*FAST_FTML, *IID, "online.checkpoint_every=2"]  # saves after rounds 2 and 4
    run = tmp_path / "run"
    first = run_online(compose_cfg(*over), run)
    rows = _rows(run)
    assert checkpoint.load(run / "online.prev.pt")["round"] == 2
    data = (run / "online.pt").read_bytes()
    (run / "online.pt").write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning, match=r"online\.pt is corrupt or truncated.*Resuming from "
                                         r".*online\.prev\.pt"):
        again = run_online(compose_cfg(*over, "resume=true"), run)
    assert _rows(run) == rows  # rounds 3 and 4 again, from round 2's state
    assert {k: v for k, v in again.items() if k != "wall_time_s"} == \
        {k: v for k, v in first.items() if k != "wall_time_s"}
    for name in ("online.pt", "online.prev.pt"):
        (run / name).write_bytes(b"not a checkpoint")
    with pytest.raises(TrainingError, match="no readable checkpoint"):
        run_online(compose_cfg(*over, "resume=true"), run)
