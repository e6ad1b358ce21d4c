"""The inference API and `metalearn-predict`: every algorithm adapts and predicts, whatever
the query batching and the image type."""
import csv

import pytest
import torch
from hydra.utils import instantiate
from torchvision.transforms.functional import to_pil_image

from metalearn.engine import checkpoint
from metalearn.engine.loop import train
from metalearn.errors import DataError
from metalearn.inference import FewShotModel, load, main, preprocessing
from tests.algorithms.test_learners import ALGORITHMS
from tests.conftest import FAST, compose_cfg

SIZE = 12
LABELS = ["cat", "dog", "emu", "fox", "gnu"]  # 5-way, as the configs' task.ways


def synthetic():
    return instantiate(compose_cfg("dataset=synthetic", f"dataset.image_size={SIZE}",
                                   "dataset.signal_size=6").dataset)


def task(data, shots=2, query=3):
    """uint8 support images [5 * shots, 1, S, S] with string labels, and query images."""
    x = data.test.images.view(-1, 20, 1, SIZE, SIZE)[:5]
    support = x[:, :shots].flatten(0, 1)
    labels = [c for c in LABELS for _ in range(shots)]
    return list(support), labels, list(x[:, shots:shots + query].flatten(0, 1))


def model(algorithm, data):
    torch.manual_seed(0)
    cfg = compose_cfg("dataset=synthetic", f"algorithm={algorithm}", "backbone.hidden=8")
    backbone = instantiate(cfg.backbone, in_channels=1, image_size=SIZE)
    # transfer learners size their pre-training head by the training classes (as loop.build)
    extra = {"num_classes": data.train.num_classes} if cfg.algo.get("num_classes", 0) is None else {}
    learner = instantiate(cfg.algo, backbone=backbone, ways=5, **extra)
    if hasattr(learner, "test_adaptation_steps"):
        learner.test_adaptation_steps = 2
    return FewShotModel(learner, preprocessing(data))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_one_query_at_a_time_equals_all_at_once(algorithm):
    data = synthetic()
    support, labels, queries = task(data)
    adapted = model(algorithm, data).adapt(support, labels)
    together = adapted.predict(queries)
    alone = [adapted.predict(q) for q in queries]
    assert together.probabilities.shape == (15, 5) and together.classes == LABELS
    assert torch.allclose(together.probabilities.sum(-1), torch.ones(15))
    assert torch.allclose(together.probabilities,
                          torch.cat([p.probabilities for p in alone]), atol=1e-6)
    assert together.labels == [p.labels[0] for p in alone]
    assert set(together.labels) <= set(LABELS)
    # the support set matters: other support images give other probabilities
    other = model(algorithm, data).adapt(task(data, shots=2, query=0)[0][::-1], labels)
    assert not torch.allclose(other.predict(queries).probabilities, together.probabilities)


def test_paths_pil_images_and_tensors_give_the_same_prediction(tmp_path):
    data = synthetic()
    support, labels, queries = task(data)
    paths = []
    for i, x in enumerate(support + queries):
        paths.append(tmp_path / f"{i}.png")
        to_pil_image(x).save(paths[-1])
    m = model("protonet", data)
    n = len(support)
    want = m.adapt(support, labels).predict(queries).probabilities
    for images in (paths, [to_pil_image(x) for x in support + queries],
                   [x.float() / 255 for x in support + queries]):
        got = m.adapt(images[:n], labels).predict(images[n:]).probabilities
        assert torch.allclose(got, want, atol=1e-6)


def test_wrong_support_sets_are_refused_with_the_fix():
    data = synthetic()
    support, labels, _ = task(data)
    m = model("maml", data)
    with pytest.raises(DataError, match="give it exactly 5"):
        m.adapt(support[:6], labels[:6])  # 3 classes for a 5-way head
    with pytest.raises(DataError, match="one label per image"):
        m.adapt(support, labels[:-1])
    with pytest.raises(DataError, match="cannot read image"):
        m.adapt(["missing.png"] * 10, labels)


def test_cli_predicts_a_folder_from_a_trained_run(tmp_path, capsys):
    run = tmp_path / "run"
    train(compose_cfg(*FAST, "algorithm=protonet", f"dataset.image_size={SIZE}",
                      "dataset.signal_size=6", "backbone.hidden=8", "trainer.iterations=2"), run)
    state = checkpoint.load(run / "best.pt")
    assert state["preprocessing"] == preprocessing(synthetic())
    data = synthetic()
    support, labels, queries = task(data, query=1)
    for i, (x, label) in enumerate(zip(support, labels)):
        (tmp_path / "support" / label).mkdir(parents=True, exist_ok=True)
        to_pil_image(x).save(tmp_path / "support" / label / f"{i}.png")
    (tmp_path / "query").mkdir()
    for i, x in enumerate(queries):
        to_pil_image(x).save(tmp_path / "query" / f"q{i}.png")
    out = tmp_path / "pred.csv"
    main([str(run), str(tmp_path / "support"), str(tmp_path / "query"), "-o", str(out)])
    rows = list(csv.DictReader(out.open()))
    assert [r["path"] for r in rows] == [str(tmp_path / "query" / f"q{i}.png") for i in range(5)]
    assert all(r["label"] in LABELS for r in rows)
    for r in rows:
        probs = [float(r[c]) for c in sorted(LABELS)]
        assert sum(probs) == pytest.approx(1, abs=1e-5) and float(r[r["label"]]) == max(probs)
    # the same as the Python API on the run directory
    want = load(run).adapt(support, labels).predict(queries)
    assert [r["label"] for r in rows] == want.labels
    # a checkpoint from before preprocessing was saved: rebuilt from its dataset config
    del state["preprocessing"]
    checkpoint.save(state, tmp_path / "old.pt")
    assert load(tmp_path / "old.pt").preprocessor.prep == preprocessing(data)
    with pytest.raises(SystemExit) as e:
        main([str(run), str(tmp_path / "nowhere"), str(tmp_path / "query")])
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith("error: support folder")
