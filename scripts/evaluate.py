"""Re-evaluate a finished run from a clone: `python scripts/evaluate.py run_dir=<run> [...]`.

The app is `metalearn.evaluate` (installed as `metalearn-eval`); `--help` lists its options.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metalearn.evaluate import main  # noqa: E402

if __name__ == "__main__":
    main()
