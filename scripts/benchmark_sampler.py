"""Episode sampling speed: learn2learn's Taskset vs metalearn's EpisodeSampler, same data.

Both draw N-way tasks of (shots + query) images per class from one in-memory uint8 dataset,
mini-ImageNet sized by default (64 classes x 600 images x 3x84x84, ~0.8 GB). learn2learn's
pipeline is MetaDataset + NWays/KShots/LoadData/RemapLabels and returns uint8 images;
EpisodeSampler returns uint8 images split into support and query (normalisation happens later,
on the training device). EpisodeSampler is timed drawing 1 task per call and a meta-batch
of --batch tasks per call (how training uses it).

    python scripts/benchmark_sampler.py [--small] [--seconds 3] [--threads N] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable

sys.modules.setdefault("gym_notices", None)  # learn2learn imports gym, which prints a notice

import learn2learn as l2l  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import TensorDataset  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from metalearn.data.base import ImageSplit  # noqa: E402
from metalearn.data.episodes import EpisodeSampler  # noqa: E402

# (ways, shots, query): 2 and 20 images per class at 5-way, and the same at 20-way.
TASKS = [(5, 1, 1), (5, 5, 15), (20, 1, 1), (20, 5, 15)]


def make_data(classes: int, per_class: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (classes * per_class, 3, size, size), dtype=torch.uint8,
                           generator=g)
    return images, torch.arange(classes).repeat_interleave(per_class)


def rate(draw: Callable[[], int], seconds: float) -> float:
    """Tasks per second of `draw` (which returns how many tasks it drew), after a warm-up."""
    for _ in range(3):
        draw()
    tasks, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        tasks += draw()
    return tasks / elapsed


def l2l_taskset(images: torch.Tensor, labels: torch.Tensor, ways: int,
                per_class: int) -> l2l.data.Taskset:
    # Passing labels_to_indices skips MetaDataset's scan of every item: only sampling is timed.
    index = {int(c): (labels == c).nonzero().flatten().tolist() for c in labels.unique()}
    dataset = l2l.data.MetaDataset(TensorDataset(images, labels), labels_to_indices=index)
    transforms = [l2l.data.transforms.NWays(dataset, ways),
                  l2l.data.transforms.KShots(dataset, per_class),
                  l2l.data.transforms.LoadData(dataset),
                  l2l.data.transforms.RemapLabels(dataset)]
    return l2l.data.Taskset(dataset, task_transforms=transforms, num_tasks=-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true",
                        help="24 classes x 24 images x 3x32x32 instead of 64 x 600 x 3x84x84")
    parser.add_argument("--seconds", type=float, default=3.0, help="timing per measurement")
    parser.add_argument("--batch", type=int, default=32, help="tasks per EpisodeSampler call")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads for both (default: torch's choice); on a "
                             "busy machine 1 avoids thread-pool stalls on these small ops")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "benchmarks" /
                        "sampler.json")
    args = parser.parse_args()
    classes, per_class, size = (24, 24, 32) if args.small else (64, 600, 84)
    if args.threads:
        torch.set_num_threads(args.threads)

    images, labels = make_data(classes, per_class, size)
    split = ImageSplit(images, labels, [f"c{i}" for i in range(classes)], "train")
    mean, std = (0.47, 0.45, 0.41), (0.28, 0.27, 0.28)
    rows = []
    for ways, shots, query in TASKS:
        n = shots + query
        taskset = l2l_taskset(images, labels, ways, n)
        sampler = EpisodeSampler(split, ways, shots, query, mean, std, seed=0)

        def l2l_draw() -> int:
            taskset.sample()
            return 1

        def ours(b: int) -> Callable[[], int]:
            return lambda: len(sampler.sample(b))

        row = {"ways": ways, "shots": shots, "query": query, "images_per_class": n,
               "l2l_taskset": rate(l2l_draw, args.seconds),
               "episode_sampler_b1": rate(ours(1), args.seconds),
               f"episode_sampler_b{args.batch}": rate(ours(args.batch), args.seconds)}
        rows.append(row)
        print_row(row, args.batch, header=len(rows) == 1)

    result = {"data": {"classes": classes, "images_per_class": per_class,
                       "image_shape": [3, size, size], "dtype": "uint8"},
              "seconds_per_measurement": args.seconds, "batch": args.batch,
              "unit": "tasks/s", "device": "cpu", "torch_threads": torch.get_num_threads(),
              "cpu_count": os.cpu_count(), "load_average_1min": os.getloadavg()[0],
              "platform": platform.platform(),
              "torch": torch.__version__, "learn2learn": l2l.__version__, "results": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\nsaved {args.out}")


def print_row(row: dict, batch: int, header: bool) -> None:
    if header:
        print(f"{'task':>22} | {'l2l Taskset':>12} | {'ours b=1':>10} {'ratio':>6} | "
              f"{f'ours b={batch}':>11} {'ratio':>7}   (tasks/s)")
    l2l_rate, b1, bb = row["l2l_taskset"], row["episode_sampler_b1"], row[
        f"episode_sampler_b{batch}"]
    task = f"{row['ways']}-way {row['shots']}+{row['query']} ({row['images_per_class']}/cls)"
    print(f"{task:>22} | {l2l_rate:12.1f} | {b1:10.1f} {b1 / l2l_rate:5.1f}x | "
          f"{bb:11.1f} {bb / l2l_rate:6.1f}x", flush=True)


if __name__ == "__main__":
    main()
