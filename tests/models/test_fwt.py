"""Feature-wise transformation layers (backbone=fwt, Tseng et al. 2020): noise in training
mode only, one draw per task under the batched engine, off when a fine-tuned copy predicts."""
import pytest
import torch
from hydra.utils import instantiate
from torch.func import vmap

from metalearn import build
from metalearn.algorithms.finetune import FineTune
from metalearn.errors import ConfigError
from metalearn.models.conv4 import Conv4
from metalearn.models.fwt import FWT, FeatureWiseTransform
from tests.algorithms.test_finetune import episodes
from tests.conftest import compose_cfg


def fwt_and_plain(gamma=0.3, beta=0.5):
    torch.manual_seed(0)
    wrapped = FWT(1, 12, lambda **kw: Conv4(hidden=8, **kw), gamma=gamma, beta=beta)
    torch.manual_seed(0)
    return wrapped, Conv4(1, 12, hidden=8)


def test_eval_mode_is_the_wrapped_backbone_and_training_mode_is_not():
    wrapped, plain = fwt_and_plain()
    assert wrapped.out_features == plain.out_features
    assert sum(isinstance(m, FeatureWiseTransform) for m in wrapped.modules()) == 4
    x = torch.randn(6, 1, 12, 12)
    assert torch.equal(wrapped.eval()(x), plain(x))
    assert not torch.allclose(wrapped.train()(x), plain(x))


def test_the_draws_have_the_papers_spread_one_per_channel_and_forward():
    layer = FeatureWiseTransform(3, gamma=0.3, beta=0.5).train()
    torch.manual_seed(1)
    ones, zeros = torch.ones(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)
    scale = torch.stack([layer(ones) - layer(zeros) for _ in range(2000)])  # gamma (paired draws differ)
    shift = torch.stack([layer(zeros) for _ in range(2000)])
    # constant over the images of a batch and over pixels: a per-channel map
    assert torch.equal(shift, shift[:, :1, :, :1, :1].expand_as(shift))
    spread = shift[:, 0, :, 0, 0].std().item()
    assert abs(spread - torch.nn.functional.softplus(torch.tensor(0.5)).item()) < 0.05
    # gamma*1+beta - (gamma'*0+beta'): var = sd_g^2 + 2 sd_b^2 with fresh draws each call
    sd_g, sd_b = (torch.nn.functional.softplus(torch.tensor(v)).item() for v in (0.3, 0.5))
    assert abs(scale[:, 0, :, 0, 0].var().item() - (sd_g ** 2 + 2 * sd_b ** 2)) < 0.25


def test_each_task_of_a_vmapped_batch_draws_its_own_noise():
    wrapped, _ = fwt_and_plain()
    x = torch.randn(1, 6, 1, 12, 12).expand(3, -1, -1, -1, -1)
    out = vmap(wrapped.train(), randomness="different")(x)
    assert not torch.allclose(out[0], out[1]) and not torch.allclose(out[1], out[2])


def test_the_config_wraps_any_backbone_option():
    cfg = compose_cfg("backbone=fwt", "backbone@backbone.inner=resnet12",
                      "backbone.inner.channels=[4,6,8,10]")
    net = instantiate(cfg.backbone, in_channels=3, image_size=16)
    assert sum(isinstance(m, FeatureWiseTransform) for m in net.modules()) >= 8
    assert net(torch.randn(2, 3, 16, 16)).shape == (2, net.out_features)


def test_a_backbone_without_batchnorm_is_refused():
    def no_bn(in_channels, image_size):
        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(in_channels * image_size ** 2, 4))
        net.out_features = 4
        return net
    with pytest.raises(ConfigError, match="no metalearn.models.norm.BatchNorm2d"):
        FWT(1, 12, no_bn)


def test_test_time_fine_tuning_runs_without_the_noise():
    """FineTune adapts in eval mode, as every learner does at test time: its scores cannot
    depend on the global random stream the noise draws from."""
    torch.manual_seed(0)
    base = build.learner(compose_cfg("dataset=synthetic", "dataset.image_size=12", "backbone=fwt",
                                     "backbone.inner.hidden=8", "algorithm=protonet"), 1, 12, 64)
    ep = episodes(n=2)
    for steps in (0, 3):
        scores = []
        for seed in (1, 2):
            torch.manual_seed(seed)
            scores.append(FineTune(base, steps=steps, augment="none").evaluate(ep).loss)
        assert torch.equal(*scores)
