"""Training output that fits a cluster log: no bar off a terminal, bounded lines, a train.log."""
import io
import os
import logging
import subprocess
import sys
from contextlib import contextmanager

from metalearn.engine.progress import MAX_LINES, Progress, line_every, log
from tests.conftest import ROOT, compose_cfg

# Hydra's default job_logging format, which train.log and the console use
HYDRA_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


@contextmanager
def _captured_log():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(HYDRA_FORMAT))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        log.removeHandler(handler)


def _run(cfg, terminal, eval_every):
    bar = Progress(cfg, ROOT, 1, terminal=terminal)
    for it in bar:
        bar.set_postfix(loss="1.234", acc="0.567", best_val="0.890")
        if it % eval_every == 0:
            bar.validation(it, {"acc": 0.5, "acc_ci95": 0.01, "loss": 1.2, "best_acc": 0.6})
    bar.close()


# run in a fresh process, so that only the loop's own output is counted, whatever the tests
# before this one left behind in theirs
SIXTY_K = """
import logging, sys
from tests.conftest import compose_cfg
from tests.test_progress import HYDRA_FORMAT, _run
from metalearn.engine.progress import log
handler = logging.StreamHandler(sys.stdout)
handler.setFormatter(logging.Formatter(HYDRA_FORMAT))
log.addHandler(handler)
log.setLevel(logging.INFO)
_run(compose_cfg("dataset=synthetic", "trainer.iterations=60000", "trainer.log_every=1"),
     terminal=False, eval_every=250)
"""


def test_a_60k_iteration_run_logs_under_1_mb_off_a_terminal():
    """The loop's own reporting, driven for 60,000 iterations with the densest settings a preset
    could pick (a metrics line every iteration, validation every 250): every byte it writes."""
    proc = subprocess.run([sys.executable, "-c", SIXTY_K], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out, err = proc.stdout, proc.stderr
    total = len((out + err).encode())
    print(f"{total} bytes for 60,000 iterations ({total / 60000:.2f} bytes/iteration)")
    assert total < 1_000_000, f"stdout ends {out[-300:]!r}, stderr ends {err[-300:]!r}"
    assert "\r" not in err + out  # no progress bar redraws
    lines = out.splitlines()
    training = [l for l in lines if "loss 1.234" in l]
    assert MAX_LINES <= len(training) <= MAX_LINES + 2  # thinned, first and last included
    assert "iteration 1/60000 loss" in training[0] and "iteration 60000/60000 loss" in training[-1]
    assert sum("validation: acc 0.5000" in l for l in lines) == 240
    assert "run: MAML on load_synthetic with Conv4, 5-way 1-shot (15 queries), 60000 iterations " \
           "of 32 tasks, Adam lr 0.001, device auto, seed 0, threads " in lines[0]


def test_on_a_terminal_the_bar_shows_and_log_lines_print_above_it(capfd):
    cfg = compose_cfg("dataset=synthetic", "trainer.iterations=5", "trainer.log_every=1")
    with _captured_log() as stream:
        _run(cfg, terminal=True, eval_every=5)
    assert "meta-train: 100%" in capfd.readouterr().err
    assert "iteration 5/5 loss 1.234" in stream.getvalue()


def test_line_every_is_a_multiple_of_log_every():
    assert line_every(2000, 10) == 10
    assert line_every(60000, 10) == 300 and line_every(60000, 7) % 7 == 0
    assert line_every(3, 0) == 1


def test_train_log_holds_setting_training_validation_and_result(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "debug=fast", "dataset=synthetic",
         "trainer.iterations=2", "trainer.eval_every=1", "dataset.image_size=12",
         "backbone.hidden=8", f"hydra.run.dir={tmp_path}/run"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300)  # pipes: not a terminal
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = (tmp_path / "run" / "train.log").read_text()
    for expected in ["run: MAML on load_synthetic", "iteration 1/2 loss", "iteration 2/2 loss",
                     "iteration 2/2 validation: acc", "test accuracy"]:
        assert expected in text
    assert "\r" not in proc.stderr and "meta-train" not in proc.stderr


def test_resume_from_another_directory_continues_that_runs_train_log(tmp_path):
    """resume=<run dir> runs in that directory: its train.log gets the rest, no stray run dir."""
    args = [sys.executable, str(ROOT / "train.py"), "debug=fast", "dataset=synthetic",
            "dataset.image_size=12", "backbone.hidden=8"]
    env = {**os.environ, "METALEARN_OUTPUT_DIR": str(tmp_path / "outputs")}
    run = tmp_path / "run"
    first = subprocess.run([*args, "trainer.iterations=2", f"hydra.run.dir={run}"],
                           capture_output=True, text=True, cwd=tmp_path, timeout=300, env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    # the same command line again, longer: accepted, since it changes nothing the run learns
    again = subprocess.run([*args, f"resume={run}", "trainer.iterations=4"],
                           capture_output=True, text=True, cwd=tmp_path, timeout=300, env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    text = (run / "train.log").read_text()
    assert "iteration 2/2 loss" in text and "iteration 4/4 loss" in text  # both parts, one log
    assert not (tmp_path / "outputs").exists()


def test_best_val_reads_dash_before_the_first_validation(tmp_path):
    from metalearn.engine.loop import train
    from tests.conftest import FAST

    with _captured_log() as stream:
        train(compose_cfg(*FAST, "trainer.iterations=2", "trainer.log_every=1"), tmp_path)
    lines = [ln for ln in stream.getvalue().splitlines() if "best_val " in ln]
    assert "best_val -" in lines[0]  # iteration 1: nothing validated yet
    assert "best_val 0.000" not in stream.getvalue()
