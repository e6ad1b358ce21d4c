import os
import subprocess
import sys

from tests.conftest import FAST, ROOT

# FAST, smaller still: each job of a real `train.py -m` subprocess takes a few seconds.
TINY = [*[o for o in FAST if not o.startswith("trainer.iterations")],
        "trainer.iterations=2", "dataset.image_size=16"]


def train_cli(*args: str, cwd, env: dict | None = None, timeout: int = 300):
    """Run the real `train.py` (Hydra, launchers, sweepers) in a subprocess."""
    full_env = {k: v for k, v in os.environ.items() if k != "WANDB_API_KEY"}
    full_env.update(OMP_NUM_THREADS="1", WANDB_MODE="offline", PYTHONPATH=str(ROOT), **(env or {}))
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd,
                          env=full_env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc
