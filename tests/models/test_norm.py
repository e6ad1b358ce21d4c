"""torch BatchNorm/LayerNorm are wrong under the batched engine; the guard refuses them and
`convert_batchnorm` swaps BatchNorm for the exact layer without changing the function."""
import pytest
import torch
from timm.layers import BatchNormAct2d
from torch import nn

from metalearn.algorithms import functional
from metalearn.algorithms.maml import MAML
from metalearn.errors import ConfigError
from metalearn.models.norm import BatchNorm2d, convert_batchnorm, require_exact_norms
from tests.algorithms.test_engine import assert_engines_agree, episodes, meta_gradients, rel


class Net(nn.Module):
    """conv -> norm -> mean: the smallest backbone holding a given norm layer."""

    def __init__(self, norm):
        super().__init__()
        self.conv, self.norm, self.out_features = nn.Conv2d(1, 6, 3, 2, 1), norm, 6

    def forward(self, x):
        h = torch.relu(self.conv(x))
        if isinstance(self.norm, nn.LayerNorm):
            return self.norm(h.mean((2, 3)))
        return self.norm(h).mean((2, 3))


def maml(norm):
    torch.manual_seed(0)
    return MAML(Net(norm), ways=3, inner_lr=0.3, adaptation_steps=2).double()


TORCH_NORMS = {"batchnorm": lambda: nn.BatchNorm2d(6, track_running_stats=False),
               "layernorm": lambda: nn.LayerNorm(6)}


@pytest.mark.parametrize("norm", list(TORCH_NORMS))
def test_torch_norms_are_wrong_under_vmap_so_the_batched_engine_refuses_them(norm, monkeypatch):
    algo, ep = maml(TORCH_NORMS[norm]()), episodes()
    with pytest.raises(ConfigError, match=r"algo.engine=batched .*0\.norm .*algo.engine=l2l"):
        meta_gradients(algo, ep, "batched")
    # why: without the guard the meta-gradient is silently off (pytorch/functorch#534)
    _, want = meta_gradients(algo, ep, "l2l")
    monkeypatch.setattr(functional, "require_exact_norms", lambda model: None)
    _, got = meta_gradients(algo, ep, "batched")
    assert rel(got, want) > 1e-4


def test_converted_batchnorm_is_exact_under_the_batched_engine():
    algo = maml(nn.BatchNorm2d(6))
    convert_batchnorm(algo)
    assert isinstance(algo.model[0].norm, BatchNorm2d)
    assert_engines_agree(algo, episodes())


def scrambled(bn):
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    return bn


@pytest.mark.parametrize("bn,shape", [(nn.BatchNorm1d(4), (8, 4)), (nn.BatchNorm1d(4), (8, 4, 5)),
                                      (nn.BatchNorm2d(4, eps=1e-3), (8, 4, 3, 3)),
                                      (nn.BatchNorm3d(4), (8, 4, 2, 3, 3))],
                         ids=["1d", "1d-seq", "2d", "3d"])
def test_convert_batchnorm_keeps_the_training_mode_function(bn, shape):
    torch.manual_seed(0)
    bn, x = scrambled(bn), torch.randn(shape)
    want = bn(x)
    new = convert_batchnorm(bn)
    assert isinstance(new, BatchNorm2d) and new.eps == bn.eps
    assert torch.allclose(new(x), want, atol=1e-5)
    new.eval()  # batch statistics at test time too: running statistics are dropped
    assert torch.allclose(new(x), want, atol=1e-5)


def test_convert_batchnorm_keeps_timms_fused_activation_and_nested_layers():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Sequential(scrambled(BatchNormAct2d(4))))
    x = torch.randn(5, 2, 6, 6)
    want = net(x)
    assert convert_batchnorm(net) is net
    require_exact_norms(net)
    assert isinstance(net[1][0][0], BatchNorm2d) and torch.allclose(net(x), want, atol=1e-5)
    assert (net(x) >= 0).all()  # the ReLU is still there


def test_convert_batchnorm_refuses_a_subclass_with_its_own_forward():
    class Odd(nn.BatchNorm2d):
        def forward(self, x):
            return super().forward(x) * 2

    with pytest.raises(ConfigError, match="Odd overrides"):
        convert_batchnorm(nn.Sequential(Odd(3)))
