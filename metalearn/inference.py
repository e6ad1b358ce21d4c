"""Use a trained run on your own few-shot task: adapt to a labelled support set, classify images.

    from metalearn.inference import load
    model = load("outputs/runs/2026-11-27/10-00-00")     # a run directory or a .pt checkpoint
    task = model.adapt(["a1.png", "b1.png"], ["alpha", "beta"])  # paths, PIL images or tensors
    pred = task.predict(["q1.png", "q2.png"])            # pred.labels, pred.probabilities

Images go through the preprocessing the model was trained with (channels, size, resize filter,
Omniglot's inversion, mean/std), saved in the checkpoint as plain values. BatchNorm normalises
the queries with the support set's statistics, so a prediction does not depend on which other
queries are classified with it (README, "Prediction"). What that guarantees: the same labels
and, up to float round-off (~1e-6), the same probabilities whether queries are classified one
at a time, all together or in batches of any size; bit-identical probabilities are not promised,
since a matrix product's summation order may change with the number of rows.

The command line (`metalearn-predict RUN SUPPORT QUERY`): SUPPORT is a folder of class folders,
QUERY a folder of images; writes a CSV of path, predicted label and each class's probability.
"""
from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Hashable, Sequence, Union

import numpy as np
import torch
from hydra.utils import instantiate
from PIL import Image

from metalearn import build, safety
from metalearn.algorithms.base import Classifier, MetaLearner
from metalearn.data.readers import IMAGE_EXTENSIONS, image_files
from metalearn import checkpoint
from metalearn import threads
from metalearn.errors import ConfigError, DataError, MetalearnError

ImageLike = Union[str, Path, Image.Image, torch.Tensor, np.ndarray]
BATCH_SIZE = 256  # queries per forward pass: bounds memory (2,000 at 84x84 in one pass took 8 GB)


class Preprocessor:
    """An image -> the normalised float tensor the model was trained on.

    An image is a path, a PIL image (any mode, 1-bit included), a tensor [C, H, W] / [H, W] or
    a numpy array [H, W, C] / [H, W] (each the layout its library uses). Array and tensor values
    are pixels as in the image file: uint8 in 0..255, bool (a 1-bit image), or float in [0, 1]
    (uint8 / 255, what `to_tensor` gives). A float is never taken as already normalised: the
    model's mean/std are applied here, so values outside [0, 1] are refused rather than guessed at.
    """

    def __init__(self, prep: dict[str, Any]) -> None:
        if prep.get("invert", False) is None:  # metalearn/data/multisource.py
            raise DataError(
                f"this model trained on sources of both polarities (inverted as Omniglot's reader "
                f"does: {', '.join(prep['inverted_sources'])}; as read: the others), so an image "
                f"file's polarity is ambiguous: predict with a run whose sources agree")
        self.prep = prep
        self.mean = torch.tensor(prep["mean"]).view(-1, 1, 1)
        self.std = torch.tensor(prep["std"]).view(-1, 1, 1)

    def __call__(self, image: ImageLike) -> torch.Tensor:
        p = self.prep
        if isinstance(image, (torch.Tensor, np.ndarray)):
            image = _array_to_pil(image)
        elif not isinstance(image, Image.Image):
            image = _read(Path(image))
        size = p["image_size"]
        im = image.convert("L" if p["channels"] == 1 else "RGB")
        im = im.resize((size, size), getattr(Image.Resampling, p["resize"]))
        x = np.asarray(im, dtype=np.uint8)
        if p["invert"]:
            x = 255 - x
        x = torch.from_numpy(x.copy()).float().div(255)
        x = x[None] if x.dim() == 2 else x.permute(2, 0, 1)
        return (x - self.mean) / self.std

    def batch(self, images: Sequence[ImageLike]) -> torch.Tensor:
        if len(images) == 0:
            raise DataError("no images given")
        return torch.stack([self(im) for im in images])


def _read(path: Path) -> Image.Image:
    # A FIFO or device named *.png would block Image.open forever: only regular files are read.
    if not path.is_file():
        what = "does not exist" if not path.exists() else "is not a regular file"
        raise DataError(f"cannot read image {path}: it {what}. Pass an image file")
    try:
        with Image.open(path) as im:
            im.load()
            return im
    except Image.DecompressionBombError as e:
        raise DataError(f"image {path} is too large to decode safely ({e}): downscale it "
                        f"(few-shot models read {path.suffix} images of a few hundred pixels)") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot read image {path}: {e}. Pass an image file") from None


def _array_to_pil(image: torch.Tensor | np.ndarray) -> Image.Image:
    """A tensor [C, H, W] / [H, W] or array [H, W, C] / [H, W] of file pixels -> a PIL image."""
    kind = "tensor" if isinstance(image, torch.Tensor) else "array"
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        image = (image.permute(1, 2, 0) if image.dim() == 3 else image).numpy()
    x = np.asarray(image)
    layout = "[C, H, W] or [H, W]" if kind == "tensor" else "[H, W, C] or [H, W]"
    if x.ndim == 3 and x.shape[2] == 1:
        x = x[:, :, 0]
    if x.ndim not in (2, 3) or (x.ndim == 3 and x.shape[2] not in (3, 4)):
        raise DataError(f"an image {kind} of shape {list(np.asarray(image).shape)}: give one "
                        f"image as {layout} with 1, 3 or 4 channels")
    if x.dtype == np.bool_:  # a 1-bit image, e.g. pil_to_tensor of an Omniglot PNG
        x = x.astype(np.uint8) * 255
    elif np.issubdtype(x.dtype, np.floating):
        lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
        if not (0 <= lo and hi <= 1):  # NaN fails too
            raise DataError(f"a float image {kind} with values in [{lo:.3g}, {hi:.3g}]: floats are "
                            f"taken as pixels in [0, 1] (uint8 / 255), the model normalises them "
                            f"itself; pass the image before normalisation, or as uint8")
        x = np.rint(x * 255).astype(np.uint8)
    elif np.issubdtype(x.dtype, np.integer):
        if x.size and (x.min() < 0 or x.max() > 255):
            raise DataError(f"an integer image {kind} with values in [{x.min()}, {x.max()}]: "
                            f"give pixels in 0..255")
        x = x.astype(np.uint8)
    else:
        raise DataError(f"an image {kind} of dtype {x.dtype}: give uint8, bool or float in [0, 1]")
    return Image.fromarray(np.ascontiguousarray(x))


@dataclass
class Prediction:
    labels: list[Hashable]        # the predicted label of each query, from the support labels
    probabilities: torch.Tensor   # [Q, classes], columns in the order of `classes`
    classes: list[Hashable]


class AdaptedTask:
    """A model adapted to one support set; `predict` classifies any number of query images."""

    def __init__(self, classify: Classifier, classes: list[Hashable], prep: Preprocessor,
                 device: torch.device, dtype: torch.dtype) -> None:
        self.classify, self.classes, self.prep = classify, classes, prep
        self.device, self.dtype = device, dtype

    def predict(self, images: Sequence[ImageLike] | ImageLike,
                batch_size: int = BATCH_SIZE) -> Prediction:
        """Classify `images` in forward passes of at most `batch_size` queries (bounded
        memory). Queries are normalised with the support set's statistics, so the batching
        changes no label and a probability only by float round-off."""
        if isinstance(images, (str, Path, Image.Image)) or (
                isinstance(images, (torch.Tensor, np.ndarray)) and images.ndim <= 3):
            images = [images]
        if batch_size < 1:
            raise DataError(f"batch_size={batch_size}: give 1 or more queries per batch")
        if len(images) == 0:
            raise DataError("no images given")
        probs = torch.cat([
            self.classify(self.prep.batch(images[i:i + batch_size]).to(self.device, self.dtype))
            .softmax(-1).float().cpu() for i in range(0, len(images), batch_size)])
        return Prediction([self.classes[i] for i in probs.argmax(-1).tolist()], probs,
                          list(self.classes))


class FewShotModel:
    """A trained meta-learner with the preprocessing of its training data."""

    def __init__(self, learner: MetaLearner, prep: dict[str, Any],
                 device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.learner = learner.to(self.device).eval()
        self.dtype = next(learner.parameters()).dtype
        self.preprocessor = Preprocessor(prep)

    def adapt(self, images: Sequence[ImageLike], labels: Sequence[Hashable]) -> AdaptedTask:
        """Adapt to a support set: images with their labels (any hashable: str, int, ...)."""
        if len(images) != len(labels):
            raise DataError(f"{len(images)} support images but {len(labels)} labels: give one "
                            f"label per image")
        classes = list(dict.fromkeys(labels))  # first-appearance order
        try:
            self.learner.check_ways(len(classes))
        except ConfigError:
            raise DataError(f"this {type(self.learner).__name__} model classifies "
                            f"{self.learner.ways} classes, the support set has {len(classes)}: "
                            f"give it exactly {self.learner.ways}") from None
        x = self.preprocessor.batch(images).to(self.device, self.dtype)
        y = torch.tensor([classes.index(label) for label in labels], device=self.device)
        return AdaptedTask(self.learner.adapt(x, y), classes, self.preprocessor, self.device,
                           self.dtype)


def load(path: str | Path, device: torch.device | str = "cpu",
         name: str = "best.pt") -> FewShotModel:
    """A run directory (its `name` checkpoint) or a checkpoint file -> a FewShotModel."""
    path = Path(path)
    if path.is_dir():
        path = path / name
    state = checkpoint.load(path, "cpu")
    # the checkpoint may come from anyone: nothing but shipped (or allowed) targets is built
    cfg = safety.checked(state.get("config"), path)
    prep = state.get("preprocessing")
    if prep is None or ("train_classes" not in prep and cfg.algo.get("num_classes", 0) is None):
        prep = instantiate(cfg.dataset).preprocessing()  # saved before they were: from its data
    learner = build.learner(cfg, prep["channels"], prep["image_size"], prep.get("train_classes"))
    learner.load_state_dict(state["model"])
    return FewShotModel(learner, prep, device)


def predict_folders(run: Path, support: Path, query: Path, device: str = "cpu",
                    batch_size: int = BATCH_SIZE) -> tuple[list[Path], Prediction]:
    for what, folder in (("support", support), ("query", query)):
        if not folder.is_dir():
            raise DataError(f"{what} folder {folder} does not exist")
    images, labels = [], []
    for class_dir in sorted(p for p in support.iterdir() if p.is_dir()):
        found = image_files(class_dir)
        images += found
        labels += [class_dir.name] * len(found)
    if not images:
        raise DataError(f"{support} holds no class folders with images: make one folder per "
                        f"class, its images inside")
    queries = image_files(query)
    if not queries:
        raise DataError(f"{query} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return queries, load(run, device).adapt(images, labels).predict(queries, batch_size)


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: object) -> str:
    """A file or class name a spreadsheet would run as a formula (=HYPERLINK(...), +cmd|...)
    gets a leading ' (OWASP's advice on CSV injection): shown as text, never evaluated."""
    text = str(value)
    return f"'{text}" if text.startswith(FORMULA_START) else text


def write_csv(out: Any, queries: Sequence[Path], pred: Prediction) -> None:
    writer = csv.writer(out)
    writer.writerow(["path", "label", *(_cell(c) for c in pred.classes)])
    for path, label, probs in zip(queries, pred.labels, pred.probabilities.tolist()):
        writer.writerow([_cell(path), _cell(label), *(f"{p:.6f}" for p in probs)])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="metalearn-predict", description="Adapt a trained run to a support set of class "
        "folders and classify a folder of query images; writes CSV (path, label, one "
        "probability column per class).")
    parser.add_argument("run", type=Path, help="run directory (uses best.pt) or checkpoint file")
    parser.add_argument("support", type=Path, help="folder of class folders of images")
    parser.add_argument("query", type=Path, help="folder of images to classify")
    parser.add_argument("-o", "--output", default="-", help="CSV file (default: stdout)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--threads", default="auto", type=lambda v: v if v == "auto" else int(v),
                        help="torch CPU threads: auto (default: the cores this process may use, "
                        "or OMP_NUM_THREADS if set) or a number")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE,
                        help=f"queries per forward pass (default {BATCH_SIZE}): lower it if "
                        "memory runs out; results do not depend on it")
    args = parser.parse_args(argv)
    try:
        threads.apply(args.threads)
        queries, pred = predict_folders(args.run, args.support, args.query, args.device,
                                        args.batch_size)
    except MetalearnError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    # A file name that is not valid UTF-8 is written back as the bytes it is (surrogateescape),
    # so the path column names the very file, and the CSV is never cut off half-way.
    try:
        if args.output == "-":
            sys.stdout.reconfigure(errors="surrogateescape")
            write_csv(sys.stdout, queries, pred)
        else:
            with open(args.output, "w", newline="", errors="surrogateescape") as out:
                write_csv(out, queries, pred)
    except OSError as e:
        print(f"error: cannot write {args.output}: {e.strerror or e}; free space or choose "
              f"another --output", file=sys.stderr)
        sys.exit(74)


if __name__ == "__main__":
    main()
