"""scikit-learn's digits as a dataset: every image, the 10 classes split like a folder's, ink
bright on black as Omniglot's, and usable whole as a cross-domain target."""
import pytest
import torch

from metalearn.data.digits import load_digits
from tests.conftest import FAST, compose_cfg

sklearn = pytest.importorskip("sklearn", reason="the digits extra: pip install 'metalearn[digits]'")


def test_every_image_in_ten_classes_split_by_ratio_ink_bright():
    data = load_digits()
    splits = data.splits()
    assert sum(s.images.shape[0] for s in splits.values()) == 1797
    assert [s.num_classes for s in splits.values()] == [6, 2, 2]
    names = [c for s in splits.values() for c in s.class_names]
    assert sorted(names) == [str(d) for d in range(10)]
    assert data.image_shape == (1, 28, 28)
    # 17 gray levels onto 0..255, ink bright: most pixels are dark background
    at8 = torch.cat([s.images for s in load_digits(image_size=8).splits().values()])
    assert at8.max() == 255 and (at8 < 128).float().mean() > 0.5
    assert data.mean[0] < 0.5

def test_the_config_composes_and_scores_a_run_on_all_ten_classes(tmp_path):
    from metalearn.engine.loop import train

    cfg = compose_cfg(*FAST, "backbone.hidden=8", "task.query=3", "task.ways=10",
                      "eval.datasets=[digits]", "eval.references=[pixels]")
    results = train(cfg, tmp_path)
    # 10-way episodes exist only with every class: eval.split=all, the default
    assert 0 <= results["test/digits/acc"] <= 1
    assert results["test/digits/pixels/acc"] > 0.5  # real digits: pixels alone beat chance (0.1)
