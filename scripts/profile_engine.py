"""Where a meta-iteration's time goes: torch.profiler over the benchmark settings.

For each setting of `scripts/benchmark.py` (same sizes, same synthetic uint8 episodes, the
batched engine unless `--engine`), a few meta-iterations run under `torch.profiler` with each
phase in its own `record_function` range and a device sync at its end, so every kernel of a
phase runs inside the phase's window:
  forward   = inner loop (support forward + grad per step) and the query forward,
  backward  = the outer backward (through the inner loop's gradients: second order),
  optimizer = Adam's step.
Per phase it reports the busy time by kind of kernel (convolution, matmul, BatchNorm and
other elementwise/reduction kernels, copies, other), the number of kernel launches, and the
idle time: phase wall time minus the union of kernel time on the device, i.e. launch and
Python overhead. On a CPU the same table is built from the aten operators' self CPU time
(launches = operator calls; idle = time in no operator).

    python scripts/profile_engine.py [--device cpu|cuda] [--small] [--settings NAME ...]
                              [--iterations N] [--engine batched|l2l] [--out FILE.json]

Writes the JSON (one row per setting and phase) and prints a markdown table for
docs/performance.md; `--trace DIR` also saves a Chrome trace per setting.
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
from collections import defaultdict
from pathlib import Path

sys.modules.setdefault("gym_notices", None)  # learn2learn imports gym, which prints a notice

import torch  # noqa: E402
from torch.autograd import DeviceType  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from benchmark import FULL, MAMLPP, SMALL, make_split  # noqa: E402

from metalearn.algorithms.maml import MAML  # noqa: E402
from metalearn.data.episodes import EpisodeSampler, Preprocess  # noqa: E402
from metalearn.models.conv4 import Conv4  # noqa: E402

PHASES = ("forward", "backward", "optimizer")
# Substrings of kernel / operator names, checked in this order (first match wins).
KINDS = (
    ("conv", ("conv", "cudnn", "xmma", "implicit_gemm", "wgrad", "dgrad", "fprop", "winograd",
              "mkldnn", "depthwise")),
    ("matmul", ("gemm", "gemv", "matmul", "addmm", "aten::mm", "aten::bmm", "linear")),
    ("copy", ("memcpy", "memset", "copy_", "aten::to", "contiguous", "clone")),
    ("norm/elementwise", ("elementwise", "vectorized", "unrolled", "reduce", "batch_norm",
                          "aten::mul", "aten::add", "aten::sub", "aten::div", "aten::mean",
                          "aten::var", "aten::sum", "aten::rsqrt", "aten::pow", "aten::sqrt",
                          "aten::relu", "threshold", "aten::neg", "aten::exp", "log_softmax",
                          "nll_loss", "aten::where", "aten::fill", "aten::zero", "foreach",
                          "adam", "aten::lerp", "aten::addcmul", "aten::addcdiv", "softmax",
                          "max_pool", "aten::max", "aten::mean", "aten::expand", "aten::cat")),
)


def kind_of(name: str) -> str:
    low = name.lower()
    for kind, keys in KINDS:
        if any(k in low for k in keys):
            return kind
    return "other"


def union_us(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(name: str, setting: tuple, device: torch.device, engine: str):
    channels, size, ways, shots, query, mb, steps, lr, first_order, hidden = setting
    split = make_split(channels, size, shots + query + 4, device)
    sampler = EpisodeSampler(split, ways, shots, query, (0.5,) * channels, (0.25,) * channels,
                             seed=0, device=device)
    prep = Preprocess(sampler.mean, sampler.std, device)
    torch.manual_seed(0)
    algo = MAML(Conv4(channels, size, hidden=hidden), ways, inner_lr=lr, adaptation_steps=steps,
                first_order=first_order, engine=engine,
                **(MAMLPP if name.startswith("mamlpp") else {})).to(device)
    return algo, torch.optim.Adam(algo.parameters(), lr=1e-3), prep(sampler.sample(mb))


def iteration(algo, opt, batch, device: torch.device) -> None:
    """One meta-iteration as the loop runs it, each phase in its own synced range."""
    with record_function("forward"):
        opt.zero_grad(set_to_none=True)
        m = algo(batch)
        objective = getattr(m, "objective", None)
        objective = m.loss if objective is None else objective
        sync(device)
    with record_function("backward"):
        (objective.float().sum() / len(batch)).backward()
        sync(device)
    with record_function("optimizer"):
        opt.step()
        sync(device)


def phase_table(prof, device: torch.device, iterations: int) -> dict[str, dict]:
    events = prof.profiler.function_events
    windows = defaultdict(list)  # phase -> [(start, end)] in us
    for e in events:
        if e.name in PHASES and e.device_type == DeviceType.CPU:
            windows[e.name].append((e.time_range.start, e.time_range.end))
    out: dict[str, dict] = {}
    for phase in PHASES:
        wall = sum(b - a for a, b in windows[phase])
        busy: dict[str, float] = defaultdict(float)
        intervals, launches = [], 0
        for e in events:
            if device.type == "cuda":
                if e.device_type != DeviceType.CUDA:
                    continue
                start, end, dur = e.time_range.start, e.time_range.end, e.time_range.elapsed_us()
            else:  # CPU: aten operators' own time, outermost aten calls for coverage
                if e.device_type != DeviceType.CPU or not e.name.startswith("aten::"):
                    continue
                start, end, dur = e.time_range.start, e.time_range.end, e.self_cpu_time_total
            if not any(a <= start and end <= b + 1 for a, b in windows[phase]):
                continue
            busy[kind_of(e.name)] += dur
            intervals.append((start, end))
            launches += 1
        covered = union_us(intervals)
        out[phase] = {"wall_ms": wall / 1e3 / iterations,
                      "busy_ms": {k: v / 1e3 / iterations for k, v in sorted(busy.items())},
                      "idle_ms": max(wall - covered, 0.0) / 1e3 / iterations,
                      "launches": launches / iterations}
    return out


def profile_setting(name: str, setting: tuple, device: torch.device, engine: str,
                    iterations: int, trace_dir: Path | None) -> dict:
    algo, opt, batch = build(name, setting, device, engine)
    for _ in range(2):  # warm-up: cuDNN autotuning, allocator, lazy init
        iteration(algo, opt, batch, device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(iterations):
            iteration(algo, opt, batch, device)
    if trace_dir is not None:
        trace_dir.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(trace_dir / f"{name}.json"))
    phases = phase_table(prof, device, iterations)
    wall = sum(p["wall_ms"] for p in phases.values())
    return {"setting": name, "engine": engine, "meta_batch": setting[5], "steps": setting[6],
            "iteration_ms": wall, "tasks_per_s": setting[5] / wall * 1e3,
            "launches": sum(p["launches"] for p in phases.values()),
            "idle_ms": sum(p["idle_ms"] for p in phases.values()), "phases": phases}


def markdown(rows: list[dict]) -> str:
    kinds = [k for k, _ in KINDS] + ["other"]
    lines = ["| setting | phase | wall ms | " + " | ".join(kinds) + " | idle ms | launches |",
             "| --- | --- | ---: | " + " | ".join("---:" for _ in kinds) + " | ---: | ---: |"]
    for r in rows:
        for phase, p in r["phases"].items():
            cells = " | ".join(f"{p['busy_ms'].get(k, 0.0):.2f}" for k in kinds)
            lines.append(f"| {r['setting']} | {phase} | {p['wall_ms']:.2f} | {cells} | "
                         f"{p['idle_ms']:.2f} | {p['launches']:.0f} |")
        lines.append(f"| {r['setting']} | **iteration** | **{r['iteration_ms']:.2f}** | "
                     + " | ".join("" for _ in kinds) + f" | **{r['idle_ms']:.2f}** | "
                     f"**{r['launches']:.0f}** |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--small", action="store_true", help="tiny sizes (CPU, tests)")
    parser.add_argument("--settings", nargs="*", default=None)
    parser.add_argument("--iterations", type=int, default=5, help="profiled meta-iterations")
    parser.add_argument("--engine", default="batched", choices=("batched", "l2l"))
    parser.add_argument("--trace", type=Path, default=None, help="folder for Chrome traces")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "benchmarks" /
                        "profile.json")
    args = parser.parse_args()
    if args.iterations < 1:
        parser.error("--iterations must be >= 1")
    device = torch.device(args.device)
    table = SMALL if args.small else FULL
    unknown = set(args.settings or ()) - set(table)
    if unknown:
        parser.error(f"unknown setting(s) {', '.join(sorted(unknown))}: choose from "
                     f"{', '.join(table)}")
    result = {"device": str(device),
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
              else platform.processor() or platform.machine(),
              "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
              "small": args.small, "engine": args.engine, "unit": "ms per meta-iteration",
              "results": []}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name in args.settings or list(table):  # saved after each setting: a timeout keeps the rest
        row = profile_setting(name, table[name], device, args.engine, args.iterations, args.trace)
        result["results"].append(row)
        args.out.write_text(json.dumps(result, indent=2))
        print(f"{name}: {row['iteration_ms']:.2f} ms/iteration, {row['launches']:.0f} launches, "
              f"{row['idle_ms']:.2f} ms idle", flush=True)
    print()
    print(markdown(result["results"]))
    args.out.with_suffix(".md").write_text(markdown(result["results"]) + "\n")
    print(f"\nsaved {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
