"""Test-time fine-tuning (adapter=finetune) of a trained learner's embedding."""
import pytest
import torch
import torch.nn.functional as F

from metalearn import build
from metalearn.algorithms.finetune import FineTune, augmented
from metalearn.data.episodes import EpisodeSampler, Preprocess
from metalearn.data.synthetic import load_synthetic
from metalearn.errors import ConfigError
from tests.conftest import FAST, compose_cfg

SMALL = ["dataset=synthetic", "dataset.image_size=12", "backbone.hidden=8"]


def learner(algorithm="protonet"):
    torch.manual_seed(0)
    return build.learner(compose_cfg(*SMALL, f"algorithm={algorithm}"), 1, 12, 64)


def episodes(n=3, ways=5, shots=2, query=3):
    data = load_synthetic(image_size=12, noise=0.3)
    sampler = EpisodeSampler(data.test, ways, shots, query, data.mean, data.std, seed=2)
    return Preprocess(data.mean, data.std)(sampler.sample(n))


def test_zero_steps_is_cosine_nearest_class_mean_on_the_embedding():
    base, ep = learner(), episodes()
    got = FineTune(base, steps=0).evaluate(ep)
    net = base.embedding()
    for t in range(len(ep)):
        with torch.no_grad():
            zs = F.normalize(net(ep.support_x[t]), dim=-1)
            zq = F.normalize(net(ep.query_x[t]), dim=-1)
        means = torch.stack([zs[ep.support_y[t] == c].mean(0) for c in range(5)])
        logits = 10 * zq @ F.normalize(means, dim=-1).t()
        assert torch.allclose(got.loss[t], F.cross_entropy(logits, ep.query_y[t]), atol=1e-5)


@pytest.mark.parametrize("algorithm", ["maml", "protonet", "anil", "baseline", "reptile"])
def test_fine_tuning_fits_the_support_set_and_leaves_the_learner_as_it_was(algorithm):
    base, ep = learner(algorithm), episodes(n=1)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    tuned = FineTune(base, steps=30, lr=0.05, augment="none")
    support_as_queries = type(ep)(ep.support_x, ep.support_y, ep.support_x, ep.support_y)
    untuned = FineTune(base, steps=0).evaluate(support_as_queries)
    fitted = tuned.evaluate(support_as_queries)
    assert fitted.loss.mean() < untuned.loss.mean() and fitted.acc.mean() == 1
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())
    # prediction: any number of classes, the support statistics reused for queries
    classify = tuned.adapt(ep.support_x[0], ep.support_y[0])
    one, all_ = classify(ep.query_x[0][:1]), classify(ep.query_x[0])
    assert all_.shape == (15, 5) and torch.allclose(one, all_[:1], atol=1e-5)


def test_augmentation_shifts_each_image_and_is_reproducible():
    x = torch.zeros(6, 1, 8, 8)
    x[:, :, 3:5, 3:5] = 1
    g = torch.Generator().manual_seed(0)
    a = augmented(x, "shift", g)
    assert a.shape == x.shape and torch.equal(a.sum((1, 2, 3)), x.sum((1, 2, 3)))
    assert len({tuple(im.nonzero()[0].tolist()) for im in a}) > 1  # not one shift for all
    assert torch.equal(a, augmented(x, "shift", torch.Generator().manual_seed(0)))
    assert torch.equal(augmented(x, "none", g), x)
    with pytest.raises(ConfigError, match="adapter.augment='rotate'"):
        FineTune(learner(), augment="rotate")


def test_the_evaluation_app_fine_tunes_a_saved_run_and_its_untrained_reference(tmp_path):
    from metalearn import evaluate as script
    from metalearn.engine.loop import train

    train(compose_cfg(*FAST, "backbone.hidden=8", "algorithm=protonet", "task.query=3",
                      "trainer.meta_batch_size=1"), tmp_path)
    args = [f"run_dir={tmp_path}", "dataset=synthetic", "split=all", "episodes=4"]
    plain = script.run(args)
    tuned = script.run([*args, "adapter=finetune", "adapter.steps=5"])
    assert tuned["adapter"] == "finetune" and tuned["adapter_config"]["steps"] == 5
    assert tuned["acc"] != plain["acc"] or tuned["loss"] != plain["loss"]
    # the pixels reference is no network: the same either way; the untrained one is tuned too
    assert tuned["references"]["pixels"] == plain["references"]["pixels"]
    assert tuned["references"]["untrained"] != plain["references"]["untrained"]
    assert len(list(tmp_path.glob("eval-all-synthetic-*-finetune-*-5w1s3q-4ep-best.json"))) == 1
    assert len(list(tmp_path.glob("eval-all-synthetic-*-5w1s3q-4ep-best.json"))) == 2
