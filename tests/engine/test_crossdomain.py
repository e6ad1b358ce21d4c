"""Cross-domain scoring: a run scored on other datasets, mapped onto its training images."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from metalearn import evaluate as script
from metalearn.engine.evaluation import adapt_images, cross_domains
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
    out = script.run([f"run_dir={tmp_path}", "dataset=synthetic",
                      *[f"dataset.{k}={v}" for k, v in other.items()]])
    assert out["acc"] == pytest.approx(results["test/synthetic/acc"], abs=1e-12)
    assert out["acc_ci95"] == pytest.approx(results["test/synthetic/acc_ci95"], abs=1e-12)
    assert len(list(tmp_path.glob("eval-test-synthetic-*-5w1s3q-6ep-best.json"))) == 1
    # the run's own dataset as a "domain" is the run's own test, episode for episode
    own = script.run([f"run_dir={tmp_path}", "dataset=synthetic", *train_on])
    assert own["acc"] == pytest.approx(results["test_acc"], abs=1e-12)
    # what the model saw was mapped: the domain's own shape is other_shape
    domain = cross_domains(cfg)["synthetic"]
    assert (domain.get("channels", 1), domain.get("image_size", 28)) == other_shape[:2]
