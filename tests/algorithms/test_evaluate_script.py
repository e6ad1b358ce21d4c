"""scripts/evaluate.py re-scores a finished run exactly as the run scored itself."""
import json
import subprocess
import sys

import pytest
import torch

from hydra.errors import ConfigCompositionException

from metalearn import evaluate as script
from metalearn.engine.loop import train
from metalearn.errors import ConfigError
from tests.conftest import FAST, ROOT, compose_cfg

SCRIPT = str(ROOT / "scripts" / "evaluate.py")  # the shim over metalearn.evaluate


def evaluate(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)


@pytest.mark.parametrize("algorithm", ["maml", "protonet", "snail"])
def test_evaluate_reproduces_the_runs_test_number(tmp_path, algorithm):
    cfg = compose_cfg(*FAST, f"algorithm={algorithm}", "dataset.image_size=12",
                      "backbone.hidden=8", "scheduler=cosine")
    results = train(cfg, tmp_path)
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert last["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)  # annealed
    proc = evaluate(f"run_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    out = json.loads((tmp_path / "eval-test-5w1s2q-6ep-best.json").read_text())
    assert out["acc"] == pytest.approx(results["test_acc"], abs=1e-9)
    assert out["acc_ci95"] == pytest.approx(results["test_acc_ci95"], abs=1e-9)
    assert f"{100 * results['test_acc']:.2f} ±" in proc.stdout
    # more episodes and another shot count are new numbers, written to their own file
    script.run([f"run_dir={tmp_path}", "episodes=9", "task.shots=3", "checkpoint=last"])
    out = json.loads((tmp_path / "eval-test-5w3s2q-9ep-last.json").read_text())
    assert out["episodes"] == 9 and 0 <= out["acc"] <= 1


def test_other_ways_work_for_protonet_and_are_a_config_error_for_maml(tmp_path):
    common = [*FAST, "dataset.image_size=12", "backbone.hidden=8", "trainer.iterations=1"]
    train(compose_cfg(*common, "algorithm=protonet"), tmp_path / "proto")
    train(compose_cfg(*common, "algorithm=maml"), tmp_path / "maml")
    script.run([f"run_dir={tmp_path}/proto", "task.ways=10"])
    assert json.loads((tmp_path / "proto" / "eval-test-10w1s2q-6ep-best.json").read_text())["ways"] == 10
    proc = evaluate(f"run_dir={tmp_path}/maml", "task.ways=10")
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: MAML has a 5-way output head")
    with pytest.raises(ConfigError, match="config.yaml not found"):
        script.run([f"run_dir={tmp_path}/nowhere"])
    with pytest.raises(ConfigCompositionException, match="Could not override 'shots'"):
        script.run([f"run_dir={tmp_path}/maml", "shots=3"])
    assert not (tmp_path / "maml" / ".hydra").exists()  # the run's own Hydra files stay as they were


def test_evaluation_logs_progress_and_keeps_each_image_folders_result(tmp_path, caplog):
    train(compose_cfg(*FAST, "dataset.image_size=12", "backbone.hidden=8",
                      "trainer.iterations=1", "algorithm=protonet"), tmp_path)
    caplog.set_level("INFO", logger="metalearn.evaluate")
    script.run([f"run_dir={tmp_path}", "episodes=9", "log_every=3"])  # 3 batches of 3
    lines = [r.getMessage() for r in caplog.records]
    assert [ln.split(" (")[0] for ln in lines if ln.startswith("episodes ")] == [
        "episodes 3/9", "episodes 6/9", "episodes 9/9"]
    assert lines[-1].startswith("test accuracy") and "saved" in lines[-1]
    # two "folders" under one dataset name: two files, each naming its config
    for seed in (1, 2):
        script.run([f"run_dir={tmp_path}", "dataset=synthetic", "dataset.image_size=12",
                    f"dataset.seed={seed}"])
    found = sorted(tmp_path.glob("eval-test-synthetic-*-5w1s2q-6ep-best.json"))
    assert len(found) == 2
    assert {json.loads(p.read_text())["dataset_config"]["seed"] for p in found} == {1, 2}
    # the same config again: the same (stable) name
    script.run([f"run_dir={tmp_path}", "dataset=synthetic", "dataset.image_size=12",
                "dataset.seed=1"])
    assert sorted(tmp_path.glob("eval-test-synthetic-*.json")) == found


def test_no_run_dir_is_one_error_line(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["metalearn-eval", "episodes=3"])
    with pytest.raises(SystemExit) as e:
        script.main()
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {script.NO_RUN_DIR}"] and "run_dir=<a training run's directory>" in err[0]
    with pytest.raises(ConfigError, match="run_dir=<a training run's directory>"):
        script.run(["episodes=3"])


def test_a_read_only_run_is_scored_into_output_dir_and_its_error_says_so(tmp_path, monkeypatch,
                                                                          capsys):
    import errno
    import logging
    # an app run earlier in this process left handlers on streams pytest has since closed:
    # their failures are that test's leftovers, not this command's output
    monkeypatch.setattr(logging, "raiseExceptions", False)
    run = tmp_path / "run"
    train(compose_cfg(*FAST, "algorithm=protonet", "dataset.image_size=12", "backbone.hidden=8"),
          run)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    real_open = logging.FileHandler._open

    def read_only(handler):  # what a read-only mount does to evaluate.log in the run dir
        if str(run) in handler.baseFilename:
            raise OSError(errno.EROFS, "Read-only file system", handler.baseFilename)
        return real_open(handler)
    monkeypatch.setattr(logging.FileHandler, "_open", read_only)
    monkeypatch.setattr(sys, "argv", ["metalearn-eval", f"run_dir={run}"])
    # the app below sets up logging (handlers on capsys's stream): undone after this test, or
    # every later test's log lines would fail against that closed stream
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "level", root.level)
    with pytest.raises(SystemExit) as e:
        script.main()
    assert e.value.code == 74
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: cannot write {run / 'evaluate.log'}: Read-only file system. The run "
                   f"is only read: write the evaluation to a writable folder with output_dir=<dir>"]
    out = tmp_path / "scores"
    script.run([f"run_dir={run}", f"output_dir={out}"])
    assert json.loads((out / "eval-test-5w1s2q-6ep-best.json").read_text())["episodes"] == 6
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # the run only read
