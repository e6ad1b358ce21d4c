"""Meta-training speed: learn2learn's example loop vs metalearn's MAML engines, one process.

Every contender gets the same pre-sampled meta-batches (already on the device, float32) and a
copy of the same initial weights, and runs whole meta-iterations (zero_grad, forward,
backward, Adam step):
  * `l2l_example`: learn2learn's `maml_miniimagenet.py` loop: per task `clone()`, `adapt()`
    per step, query loss `.backward()` and `.item()`, gradients averaged, step;
  * `l2l`: `algo.engine=l2l` (learn2learn's wrapper, one backward per meta-batch);
  * `batched`: `algo.engine=batched` (torch.func, all tasks at once);
  * `compiled` (with `--compiled`): `algo.engine=compiled` (batched under torch.compile).
The engines step a fused Adam, as `configs/optimizer/adam.yaml` does; the example loop keeps
the per-tensor Adam of learn2learn's script.
`mamlpp_*` settings turn on MAML++'s multi-step loss, LSLR and per-step BN: learn2learn has
no example loop for those, so there the `l2l` engine is the reference for speed-ups and
gradient errors.
Then `train_iteration`: what a `train.py` iteration adds around the batched step (sampling
uint8 episodes on the device, normalising, the on-device NaN/Inf skip, a host read and a
metrics.jsonl line every 10th iteration).
`grad_rel_err` is each engine's meta-gradient relative error vs the example loop, in float64
on `--grad-tasks` tasks of the same setting.

    python scripts/benchmark.py [--device cpu|cuda] [--small] [--repeats N] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.modules.setdefault("gym_notices", None)  # learn2learn imports gym, which prints a notice

import learn2learn as l2l  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.nn.utils import get_total_norm  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from metalearn.algorithms.base import accuracy  # noqa: E402
from metalearn.algorithms.maml import MAML  # noqa: E402
from metalearn.data.base import ImageSplit  # noqa: E402
from metalearn.data.episodes import EpisodeSampler, Episodes, Preprocess  # noqa: E402
from metalearn.engine.loop import meta_step  # noqa: E402
from metalearn.models.conv4 import Conv4  # noqa: E402

# name: (channels, size, ways, shots, query, meta-batch, steps, inner lr, first order, hidden)
FULL = {
    "mini_5w1s_2nd": (3, 84, 5, 1, 15, 32, 5, 0.01, False, None),
    "mini_5w1s_1st": (3, 84, 5, 1, 15, 32, 5, 0.01, True, None),
    "omniglot_20w1s_2nd": (1, 28, 20, 1, 5, 16, 5, 0.1, False, None),
    "omniglot_20w1s_1st": (1, 28, 20, 1, 5, 16, 5, 0.1, True, None),
    # the README's main job (experiment=omniglot_5w1s_cpu): what decides the CPU default
    "omniglot_5w1s_main": (1, 28, 5, 1, 5, 8, 1, 0.4, False, None),
    "mamlpp_mini_5w1s_2nd": (3, 84, 5, 1, 15, 32, 5, 0.01, False, None),
}
SMALL = {
    "mini_5w1s_2nd": (3, 32, 5, 1, 3, 4, 2, 0.01, False, 8),
    "mini_5w1s_1st": (3, 32, 5, 1, 3, 4, 2, 0.01, True, 8),
    "omniglot_20w1s_2nd": (1, 14, 10, 1, 2, 4, 2, 0.1, False, 8),
    "omniglot_20w1s_1st": (1, 14, 10, 1, 2, 4, 2, 0.1, True, 8),
    "mamlpp_mini_5w1s_2nd": (3, 32, 5, 1, 3, 4, 2, 0.01, False, 8),
}
# The MAML++ switches of a mamlpp_* setting; MSL stays on (a benchmark never leaves iteration 1).
# mamlpp_* come last: gpu_check.sh times the whole benchmark out, and each setting is saved
# as it ends, so the settings measured before keep their numbers.
MAMLPP = dict(multi_step_loss=True, msl_iterations=10**6, lslr=True, per_step_bn=True)
# mini-ImageNet 5w1s, 5 steps, 2nd order moves ~183 MiB of activations per
# task; the H100's memory bandwidth puts the floor near 0.5 ms per task.
ROOFLINE_TASKS_PER_S = {"mini_5w1s_2nd": 2000.0}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_split(channels: int, size: int, per_class: int, device: torch.device) -> ImageSplit:
    g = torch.Generator().manual_seed(0)
    classes = 64
    images = torch.randint(0, 256, (classes * per_class, channels, size, size),
                           dtype=torch.uint8, generator=g)
    labels = torch.arange(classes).repeat_interleave(per_class)
    return ImageSplit(images, labels, [str(c) for c in range(classes)], "train").to(device)


def l2l_example_iteration(algo: MAML, batch: Episodes, opt: torch.optim.Optimizer,
                          steps: int, first_order: bool) -> float:
    """learn2learn's examples/vision/maml_miniimagenet.py, one meta-iteration."""
    opt.zero_grad()
    meta_error, meta_acc = 0.0, 0.0
    for t in range(len(batch)):
        learner = l2l.algorithms.MAML(algo.model, lr=algo.inner_lr).clone(first_order=first_order)
        for _ in range(steps):
            learner.adapt(F.cross_entropy(learner(batch.support_x[t]), batch.support_y[t]),
                          first_order=first_order)
        logits = learner(batch.query_x[t])
        error = F.cross_entropy(logits, batch.query_y[t])
        error.backward()
        meta_error += error.item()
        meta_acc += accuracy(logits, batch.query_y[t]).item()
    for p in algo.parameters():
        p.grad.data.mul_(1.0 / len(batch))
    opt.step()
    return meta_error / len(batch)


def engine_iteration(algo: MAML, batch: Episodes, opt: torch.optim.Optimizer,
                     amp: str = "none", channels_last: bool = False) -> None:
    opt.zero_grad(set_to_none=True)
    if channels_last:
        batch = Episodes(*(to_channels_last(t) for t in (batch.support_x, batch.support_y,
                                                         batch.query_x, batch.query_y)))
    meta_step(algo, batch, None, amp)
    opt.step()


def to_channels_last(t: torch.Tensor) -> torch.Tensor:
    if t.dim() != 5:
        return t
    return t.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, t.shape[:2])


def timed(run, batches: list, device: torch.device, repeats: int) -> tuple[float, float]:
    """(tasks/s, peak MiB) over `repeats` iterations after one warm-up iteration."""
    run(batches[0])
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for i in range(repeats):
        run(batches[i % len(batches)])
    sync(device)
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return len(batches[0]) * repeats / elapsed, peak


def flat_grad(algo: MAML) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in algo.parameters()])


def grad_errors(base: MAML, batch: Episodes, steps: int, first_order: bool,
                mamlpp: bool, compiled: bool = False) -> dict[str, float]:
    """Meta-gradient relative error of each engine vs the example loop (MAML++: vs the l2l
    engine), in float64."""
    batch = Episodes(batch.support_x.double(), batch.support_y, batch.query_x.double(),
                     batch.query_y)
    ref = copy.deepcopy(base).double()
    if mamlpp:
        ref.engine = "l2l"
        ref(batch).loss.sum().backward()
        want = flat_grad(ref)
    else:
        l2l_example_iteration(ref, batch, torch.optim.SGD(ref.parameters(), lr=0.0), steps,
                              first_order)
        want = flat_grad(ref) * len(batch)  # undo the example's averaging
    errors = {}
    for engine in (("batched",) if mamlpp else ("l2l", "batched")) + ("compiled",) * compiled:
        algo = copy.deepcopy(base).double()
        algo.engine = engine
        algo.zero_grad(set_to_none=True)
        algo(batch).loss.sum().backward()
        errors[engine] = float((flat_grad(algo) - want).norm() / want.norm())
    return errors


def bench(name: str, setting: tuple, device: torch.device, repeats: int,
          grad_tasks: int, compiled: bool = False) -> dict:
    channels, size, ways, shots, query, mb, steps, lr, first_order, hidden = setting
    split = make_split(channels, size, shots + query + 4, device)
    sampler = EpisodeSampler(split, ways, shots, query, (0.5,) * channels, (0.25,) * channels,
                             seed=0, device=device)
    prep = Preprocess(sampler.mean, sampler.std, device)
    batches = [prep(sampler.sample(mb)) for _ in range(min(repeats, 3))]
    mamlpp = name.startswith("mamlpp")
    torch.manual_seed(0)
    base = MAML(Conv4(channels, size, hidden=hidden), ways, inner_lr=lr,
                adaptation_steps=steps, first_order=first_order,
                **(MAMLPP if mamlpp else {})).to(device)
    row: dict = {"setting": name, "image": [channels, size, size], "ways": ways, "shots": shots,
                 "query": query, "meta_batch": mb, "steps": steps,
                 "order": 1 if first_order else 2, "repeats": repeats}

    def contender(engine: str | None, amp: str = "none", channels_last: bool = False):
        algo = copy.deepcopy(base)
        if channels_last:
            algo.to(memory_format=torch.channels_last)
        if engine is None:  # learn2learn's example: its own (per-tensor) Adam
            opt = torch.optim.Adam(algo.parameters(), lr=1e-3)
            return lambda b: l2l_example_iteration(algo, b, opt, steps, first_order)
        opt = torch.optim.Adam(algo.parameters(), lr=1e-3, fused=True)  # as optimizer/adam.yaml
        algo.engine = engine
        return lambda b: engine_iteration(algo, b, opt, amp, channels_last)

    contenders = [("l2l_example", None, "none", False)] * (not mamlpp) + [
        ("l2l", "l2l", "none", False), ("batched", "batched", "none", False)] + [
        ("compiled", "compiled", "none", False)] * compiled
    if device.type == "cuda":  # the speed switches; on a CPU bf16 convolutions are slower
        contenders += [("batched_bf16", "batched", "bf16", False),
                       ("batched_channels_last", "batched", "none", True)]
    for key, engine, amp, cl in contenders:
        row[f"{key}_tasks_per_s"], row[f"{key}_peak_mib"] = timed(
            contender(engine, amp, cl), batches, device, repeats)
    reference = contenders[0][0]
    row["speedup_vs"] = reference
    for key, *_ in contenders:
        row[f"{key}_speedup"] = row[f"{key}_tasks_per_s"] / row[f"{reference}_tasks_per_s"]

    # A train.py iteration: sample + normalise on the device, step (a NaN/Inf one skipped on
    # the device), and every 10th iteration one host read for the metrics and a log line.
    algo = copy.deepcopy(base)
    algo.engine = "batched"
    opt = torch.optim.Adam(algo.parameters(), lr=1e-3, fused=True)
    with tempfile.TemporaryDirectory() as tmp, open(Path(tmp) / "metrics.jsonl", "w") as log:
        def train_iteration(_: Episodes, it=[0]) -> None:
            it[0] += 1
            batch = prep(sampler.sample(mb), train=True)
            opt.zero_grad(set_to_none=True)
            losses, accs = meta_step(algo, batch)
            norm = get_total_norm([p.grad for p in algo.parameters() if p.grad is not None])
            stats = torch.stack([losses.mean(), accs.mean(), norm])
            opt.found_inf = (~stats.isfinite().all()).float()
            opt.step()
            if it[0] % 10 == 0:
                loss, acc, grad_norm = stats.tolist()
                log.write(json.dumps({"step": it[0], "train/loss": loss, "train/acc": acc}) + "\n")
        row["train_iteration_tasks_per_s"], _ = timed(train_iteration, batches, device, repeats)
    row["train_iteration_overhead"] = (row["batched_tasks_per_s"] /
                                       row["train_iteration_tasks_per_s"] - 1)
    if name in ROOFLINE_TASKS_PER_S and device.type == "cuda":
        row["roofline_fraction"] = row["batched_tasks_per_s"] / ROOFLINE_TASKS_PER_S[name]
    grad_batch = Episodes(*(t[:grad_tasks] for t in (batches[0].support_x, batches[0].support_y,
                                                     batches[0].query_x, batches[0].query_y)))
    for engine, err in grad_errors(base, grad_batch, steps, first_order, mamlpp,
                                   compiled).items():
        row[f"{engine}_grad_rel_err_f64"] = err
    row["grad_tasks"] = len(grad_batch)
    for key in ("l2l_example_tasks_per_s", "l2l_example_peak_mib", "l2l_grad_rel_err_f64"):
        row.setdefault(key, None)  # MAML++: no example loop; the l2l engine is the reference
    # bf16 autocast vs float32, same engine and tasks: what the speed switch costs in accuracy.
    grads = {}
    for amp in ("none", "bf16"):
        algo = copy.deepcopy(base)
        algo.engine = "batched"
        algo.zero_grad(set_to_none=True)
        meta_step(algo, grad_batch, None, amp)
        grads[amp] = flat_grad(algo).double()
    row["bf16_grad_rel_err_vs_f32"] = float((grads["bf16"] - grads["none"]).norm() /
                                            grads["none"].norm())
    return row


def print_table(rows: list[dict]) -> None:
    head = (f"{'setting':>20} | {'l2l example':>11} | {'l2l engine':>10} {'x':>5} | "
            f"{'batched':>8} {'x':>5} | {'train it':>8} {'ovh':>5} | {'grad err l2l/batched':>20} "
            f"| {'peak MiB ex/l2l/bat':>19}")
    print(head)
    print("-" * len(head))
    for r in rows:
        def f(key: str, spec: str) -> str:
            return "-" if r[key] is None else format(r[key], spec)
        peak = "/".join(f(k, ".0f") for k in
                        ("l2l_example_peak_mib", "l2l_peak_mib", "batched_peak_mib"))
        print(f"{r['setting']:>20} | {f('l2l_example_tasks_per_s', '.1f'):>11} | "
              f"{r['l2l_tasks_per_s']:10.1f} {r['l2l_speedup']:4.2f}x | "
              f"{r['batched_tasks_per_s']:8.1f} {r['batched_speedup']:4.2f}x | "
              f"{r['train_iteration_tasks_per_s']:8.1f} {100 * r['train_iteration_overhead']:4.0f}% | "
              f"{f('l2l_grad_rel_err_f64', '.1e'):>9}/{r['batched_grad_rel_err_f64']:9.1e} | "
              f"{peak:>19}", flush=True)
        extras = [f"{k[:-len('_tasks_per_s')]} {r[k]:.1f} tasks/s ({r[k[:-len('_tasks_per_s')] + '_speedup']:.2f}x)"
                  for k in ("batched_bf16_tasks_per_s", "batched_channels_last_tasks_per_s") if k in r]
        extras.append(f"bf16 meta-grad rel. err vs f32 {r['bf16_grad_rel_err_vs_f32']:.1e}")
        print(f"{'':>20}   " + "; ".join(extras))
        if "roofline_fraction" in r:
            print(f"{'':>20}   batched engine at {100 * r['roofline_fraction']:.1f}% of the "
                  f"memory roofline (~{ROOFLINE_TASKS_PER_S[r['setting']]:.0f} tasks/s)")
    print("(tasks/s; x = vs learn2learn's example loop; train it = a train.py iteration "
          "around the batched step, ovh = its extra time; grad err = relative meta-gradient "
          "error vs the example loop in float64; mamlpp_*: MSL + LSLR + per-step BN, "
          "x and grad err vs the l2l engine)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--small", action="store_true", help="tiny sizes (CPU, tests)")
    parser.add_argument("--repeats", type=int, default=5, help="timed iterations per engine")
    parser.add_argument("--grad-tasks", type=int, default=4,
                        help="tasks in the float64 meta-gradient comparison")
    parser.add_argument("--settings", nargs="*", default=None,
                        help=f"subset of {', '.join(FULL)}")
    parser.add_argument("--compiled", action="store_true",
                        help="also algo.engine=compiled (torch.compile: minutes per setting)")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "benchmarks" /
                        "engine.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    table = SMALL if args.small else FULL
    names = args.settings or list(table)
    rows = []
    result = {"device": str(device),
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
              else platform.processor() or platform.machine(),
              "small": args.small, "unit": "tasks/s", "torch": torch.__version__,
              "learn2learn": l2l.__version__, "torch_threads": torch.get_num_threads(),
              "cpu_count": os.cpu_count(), "load_average_1min": os.getloadavg()[0],
              "platform": platform.platform(), "results": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name in names:  # the JSON is rewritten after each setting: a timeout keeps what ran
        rows.append(bench(name, table[name], device, args.repeats, args.grad_tasks,
                          args.compiled))
        print(json.dumps(rows[-1]), flush=True)
        args.out.write_text(json.dumps(result, indent=2))
    print()
    print_table(rows)
    print(f"\nsaved {args.out}")


if __name__ == "__main__":
    main()
