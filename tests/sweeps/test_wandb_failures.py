"""W&B failing never costs a training run: real wandb, real failures."""
import json
import socket
import time
import warnings

import pytest
import wandb

from metalearn.engine.loop import train
from tests.conftest import compose_cfg
from tests.sweeps.conftest import TINY, train_cli
from tests.wandb_files import find_run_file, read_run, records

WANDB = [o if o != "logger=none" else "logger=wandb" for o in TINY]


def test_wandb_log_failing_mid_run_warns_once_and_training_finishes(tmp_path, monkeypatch):
    real_log, calls = wandb.sdk.wandb_run.Run.log, []

    def flaky_log(self, *args, **kwargs):
        calls.append(args)
        if len(calls) >= 2:
            raise ConnectionError("injected: W&B backend went away")
        return real_log(self, *args, **kwargs)

    monkeypatch.setattr(wandb.sdk.wandb_run.Run, "log", flaky_log)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = train(compose_cfg(*WANDB, "trainer.iterations=3", "trainer.log_every=1"), tmp_path)
    ours = [w for w in caught if "W&B" in str(w.message)]
    assert len(ours) == 1 and "injected" in str(ours[0].message), [str(w.message) for w in ours]
    assert len(calls) == 2  # after the failure, W&B is left alone
    assert json.loads((tmp_path / "results.json").read_text()) == pytest.approx(results)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert sum("train/loss" in l for l in lines) == 3 and "test/acc" in lines[-1]
    # the broken run was still finished: the next job of a multirun gets a fresh run
    assert wandb.run is None
    recs = records(find_run_file(tmp_path))
    assert any(r["type"] == "exit" for r in recs)
    assert not any("test/acc" in r.get("summary", {}).get("update", {}) for r in recs)


def test_unreachable_wandb_server_falls_back_to_offline(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = train_cli(*WANDB, "logger.mode=online", "logger.init_timeout=3",
                     f"hydra.run.dir={tmp_path}/run", cwd=tmp_path,
                     env={"WANDB_BASE_URL": f"http://127.0.0.1:{port}", "WANDB_API_KEY": "x" * 40})
    assert "W&B could not start online" in proc.stderr and "logging offline instead" in proc.stderr
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    run = read_run(find_run_file(tmp_path / "run"))
    assert run["summary"]["test/acc"] == pytest.approx(results["test_acc"])
    assert any("val/acc" in h for h in run["history"])


def test_best_checkpoint_is_logged_as_artifact_when_asked(tmp_path):
    train(compose_cfg(*WANDB, "logger.log_checkpoint=true"), tmp_path)
    recs = records(find_run_file(tmp_path))
    artifacts = [r["artifact"] for r in recs if r["type"] == "artifact"]
    assert len(artifacts) == 1, [r["type"] for r in recs]
    art = artifacts[0]
    assert art["type"] == "model" and art["name"].startswith("model-")
    assert [e["path"] for e in art["manifest"]["contents"]] == ["best.pt"]
    assert "val/best_acc" in json.loads(art["metadata"])


def _blackhole():
    """A server whose connections hang, as behind a firewall that drops packets: a listening
    socket whose accept queue is full (Linux then drops new SYNs)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    waiting = []
    for _ in range(3):
        c = socket.socket()
        c.setblocking(False)
        c.connect_ex(server.getsockname())
        waiting.append(c)
    time.sleep(0.2)
    return server, waiting


def test_unreachable_server_falls_back_without_waiting_for_the_init_timeout(tmp_path, monkeypatch):
    from metalearn.tracking import WandbTracker

    server, waiting = _blackhole()
    url = "http://127.0.0.1:%d" % server.getsockname()[1]
    monkeypatch.setenv("WANDB_BASE_URL", url)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    tracker = WandbTracker(mode="online", connect_timeout=2, init_timeout=60)
    start = time.time()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            tracker.start(compose_cfg(*WANDB), tmp_path)
        took = time.time() - start
        tracker.finish(0, False, False)
    finally:
        for s in (server, *waiting):
            s.close()
    assert tracker.mode == "offline"
    assert any(f"W&B could not start online (ConnectionError: cannot reach {url}" in str(w.message)
               for w in caught), [str(w.message) for w in caught]
    assert took < 30, f"the fallback took {took:.0f} s"
