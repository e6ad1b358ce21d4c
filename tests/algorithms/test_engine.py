"""The batched (torch.func) engine against learn2learn's, in float64 on CPU, and on CUDA."""
import copy

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from metalearn.algorithms import maml as maml_module
from metalearn.algorithms.maml import MAML
from metalearn.data.episodes import Episodes
from metalearn.engine.loop import meta_step
from metalearn.errors import ConfigError
from metalearn.models.conv4 import Conv4
from metalearn.models.resnet12 import ResNet12
from tests.conftest import compose_cfg

BACKBONES = {"conv4": (lambda: Conv4(1, 12, hidden=6), 12),
             "resnet12": (lambda: ResNet12(1, 16, channels=(4, 6, 8, 10)), 16)}
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def episodes(batch=3, ways=3, shots=2, query=2, size=12, seed=0, dtype=torch.float64,
             device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, ways * (shots + query), 1, size, size, generator=g, dtype=dtype)
    ys = torch.arange(ways).repeat_interleave(shots).repeat(batch, 1)
    yq = torch.arange(ways).repeat_interleave(query).repeat(batch, 1)
    return Episodes(x[:, : ways * shots], ys, x[:, ways * shots :], yq).to(device)


def meta_gradients(algo, ep, engine, chunk_size=None, amp="none"):
    algo.engine = engine
    algo.zero_grad(set_to_none=True)
    losses, _ = meta_step(algo, ep, chunk_size, amp)
    return losses, torch.cat([p.grad.flatten() for p in algo.parameters()])


def rel(a, b):
    return float((a - b).norm() / b.norm())


def make(backbone, first_order, steps=2, device="cpu"):
    torch.manual_seed(0)
    build, size = BACKBONES[backbone]
    algo = MAML(build(), ways=3, inner_lr=0.3, adaptation_steps=steps, first_order=first_order)
    return algo.double().to(device), size


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
@pytest.mark.parametrize("first_order", [False, True], ids=["2nd-order", "1st-order"])
def test_batched_meta_gradient_equals_learn2learn(backbone, first_order):
    algo, size = make(backbone, first_order)
    ep = episodes(size=size)
    loss_ref, want = meta_gradients(algo, ep, "l2l")
    loss, got = meta_gradients(algo, ep, "batched")
    assert rel(got, want) <= 1e-10
    assert torch.allclose(loss, loss_ref, rtol=1e-12)
    # and test-time adaptation scores the same
    a, b = (copy.deepcopy(algo) for _ in range(2))
    a.engine, b.engine = "l2l", "batched"
    ma, mb = a.evaluate(ep), b.evaluate(ep)
    assert torch.allclose(ma.loss, mb.loss, rtol=1e-12) and torch.equal(ma.acc, mb.acc)


def test_first_and_second_order_differ_under_the_batched_engine():
    ep = episodes()
    g = {fo: meta_gradients(make("conv4", fo)[0], ep, "batched")[1] for fo in (False, True)}
    assert rel(g[True], g[False]) > 1e-4


def test_both_engines_train_to_the_same_weights():
    weights = {}
    for engine in ("l2l", "batched"):
        algo, size = make("conv4", first_order=False)
        # SGD: Adam divides by sqrt(v) and so amplifies round-off in near-zero gradients
        opt = torch.optim.SGD(algo.parameters(), lr=0.1)
        for it in range(3):
            meta_gradients(algo, episodes(size=size, seed=it), engine)
            opt.step()
        weights[engine] = torch.cat([p.detach().flatten() for p in algo.parameters()])
    start = torch.cat([p.detach().flatten() for p in make("conv4", False)[0].parameters()])
    assert rel(weights["batched"], start) > 1e-3  # it did train
    assert rel(weights["batched"], weights["l2l"]) <= 1e-10


@pytest.mark.parametrize("engine", ["l2l", "batched"])
def test_chunked_meta_batch_equals_unchunked(engine):
    algo, size = make("conv4", first_order=False)
    ep = episodes(batch=3, size=size)
    loss_all, g_all = meta_gradients(algo, ep, engine)
    loss_chunked, g_chunked = meta_gradients(algo, ep, engine, chunk_size=2)  # 2 + 1
    assert torch.allclose(loss_chunked, loss_all, rtol=1e-12)
    assert rel(g_chunked, g_all) <= 1e-12


def test_bf16_autocast_runs_and_stays_within_tolerance():
    # bf16 (8-bit mantissa) is far from exact through an inner loop: on this tiny net one
    # 2nd-order step gives ~50% relative meta-gradient error vs float32, two steps >100%
    # (docs/performance.md). The stated bound: one step stays under 75% and points the same way.
    algo, size = make("conv4", first_order=False, steps=1)
    algo = algo.float()
    ep = episodes(batch=4, size=size, dtype=torch.float32)
    _, want = meta_gradients(algo, ep, "batched")
    loss, got = meta_gradients(algo, ep, "batched", amp="bf16")
    assert torch.isfinite(got).all() and torch.isfinite(loss).all()
    assert rel(got, want) < AMP_TOLERANCE
    assert F.cosine_similarity(got, want, dim=0) > 0.8
    with pytest.raises(ConfigError, match="trainer.amp='fp8'"):
        meta_gradients(algo, ep, "batched", amp="fp8")


AMP_TOLERANCE = 0.75


class HeadOnlyPerStepLR(MAML):
    """What ANIL + MAML++'s per-step lrs look like on top of the batched engine's hooks."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.step_lrs = torch.nn.Parameter(torch.tensor([0.3, 0.1], dtype=torch.float64))

    def adapts(self, name):
        return name.startswith("1.")

    def inner_update(self, step, fast, grads):
        return {n: p - self.step_lrs[step] * grads[n] for n, p in fast.items()}


def test_hooks_give_the_hand_written_meta_gradient():
    torch.manual_seed(0)
    algo = HeadOnlyPerStepLR(Conv4(1, 12, hidden=6), ways=3, adaptation_steps=2,
                             engine="batched").double()
    ep = episodes()
    algo(ep).loss.sum().backward()
    got = [p.grad.clone() for p in algo.parameters()]
    algo.zero_grad()
    body, head = algo.model[0], algo.model[1]
    total = 0
    for t in range(len(ep)):
        w, b = head.weight, head.bias
        for step in range(2):
            loss = F.cross_entropy(F.linear(body(ep.support_x[t]), w, b), ep.support_y[t])
            gw, gb = torch.autograd.grad(loss, (w, b), create_graph=True)
            w, b = w - algo.step_lrs[step] * gw, b - algo.step_lrs[step] * gb
        total = total + F.cross_entropy(F.linear(body(ep.query_x[t]), w, b), ep.query_y[t])
    total.backward()
    want = [p.grad for p in algo.parameters()]
    assert algo.step_lrs.grad.abs().sum() > 0
    for g, w in zip(got, want):
        assert torch.allclose(g, w, rtol=1e-10, atol=1e-13)


def test_engine_choice_from_config():
    cfg = compose_cfg("dataset=synthetic", "algo.engine=l2l")
    algo = instantiate(cfg.algo, backbone=Conv4(1, 28), ways=5)
    assert algo.engine == "l2l" and algo.engine_for(torch.device("cpu")) == "l2l"
    auto = instantiate(compose_cfg("dataset=synthetic").algo, backbone=Conv4(1, 28), ways=5)
    assert auto.engine == "auto"
    assert auto.engine_for(torch.device("cuda")) == "batched"
    assert auto.engine_for(torch.device("cpu")) == maml_module.CPU_ENGINE
    with pytest.raises(ConfigError, match="algo.engine='vmap'"):
        MAML(Conv4(1, 28), ways=5, engine="vmap")


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("backbone", sorted(BACKBONES))
@pytest.mark.parametrize("first_order", [False, True], ids=["2nd-order", "1st-order"])
def test_cuda_batched_meta_gradient_equals_learn2learn(backbone, first_order):
    algo, size = make(backbone, first_order, device="cuda")
    ep = episodes(size=size, device="cuda")
    _, want = meta_gradients(algo, ep, "l2l")
    _, got = meta_gradients(algo, ep, "batched")
    assert rel(got, want) <= 1e-10


@pytest.mark.gpu
@cuda
def test_cuda_bf16_and_channels_last_run():
    algo, size = make("conv4", first_order=False, steps=1, device="cuda")
    algo = algo.float().to(memory_format=torch.channels_last)
    ep = episodes(batch=4, size=size, dtype=torch.float32, device="cuda")
    _, want = meta_gradients(algo, ep, "batched")
    _, got = meta_gradients(algo, ep, "batched", amp="bf16")
    assert rel(got, want) < AMP_TOLERANCE
