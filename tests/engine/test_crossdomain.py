"""Cross-domain scoring: a run scored on other datasets, mapped onto its training images."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from metalearn import evaluate as script
from metalearn.data.readers import adapt_images
from metalearn.engine.evaluation import check_domains, cross_domains
from metalearn.engine.loop import train
from metalearn.errors import ConfigError
from tests.conftest import FAST, ROOT, compose_cfg


SMALL = [*FAST, "backbone.hidden=8", "task.query=3"]


def test_gray_becomes_rgb_by_repetition_and_rgb_becomes_gray_as_pil_luminance():
    g = torch.Generator().manual_seed(0)
    rgb = torch.randint(0, 256, (4, 3, 10, 10), generator=g, dtype=torch.uint8)
    gray = adapt_images(rgb, (1, 10, 10))
    pil = [np.asarray(Image.fromarray(im.permute(1, 2, 0).numpy()).convert("L")) for im in rgb]
    assert gray.shape == (4, 1, 10, 10)
    assert (gray[:, 0].int() - torch.from_numpy(np.stack(pil)).int()).abs().max() <= 1
    back = adapt_images(gray, (3, 6, 6))
    assert back.shape == (4, 3, 6, 6) and back.dtype == torch.uint8
    assert torch.equal(back[:, 0], back[:, 1]) and torch.equal(back[:, 0], back[:, 2])
    with pytest.raises(ConfigError, match="only gray <-> RGB"):
        adapt_images(torch.zeros(1, 2, 4, 4, dtype=torch.uint8), (3, 4, 4))


def test_domains_resolve_by_name_with_overrides_or_as_full_configs():
    cfg = compose_cfg(*FAST, "paths.data_dir=/somewhere")
    got = cross_domains(cfg, {"cub": {}, "imagefolder": {"path": "/photos"},
                              "mine": {"_target_": "metalearn.data.synthetic.load_synthetic"}})
    assert got["cub"].root == "/somewhere" and got["cub"]._target_.endswith("load_cub")
    assert got["imagefolder"].path == "/photos" and got["imagefolder"].image_size == 84
    assert dict(got["mine"]) == {"_target_": "metalearn.data.synthetic.load_synthetic"}
    assert list(cross_domains(compose_cfg(*FAST, "eval.datasets=[cub,synthetic]"))) == ["cub", "synthetic"]
    with pytest.raises(ConfigError, match="no dataset config named 'nope'"):
        cross_domains(cfg, ["nope"])


def test_a_wrong_domain_fails_before_training_not_after(tmp_path):
    with pytest.raises(ConfigError, match="no dataset config named 'digts'"):
        train(compose_cfg(*FAST, "eval.datasets=[digts]"), tmp_path)
    assert not (tmp_path / "last.pt").exists() and not (tmp_path / "config.yaml").exists()


def test_a_domain_named_like_a_multisource_source_is_refused():
    cfg = compose_cfg("dataset=multisource", "eval.datasets=[omniglot]")
    with pytest.raises(ConfigError, match="'omniglot' is also a source of this multi-source run"):
        check_domains(cfg)
    check_domains(compose_cfg("dataset=multisource", "eval.datasets={lake:{_target_: x}}"))
    # the evaluation app scores one domain at a time: a source's name is no clash there
    assert list(cross_domains(cfg, ["omniglot"])) == ["omniglot"]


@pytest.mark.parametrize("train_on, other, other_shape", [
    # a gray 28 px run scored on 3-channel 20 px images, and an RGB 20 px run on gray 28 px
    (["dataset.channels=1"], {"channels": 3, "image_size": 20, "seed": 5}, (3, 20, 20)),
    (["dataset.channels=3", "dataset.image_size=20"], {}, (1, 28, 28)),
])
def test_a_run_is_scored_on_another_domain_at_the_end_and_by_the_evaluate_script(
        tmp_path, train_on, other, other_shape):
    inner = ",".join(f"{k}:{v}" for k, v in other.items())
    given = f"eval.datasets={{synthetic:{{{inner}}}}}" if other else "eval.datasets=[synthetic]"
    cfg = compose_cfg(*SMALL, *train_on, given)
    results = train(cfg, tmp_path)
    for key in ("test/synthetic/acc", "test/synthetic/acc_ci95", "test/synthetic/loss"):
        assert 0 <= results[key] < 10
    assert json.loads((tmp_path / "results.json").read_text())["test/synthetic/acc"] == results["test/synthetic/acc"]
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("test/synthetic/acc") == results["test/synthetic/acc"] for r in logged)
    # the other domain is another task set: not the run's own test number
    assert results["test/synthetic/acc"] != results["test_acc"]
    # beside it, the references on the same episodes (eval.references)
    for ref in ("pixels", "untrained"):
        assert 0 <= results[f"test/synthetic/{ref}/acc"] <= 1
        assert results[f"test/synthetic/{ref}/acc"] != results["test/synthetic/acc"]
    # the evaluation app on every class of the domain (eval.split=all, the training default)
    out = script.run([f"run_dir={tmp_path}", "dataset=synthetic", "split=all",
                      *[f"dataset.{k}={v}" for k, v in other.items()]])
    assert out["acc"] == pytest.approx(results["test/synthetic/acc"], abs=1e-12)
    assert out["acc_ci95"] == pytest.approx(results["test/synthetic/acc_ci95"], abs=1e-12)
    assert out["references"] == {r: {m: pytest.approx(results[f"test/synthetic/{r}/{m}"], abs=1e-12)
                                     for m in ("acc", "acc_ci95")} for r in ("pixels", "untrained")}
    assert len(list(tmp_path.glob("eval-all-synthetic-*-5w1s3q-6ep-best.json"))) == 1
    # the run's own dataset as a "domain" is the run's own test, episode for episode
    own = script.run([f"run_dir={tmp_path}", "dataset=synthetic", *train_on])
    assert own["acc"] == pytest.approx(results["test_acc"], abs=1e-12)
    # what the model saw was mapped: the domain's own shape is other_shape
    domain = cross_domains(cfg)["synthetic"]
    assert (domain.get("channels", 1), domain.get("image_size", 28)) == other_shape[:2]


def test_the_pixel_reference_is_nearest_class_mean_on_standardised_pixels():
    """Checked against numpy, episode by episode, on uint8 episodes of a real-shaped split."""
    from metalearn.data.episodes import EpisodeSampler, Preprocess
    from metalearn.data.synthetic import load_synthetic
    from metalearn.engine.evaluation import evaluate, reference_learners

    data = load_synthetic(classes=(8, 4, 10), image_size=12, signal_size=6, noise=0.3)
    cfg = compose_cfg(*SMALL, "dataset.image_size=12")
    pixels = reference_learners(["pixels"], cfg, data, torch.device("cpu"))["pixels"]
    sampler = EpisodeSampler(data.test, 5, 2, 3, data.mean, data.std, seed=1)
    res = evaluate(pixels, sampler, 8, 4, seed=3)
    sampler.generator.manual_seed(3)
    accs, losses = [], []
    for _ in range(2):  # the same two batches of 4 episodes
        b = sampler.sample(4)
        for t in range(4):
            def z(x):
                x = x.reshape(len(x), -1).numpy().astype(np.float64)
                return (x - x.mean(1, keepdims=True)) / x.std(1, ddof=1, keepdims=True)
            s, q = z(b.support_x[t]), z(b.query_x[t])
            sy, qy = b.support_y[t].numpy(), b.query_y[t].numpy()
            means = np.stack([s[sy == c].mean(0) for c in range(5)])
            logits = -((q[:, None] - means[None]) ** 2).sum(-1)
            accs.append((logits.argmax(1) == qy).mean())
            top = logits.max(1, keepdims=True)
            logp = logits - top - np.log(np.exp(logits - top).sum(1, keepdims=True))
            losses.append(-logp[np.arange(len(qy)), qy].mean())
    assert res["acc"] == pytest.approx(np.mean(accs), abs=1e-6)
    assert res["loss"] == pytest.approx(np.mean(losses), rel=1e-4)
    assert 0.3 < res["acc"] < 0.95  # above chance (0.2), and not every episode solved


def test_the_untrained_reference_is_seeded_and_leaves_the_callers_random_stream_alone():
    from metalearn.data.synthetic import load_synthetic
    from metalearn.engine.evaluation import reference_learners

    data = load_synthetic(image_size=12)
    cfg = compose_cfg(*SMALL, "dataset.image_size=12")
    torch.manual_seed(123)
    a = reference_learners(["untrained"], cfg, data, torch.device("cpu"))["untrained"]
    after = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), after)  # the stream went on as if nothing was built
    b = reference_learners(["untrained"], cfg, data, torch.device("cpu"))["untrained"]
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(ConfigError, match="unknown reference 'pixel'"):
        reference_learners(["pixel"], cfg, data, torch.device("cpu"))


def test_split_all_scores_every_class_of_a_domain():
    """A 10-class domain: its test split alone has 2 classes, split=all has all 10."""
    from metalearn.data.synthetic import load_synthetic
    from metalearn.engine.evaluation import evaluate_domains, pooled

    train_data = load_synthetic(image_size=12)
    domain = load_synthetic(classes=(6, 2, 2), image_size=12, seed=4)
    whole = pooled(domain, "d")
    assert whole.num_classes == 10 and whole.images.shape[0] == 200
    assert torch.equal(whole.images, torch.cat([s.images for s in domain.splits().values()]))
    assert whole.counts.tolist() == [20] * 10
    cfg = compose_cfg(*SMALL, "dataset.image_size=12", "task.ways=10")
    from metalearn import build
    algo = build.learner(compose_cfg(*SMALL, "dataset.image_size=12", "algorithm=protonet"),
                         1, 12, 64)
    got = evaluate_domains(algo, cfg, {"d": domain}, train_data, torch.device("cpu"),
                           split="all", references=["pixels"], episodes=4)
    assert set(got) == {"test/d/acc", "test/d/acc_ci95", "test/d/loss", "test/d/pixels/acc",
                        "test/d/pixels/acc_ci95"}
    with pytest.raises(Exception, match="10"):  # 10 ways from the 2 test classes: refused
        evaluate_domains(algo, cfg, {"d": domain}, train_data, torch.device("cpu"),
                         split="test", episodes=4)
    with pytest.raises(ConfigError, match="split='train'"):
        evaluate_domains(algo, cfg, {"d": domain}, train_data, torch.device("cpu"),
                         split="train", episodes=4)
