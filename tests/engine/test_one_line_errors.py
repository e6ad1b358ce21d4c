"""What Hydra or YAML cannot read ends as one `error:` line and exit code 2, not a traceback:
a preset with a YAML error or a `!!python` tag, malformed overrides, resume=<a file>, a
checkpoint without its training state, a run's config.yaml that is not YAML."""
import os
import subprocess
import sys

import pytest
import torch

from metalearn import checkpoint
from metalearn.engine.loop import train
from metalearn.errors import ConfigError
from metalearn.evaluate import run as evaluate
from tests.conftest import FAST, ROOT, compose_cfg

TINY = [*FAST, "dataset.image_size=12", "backbone.hidden=8", "trainer.iterations=2"]


def train_cli(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})


def one_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error: "), proc.stderr[-3000:]
    assert all(n in lines[-1] for n in needles), lines[-1]
    return lines[-1]


@pytest.mark.parametrize("override, says", [
    ("trainer.iterations=[1,", "trainer.iterations=[1,: not a valid override (no viable"),
    ("x=5=6", "x=5=6: not a valid override (mismatched input '='"),
    ("trainer..iterations=5", "trainer..iterations=5: not a valid override"),
    ("=5", "an override without a key (such as =5)"),
])
def test_a_malformed_override_is_one_line(tmp_path, override, says):
    one_line(train_cli(tmp_path, "debug=fast", "dataset=synthetic", override), says,
             "write key=value")


@pytest.mark.parametrize("text, says", [
    ("task:\n  ways: [1,\n", "not valid YAML"),
    ("# @package _global_\nx: !!python/object/apply:os.system ['touch {marker}']\n",
     "a !!python tag; configs are plain YAML"),
])
def test_a_preset_yaml_error_or_python_tag_is_one_line(tmp_path, text, says):
    marker = tmp_path / "marker"
    (tmp_path / "cfgs" / "experiment").mkdir(parents=True)
    preset = tmp_path / "cfgs" / "experiment" / "mine.yaml"
    preset.write_text(text.format(marker=marker))
    one_line(train_cli(tmp_path, "--config-dir", str(tmp_path / "cfgs"), "debug=fast",
                       "dataset=synthetic", "+experiment=mine"), f"{preset}, line ", says)
    assert not marker.exists()


def test_resume_from_a_checkpoint_file_names_its_directory(tmp_path):
    (tmp_path / "run").mkdir()
    pt = tmp_path / "run" / "last.pt"
    pt.write_bytes(b"")
    one_line(train_cli(tmp_path, "debug=fast", "dataset=synthetic", f"resume={pt}"),
             f"resume={pt}: a file, not a run directory", f"resume={tmp_path / 'run'}")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["last.pt"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    run = tmp_path_factory.mktemp("finished") / "run"
    train(compose_cfg(*TINY), run)
    return run


def test_a_checkpoint_without_its_training_state_is_named(finished, tmp_path):
    import shutil
    run = shutil.copytree(finished, tmp_path / "run")
    state = torch.load(run / "last.pt", weights_only=True)
    del state["iteration"]
    checkpoint.save(state, run / "last.pt")
    with pytest.raises(checkpoint.ForeignCheckpoint,
                       match=r"last\.pt is a metalearn checkpoint without iteration: "):
        train(compose_cfg(*TINY, "resume=true"), run)


@pytest.mark.parametrize("text, says", [
    ("algo: [1,\n", r"config\.yaml: not a readable config \(ParserError: "),
    ("x: !!python/object/apply:os.system ['true']\n", r"not a readable config \(ConstructorError"),
])
def test_a_run_config_that_is_not_yaml_is_one_line(finished, tmp_path, text, says):
    import shutil
    run = shutil.copytree(finished, tmp_path / "run")
    (run / "config.yaml").write_text(text)
    with pytest.raises(ConfigError, match=says) as e:
        evaluate([f"run_dir={run}"])
    assert "\n" not in str(e.value)
