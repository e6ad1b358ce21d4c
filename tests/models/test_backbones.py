"""The backbone contract (metalearn/models/base.py), checked for every configs/backbone/*.yaml;
the timm and torchvision ResNet-18 backbones exact under both engines; train.py with them."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from metalearn.algorithms.maml import MAML
from metalearn.engine.loop import build, seed_everything, train
from metalearn.errors import ConfigError
from metalearn.models.base import Backbone
from metalearn.models.norm import BatchNorm2d, require_exact_norms
from metalearn.models.resnet18 import ResNet18
from metalearn.models.timm import TimmBackbone
from tests.algorithms.test_engine import assert_engines_agree, episodes
from tests.conftest import CONFIGS, FAST, ROOT, compose_cfg

BACKBONES = sorted(p.stem for p in (Path(CONFIGS) / "backbone").glob("*.yaml"))
# Narrower versions where the default is slow on a CPU; a new backbone runs as shipped.
SMALL = {"resnet12": ["backbone.channels=[4,6,8,10]"],
         "timm": ["backbone.name=test_resnet"]}


def test_the_glob_finds_the_shipped_backbones():
    assert {"conv4", "resnet12", "timm", "resnet18"} <= set(BACKBONES)


@pytest.mark.parametrize("name", BACKBONES)
def test_backbone_config_keeps_the_contract(name):
    cfg = compose_cfg(f"backbone={name}", *SMALL.get(name, []))
    for channels, size in ((1, 28), (3, 32)):
        net = instantiate(cfg.backbone, in_channels=channels, image_size=size)
        assert isinstance(net, Backbone) and isinstance(net.out_features, int)
        assert net(torch.randn(3, channels, size, size)).shape == (3, net.out_features)
        require_exact_norms(net)  # ready for the batched engine as shipped
        assert any(isinstance(m, BatchNorm2d) for m in net.modules())


@pytest.mark.parametrize("name", BACKBONES)
def test_backbone_config_trains_under_the_batched_engine(tmp_path, name):
    overrides = [*FAST, f"backbone={name}", *SMALL.get(name, []), "algo.engine=batched",
                 "trainer.iterations=2", "task.ways=3", "dataset.image_size=16"]
    cfg = compose_cfg(*overrides)
    results = train(cfg, tmp_path)
    assert results["iterations"] == 2 and 0 <= results["test_acc"] <= 1
    moved = trained_parameters(cfg, tmp_path)
    assert any(n.startswith(("model.0.", "backbone.")) for n in moved), "backbone untrained"


def trained_parameters(cfg, run_dir):
    """Names of the weights that differ between the run's initial model and its last.pt."""
    seed_everything(cfg.seed)  # as train() does before building
    start = build(cfg, torch.device("cpu"))[1].state_dict()
    trained = torch.load(run_dir / "last.pt", weights_only=True)["model"]
    return [n for n, w in start.items() if w.is_floating_point() and not torch.equal(w, trained[n])]


# --- exactness: the float64 meta-gradient of the batched engine equals learn2learn's ---------

EXACT = {"timm-test_resnet": lambda: TimmBackbone(1, 12, "test_resnet"),
         "resnet18-small-stem": lambda: ResNet18(1, 8, small_stem=True),
         "timm-resnet10t": lambda: TimmBackbone(1, 12, "resnet10t")}
SLOW = {"resnet18-small-stem", "timm-resnet10t"}  # minutes under a shared CPU


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in EXACT])
def test_third_party_backbones_are_exact_under_the_batched_engine(name):
    torch.manual_seed(0)
    net = EXACT[name]()
    size = 8 if "resnet18" in name else 12
    algo = MAML(net, ways=3, inner_lr=0.3, adaptation_steps=2).double()
    # 6 support images: BN over 1x1 maps of fewer images is too ill-conditioned for 1e-10
    assert_engines_agree(algo, episodes(batch=2, ways=3, shots=2, query=1, size=size))


def test_train_py_trains_a_timm_backbone(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *FAST, "backbone=timm",
         "backbone.name=test_resnet", "algo.engine=l2l", f"hydra.run.dir={tmp_path}/run"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["iterations"] == 4 and 0 <= results["test_acc"] <= 1


# --- timm options ------------------------------------------------------------------------------

def test_timm_checkpoint_path_loads_weights_drops_the_classifier_and_adapts_in_channels(tmp_path):
    import timm

    source = timm.create_model("test_resnet")  # 3 channels, 1000-class head
    torch.save(source.state_dict(), tmp_path / "w.pth")
    net = TimmBackbone(1, 16, "test_resnet", checkpoint_path=str(tmp_path / "w.pth"))
    got, want = dict(net.model.named_parameters()), dict(source.named_parameters())
    assert "fc.weight" not in got
    deep = [n for n in want if n.startswith("layer4") and n.endswith("conv1.weight")][0]
    assert torch.equal(got[deep], want[deep])
    first = next(iter(want))  # timm sums the RGB filters into one grey channel
    assert torch.allclose(got[first], want[first].sum(1, keepdim=True))


@pytest.mark.parametrize("kwargs,match", [
    (dict(name="no_such_net"), "not a timm model"),
    (dict(name="test_resnet", checkpoint_path="/nonexistent/w.pth"), "checkpoint_path"),
    (dict(name="test_resnet", kwargs={"no_such_option": 1}), "backbone.kwargs"),
])
def test_timm_bad_options_are_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        TimmBackbone(1, 16, **kwargs)


def test_resnet18_stem_follows_image_size():
    assert ResNet18(3, 32).net.conv1.kernel_size == (3, 3)
    big = ResNet18(3, 84)
    assert big.net.conv1.kernel_size == (7, 7) and big.out_features == 512
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in big.modules())
