"""Streams of tasks, drawn once from a seed so every learner sees the same tasks in the same order.

A task is stored as indices only: its `ways` classes (ids in the split) and, per class, image
positions within that class (support shots first, then queries). Episodes are materialised from
the split when a learner needs them, so a buffer or checkpoint never holds images.

Domains come from class names: the part before the first "/" (Omniglot's
"<Alphabet>/<characterNN>/rotNNN", the synthetic domains' "d00/c000"), so no loader needs to
know about streams.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from metalearn.data.base import ImageSplit
from metalearn.data.episodes import Episodes
from metalearn.errors import ConfigError

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


def domains_of(split: ImageSplit) -> dict[str, list[int]]:
    """Class ids per domain, domains in sorted name order."""
    out: dict[str, list[int]] = {}
    for c, name in enumerate(split.class_names):
        if "/" not in name:
            raise ConfigError(f"the {split.name} split's class names ({name!r}, ...) carry no "
                              f"domain prefix '<domain>/...': use online/stream=iid with this "
                              f"dataset, or dataset=omniglot / dataset=synthetic_domains")
        out.setdefault(name.split("/", 1)[0], []).append(c)
    return dict(sorted(out.items()))


@dataclass
class TaskStream:
    """R tasks: classes [R, W] (split class ids), images [R, W, n] (positions within each
    class: `shots` support positions, then `query`), domain [R] (index into domain_names)."""

    classes: torch.Tensor
    images: torch.Tensor
    domain: torch.Tensor
    domain_names: list[str]
    shots: int  # support positions drawn per class (>= the task's shots: efficiency sweeps)

    def __len__(self) -> int:
        return self.classes.shape[0]

    def fingerprint(self) -> int:
        """A number that changes when any task does (checked on resume)."""
        parts = (self.classes.flatten(), self.images.flatten(), self.domain)
        w = torch.cat(parts).to(torch.int64)
        return int((w * torch.arange(1, len(w) + 1).remainder(9973).add(1)).sum())

    def episodes(self, split: ImageSplit, index: torch.Tensor | list[int], shots: int,
                 query: int) -> Episodes:
        """uint8 episodes of tasks `index`, with the first `shots` support images per class."""
        index = torch.as_tensor(index, dtype=torch.int64)
        classes, images = self.classes[index], self.images[index]
        pos = torch.cat([images[..., :shots], images[..., self.shots:self.shots + query]], -1)
        rows = split.offsets.cpu()[classes][..., None] + pos           # [B, W, shots+query]
        b, w, n = rows.shape
        x = split.images.index_select(0, rows.flatten().to(split.images.device))
        x = x.view(b, w, n, *split.images.shape[1:])
        y = torch.arange(w).view(1, w, 1).expand(b, w, n)
        return Episodes(x[:, :, :shots].flatten(1, 2), y[:, :, :shots].flatten(1),
                        x[:, :, shots:].flatten(1, 2), y[:, :, shots:].flatten(1))

    def to_json(self, split: ImageSplit) -> dict:
        return {"domains": self.domain_names,
                "tasks": [{"round": r + 1, "domain": self.domain_names[int(d)],
                           "classes": [split.class_names[c] for c in cls.tolist()]}
                          for r, (cls, d) in enumerate(zip(self.classes, self.domain))]}


def _draw(split: ImageSplit, pools: list[torch.Tensor], domain_of_task: list[int], ways: int,
          per_class: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    classes, images = [], []
    counts = split.counts.cpu()
    for d in domain_of_task:
        pool = pools[d]
        cls = pool[torch.randperm(len(pool), generator=g)[:ways]]
        classes.append(cls)
        images.append(torch.stack([torch.randperm(int(counts[c]), generator=g)[:per_class]
                                   for c in cls.tolist()]))
    return torch.stack(classes), torch.stack(images)


def _check(split: ImageSplit, pools: dict[str, list[int]], ways: int, per_class: int) -> None:
    small = min(pools, key=lambda d: len(pools[d]))
    if ways > len(pools[small]):
        raise ConfigError(f"task.ways={ways} but domain {small!r} of the {split.name} split has "
                          f"only {len(pools[small])} classes: lower task.ways or use fewer, "
                          f"larger domains (online.stream.domains)")
    least = int(split.counts.min())
    if per_class > least:
        raise ConfigError(f"a stream task needs {per_class} images per class (support shots incl. "
                          f"online.efficiency.max_shots, plus task.query) but the {split.name} "
                          f"split has classes with {least}: lower them")


class IIDStream:
    """Stationary: `rounds` tasks drawn i.i.d. from one split."""

    def __init__(self, rounds: int = 100, split: str = "train", seed: int | None = None) -> None:
        if rounds < 1:
            raise ConfigError(f"online.stream.rounds={rounds}: a stream needs at least 1 round")
        if split not in SPLITS:
            raise ConfigError(f"online.stream.split={split!r}: choose one of {', '.join(SPLITS)}")
        self.rounds, self.split, self.seed = rounds, split, seed

    def draw(self, split: ImageSplit, ways: int, shots: int, query: int, seed: int) -> TaskStream:
        pools = {"all": list(range(split.num_classes))}
        _check(split, pools, ways, shots + query)
        g = torch.Generator().manual_seed(self.seed if self.seed is not None else seed)
        cls, img = _draw(split, [torch.tensor(pools["all"])], [0] * self.rounds, ways,
                         shots + query, g)
        return TaskStream(cls, img, torch.zeros(self.rounds, dtype=torch.int64), ["all"], shots)


class DomainStream:
    """Non-stationary: domains (Omniglot alphabets) one after another in a seeded order,
    `tasks_per_domain` tasks each, every task within one domain."""

    def __init__(self, tasks_per_domain: int = 10, domains: int | None = None,
                 split: str = "test", seed: int | None = None) -> None:
        if tasks_per_domain < 1:
            raise ConfigError(f"online.stream.tasks_per_domain={tasks_per_domain}: must be >= 1")
        if domains is not None and domains < 1:
            raise ConfigError(f"online.stream.domains={domains}: must be >= 1 (or null = all)")
        if split not in SPLITS:
            raise ConfigError(f"online.stream.split={split!r}: choose one of {', '.join(SPLITS)}")
        self.tasks_per_domain, self.domains, self.split, self.seed = \
            tasks_per_domain, domains, split, seed

    def draw(self, split: ImageSplit, ways: int, shots: int, query: int, seed: int) -> TaskStream:
        every = domains_of(split)
        # a domain with fewer classes than ways cannot give a task (Omniglot's small alphabets
        # keep only a few characters in each split): left out of the order, and listed
        pools = {d: c for d, c in every.items() if len(c) >= ways}
        self.left_out = sorted(set(every) - set(pools))
        if self.left_out:
            log.warning("online stream: %d domains of the %s split have fewer than %d classes "
                        "and are left out: %s", len(self.left_out), split.name, ways,
                        ", ".join(self.left_out))
        wanted = self.domains or len(every)
        if not pools or (self.domains is not None and self.domains > len(pools)):
            raise ConfigError(f"online.stream.domains={wanted} but only {len(pools)} domains of "
                              f"the {split.name} split have task.ways={ways} classes or more: "
                              f"lower online.stream.domains or task.ways")
        g = torch.Generator().manual_seed(self.seed if self.seed is not None else seed)
        names = list(pools)
        order = [names[i] for i in torch.randperm(len(names), generator=g).tolist()]
        order = order[: self.domains or len(order)]
        chosen = {d: pools[d] for d in order}
        _check(split, chosen, ways, shots + query)
        per_task = [i for i in range(len(order)) for _ in range(self.tasks_per_domain)]
        cls, img = _draw(split, [torch.tensor(chosen[d]) for d in order], per_task, ways,
                         shots + query, g)
        return TaskStream(cls, img, torch.tensor(per_task), order, shots)

    def probes(self, stream: TaskStream, split: ImageSplit, first: int, tasks: int,
               ways: int, seed: int) -> TaskStream:
        """`tasks` fresh tasks of each of the stream's first `first` domains (forgetting)."""
        pools = domains_of(split)
        first = min(first, len(stream.domain_names))
        g = torch.Generator().manual_seed(seed)
        per_task = [i for i in range(first) for _ in range(tasks)]
        per_class = stream.images.shape[-1]
        cls, img = _draw(split, [torch.tensor(pools[d]) for d in stream.domain_names[:first]],
                         per_task, ways, per_class, g)
        return TaskStream(cls, img, torch.tensor(per_task), stream.domain_names[:first],
                          stream.shots)
