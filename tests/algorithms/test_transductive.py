"""Transductive fine-tuning (adapter=transductive): adapter=finetune plus the queries' entropy."""
import math

import pytest
import torch

from metalearn.algorithms.finetune import FineTune
from metalearn.algorithms.transductive import TransductiveFineTune, mean_entropy
from metalearn.errors import ConfigError
from tests.algorithms.test_finetune import episodes, learner
from tests.conftest import FAST, compose_cfg


def test_mean_entropy_in_nats():
    assert torch.isclose(mean_entropy(torch.zeros(4, 5)), torch.tensor(math.log(5)))
    assert mean_entropy(torch.tensor([[50.0, 0, 0], [0, 0, 50.0]])) < 1e-6
    # the mean over rows, not the sum
    two = torch.tensor([[0.0, 0.0], [50.0, 0.0]])
    assert torch.isclose(mean_entropy(two), torch.tensor(math.log(2) / 2), atol=1e-6)


def test_weight_zero_is_finetune_exactly():
    base, ep = learner(), episodes()
    plain = FineTune(base, steps=8, lr=0.05).evaluate(ep)
    zero = TransductiveFineTune(base, entropy_weight=0.0, steps=8, lr=0.05).evaluate(ep)
    assert torch.equal(plain.loss, zero.loss) and torch.equal(plain.acc, zero.acc)


def test_the_query_entropy_shapes_the_fine_tuning():
    base, ep = learner(), episodes(n=2)
    kw = dict(steps=20, lr=0.05)
    plain = FineTune(base, **kw)
    trans = TransductiveFineTune(base, entropy_weight=1.0, **kw)
    assert not torch.equal(plain.evaluate(ep).loss, trans.evaluate(ep).loss)
    # and in the direction it is meant to: the queries' predictions end up more confident
    for t in range(len(ep)):
        sx, sy, qx = ep.support_x[t], ep.support_y[t], ep.query_x[t]
        ent = []
        for adapter in (plain, trans):
            net, weight = adapter._tune(sx, sy, torch.Generator().manual_seed(0), qx)
            with torch.no_grad():
                ent.append(mean_entropy(adapter._logits(net(qx), weight)))
        assert ent[1] < ent[0]


def test_prediction_is_plain_fine_tuning_and_the_learner_is_untouched():
    base, ep = learner(), episodes(n=1)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    kw = dict(steps=5, lr=0.05)
    sx, sy, qx = ep.support_x[0], ep.support_y[0], ep.query_x[0]
    got = TransductiveFineTune(base, **kw).adapt(sx, sy)(qx)
    assert torch.equal(got, FineTune(base, **kw).adapt(sx, sy)(qx))
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())
    with pytest.raises(ConfigError, match="entropy_weight=-1"):
        TransductiveFineTune(base, entropy_weight=-1.0)


def test_the_evaluation_app_runs_it_on_a_saved_run(tmp_path):
    from metalearn import evaluate as script
    from metalearn.engine.loop import train

    train(compose_cfg(*FAST, "backbone.hidden=8", "algorithm=protonet", "task.query=3",
                      "trainer.meta_batch_size=1"), tmp_path)
    args = [f"run_dir={tmp_path}", "dataset=synthetic", "split=all", "episodes=4",
            "adapter.steps=5"]
    plain = script.run([*args[:4], "adapter=finetune", *args[4:]])
    trans = script.run([*args[:4], "adapter=transductive", *args[4:]])
    assert trans["adapter"] == "transductive" and trans["adapter_config"]["entropy_weight"] == 1
    assert trans["loss"] != plain["loss"]
    assert trans["references"]["untrained"] != plain["references"]["untrained"]
    assert trans["references"]["pixels"] == plain["references"]["pixels"]
    assert len(list(tmp_path.glob("eval-all-synthetic-*-transductive-*-5w1s3q-4ep-best.json"))) == 1
    # another setting of the same adapter is another file, not the first one overwritten
    script.run([*args[:4], "adapter=transductive", "adapter.steps=3"])
    assert len(list(tmp_path.glob("eval-all-synthetic-*-transductive-*-5w1s3q-4ep-best.json"))) == 2
