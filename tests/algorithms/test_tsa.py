"""Task-specific adapters (adapter=tsa): residual adapters and a feature alignment learned per
task on the support set, the trained network frozen."""
import pytest
import torch
import torch.nn.functional as F

from metalearn.algorithms.tsa import Adapted, TaskSpecificAdapters, attach_adapters
from metalearn.errors import ConfigError
from metalearn.models.conv4 import Conv4
from metalearn.models.resnet12 import ResNet12
from tests.algorithms.test_finetune import episodes, learner


def test_adapters_go_on_every_3x3_convolution_and_start_as_the_trained_network():
    torch.manual_seed(0)
    net, x = Conv4(1, 12, hidden=8), torch.randn(6, 1, 12, 12)
    before = net(x)
    assert len(attach_adapters(net)) == 4
    assert torch.allclose(net(x), before, atol=1e-2) and not torch.equal(net(x), before)
    res = ResNet12(3, 16, channels=[4, 6, 8, 10])
    three_by_three = sum(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)
                         for m in res.modules())
    assert len(attach_adapters(res)) == three_by_three > 0
    assert all(isinstance(m.conv, torch.nn.Conv2d) for m in res.modules() if isinstance(m, Adapted))


def test_zero_steps_is_cosine_nearest_class_mean():
    base, ep = learner("maml"), episodes(n=2)
    got = TaskSpecificAdapters(base, steps=0).evaluate(ep)
    net = base.embedding()
    for t in range(len(ep)):
        with torch.no_grad():
            zs, zq = net(ep.support_x[t]), net(ep.query_x[t])
        means = torch.stack([zs[ep.support_y[t] == c].mean(0) for c in range(5)])
        logits = 10 * F.normalize(zq, dim=-1) @ F.normalize(means, dim=-1).t()
        assert torch.allclose(got.loss[t], F.cross_entropy(logits, ep.query_y[t]), atol=1e-3)


def test_only_the_adapters_learn_and_they_fit_the_support_set():
    base, ep = learner("maml"), episodes(n=1)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    support_as_queries = type(ep)(ep.support_x, ep.support_y, ep.support_x, ep.support_y)
    start = TaskSpecificAdapters(base, steps=0).evaluate(support_as_queries)
    adapter = TaskSpecificAdapters(base, steps=40)
    fitted = adapter.evaluate(support_as_queries)
    assert fitted.loss.mean() < start.loss.mean() / 2 and fitted.acc.mean() == 1
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())
    net, _ = adapter._tune(ep.support_x[0], ep.support_y[0], torch.Generator())
    trained = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trained and all(n.endswith(("alpha", "beta")) for n in trained)
    adapters = [m for m in net.modules() if isinstance(m, Adapted)]
    assert len(adapters) == 4 and all(
        not torch.equal(m.alpha, Adapted(m.conv).alpha) for m in adapters)  # all moved
    assert not torch.equal(net.beta, torch.eye(len(net.beta)))
    classify = adapter.adapt(ep.support_x[0], ep.support_y[0])  # the predict API
    one, all_ = classify(ep.query_x[0][:1]), classify(ep.query_x[0])
    assert all_.shape == (15, 5) and torch.allclose(one, all_[:1], atol=1e-5)


def test_a_network_without_3x3_convolutions_is_refused():
    class Flat(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(144, 4)

        def forward(self, x):
            return self.fc(x.flatten(1))

    base, ep = learner("maml"), episodes(n=1)
    base.embedding = lambda: Flat()
    with pytest.raises(ConfigError, match="no 3x3 convolution"):
        TaskSpecificAdapters(base).evaluate(ep)
    with pytest.raises(ConfigError, match="lr_beta"):
        TaskSpecificAdapters(base, lr_beta=0)


def test_the_evaluation_app_adapts_a_saved_run(tmp_path):
    from metalearn import evaluate as script
    from metalearn.engine.loop import train
    from tests.conftest import FAST, compose_cfg

    train(compose_cfg(*FAST, "backbone.hidden=8", "task.query=3", "trainer.meta_batch_size=1"),
          tmp_path)
    got = script.run([f"run_dir={tmp_path}", "dataset=synthetic", "split=all", "episodes=4",
                      "adapter=tsa", "adapter.steps=3"])
    assert got["adapter"] == "tsa" and got["adapter_config"]["steps"] == 3
    assert set(got["references"]) == {"pixels", "untrained"}
