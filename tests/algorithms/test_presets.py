"""Every paper preset composes with the paper's values and builds its objects."""
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from metalearn.engine.loop import build, lr_scheduler, samplers
from metalearn.errors import ConfigError
from tests.conftest import CONFIGS, DATA_DIR, compose_cfg, has_omniglot

PRESETS = sorted(p.stem for p in Path(CONFIGS, "experiment").glob("*.yaml"))
PAPER = {  # (dataset, algorithm target, ways, shots, a few values from the paper)
    "maml_omniglot_5w1s": ("omniglot", "MAML", 5, 1, {"algo.inner_lr": 0.4, "trainer.meta_batch_size": 32}),
    "maml_omniglot_5w5s": ("omniglot", "MAML", 5, 5, {"algo.inner_lr": 0.4, "algo.adaptation_steps": 1}),
    "maml_omniglot_20w1s": ("omniglot", "MAML", 20, 1, {"algo.inner_lr": 0.1, "algo.adaptation_steps": 5, "trainer.meta_batch_size": 16}),
    "maml_omniglot_20w5s": ("omniglot", "MAML", 20, 5, {"algo.inner_lr": 0.1, "trainer.meta_batch_size": 16}),
    "maml_miniimagenet_5w1s": ("miniimagenet", "MAML", 5, 1, {"algo.inner_lr": 0.01, "algo.test_adaptation_steps": 10, "trainer.meta_batch_size": 4, "backbone.hidden": 32}),
    "maml_miniimagenet_5w5s": ("miniimagenet", "MAML", 5, 5, {"trainer.meta_batch_size": 2, "task.query": 15}),
    "protonet_omniglot_20w1s": ("omniglot", "ProtoNet", 20, 1, {"task.train_ways": 60, "task.query": 5}),
    "protonet_miniimagenet_5w1s": ("miniimagenet", "ProtoNet", 5, 1, {"task.train_ways": 30, "backbone.hidden": 64}),
    "protonet_miniimagenet_5w5s": ("miniimagenet", "ProtoNet", 5, 5, {"task.train_ways": 20}),
    "snail_omniglot_5w1s": ("omniglot", "SNAIL", 5, 1, {"algo.tc_filters": 128, "backbone.max_pool": True}),
    "reptile_omniglot_5w1s": ("omniglot", "Reptile", 5, 1, {"algo.inner_lr": 0.001, "algo.adaptation_steps": 5, "algo.test_adaptation_steps": 50, "algo.inner_optimizer": "adam", "task.train_shots": 10, "trainer.meta_batch_size": 5, "trainer.iterations": 100000, "optimizer.lr": 1.0, "optimizer.momentum": 0.0}),
    "mamlpp_miniimagenet_5w1s": ("miniimagenet", "MAML", 5, 1, {"algo.lslr": True, "algo.per_step_bn": True, "algo.multi_step_loss": True, "scheduler.eta_min": 0.00001, "backbone.hidden": 48}),
}


def test_every_paper_preset_exists():
    assert set(PAPER) <= set(PRESETS)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_preset_composes_with_the_paper_values_and_builds(name):
    cfg = compose_cfg(f"experiment={name}", f"paths.data_dir={DATA_DIR}")
    dataset, algo, ways, shots, values = PAPER[name]
    assert cfg.dataset._target_.endswith(f"load_{dataset}")
    assert cfg.algo._target_.endswith(f".{algo}")
    assert (cfg.task.ways, cfg.task.shots) == (ways, shots)
    for key, want in values.items():
        node = cfg
        for part in key.split("."):
            node = node[part]
        assert node == want, key
    # the learner and its optimizer/scheduler build from the preset (mini-ImageNet image shape
    # stands in for its files, which this machine does not have)
    shape = (1, 28) if dataset == "omniglot" else (3, 84)
    backbone = instantiate(cfg.backbone, in_channels=shape[0], image_size=shape[1])
    learner = instantiate(cfg.algo, backbone=backbone, ways=cfg.task.ways)
    if cfg.task.get("train_ways"):
        learner.check_ways(cfg.task.train_ways)
    opt = instantiate(cfg.optimizer, params=learner.parameters())
    lr_scheduler(cfg, opt)
    if dataset == "omniglot" and has_omniglot():
        data, _ = build(cfg, torch.device("cpu"))
        split = samplers(cfg, data, torch.device("cpu"))
        batch = split["train"].sample(1)
        assert batch.support_x.shape[1] == \
            (cfg.task.get("train_ways") or ways) * (cfg.task.get("train_shots") or shots)
        assert split["val"].sample(1).support_x.shape[1] == ways * shots  # tested as the paper


def test_maml_cannot_train_with_other_ways_than_its_head():
    cfg = compose_cfg("experiment=maml_omniglot_5w1s", "task.train_ways=20")
    learner = instantiate(cfg.algo, backbone=instantiate(cfg.backbone, in_channels=1,
                                                         image_size=28), ways=5)
    with pytest.raises(ConfigError, match="task.ways=5"):
        learner.check_ways(cfg.task.train_ways)


def test_cosine_schedule_anneals_the_meta_lr_to_lr_min():
    cfg = compose_cfg("dataset=synthetic", "scheduler=cosine", "trainer.iterations=10",
                      "scheduler.eta_min=0.0001")
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched = lr_scheduler(cfg, opt)
    lrs = []
    for _ in range(10):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    assert lrs[-1] == pytest.approx(0.0001)
    assert lr_scheduler(compose_cfg(), opt) is None  # scheduler=none: a constant lr
