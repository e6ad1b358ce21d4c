import pytest
import torch
import torch.nn.functional as F

from metalearn.errors import ConfigError
from metalearn.models.norm import BatchNorm2d
from metalearn.models.resnet12 import ResNet12, drop_block

SMALL = (8, 12, 16, 24)  # same architecture, narrow, so CPU tests stay fast


def test_standard_width_has_metaoptnet_size_and_84px_output():
    net = ResNet12(in_channels=3, image_size=84)
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(12.42e6, rel=0.01)
    assert net.out_features == 640
    with torch.no_grad():
        assert net(torch.randn(2, 3, 84, 84)).shape == (2, 640)
    assert any(isinstance(m, BatchNorm2d) for m in net.modules())


@pytest.mark.parametrize("size,avg_pool,features", [
    (84, True, 24), (84, False, 24 * 5 * 5), (32, True, 24), (32, False, 24 * 2 * 2),
])
def test_out_features_match_forward(size, avg_pool, features):
    net = ResNet12(3, size, channels=SMALL, avg_pool=avg_pool)
    assert net.out_features == features
    assert net(torch.randn(3, 3, size, size)).shape == (3, features)


def test_gradients_reach_every_parameter_and_input():
    net = ResNet12(1, 32, channels=SMALL, drop_rate=0.1, drop_block=True, dropblock_size=2)
    x = torch.randn(4, 1, 32, 32, requires_grad=True)
    net(x).pow(2).sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


def test_dropout_only_in_training_and_dropblock_ramps_up():
    net = ResNet12(3, 32, channels=SMALL, drop_rate=0.5, drop_block=True, dropblock_size=5)
    x = torch.randn(2, 3, 32, 32)
    net.eval()
    assert torch.equal(net(x), net(x))
    net.train()
    net(x)
    assert [int(b.steps) for b in net.blocks] == [0, 0, 1, 1]  # DropBlock on blocks 3-4 only


def test_drop_block_drops_whole_squares_and_keeps_the_mean():
    torch.manual_seed(0)
    x = torch.ones(64, 8, 10, 10)
    y = drop_block(x, gamma=0.05, block_size=3)
    dropped = (y == 0)
    assert 0.1 < dropped.float().mean() < 0.9
    assert y.mean().item() == pytest.approx(1.0, rel=1e-5)
    # Every dropped unit lies in some fully dropped 3x3 square (a morphological opening).
    squares = 1 - F.max_pool2d((~dropped).float(), 3, stride=1)
    covered = F.max_pool2d(F.pad(squares, (2, 2, 2, 2)), 3, stride=1).bool()
    assert not (dropped & ~covered).any()


def test_too_small_images_are_a_config_error():
    with pytest.raises(ConfigError, match="below 16 px"):
        ResNet12(1, 14)


def test_backbone_config_builds_the_way_the_training_loop_calls_it():
    from pathlib import Path

    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    configs = str(Path(__file__).resolve().parents[2] / "metalearn" / "configs")
    with initialize_config_dir(config_dir=configs, version_base="1.3"):
        cfg = compose("train", overrides=["backbone=resnet12", "backbone.channels=[8,12,16,24]",
                                          "backbone.drop_block=true",
                                          "backbone.dropblock_size=2"])
    net = instantiate(cfg.backbone, in_channels=3, image_size=32)
    assert isinstance(net, ResNet12) and net.out_features == 24
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 24)
