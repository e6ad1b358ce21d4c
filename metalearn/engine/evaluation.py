"""Paper-style few-shot evaluation: mean accuracy over many episodes with a 95% CI, on the
run's own test split or on other datasets (cross-domain, Chen et al. 2019).

Another dataset's images are mapped onto what the model was trained on, explicitly:
- channels: gray -> RGB repeats the gray channel; RGB -> gray is the ITU-R 601-2 luminance
  0.299 R + 0.587 G + 0.114 B (what PIL's convert("L") computes); any other mismatch is refused;
- size: antialiased bilinear resize to the training image size (aspect ratio not kept, as every
  loader here already squares its images);
- normalisation: the TRAINING data's mean/std, since the first layer's weights expect inputs
  scaled that way; using the new domain's statistics would adapt to it with unlabelled test data;
- polarity is kept as is: Omniglot's strokes are bright on black, natural images are not.

A domain is scored on its test classes (`split="test"`, e.g. CUB's novel classes as Chen et al.
2019) or on all of its classes (`split="all"`, the default of `eval.split`: the run trained on
none of them, so a 10-class folder gives 10 test classes, not the 2 a ratio split leaves).
Beside each domain's score stand references on the same episodes (`eval.references`), so a
reader sees at once whether what was meta-learned helps there:
- `pixels`: nearest class mean on the raw pixels, each image standardised (zero mean, unit
  variance over its pixels): what any learner should beat;
- `untrained`: the same learner (architecture, adaptation, test-time steps) at a fresh
  initialisation from the run's seed, never trained.
"""
from __future__ import annotations

import importlib.resources
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from metalearn import build
from metalearn.algorithms.base import MetaLearner
from metalearn.algorithms.protonet import ProtoNet
from metalearn.data.base import FewShotDataset, ImageSplit
from metalearn.data.episodes import EpisodeSampler, Preprocess
from metalearn.data.readers import adapt_images
from metalearn.engine.distributed import World
from metalearn.errors import ConfigError

SPLIT_CHOICES = ("test", "val", "all")
REFERENCES = ("pixels", "untrained")


def mean_ci95(values: torch.Tensor) -> tuple[float, float]:
    """Mean and 1.96 * std / sqrt(n) (normal approximation, as in Finn 2017 / Snell 2017)."""
    v = values.double().flatten()
    if v.numel() < 2:
        return float(v.mean()), float("nan")
    return float(v.mean()), float(1.96 * v.std(unbiased=True) / math.sqrt(v.numel()))


def evaluate(algo: MetaLearner, sampler: EpisodeSampler, episodes: int, batch_size: int,
             seed: int, world: World | None = None,
             preprocess: Preprocess | None = None,
             progress: Callable[[int], None] | None = None) -> dict[str, float]:
    """Accuracy over `episodes` tasks; the same `seed` always gives the same tasks.
    `progress(done)` is called after each batch with the episodes drawn so far.

    Under torchrun each rank adapts to every world.size-th batch, but draws all of them: the
    episodes, and so the result, do not depend on the number of processes. `preprocess` turns
    the sampler's uint8 episodes into the model's input (default: the dataset's normalisation
    onto the model's device; never augmented).
    """
    world = world or World()
    if preprocess is None:
        device = next(algo.parameters(), torch.zeros(())).device  # a parameter-free reference: cpu
        preprocess = Preprocess(sampler.mean, sampler.std, device)
    sampler.generator.manual_seed(seed)
    accs, losses = torch.zeros(episodes), torch.zeros(episodes)
    was_training = algo.training
    algo.eval()
    with torch.no_grad():
        for k, start in enumerate(range(0, episodes, batch_size)):
            batch = sampler.sample(min(batch_size, episodes - start))
            if k % world.size == world.rank:
                m = algo.evaluate(preprocess(batch))
                accs[start : start + len(batch)] = m.acc.float().cpu()
                losses[start : start + len(batch)] = m.loss.float().cpu()
            if progress is not None:
                progress(start + len(batch))
    algo.train(was_training)
    # each episode was scored by exactly one rank, the others hold 0: the sum is exact
    accs, losses = world.sum(accs), world.sum(losses)
    acc, ci = mean_ci95(accs)
    return {"acc": acc, "acc_ci95": ci, "loss": float(losses.mean()), "episodes": episodes}


def evaluate_split(algo: MetaLearner, samplers: Mapping[str, EpisodeSampler], split: str,
                   episodes: int, batch_size: int, seed: int, world: World | None = None,
                   preprocess: Preprocess | None = None,
                   progress: Callable[[int], None] | None = None) -> dict[str, float]:
    """`evaluate` on `samplers[split]`; or, for a multi-source run (samplers named
    `<split>/<source>`, `MultiSourceDataset.samplers`), on each source, under
    `<split>/<source>/{acc,acc_ci95,loss}`, with their mean as `acc`: every source counts alike,
    whatever its size or training weight. `acc_ci95` is then the CI of that mean (the sources'
    episodes are independent)."""
    sources = [k for k in samplers if k.startswith(f"{split}/")]
    if not sources:
        return evaluate(algo, samplers[split], episodes, batch_size, seed, world, preprocess,
                        progress)
    out: dict[str, float] = {}
    for key in sources:
        res = evaluate(algo, samplers[key], episodes, batch_size, seed, world, preprocess)
        out.update({f"{key}/{m}": res[m] for m in ("acc", "acc_ci95", "loss")})
    n = len(sources)
    out.update(acc=sum(out[f"{k}/acc"] for k in sources) / n,
               acc_ci95=math.sqrt(sum(out[f"{k}/acc_ci95"] ** 2 for k in sources)) / n,
               loss=sum(out[f"{k}/loss"] for k in sources) / n, episodes=episodes)
    return out


def dataset_config(name: str) -> DictConfig:
    """metalearn/configs/dataset/<name>.yaml, as shipped."""
    folder = importlib.resources.files("metalearn.configs") / "dataset"
    path = folder / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))
        raise ConfigError(f"eval.datasets: no dataset config named {name!r} (choose from "
                          f"{', '.join(known)}, or give a full config with a _target_)")
    return OmegaConf.create(path.read_text())


def cross_domains(cfg: DictConfig, datasets: Any = None) -> dict[str, DictConfig]:
    """`eval.datasets` (or `datasets`) as resolved dataset configs, keyed by domain name.

    Accepts a list of dataset config names (`[cub, imagefolder]`) or a dict of domain name ->
    overrides of the config of that name (`{imagefolder: {path: /data/photos}}`) or -> a full
    dataset config with a `_target_` (any name). Interpolations such as ${paths.data_dir}
    resolve against the run's config.
    """
    if datasets is None:
        datasets = OmegaConf.select(cfg, "eval.datasets", default=None)
    if not datasets:
        return {}
    if isinstance(datasets, str):
        datasets = [datasets]
    if isinstance(datasets, (list, tuple, ListConfig)):
        datasets = {str(n): {} for n in datasets}
    out = {}
    for name, given in dict(datasets).items():
        if not str(name).replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"eval.datasets: domain name {name!r} must be letters, digits, _ "
                              f"or - (it becomes the key test/<name>/acc)")
        if not isinstance(given, (dict, DictConfig, type(None))):
            # OmegaConf.create would parse a string as YAML: nodes no check has seen
            raise ConfigError(f"eval.datasets.{name}: expected overrides or a dataset config "
                              f"(a mapping), got a {type(given).__name__}")
        given = OmegaConf.create(given or {})
        node = given if "_target_" in given else OmegaConf.merge(dataset_config(name), given)
        # resolved inside a copy of the run's config, for its ${paths...} and friends
        root = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
        root.dataset = node
        out[str(name)] = OmegaConf.create(OmegaConf.to_container(root.dataset, resolve=True))
    return out


def check_domains(cfg: DictConfig) -> None:
    """A training run's `eval.datasets`, checked before it trains: each resolves, and none is
    named like a source of a multi-source run (both would write test/<name>/acc)."""
    sources = OmegaConf.select(cfg, "dataset.sources", default=None) or {}
    for name in cross_domains(cfg):
        if name in sources:
            raise ConfigError(f"eval.datasets: {name!r} is also a source of this multi-source "
                              f"run, and both would write test/{name}/acc: give the domain "
                              f"another name, 'eval.datasets={{{name}_target: {{_target_: ...}}}}'")


class Pixels(nn.Module):
    """Images -> their pixels, each image standardised: the `pixels` reference's "embedding"."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1).float()
        return (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True).clamp_min(1e-6)


def reference_learners(names: Any, cfg: DictConfig, train_data: FewShotDataset,
                       device: torch.device,
                       wrap: Callable[[MetaLearner], MetaLearner] | None = None
                       ) -> dict[str, MetaLearner]:
    """The references named in `names` (module docstring), on `device`; `wrap` (a test-time
    adapter) is applied to the untrained learner as to the trained one."""
    out: dict[str, MetaLearner] = {}
    for name in names or ():
        if name == "pixels":
            out[name] = ProtoNet(Pixels(), cfg.task.ways)  # squared distance to class means
        elif name == "untrained":
            channels, size, _ = train_data.image_shape
            with torch.random.fork_rng(devices=[]):  # the caller's random stream is untouched
                torch.manual_seed(cfg.seed)
                out[name] = build.learner(cfg, channels, size, train_data.train.num_classes)
            out[name] = wrap(out[name]) if wrap is not None else out[name]
        else:
            raise ConfigError(f"eval.references: unknown reference {name!r} (choose from "
                              f"{', '.join(REFERENCES)})")
        out[name].to(device)
    return out


def pooled(data: FewShotDataset, name: str) -> ImageSplit:
    """Every class of every split of `data` as one split (classes are disjoint across splits)."""
    parts = list(data.splits().items())
    offsets = [0]
    for _, part in parts:
        offsets.append(offsets[-1] + part.num_classes)
    return ImageSplit(torch.cat([p.images for _, p in parts]),
                      torch.cat([p.labels + k for (_, p), k in zip(parts, offsets)]),
                      [f"{s}/{c}" for s, p in parts for c in p.class_names], name)


def result_key(split: str) -> str:
    """The prefix of evaluate_domains' keys: val for the val split, else test (a test of
    the domain's test classes or of all of them)."""
    return "val" if split == "val" else "test"


def cross_line(scores: dict[str, float], key: str, name: str, references: list[str]) -> str:
    """One log line: a domain's accuracy and its references' (evaluate_domains' keys)."""
    parts = [(name, f"{key}/{name}/")] + [(r, f"{key}/{name}/{r}/") for r in references]
    return f"{key} on {name}: " + ", ".join(
        f"{what} {100 * scores[k + 'acc']:.2f} ± {100 * scores[k + 'acc_ci95']:.2f}%"
        for what, k in parts)


def evaluate_domains(algo: MetaLearner, cfg: DictConfig, domains: Mapping[str, Any],
                     train_data: FewShotDataset, device: torch.device,
                     world: World | None = None, preprocess: Preprocess | None = None,
                     episodes: int | None = None, ways: int | None = None,
                     shots: int | None = None, query: int | None = None,
                     split: str = "test", references: Any = (),
                     progress: Callable[[int], None] | None = None,
                     wrap: Callable[[MetaLearner], MetaLearner] | None = None) -> dict[str, float]:
    """Score `algo` on the `split` of each domain (name -> dataset config or FewShotDataset),
    and each of `references` on the same episodes.

    Each domain's images are mapped to `train_data`'s shape and normalised with its statistics
    (module docstring); episodes come from `trainer.eval_seed` as for the run's own test, with
    the run's task settings unless given. Returns flat keys `<key>/<name>/{acc,acc_ci95,loss}`
    and `<key>/<name>/<reference>/{acc,acc_ci95}`, `<key>` = val for split=val, else test.
    """
    if split not in SPLIT_CHOICES:
        raise ConfigError(f"split={split!r}: choose one of {', '.join(SPLIT_CHOICES)}")
    tc, t = cfg.trainer, cfg.task
    where = device if tc.data_on_device else torch.device("cpu")
    preprocess = preprocess or Preprocess(train_data.mean, train_data.std, device)
    refs = reference_learners(references, cfg, train_data, device, wrap) if domains else {}
    key = result_key(split)
    out: dict[str, float] = {}
    for name, dataset in domains.items():
        data = dataset if isinstance(dataset, FewShotDataset) else instantiate(dataset)
        part = pooled(data, name) if split == "all" else data.splits()[split]
        mapped = ImageSplit(adapt_images(part.images, train_data.image_shape), part.labels,
                            part.class_names, f"{name} {split}")
        sampler = EpisodeSampler(mapped, ways or t.ways, shots or t.shots, query or t.query,
                                 train_data.mean, train_data.std, device=where)
        n = episodes or tc.test_episodes
        res = evaluate(algo, sampler, n, tc.eval_batch_size, tc.eval_seed, world, preprocess,
                       progress)
        out.update({f"{key}/{name}/acc": res["acc"], f"{key}/{name}/acc_ci95": res["acc_ci95"],
                    f"{key}/{name}/loss": res["loss"]})
        for ref, learner in refs.items():  # the same episodes: the same sampler seed
            r = evaluate(learner, sampler, n, tc.eval_batch_size, tc.eval_seed, world,
                         preprocess)
            out.update({f"{key}/{name}/{ref}/acc": r["acc"],
                        f"{key}/{name}/{ref}/acc_ci95": r["acc_ci95"]})
    return out
