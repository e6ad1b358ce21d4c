"""The properties that define each algorithm, checked on tiny random tasks."""
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from metalearn import build
from metalearn.algorithms.anil import ANIL
from metalearn.algorithms.base import MetaLearner
from metalearn.algorithms.maml import MAML, msl_weights
from metalearn.algorithms.metasgd import MetaSGD
from metalearn.algorithms.protonet import ProtoNet
from metalearn.algorithms.snail import SNAIL
from metalearn.errors import ConfigError
from metalearn.models.conv4 import Conv4
from metalearn.models.norm import BatchNorm2d
from metalearn.data.episodes import Episodes
from tests.algorithms.test_maml import random_task
from tests.algorithms.test_learners import ALGORITHMS
from tests.conftest import compose_cfg


def small(**kw):
    torch.manual_seed(0)
    return Conv4(1, 12, hidden=8, **kw)


def test_metasgd_learned_lrs_get_meta_gradients_and_change_the_adaptation():
    algo = MetaSGD(small(), ways=3, inner_lr=0.3).double()
    ep = random_task()
    loss = algo(ep).loss.sum()
    loss.backward()
    assert len(algo.lrs) == len(list(algo.model.parameters()))
    assert algo.inner_lr == 0.3 and torch.allclose(algo.lrs[0], torch.tensor(0.3).double())
    for lr, p in zip(algo.lrs, algo.model.parameters()):
        assert lr.shape == p.shape and lr.grad is not None
    assert sum(lr.grad.abs().sum() for lr in algo.lrs) > 0
    with torch.no_grad():
        algo.lrs[-1].mul_(0)  # no adaptation of the head: a different query loss
    assert not torch.isclose(algo(ep).loss.sum(), loss)


def test_lslr_has_one_learned_lr_per_layer_and_step_and_they_get_gradients():
    algo = MAML(small(), ways=3, inner_lr=0.3, adaptation_steps=2, lslr=True).double()
    algo(random_task()).loss.sum().backward()
    assert len(algo.lrs) == len(list(algo.model.parameters()))
    for lr in algo.lrs:
        assert lr.shape == (2,) and torch.all(lr.grad != 0)


def test_lslr_at_its_initial_values_equals_plain_maml():
    ep = random_task()
    plain = MAML(small(), ways=3, inner_lr=0.3, adaptation_steps=2).double()
    lslr = MAML(small(), ways=3, inner_lr=0.3, adaptation_steps=2, lslr=True).double()
    lslr.model.load_state_dict(plain.model.state_dict())
    assert torch.allclose(plain(ep).loss, lslr(ep).loss, rtol=1e-12)


def test_anil_adapts_only_the_head_and_embeds_each_task_once():
    algo = ANIL(small(), ways=3, inner_lr=0.5, adaptation_steps=3).double()
    before = {k: v.clone() for k, v in algo.state_dict().items()}
    calls = []
    algo.backbone.register_forward_hook(lambda *a: calls.append(1))
    ep = random_task()
    grads = {}
    adapted = []
    adapt = algo._adapt

    def spy(*args, **kw):
        adapted.append(adapt(*args, **kw)[0])
        return adapted[-1], []

    algo._adapt = spy
    algo(ep).loss.sum().backward()
    assert len(calls) == 2  # support + query, once per task, not once per step
    # the inner loop changed the head's copy, never the backbone's weights
    assert set(dict(adapted[0].named_parameters())) == {"weight", "bias"}
    assert not torch.allclose(adapted[0].weight, before["model.weight"])
    for k, v in algo.state_dict().items():
        assert torch.equal(v, before[k]), k
    # the outer update still reaches the backbone
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in algo.backbone.parameters())


def test_msl_weights_sum_to_one_and_anneal_towards_the_last_step():
    steps = 5
    start, mid, end = (msl_weights(steps, p) for p in (0.0, 0.5, 1.0))
    for w in (start, mid, end, msl_weights(steps, 3.0)):
        assert float(w.sum()) == pytest.approx(1.0, abs=1e-12)
    assert torch.allclose(start, torch.full((steps,), 0.2, dtype=torch.float64))
    assert torch.all(mid[:-1] < start[:-1]) and mid[-1] > start[-1]
    assert torch.allclose(end[:-1], torch.full((steps - 1,), 0.03 / steps, dtype=torch.float64))
    assert float(end[-1]) == pytest.approx(1 - 4 * 0.03 / steps)
    assert torch.equal(msl_weights(steps, 3.0), end)  # clamped past the annealing period


def test_multi_step_loss_is_on_during_msl_iterations_then_only_the_last_step_counts():
    algo = MAML(small(), ways=3, adaptation_steps=3, multi_step_loss=True, msl_iterations=10)
    algo.on_iteration(5)
    assert algo.use_msl and torch.allclose(algo.step_weights(), msl_weights(3, 0.5))
    algo.on_iteration(11)
    assert not algo.use_msl and algo.step_weights() is None
    # the MSL loss is the weighted sum of the per-step query losses
    algo = algo.double()
    algo.on_iteration(1)
    ep = random_task()
    _, logits = algo._adapt(ep.support_x[0], ep.support_y[0], 3, False, query=ep.query_x[0])
    want = sum(w * F.cross_entropy(l, ep.query_y[0]) for w, l in zip(algo.step_weights(), logits))
    assert torch.allclose(algo(ep).loss[0], want.to(torch.float64))


def test_derivative_order_annealing_switches_at_the_configured_iteration():
    algo = MAML(small(), ways=3, inner_lr=0.3, first_order_iterations=3).double()
    ep = random_task()
    reference = {fo: MAML(small(), ways=3, inner_lr=0.3, first_order=fo).double()
                 for fo in (True, False)}

    def grad(a):
        a.zero_grad()
        a(ep).loss.sum().backward()
        return torch.cat([p.grad.flatten() for p in a.parameters()])

    for it, first in [(1, True), (3, True), (4, False), (100, False)]:
        algo.on_iteration(it)
        assert algo.train_first_order is first
        assert torch.allclose(grad(algo), grad(reference[first]), rtol=1e-10)
    assert not torch.allclose(grad(reference[True]), grad(reference[False]))


def test_per_step_bn_gives_each_step_its_own_bn_weights():
    algo = MAML(small(), ways=3, inner_lr=0.3, adaptation_steps=3, per_step_bn=True,
                multi_step_loss=True, msl_iterations=10).double()
    norms = [m for m in algo.modules() if isinstance(m, BatchNorm2d)]
    assert norms and all(m.weight.shape == (3, 8) for m in norms)
    algo(random_task()).loss.sum().backward()
    for m in norms:  # every step's row is used, so each gets its own gradient
        assert torch.all(m.weight.grad.abs().sum(1) > 0)
        assert not torch.allclose(m.weight.grad[0], m.weight.grad[1])


def test_protonet_logits_are_negative_squared_distances_to_hand_computed_prototypes():
    algo = ProtoNet(small(), ways=3).double()
    ep = random_task(ways=3, shots=2, query=2)
    sx, sy, qx = ep.support_x[0], ep.support_y[0], ep.query_x[0]
    z = algo.backbone(torch.cat([sx, qx]))
    zs, zq = z[:6], z[6:]
    protos = torch.stack([zs[sy == c].mean(0) for c in range(3)])
    want = torch.stack([torch.stack([-((q - p) ** 2).sum() for p in protos]) for q in zq])
    from metalearn.algorithms.protonet import prototype_logits
    got = prototype_logits(zs, sy, zq, 3)
    assert torch.allclose(got, want, rtol=1e-10)
    loss = F.cross_entropy(want, ep.query_y[0])
    assert torch.allclose(algo(ep).loss[0], loss, rtol=1e-10)


def test_ways_limits_per_learner():
    with pytest.raises(ConfigError, match="5-way output head"):
        MAML(small(), ways=5).check_ways(10)
    with pytest.raises(ConfigError, match="5-way output head"):
        SNAIL(small(), ways=5, shots=1).check_ways(10)
    ProtoNet(small(), ways=5).check_ways(20)


def test_algorithm_configs_build_their_learner():
    for name in ALGORITHMS:
        cfg = compose_cfg("dataset=synthetic", f"algorithm={name}", "backbone.hidden=8")
        algo = build.learner(cfg, 1, 12, train_classes=64)
        assert isinstance(algo, MetaLearner) and algo.ways == cfg.task.ways
        assert cfg.algo._target_.endswith("." + type(algo).__name__)
    assert {name: type(instantiate(compose_cfg("dataset=synthetic", f"algorithm={name}").algo,
                                   backbone=small(), ways=5))
            for name in ("fomaml", "mamlpp", "metasgd", "anil")} == {
        "fomaml": MAML, "mamlpp": MAML, "metasgd": MetaSGD, "anil": ANIL}
    cfg = compose_cfg("dataset=synthetic", "algorithm=fomaml")
    assert cfg.algo.first_order is True and cfg.algo.inner_lr == 0.4
    pp = compose_cfg("dataset=synthetic", "algorithm=mamlpp").algo
    assert pp.multi_step_loss and pp.lslr and pp.per_step_bn and pp.first_order_iterations > 0
    plain = compose_cfg("dataset=synthetic").algo
    assert not (plain.multi_step_loss or plain.lslr or plain.per_step_bn)
    assert plain.first_order_iterations == 0


class Pixels(torch.nn.Module):
    """A backbone without batch statistics, so each image's embedding is its own."""
    out_features = 12 * 12

    def forward(self, x):
        return x.flatten(1)


def snail(backbone=None, ways=3, shots=2):
    torch.manual_seed(0)
    return SNAIL(backbone or Pixels(), ways=ways, shots=shots, tc_filters=8,
                 attention=((8, 4), (16, 8))).double()


def test_snail_classifies_each_query_from_the_supports_alone_in_one_pass():
    algo = snail()
    ep = random_task(ways=3, shots=2, query=2)
    ref = algo._logits(ep, torch.Generator().manual_seed(0))
    assert ref.shape == (1, 6, 3)
    other = Episodes(ep.support_x, ep.support_y, ep.query_x.clone(), ep.query_y)
    other.query_x[0, 0] += 1  # another first query: no other query's logits may move
    got = algo._logits(other, torch.Generator().manual_seed(0))
    assert not torch.allclose(got[0, 0], ref[0, 0])
    assert torch.allclose(got[0, 1:], ref[0, 1:], rtol=1e-12)
    # the labels are read: relabelling the supports changes the answer
    relabelled = Episodes(ep.support_x, (ep.support_y + 1) % 3, ep.query_x, ep.query_y)
    assert not torch.allclose(algo._logits(relabelled, torch.Generator().manual_seed(0)), ref)


def test_snail_support_prefix_computed_once_equals_one_full_sequence_per_query():
    algo = snail(shots=3)  # 9 supports: TC dilations 1, 2, 4, 8 all reach inside the prefix
    ep = random_task(ways=3, shots=3, query=2, size=12, seed=1)
    got = algo._logits(ep, torch.Generator().manual_seed(0))
    # the paper's form: the sequence [supports in the same shuffled order, the query], per query
    order = torch.rand(1, 9, generator=torch.Generator().manual_seed(0)).argsort(1)[0]
    z = algo.backbone(torch.cat([ep.support_x[0], ep.query_x[0]]))
    support = torch.cat([z[:9][order], F.one_hot(ep.support_y[0][order], 3).double()], -1)
    for i in range(6):
        query = torch.cat([z[9 + i], torch.zeros(3, dtype=torch.float64)])
        h = algo.sequence(torch.cat([support, query[None]])[None])
        assert torch.allclose(algo.out(h[0, -1]), got[0, i], rtol=1e-10, atol=1e-12)


def test_snail_meta_gradient_reaches_backbone_and_every_block():
    algo = snail(backbone=small(), shots=2)
    algo(random_task(ways=3, shots=2, query=2)).loss.sum().backward()
    for name, p in algo.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_snail_evaluation_is_reproducible_and_takes_other_shots():
    algo = snail(shots=1)
    ep = random_task(ways=3, shots=1, query=2)
    a, b = algo.evaluate(ep), algo.evaluate(ep)
    assert torch.equal(a.loss, b.loss) and not a.loss.requires_grad
    longer = algo.evaluate(random_task(ways=3, shots=5, query=2))  # past the TC blocks' reach
    assert torch.isfinite(longer.loss).all()


def test_snail_support_order_is_shuffled_per_training_step():
    algo = snail()
    ep = random_task(ways=3, shots=2, query=2)
    torch.manual_seed(1)
    first = algo(ep).loss
    torch.manual_seed(2)
    assert not torch.allclose(algo(ep).loss, first)  # causal model: order matters, and varies


@pytest.mark.parametrize("cls, old", [(MAML, {"model.": "maml.module."}),
                                      (MetaSGD, {"model.": "meta.module.", "lrs.": "meta.lrs."}),
                                      (ANIL, {"model.": "head.module."})])
def test_checkpoints_with_the_learn2learn_wrapper_keys_still_load(cls, old):
    saved = {k: torch.randn_like(v) for k, v in cls(small(), ways=3).state_dict().items()}
    legacy = {}
    for k, v in saved.items():
        prefix = next((p for p in old if k.startswith(p)), "")
        legacy[(old[prefix] + k[len(prefix):]) if prefix else k] = v
    assert legacy.keys() != saved.keys()
    fresh = cls(small(), ways=3)
    fresh.load_state_dict(legacy)  # strict: every key found a home
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, saved[k]), k
