"""Several datasets as one run's data, Meta-Dataset style (Triantafillou et al. 2020): each
training task comes from one source, drawn per task with the sources' weights; validation and
the final test score every source on its own split and average them (engine/evaluation.py,
`evaluate_split`).

How the sources become one dataset:
- shape: each source's images are mapped onto `channels` x `image_size`² by the cross-domain
  rules (`readers.adapt_images`): gray -> RGB repeats the channel, RGB -> gray is the ITU-R 601-2
  luminance, antialiased bilinear resize. A source's loader first reads its files at its own
  `image_size`: setting that to the run's makes the second resize a no-op;
- splits: a meta-split is the sources' classes side by side (named `<source>/<class>`) in one
  uint8 tensor, so a task is an index draw as for any dataset, and transfer learners (Baseline)
  pre-train on the classes of every source;
- normalisation: one mean/std for every source, the statistics of the training pixels as tasks
  draw them (each source's train-split moments, weighted by its sampling weight). Pooled, not per
  source: Meta-Dataset also scales every source alike; a model that expects each source
  standardised by its own statistics could not read an image whose source it is not told
  (prediction, `eval.datasets`); and the backbones' per-task batch norm standardises each task's
  features after the first layer anyway;
- polarity: as each loader gives it (Omniglot's ink is bright); prediction refuses a run whose
  sources disagree (metalearn/inference.py), as it cannot tell which an image file needs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from metalearn.data.base import SPLITS, FewShotDataset, ImageSplit
from metalearn.data.episodes import EpisodeSampler
from metalearn.data.readers import adapt_images, channel_stats
from metalearn.errors import ConfigError

Range = tuple[int, int, int, int]  # first class, end class, first image, end image


@dataclass
class MultiSourceDataset(FewShotDataset):
    """Splits that hold every source's classes; `ranges[source][split]` says where its are."""

    ranges: dict[str, dict[str, Range]] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)  # sum to 1
    inverted: list[str] = field(default_factory=list)  # sources whose loader inverted pixels

    def source_split(self, source: str, split: str) -> ImageSplit:
        """`source`'s classes of `split`, a view of the pooled images (no copy)."""
        lo, hi, a, b = self.ranges[source][split]
        part = getattr(self, split)
        return ImageSplit(part.images[a:b], part.labels[a:b] - lo, part.class_names[lo:hi],
                          f"{source} {split}")

    def samplers(self, train: tuple[int, int], test: tuple[int, int], query: int, seed: int,
                 device: torch.device | str = "cpu") -> dict[str, Any]:
        """Training tasks of one source each (`MultiSourceSampler`); validation and test per
        source, "val/<source>" and "test/<source>"."""
        out: dict[str, EpisodeSampler] = {"train": MultiSourceSampler(
            self, *train, query, seed=seed, device=device)}
        out.update({f"{split}/{source}": EpisodeSampler(
            self.source_split(source, split), *test, query, self.mean, self.std,
            seed=seed + i, device=device)
            for i, split in enumerate(("val", "test"), 1) for source in self.ranges})
        return out

    def preprocessing(self) -> dict[str, Any]:
        out = super().preprocessing()
        out["sources"] = list(self.ranges)
        if self.inverted and len(self.inverted) < len(self.ranges):
            out["invert"] = None  # an image file's polarity is ambiguous: inference refuses
            out["inverted_sources"] = list(self.inverted)
        return out


def load_multisource(sources: dict[str, Any] | None = None,
                     weights: dict[str, float] | None = None, image_size: int = 28,
                     channels: int = 1) -> MultiSourceDataset:
    """`sources`: name -> a dataset config (a `_target_` node, built here) or a FewShotDataset.
    `weights`: name -> relative probability that a training task comes from that source (a
    source not named weighs 1; 0 = validated and tested only)."""
    if not sources:
        raise ConfigError("dataset.sources is empty: name at least one dataset, e.g. "
                          "+dataset@dataset.sources.omniglot=omniglot")
    if channels not in (1, 3):
        raise ConfigError(f"dataset.channels={channels}: choose 1 (gray) or 3 (RGB)")
    probs = _weights(list(sources), weights)
    shape = (channels, image_size, image_size)
    # per split: each source's images, labels (offset past the sources before it), class names
    parts: dict[str, tuple[list, list, list]] = {s: ([], [], []) for s in SPLITS}
    ranges: dict[str, dict[str, Range]] = {}
    moments = []
    inverted = []
    for name, node in sources.items():
        data = _load(name, node)
        if data.channels not in (1, 3):
            raise ConfigError(f"dataset.sources.{name}: {data.channels}-channel images cannot be "
                              f"mapped onto {channels} channels (only gray <-> RGB is defined)")
        if data.invert:
            inverted.append(name)
        ranges[name] = {}
        for split, part in data.splits().items():
            images, labels, names = parts[split]
            k, n = len(names), sum(x.shape[0] for x in images)
            images.append(adapt_images(part.images, shape))
            labels.append(part.labels + k)
            names += [f"{name}/{c}" for c in part.class_names]
            ranges[name][split] = (k, len(names), n, n + part.images.shape[0])
        moments.append(_moments(parts["train"][0][-1]))
        del data  # the mapped copy is all that is kept
    mean, std = _pooled(moments, [probs[n] for n in ranges])
    pooled = {s: ImageSplit(torch.cat(x), torch.cat(y), names, s)
              for s, (x, y, names) in parts.items()}
    return MultiSourceDataset("multisource", *(pooled[s] for s in SPLITS), mean, std,
                              invert=len(inverted) == len(ranges), ranges=ranges, weights=probs,
                              inverted=inverted)


def _load(name: str, node: Any) -> FewShotDataset:
    if not name.replace("_", "").replace("-", "").isalnum():
        raise ConfigError(f"dataset.sources: source name {name!r} must be letters, digits, _ or "
                          f"- (it becomes the key val/<name>/acc)")
    if isinstance(node, FewShotDataset):
        return node
    if not isinstance(node, (dict, DictConfig)) or "_target_" not in node:
        raise ConfigError(f"dataset.sources.{name}: expected a dataset config with a _target_, "
                          f"e.g. +dataset@dataset.sources.{name}=omniglot")
    data = instantiate(node)
    if not isinstance(data, FewShotDataset):
        raise ConfigError(f"dataset.sources.{name}: {node['_target_']} returned a "
                          f"{type(data).__name__}, not a FewShotDataset")
    return data


def _weights(names: list[str], weights: dict[str, float] | None) -> dict[str, float]:
    given = dict(weights or {})
    unknown = [n for n in given if n not in names]
    if unknown:
        raise ConfigError(f"dataset.weights.{unknown[0]}: no source of that name (sources: "
                          f"{', '.join(names)}): weigh one of them or add it to dataset.sources")
    for n, w in given.items():
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ConfigError(f"dataset.weights.{n}={w}: expected a number >= 0 (a relative "
                              f"probability of drawing a training task from {n})")
    raw = {n: float(given.get(n, 1.0)) for n in names}
    total = sum(raw.values())
    if total == 0:
        raise ConfigError("dataset.weights: every source weighs 0: give at least one a weight > 0")
    return {n: w / total for n, w in raw.items()}


def _moments(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and mean square of uint8 images, in [0, 1] units (float64)."""
    mean, std = (torch.tensor(v, dtype=torch.float64) for v in channel_stats(images))
    return mean, std.square() + mean.square()


def _pooled(moments: list[tuple[torch.Tensor, torch.Tensor]], probs: list[float]
            ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std of the mixture of the sources' pixels with weights `probs`."""
    mean = sum(p * m for p, (m, _) in zip(probs, moments))
    second = sum(p * q for p, (_, q) in zip(probs, moments))
    std = (second - mean.square()).clamp_min(1e-12).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


class MultiSourceSampler(EpisodeSampler):
    """Training tasks of a MultiSourceDataset: each task's source drawn with the weights, its
    classes among that source's only. The draw is tensor ops on the sampler's generator, the
    one a checkpoint saves, so a resumed run draws the same sources; no host read."""

    def __init__(self, data: MultiSourceDataset, ways: int, shots: int, query: int,
                 seed: int = 0, device: torch.device | str = "cpu") -> None:
        for name, r in data.ranges.items():
            lo, hi = r["train"][:2]
            if data.weights[name] > 0 and ways > hi - lo:
                raise ConfigError(f"task.ways={ways} but source {name}'s train split has only "
                                  f"{hi - lo} classes: lower task.ways (task.train_ways), or "
                                  f"train on other sources (dataset.weights.{name}=0)")
        super().__init__(data.train, ways, shots, query, data.mean, data.std, seed, device)
        self.bounds = torch.tensor([r["train"][:2] for r in data.ranges.values()],
                                   device=self.device)
        self.image_bounds = torch.tensor([r["train"][2:] for r in data.ranges.values()],
                                         device=self.device)
        w = torch.tensor(list(data.weights.values()), dtype=torch.float64)
        cdf = w.cumsum(0) / w.sum()
        # above every uniform draw from the last source that can be drawn on: float round-off
        # must never pick a source of weight 0
        cdf[int(w.nonzero().max()):] = 2.0
        self.cdf = cdf.to(self.device, torch.float32)

    def sources(self, batch_size: int) -> torch.Tensor:
        """The source index (in `ranges` order) of each of `batch_size` tasks."""
        u = torch.rand(batch_size, generator=self.generator, device=self.device)
        return torch.searchsorted(self.cdf, u, right=True)

    def sample_images(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """n labelled images for pre-training learners (Baseline): each image's source drawn
        with the weights, as a task's is, then an image uniformly among that source's."""
        lo, hi = self.image_bounds[self.sources(n)].unbind(-1)
        u = torch.rand(n, generator=self.generator, device=self.device, dtype=torch.float64)
        index = lo + (u * (hi - lo)).long()
        return self.split.images.index_select(0, index), self.split.labels[index]

    def classes(self, batch_size: int) -> torch.Tensor:
        lo, hi = self.bounds[self.sources(batch_size)].unbind(-1)
        keys = torch.rand(batch_size, self.split.num_classes, generator=self.generator,
                          device=self.device)
        c = torch.arange(self.split.num_classes, device=self.device)
        keys.masked_fill_((c < lo[:, None]) | (c >= hi[:, None]), 2.0)  # after every class of its source
        return keys.argsort(1)[:, :self.ways]
