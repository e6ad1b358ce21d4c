"""Commands that do no work answer without importing torch (seconds, not the ~10 s torch takes)."""
import subprocess
import sys

import pytest

from scripts.startup_benchmark import PROBE
from tests.conftest import ROOT


@pytest.mark.parametrize("args, code, says", [
    (["--help"], 0, "== Configuration groups =="),
    (["--cfg", "job"], 0, "trainer:"),
    (["task.ways=five"], 2, "error: task.ways=five: expected an integer >= 1"),
    (["threads=0"], 2, "error: threads=0: expected auto or an integer >= 1"),
])
def test_help_config_and_config_errors_do_not_import_torch(args, code, says, tmp_path):
    proc = subprocess.run([sys.executable, "-c", PROBE, *args, f"hydra.run.dir={tmp_path}/run"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == code, proc.stderr[-2000:]
    assert says in proc.stdout + proc.stderr
    assert "torch imported: False" in proc.stderr
    # a refused command leaves no run dir behind (Hydra makes one before the config is checked)
    assert not (tmp_path / "run").exists()


def test_a_refused_command_keeps_a_directory_that_holds_a_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("seed: 0\n")
    proc = subprocess.run([sys.executable, "-c", PROBE, "task.ways=five", f"hydra.run.dir={run}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert (run / "config.yaml").read_text() == "seed: 0\n"
