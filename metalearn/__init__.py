"""metalearn: Hydra-configured few-shot meta-learning."""
import sys

# learn2learn imports gym, whose `gym_notices` prints an "unmaintained" banner on import.
sys.modules.setdefault("gym_notices", None)

from omegaconf import OmegaConf  # noqa: E402


def _run_dir(resume: object, new: str) -> str:
    """hydra.run.dir: the run being continued by resume=<run dir> (its train.log grows), else a
    new one. A file (`resume=last.pt`) is not a directory Hydra could create: the new one, and
    the run then refuses it in one line (engine/rundir.py)."""
    import os.path

    if isinstance(resume, str) and resume not in ("", "auto") and not os.path.isfile(resume):
        return resume
    return new


if not OmegaConf.has_resolver("metalearn.run_dir"):
    OmegaConf.register_new_resolver("metalearn.run_dir", _run_dir)
