"""dataset=multisource: sources mapped onto one shape, training tasks drawn per source with the
weights and never mixed, validation and test per source, resume bit for bit, bad input refused."""
import json

import pytest
import torch
from hydra.utils import instantiate

from metalearn import checkpoint
from metalearn.data.base import FewShotDataset, ImageSplit
from metalearn.data.multisource import MultiSourceSampler, load_multisource
from metalearn.data.readers import adapt_images
from metalearn.data.synthetic import load_synthetic
from metalearn.engine.loop import train
from metalearn.errors import ConfigError, DataError, user_error
from metalearn.inference import Preprocessor
from metalearn.online.synthetic import load_synthetic_domains
from tests.conftest import FAST, compose_cfg
from tests.engine.test_runs import assert_same_state


def flat(value: int, classes=(8, 6, 6), per_class: int = 3, invert: bool = False) -> FewShotDataset:
    """1x8x8 images whose every pixel is `value` + the class index: pixels name source and class."""
    def split(n, name):
        labels = torch.arange(n).repeat_interleave(per_class)
        images = (value + labels).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 8, 8).clone()
        return ImageSplit(images, labels, [f"c{i}" for i in range(n)], name)
    return FewShotDataset(f"flat{value}", *(split(n, s) for n, s in zip(classes, ("train", "val", "test"))),
                          mean=(0.5,), std=(0.5,), invert=invert)


def test_sources_of_other_channels_and_sizes_become_one_shape():
    rgb = load_synthetic(classes=(6, 5, 5), images_per_class=4, channels=3, image_size=20)
    gray = load_synthetic_domains(domains=2, classes_per_domain=(3, 3, 3), images_per_class=4)
    for channels in (1, 3):
        data = load_multisource({"rgb": rgb, "gray": gray}, image_size=16, channels=channels)
        assert data.image_shape == (channels, 16, 16)
        for name, source in (("rgb", rgb), ("gray", gray)):
            for split in ("train", "val", "test"):
                part = data.source_split(name, split)
                assert part.class_names == [f"{name}/{c}" for c in source.splits()[split].class_names]
                assert torch.equal(part.labels, source.splits()[split].labels)
                assert torch.equal(part.images, adapt_images(source.splits()[split].images,
                                                             (channels, 16, 16)))
        assert data.train.num_classes == 6 + 6 and data.val.num_classes == 5 + 6
    gray3 = data.source_split("gray", "train").images
    assert torch.equal(gray3[:, 0], gray3[:, 1]) and torch.equal(gray3[:, 0], gray3[:, 2])


def test_normalisation_is_the_mixture_of_the_sources_by_weight():
    a, b = flat(10), flat(200)
    only_a = load_multisource({"a": a, "b": b}, weights={"b": 0}, image_size=8)
    pixels = a.train.images.double() / 255
    assert only_a.mean[0] == pytest.approx(float(pixels.mean()))
    assert only_a.std[0] == pytest.approx(float(pixels.std(unbiased=False)))
    both = load_multisource({"a": a, "b": b}, weights={"a": 1, "b": 1}, image_size=8)
    mixed = torch.cat([a.train.images, b.train.images]).double() / 255  # same size: 1:1
    assert both.mean[0] == pytest.approx(float(mixed.mean()))
    assert both.std[0] == pytest.approx(float(mixed.std(unbiased=False)))


def test_tasks_follow_the_weights_and_never_mix_sources():
    data = load_multisource({"a": flat(10), "b": flat(100), "never": flat(200)},
                            weights={"a": 3, "b": 1, "never": 0}, image_size=8)
    sampler = MultiSourceSampler(data, ways=5, shots=1, query=2, seed=0)
    episodes = sampler.sample(4000)
    x = torch.cat([episodes.support_x, episodes.query_x], 1).flatten(1).int()  # [B, pixels]
    source = x // 50  # 0: a (10..17), 2: b (100..107), 4: never
    assert (source == source[:, :1]).all(), "a task holds images of two sources"
    counts = torch.bincount(source[:, 0], minlength=5)
    assert counts[4] == 0, "a source of weight 0 was drawn"
    assert counts[0] / 4000 == pytest.approx(0.75, abs=0.03)  # 3:1, sd 0.007
    # each class of a task is distinct and its images are its own
    support = episodes.support_x.flatten(2)[..., 0].int()
    assert all(len(set(row.tolist())) == 5 for row in support[:200])


def test_pre_training_images_follow_the_weights_too():
    """Baseline's plain labelled batches (sample_images) come from the sources by weight."""
    data = load_multisource({"a": flat(10, per_class=2), "b": flat(100, per_class=9),
                             "never": flat(200)}, weights={"a": 3, "b": 1, "never": 0},
                            image_size=8)
    images, labels = MultiSourceSampler(data, ways=5, shots=1, query=1).sample_images(8000)
    value = images.flatten(1)[:, 0].int()
    source = value // 50
    assert torch.bincount(source, minlength=5)[4] == 0
    assert (source == 0).float().mean() == pytest.approx(0.75, abs=0.02)  # 3:1, not 16:72 images
    assert set(value[source == 2].tolist()) == set(range(100, 108))  # every image of b drawn
    # the labels are the images' own (pixel value = source offset + class)
    offset = torch.where(source == 0, 10, 100 - 8)
    assert torch.equal(labels, value - offset)


def run_cfg(*extra):
    sources = ["dataset=multisource", "~dataset@dataset.sources.omniglot",
               "~dataset@dataset.sources.imagefolder", "+dataset@dataset.sources.syn=synthetic",
               "+dataset@dataset.sources.dom=synthetic_domains", "dataset.sources.syn.channels=3",
               "dataset.sources.syn.image_size=20", "dataset.image_size=16",
               "dataset.sources.dom.classes_per_domain=[4,2,2]", "dataset.weights={syn:3}"]
    fast = [o for o in FAST if not o.startswith(("dataset=", "trainer.iterations"))]
    return compose_cfg(*sources, *fast, "task.shots=1", "algo.test_adaptation_steps=1",
                       "trainer.log_every=1", *extra)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    run = tmp_path_factory.mktemp("multisource") / "run"
    return run, train(run_cfg("trainer.iterations=6"), run)


def test_a_run_validates_and_tests_each_source_and_averages(straight):
    run, results = straight
    vals = [m for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if "val/acc" in m]
    assert [m["step"] for m in vals] == [2, 4, 6]
    for m in vals:
        assert m["val/acc"] == pytest.approx((m["val/syn/acc"] + m["val/dom/acc"]) / 2)
        assert {"val/syn/acc_ci95", "val/dom/acc_ci95"} <= m.keys()
    assert results["best_val_acc"] == max(m["val/acc"] for m in vals)
    saved = json.loads((run / "results.json").read_text())
    assert saved["test_acc"] == pytest.approx((saved["test/syn/acc"] + saved["test/dom/acc"]) / 2)
    assert {"test/syn/acc_ci95", "test/dom/acc_ci95"} <= saved.keys()
    assert set(checkpoint.load(run / "last.pt")["rng"][0]["generators"]) >= {"train"}

    from metalearn.evaluate import run as evaluate  # the evaluation app reproduces the test
    again = evaluate([f"run_dir={run}", "device=cpu", f"output_dir={run.parent / 'eval'}"])
    assert again["acc"] == saved["test_acc"]
    assert again["test/syn/acc"] == saved["test/syn/acc"]


def test_a_stopped_run_resumes_bit_identically(straight, tmp_path):
    run, _ = straight
    train(run_cfg("trainer.iterations=3"), tmp_path / "run")
    train(run_cfg("trainer.iterations=6", "resume=true"), tmp_path / "run")
    resumed = checkpoint.load(tmp_path / "run" / "last.pt")
    reference = checkpoint.load(run / "last.pt")
    for key in ("model", "optimizer", "rng", "iteration", "best_val_acc", "best_iteration"):
        assert_same_state(resumed[key], reference[key], key)

    def train_lines(r):
        return [m for m in map(json.loads, (r / "metrics.jsonl").read_text().splitlines())
                if "train/loss" in m and m["step"] > 3]
    assert train_lines(tmp_path / "run") == train_lines(run)


@pytest.mark.parametrize("kwargs, message", [
    ({"sources": {}}, "dataset.sources is empty"),
    ({"weights": {"cub": 1}}, r"dataset.weights.cub: no source of that name \(sources: a, b\)"),
    ({"weights": {"a": -1}}, r"dataset.weights.a=-1: expected a number >= 0"),
    ({"weights": {"a": 0, "b": 0}}, "every source weighs 0"),
    ({"sources": {"a b": None}}, "source name 'a b' must be"),
    ({"sources": {"a": {"path": "x"}}}, "dataset.sources.a: expected a dataset config with a _target_"),
])
def test_bad_input_is_one_clear_error(kwargs, message):
    args = {"sources": {"a": flat(10), "b": flat(100)}, "image_size": 8, **kwargs}
    with pytest.raises(ConfigError, match=message) as e:
        load_multisource(**args)
    assert "\n" not in str(e.value)


def test_no_sources_left_on_the_command_line_is_a_config_error():
    cfg = compose_cfg("dataset=multisource", "~dataset@dataset.sources.omniglot",
                      "~dataset@dataset.sources.imagefolder")
    with pytest.raises(Exception) as e:
        instantiate(cfg.dataset)
    assert isinstance(user_error(e.value), ConfigError)
    assert "dataset.sources is empty" in str(user_error(e.value))


def test_more_ways_than_a_source_has_classes_names_the_source():
    data = load_multisource({"a": flat(10), "small": flat(100, classes=(4, 6, 6))}, image_size=8)
    with pytest.raises(ConfigError, match="source small's train split has only 4 classes"):
        MultiSourceSampler(data, ways=5, shots=1, query=1)
    zero = load_multisource({"a": flat(10), "small": flat(100, classes=(4, 6, 6))},
                            weights={"small": 0}, image_size=8)
    MultiSourceSampler(zero, ways=5, shots=1, query=1)  # never drawn for training: allowed


def test_prediction_refuses_sources_of_both_polarities():
    mixed = load_multisource({"ink": flat(10, invert=True), "photo": flat(100)}, image_size=8)
    with pytest.raises(DataError, match="both polarities.*ink"):
        Preprocessor(mixed.preprocessing())
    same = load_multisource({"ink": flat(10, invert=True), "ink2": flat(100, invert=True)},
                            image_size=8)
    prep = same.preprocessing()
    assert prep["invert"] is True and prep["sources"] == ["ink", "ink2"]
    x = Preprocessor(prep)(torch.zeros(8, 8, dtype=torch.uint8))
    assert x.shape == (1, 8, 8)
