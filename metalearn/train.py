"""The training app: `metalearn-train ...` or `python train.py ...` from a clone (Hydra overrides)."""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

import metalearn  # noqa: F401  (silences gym's import banner before learn2learn loads)
from metalearn.engine.loop import train
from metalearn.engine.preemption import PREEMPTED_EXIT_CODE, Preempted
from metalearn.errors import MetalearnError
from metalearn.online.run import run_online


@hydra.main(config_path="configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    try:
        results = (run_online if cfg.get("online") else train)(
            cfg, Path(HydraConfig.get().runtime.output_dir))
    except Preempted as e:  # last.pt is saved: a requeued job continues with resume=auto
        print(f"preempted: {e}", file=sys.stderr)
        sys.exit(PREEMPTED_EXIT_CODE)
    except Exception as e:
        cause = _user_error(e)
        if cause is None:
            raise
        print(f"error: {cause}", file=sys.stderr)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # the sweeper records a failed job and decides; exit(2) would end the sweep
        sys.exit(2)
    return results.get("best_val_acc", results.get("online_acc"))  # what sweepers optimise


def _user_error(e: BaseException | None) -> MetalearnError | None:
    """The MetalearnError behind `e`: hydra.utils.instantiate wraps what a target raises."""
    while e is not None and not isinstance(e, MetalearnError):
        e = e.__cause__
    return e


if __name__ == "__main__":
    main()
