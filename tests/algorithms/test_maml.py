import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch.func import functional_call

from metalearn.algorithms.maml import MAML
from metalearn.data.episodes import Episodes
from metalearn.models.conv4 import Conv4
from tests.conftest import compose_cfg


def random_task(ways=3, shots=2, query=2, size=12, ch=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, ways * (shots + query), ch, size, size, generator=g, dtype=torch.float64)
    ys = torch.arange(ways).repeat_interleave(shots)[None]
    yq = torch.arange(ways).repeat_interleave(query)[None]
    return Episodes(x[:, : ways * shots], ys, x[:, ways * shots :], yq)


def test_one_task_meta_gradient_matches_hand_written_second_order():
    torch.manual_seed(0)
    algo = MAML(Conv4(1, 12, hidden=8), ways=3, inner_lr=0.3, adaptation_steps=2).double()
    ep = random_task()
    algo(ep).loss.sum().backward()
    got = [p.grad.clone() for p in algo.parameters()]

    model = algo.model
    names = [n for n, _ in model.named_parameters()]
    theta = [p.detach().clone().requires_grad_() for p in model.parameters()]
    fast = theta
    for _ in range(2):
        loss = F.cross_entropy(functional_call(model, dict(zip(names, fast)), ep.support_x[0]),
                               ep.support_y[0])
        grads = torch.autograd.grad(loss, fast, create_graph=True)
        fast = [w - 0.3 * g for w, g in zip(fast, grads)]
    q = F.cross_entropy(functional_call(model, dict(zip(names, fast)), ep.query_x[0]),
                        ep.query_y[0])
    want = torch.autograd.grad(q, theta)
    for g, w in zip(got, want):
        assert torch.allclose(g, w, rtol=1e-10, atol=1e-12)


def test_first_order_differs_from_second_order():
    ep = random_task()
    grads = {}
    for fo in (False, True):
        torch.manual_seed(0)
        algo = MAML(Conv4(1, 12, hidden=8), ways=3, inner_lr=0.3, first_order=fo).double()
        algo(ep).loss.sum().backward()
        grads[fo] = torch.cat([p.grad.flatten() for p in algo.parameters()])
    assert not torch.allclose(grads[False], grads[True])


def test_config_overrides_reach_the_learn2learn_wrapper():
    cfg = compose_cfg("dataset=synthetic", "algo.inner_lr=0.123", "algo.adaptation_steps=3",
                      "algo.test_adaptation_steps=7", "algo.first_order=true", "task.ways=4")
    algo = instantiate(cfg.algo, backbone=Conv4(1, 28), ways=cfg.task.ways)
    assert algo.inner_lr == 0.123 and algo.first_order is True
    assert algo.adaptation_steps == 3 and algo.test_adaptation_steps == 7
    assert algo.model[1].out_features == 4
