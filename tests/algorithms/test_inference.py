"""The inference API and `metalearn-predict`: every algorithm adapts and predicts, whatever
the query batching and the image type."""
import contextlib
import csv
import os
import signal
import subprocess
import sys

import pytest
import torch
from hydra.utils import instantiate
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor, to_pil_image

from metalearn import build, inference
from metalearn import checkpoint
from metalearn.engine.loop import train
from metalearn.errors import DataError
from metalearn.inference import FewShotModel, load, main
from tests.algorithms.test_learners import ALGORITHMS
from tests.conftest import FAST, ROOT, compose_cfg

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
    learner = build.learner(cfg, 1, SIZE, data.train.num_classes)
    if hasattr(learner, "test_adaptation_steps"):
        learner.test_adaptation_steps = 2
    return FewShotModel(learner, data.preprocessing())


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


@pytest.mark.parametrize("algorithm", ["baseline", "baseline_pp"])
def test_a_saved_transfer_run_predicts(tmp_path, algorithm):
    """`algo.num_classes: null` (the training classes) is resolved from the checkpoint, as in
    training, also for a checkpoint saved before the class count was."""
    run = tmp_path / "run"
    train(compose_cfg(*FAST, f"algorithm={algorithm}", f"dataset.image_size={SIZE}",
                      "dataset.signal_size=6", "backbone.hidden=8", "trainer.iterations=2",
                      "algo.finetune_epochs=2"), run)
    data = synthetic()
    support, labels, queries = task(data)
    want = load(run).adapt(support, labels).predict(queries)
    assert want.probabilities.shape == (15, 5)
    state = checkpoint.load(run / "best.pt")
    assert state["preprocessing"]["train_classes"] == data.train.num_classes
    del state["preprocessing"]["train_classes"]
    checkpoint.save(state, tmp_path / "old.pt")
    assert torch.equal(load(tmp_path / "old.pt").adapt(support, labels).predict(queries)
                       .probabilities, want.probabilities)


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
    assert state["preprocessing"] == synthetic().preprocessing()
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
    assert load(tmp_path / "old.pt").preprocessor.prep == data.preprocessing()
    with pytest.raises(SystemExit) as e:
        main([str(run), str(tmp_path / "nowhere"), str(tmp_path / "query")])
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith("error: support folder")


def test_numpy_arrays_and_1bit_images_give_the_same_prediction():
    """Each library's layout and dtype: numpy [H, W] / [H, W, C] uint8 or float, and the bool
    tensor `pil_to_tensor` makes of a 1-bit (Omniglot) PNG."""
    data = synthetic()
    support, labels, queries = task(data)
    m = model("protonet", data)
    n = len(support)
    images = support + queries
    want = m.adapt(support, labels).predict(queries).probabilities
    for arrays in ([x[0].numpy() for x in images], [x.permute(1, 2, 0).numpy() for x in images],
                   [x[0].numpy() / 255 for x in images],
                   [x[0].numpy().astype("float32") / 255 for x in images]):
        got = m.adapt(arrays[:n], labels).predict(arrays[n:]).probabilities
        assert torch.allclose(got, want, atol=1e-6)
    # 1-bit: PIL mode "1", its bool tensor and the same pixels as uint8 0/255 agree
    bits = [(x[0] > 127).numpy() for x in images]
    one_bit = [Image.fromarray(b) for b in bits]
    assert one_bit[0].mode == "1"
    want = m.adapt([torch.from_numpy(b).to(torch.uint8)[None] * 255 for b in bits[:n]],
                   labels).predict([torch.from_numpy(b).to(torch.uint8)[None] * 255
                                    for b in bits[n:]]).probabilities
    for imgs in (one_bit, [pil_to_tensor(im) for im in one_bit], bits):
        assert torch.allclose(m.adapt(imgs[:n], labels).predict(imgs[n:]).probabilities, want)
    assert pil_to_tensor(one_bit[0]).dtype == torch.bool


def test_already_normalised_floats_are_refused_in_one_line():
    data = synthetic()
    support, labels, _ = task(data)
    m = model("protonet", data)
    mean, std = data.mean[0], data.std[0]
    normalised = [(x.float() / 255 - mean) / std for x in support]
    for images in (normalised, [x[0].numpy() for x in normalised]):
        with pytest.raises(DataError, match=r"taken as pixels in \[0, 1\].*before normalisation"
                           ) as e:
            m.adapt(images, labels)
        assert "\n" not in str(e.value)
    with pytest.raises(DataError, match="shape"):
        m.adapt([torch.zeros(2, 1, SIZE, SIZE)] * 10, labels)


def test_queries_are_classified_in_batches_with_the_unbatched_result(monkeypatch):
    """Bounded memory: at most batch_size queries per forward pass; the batching changes no
    label and the probabilities only by float round-off."""
    data = synthetic()
    support, labels, queries = task(data, query=5)  # 25 queries
    adapted = model("maml", data).adapt(support, labels)
    sizes = []
    classify = adapted.classify
    adapted.classify = lambda x: (sizes.append(len(x)), classify(x))[1]
    whole = adapted.predict(queries, batch_size=len(queries))
    assert sizes == [25]
    sizes.clear()
    batched = adapted.predict(queries, batch_size=4)
    assert sizes == [4] * 6 + [1]
    assert batched.labels == whole.labels
    assert torch.allclose(batched.probabilities, whole.probabilities, atol=1e-6)
    sizes.clear()
    adapted.predict(queries * 20)  # 500 queries, the default batch size
    assert max(sizes) == inference.BATCH_SIZE < 500
    # the command line passes its --batch-size through
    seen = {}
    monkeypatch.setattr(inference, "predict_folders",
                        lambda *a: seen.setdefault("args", a) and ([], whole))
    main(["run", "support", "query", "--batch-size", "7", "-o", "/dev/null"])
    assert seen["args"][-1] == 7


@contextlib.contextmanager
def _no_hang(seconds: int = 60):
    """Opening a FIFO blocks: a regression fails the test instead of hanging the suite."""
    def hung(*_):
        raise TimeoutError("reading a FIFO blocked")
    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_unreadable_queries_are_one_line_never_a_hang_or_a_bomb(tmp_path, monkeypatch):
    data = synthetic()
    support, labels, queries = task(data, query=1)
    adapted = model("protonet", data).adapt(support, labels)
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with _no_hang():
        with pytest.raises(DataError, match=r"pipe.png: it is not a regular file"):
            adapted.predict([fifo])
    with pytest.raises(DataError, match=r"nowhere.png: it does not exist"):
        adapted.predict([tmp_path / "nowhere.png"])
    big = tmp_path / "big.png"
    Image.new("L", (100, 100)).save(big)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # as a 20000 x 20000 image against the default
    with pytest.raises(DataError, match=r"big.png is too large to decode safely .*downscale it"):
        adapted.predict([big])


def test_cli_writes_every_row_for_a_non_utf8_name_and_skips_a_fifo(tmp_path):
    run = tmp_path / "run"
    train(compose_cfg(*FAST, "algorithm=protonet", f"dataset.image_size={SIZE}",
                      "dataset.signal_size=6", "backbone.hidden=8", "trainer.iterations=2"), run)
    support, labels, queries = task(synthetic(), query=1)
    for i, (x, label) in enumerate(zip(support, labels)):
        (tmp_path / "support" / label).mkdir(parents=True, exist_ok=True)
        to_pil_image(x).save(tmp_path / "support" / label / f"{i}.png")
    q = os.fsencode(tmp_path / "query")
    os.mkdir(q)
    names = [b"a.png", b"b\xff.png", b"c.png"]  # the middle one is not valid UTF-8
    for name, x in zip(names, queries):
        to_pil_image(x).save(os.path.join(q, name))
    os.mkfifo(os.path.join(q, b"d.png"))
    args = [str(run), str(tmp_path / "support"), str(tmp_path / "query")]
    with _no_hang():
        main([*args, "-o", str(tmp_path / "pred.csv")])
    # stdout as a strict UTF-8 stream (a pipe), where a lone surrogate used to end the CSV
    proc = subprocess.run([sys.executable, "-m", "metalearn.inference", *args],
                          capture_output=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "PYTHONIOENCODING": "utf-8", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    for text in (proc.stdout, (tmp_path / "pred.csv").read_bytes()):
        rows = text.splitlines()[1:]
        assert [r.split(b",")[0] for r in rows] == [os.path.join(q, n) for n in names]
