"""W&B failing never costs a training run: real wandb, real failures."""
import json
import socket
import time
import warnings

import pytest
import wandb

from metalearn.engine.loop import train
from metalearn.wandb_offline import _payloads, find_run_file, read_run
from tests.conftest import compose_cfg
from tests.sweeps.conftest import TINY, train_cli

WANDB = [o if o != "logger=none" else "logger=wandb" for o in TINY]


def _records(run_dir):
    """The run file's records, once wandb's writer has flushed the final `exit` record
    (it may lag a moment behind `run.finish()` returning)."""
    from wandb.proto import wandb_internal_pb2 as pb

    deadline = time.time() + 15
    while True:
        records = []
        for payload in _payloads(find_run_file(run_dir).read_bytes()):
            records.append(pb.Record())
            records[-1].ParseFromString(payload)
        kinds = [r.WhichOneof("record_type") for r in records]
        if "exit" in kinds or time.time() > deadline:
            return records, kinds
        time.sleep(0.2)


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
    assert "exit" in _records(tmp_path)[1]
    assert "test_acc" not in read_run(find_run_file(tmp_path))["summary"]


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
    assert run["summary"]["test_acc"] == pytest.approx(results["test_acc"])
    assert any("val/acc" in h for h in run["history"])


def test_best_checkpoint_is_logged_as_artifact_when_asked(tmp_path):
    train(compose_cfg(*WANDB, "logger.log_checkpoint=true"), tmp_path)
    records, kinds = _records(tmp_path)
    artifacts = [r.artifact for r, kind in zip(records, kinds) if kind == "artifact"]
    assert len(artifacts) == 1, kinds
    art = artifacts[0]
    assert art.type == "model" and art.name.startswith("model-")
    assert [e.path for e in art.manifest.contents] == ["best.pt"]
    assert "best_val_acc" in json.loads(art.metadata)
