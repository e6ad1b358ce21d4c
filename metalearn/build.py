"""The one place a config's learner is built: training, evaluation, online runs, inference and
the tests all call `learner`, so a rule such as "`algo.num_classes: null` = the training
split's classes" holds for every entry point, a saved run's included."""
from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig

from metalearn.algorithms.base import MetaLearner


def learner(cfg: DictConfig, channels: int, image_size: int, train_classes: int) -> MetaLearner:
    """The backbone for images of `channels` x `image_size`², wrapped in `cfg.algo`."""
    backbone = instantiate(cfg.backbone, in_channels=channels, image_size=image_size)
    # transfer learners' pre-training head: algo.num_classes null = the training classes
    extra = {"num_classes": train_classes} if cfg.algo.get("num_classes", 0) is None else {}
    return instantiate(cfg.algo, backbone=backbone, ways=cfg.task.ways, **extra)
