"""Baseline / Baseline++ (Chen et al. 2019): supervised pre-training, heads fitted per task."""
import pytest
import torch
from torch import nn

from metalearn.algorithms.baseline import Baseline, head_logits, init_head
from metalearn.data.base import ImageSplit
from metalearn.data.episodes import EpisodeSampler, Episodes
from metalearn.engine.evaluation import evaluate
from metalearn.engine.loop import build, samplers, seed_everything, train
from metalearn.errors import ConfigError
from metalearn.models.conv4 import Conv4
from tests.conftest import DATA_DIR, FAST, compose_cfg, has_omniglot


def task(ways=3, shots=2, query=4, dim=6, seed=0):
    """Features-as-images: a 1x1 'image' per example, so a flatten backbone sees them as is."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(ways, dim, generator=g) * 3
    ys = torch.arange(ways).repeat_interleave(shots)
    yq = torch.arange(ways).repeat_interleave(query)
    sx = centres[ys] + torch.randn(len(ys), dim, generator=g)
    qx = centres[yq] + torch.randn(len(yq), dim, generator=g)
    return Episodes(sx[None, :, :, None, None], ys[None], qx[None, :, :, None, None], yq[None])


class Flat(nn.Module):
    out_features = 6

    def forward(self, x):
        return x.flatten(1)


@pytest.mark.parametrize("head", ["linear", "cosine"])
def test_heads_are_fitted_on_the_support_only(head):
    algo = Baseline(Flat(), ways=3, num_classes=10, head=head)
    ep = task()
    logits = algo.query_logits(ep)
    assert logits.shape == (1, 12, 3)
    assert (logits.argmax(-1) == ep.query_y).float().mean() > 0.8  # it did fit something
    shuffled = Episodes(ep.support_x, ep.support_y, ep.query_x, ep.query_y[:, torch.randperm(12)])
    assert torch.equal(algo.query_logits(shuffled), logits)  # query labels are never read
    relabelled = Episodes(ep.support_x, (ep.support_y + 1) % 3, ep.query_x, ep.query_y)
    assert not torch.equal(algo.query_logits(relabelled), logits)


def test_cosine_head_is_torch_weight_norm_on_normalised_features():
    weight, g = init_head((4, 6), "cosine", torch.Generator().manual_seed(0))
    g = g * torch.linspace(0.5, 2, 4)  # per-class norms that are not |v|
    layer = torch.nn.utils.parametrizations.weight_norm(nn.Linear(6, 4, bias=False), dim=0)
    with torch.no_grad():
        layer.parametrizations.weight.original0.copy_(g[:, None])
        layer.parametrizations.weight.original1.copy_(weight)
    z = torch.randn(5, 6)
    want = 2.0 * layer(z / (z.norm(dim=1, keepdim=True) + 1e-5))
    assert torch.allclose(head_logits(z, weight, g, "cosine", 2.0), want, atol=1e-6)


def test_training_batches_are_images_with_their_split_wide_labels():
    labels = torch.arange(12).repeat_interleave(3)
    images = labels.to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 4, 4).contiguous()
    sampler = EpisodeSampler(ImageSplit(images, labels, [str(i) for i in range(12)]), 5, 1, 1,
                             (0.0,), (1.0,))
    algo = Baseline(Conv4(1, 4, hidden=4), ways=5, num_classes=12)
    batch = algo.training_batch(sampler, 64)
    assert batch.support_x.shape == (64, 1, 1, 4, 4) and batch.query_x.shape[1] == 0
    assert torch.equal(batch.support_x[:, 0, 0, 0, 0].long(), batch.support_y[:, 0])
    assert len(batch.support_y.unique()) > 5  # global labels, not episode labels 0..ways-1
    with pytest.raises(ConfigError, match="algo.num_classes=8 but the training split has 12"):
        Baseline(Conv4(1, 4, hidden=4), ways=5, num_classes=8).training_batch(sampler, 4)


@pytest.mark.parametrize("algorithm", ["baseline", "baseline_pp"])
def test_pretraining_beats_the_untrained_backbone_on_identical_episodes(tmp_path, algorithm):
    cfg = compose_cfg(*FAST, f"algorithm={algorithm}", "dataset.classes=[40,5,5]",
                      "dataset.image_size=16", "backbone.hidden=16", "trainer.iterations=150",
                      "trainer.meta_batch_size=32", "trainer.eval_every=150",
                      "trainer.test_episodes=30", "trainer.eval_batch_size=15", "task.query=5",
                      "optimizer.lr=0.003")
    seed_everything(cfg.seed)
    data, untrained = build(cfg, torch.device("cpu"))
    assert untrained.num_classes == 40  # null = the training split's classes
    tc = cfg.trainer
    before = evaluate(untrained, samplers(cfg, data, torch.device("cpu"))["test"],
                      tc.test_episodes, tc.eval_batch_size, tc.eval_seed)
    after = train(cfg, tmp_path)
    assert after["test_acc"] > before["acc"] + 0.08, (before["acc"], after["test_acc"])


@pytest.mark.parametrize("name, algo, shots, split, domains", [
    ("crossdomain_mini_to_cub_5w1s", "Baseline", 1, None, ["cub"]),
    ("crossdomain_mini_to_cub_5w5s", "Baseline", 5, None, ["cub"]),
    ("omniglot_lake_maml_5w1s", "MAML", 1, "lake", None),
    ("omniglot_lake_protonet_5w1s", "ProtoNet", 1, "lake", None),
    ("omniglot_lake_baseline_pp_5w1s", "Baseline", 1, "lake", None),
])
def test_cross_domain_presets_compose_and_build(name, algo, shots, split, domains):
    cfg = compose_cfg(f"experiment={name}", f"paths.data_dir={DATA_DIR}")
    assert cfg.algo._target_.endswith(f".{algo}") and (cfg.task.ways, cfg.task.shots) == (5, shots)
    assert cfg.dataset.get("split") == split or split is None
    assert (list(cfg.eval.datasets) if cfg.eval.datasets else None) == domains
    if name == "omniglot_lake_baseline_pp_5w1s":
        assert cfg.algo.head == "cosine"
    if name == "omniglot_lake_baseline_pp_5w1s" and has_omniglot():  # one build: Lake data is big
        data, learner = build(cfg, torch.device("cpu"))
        batch = learner.training_batch(samplers(cfg, data, torch.device("cpu"))["train"], 2)
        assert len(batch) == 2


def test_the_loop_trains_on_the_batches_the_learner_asks_for(tmp_path):
    # through training_batch: a head smaller than the training classes is refused at step 1
    cfg = compose_cfg(*FAST, "algorithm=baseline", "algo.num_classes=3")
    with pytest.raises(ConfigError, match="algo.num_classes=3 but the training split has 64"):
        train(cfg, tmp_path)
