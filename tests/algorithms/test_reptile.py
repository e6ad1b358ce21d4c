"""Reptile: one meta-step is theta + eps * mean(phi - theta), on both engines."""
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from metalearn.algorithms.reptile import Reptile
from metalearn.engine.loop import meta_step
from metalearn.errors import ConfigError
from metalearn.models.conv4 import Conv4
from tests.algorithms.test_engine import episodes, rel


def reptile(inner_optimizer="sgd", steps=3):
    """A fresh inner state per task: the tasks are independent, so both engines train them
    (with the carried state, training is sequential: test_reptile_reference.py)."""
    torch.manual_seed(0)
    return Reptile(Conv4(1, 12, hidden=6), ways=3, inner_lr=0.05, adaptation_steps=steps,
                   test_adaptation_steps=5, inner_optimizer=inner_optimizer,
                   carry_state=False).double()


def step(algo, ep, engine, eps):
    """One meta-iteration as the loop runs it: meta_step, then SGD with lr = eps."""
    algo.engine = engine
    opt = torch.optim.SGD(algo.parameters(), lr=eps)
    opt.zero_grad()
    losses, _ = meta_step(algo, ep)
    opt.step()
    return losses, [p.detach().clone() for p in algo.parameters()]


@pytest.mark.parametrize("engine", ["l2l", "batched"])
def test_one_meta_step_is_the_reptile_update_computed_by_hand(engine):
    # 4 tasks: meta_step scales by 1/4 in float32, which is exact
    algo, ep, eps = reptile(), episodes(batch=4), 0.7
    model = algo.model
    names = [n for n, _ in model.named_parameters()]
    theta = [p.detach().clone() for p in model.parameters()]
    phis, query_losses = [], []
    for t in range(len(ep)):  # plain SGD on each task's support set, 3 steps
        fast = [p.clone().requires_grad_() for p in theta]
        for _ in range(3):
            loss = F.cross_entropy(functional_call(model, dict(zip(names, fast)),
                                                   ep.support_x[t]), ep.support_y[t])
            fast = [(w - 0.05 * g).detach().requires_grad_()
                    for w, g in zip(fast, torch.autograd.grad(loss, fast))]
        phis.append(fast)
        logits = functional_call(model, dict(zip(names, fast)), ep.query_x[t])
        query_losses.append(F.cross_entropy(logits, ep.query_y[t]))
    want = [th + eps * torch.stack([phi[i] - th for phi in phis]).mean(0)
            for i, th in enumerate(theta)]
    losses, got = step(algo, ep, engine, eps)
    assert rel(torch.cat([g.flatten() for g in got]), torch.cat([t.flatten() for t in theta])) > 1e-4
    for g, w in zip(got, want):
        assert torch.allclose(g, w, rtol=1e-10, atol=1e-13)
    # the reported loss is the query loss after adaptation, not the objective
    assert torch.allclose(losses, torch.stack(query_losses).detach().float(), rtol=1e-6)


@pytest.mark.parametrize("inner_optimizer", ["sgd", "adam"])
def test_both_engines_take_the_same_step_in_float64(inner_optimizer):
    ep = episodes()
    (la, a), (lb, b) = (step(reptile(inner_optimizer), ep, e, 1.0) for e in ("l2l", "batched"))
    assert torch.equal(la, lb)  # float32, as meta_step reports them
    names = [n for n, _ in reptile().named_parameters()]
    for name, x, y in zip(names, a, b):
        # Adam turns round-off in an exactly-zero gradient (a conv bias before BN) into a
        # full +-lr step: those entries are noise on both engines
        if inner_optimizer == "adam" and name.endswith(("0.bias", "3.bias", "6.bias", "9.bias")):
            continue
        assert rel(x, y) <= 1e-10, name
    ma, mb = (reptile(inner_optimizer) for _ in range(2))
    ma.engine, mb.engine = "l2l", "batched"
    ea, eb = ma.evaluate(ep), mb.evaluate(ep)
    assert torch.allclose(ea.loss, eb.loss, rtol=1e-8) and ea.objective is None


def test_inner_adam_differs_from_sgd():
    ep = episodes()
    sgd = step(reptile("sgd"), ep, "batched", 1.0)[1]
    adam = step(reptile("adam"), ep, "batched", 1.0)[1]
    assert rel(adam[-2], sgd[-2]) > 1e-3  # the head moved differently
    with pytest.raises(ConfigError, match="algo.inner_optimizer='rmsprop'"):
        Reptile(Conv4(1, 12), ways=3, inner_optimizer="rmsprop")


def test_the_compiled_engine_is_refused_rather_than_silently_not_compiling():
    with pytest.raises(ConfigError, match="algo.engine=compiled is the MAML family's"):
        Reptile(Conv4(1, 12), ways=3, engine="compiled")


def test_an_impossible_inner_batch_is_one_config_error_before_any_work():
    from metalearn.config_check import validate
    from tests.conftest import compose_cfg
    with pytest.raises(ConfigError, match="algo.inner_batch=0"):
        validate(compose_cfg("algorithm=reptile", "algo.inner_batch=0"))
    validate(compose_cfg("algorithm=reptile", "algo.inner_batch=10"))
