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
(launches = operator calls, nested ones included; idle = time in no operator), followed by
the operator counts per phase: every call, outermost calls, `kernels` (leaf calls that compute:
what launches on a GPU) and host reads of a tensor value. `--engine compiled` profiles the
batched engine under torch.compile (its inductor kernels counted as operators);
`--optimizer loop` Adam's per-tensor loop instead of the fused step the configs use.

    python scripts/profile_engine.py [--device cpu|cuda] [--small] [--settings NAME ...]
                              [--iterations N] [--engine batched|compiled|l2l]
                              [--optimizer fused|loop] [--out FILE.json]

Writes the JSON (one row per setting and phase) and prints a markdown table for
docs/performance.md; `--trace DIR` also saves a Chrome trace per setting.
"""
from __future__ import annotations

import argparse
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


# Leaf aten operators that only make or reshape tensor metadata (no arithmetic, no memory
# traffic): not counted as kernels. A CPU proxy for GPU launches is the rest of the leaves.
METADATA = {"aten::" + n for n in (
    "view", "as_strided", "as_strided_", "empty", "empty_strided", "empty_like", "resize_",
    "_reshape_alias", "_unsafe_view", "reshape", "expand", "unsqueeze", "squeeze", "permute",
    "transpose", "t", "detach", "alias", "resolve_conj", "resolve_neg", "result_type",
    "lift_fresh", "slice", "select", "unbind", "split", "chunk", "narrow", "movedim",
    "_local_scalar_dense", "item", "is_nonzero", "sym_size", "sym_stride")}


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


def build(name: str, setting: tuple, device: torch.device, engine: str, unfused: bool = False):
    """The learner, Adam and one preprocessed meta-batch of `setting`."""
    channels, size, ways, shots, query, mb, steps, lr, first_order, hidden = setting
    split = make_split(channels, size, shots + query + 4, device)
    sampler = EpisodeSampler(split, ways, shots, query, (0.5,) * channels, (0.25,) * channels,
                             seed=0, device=device)
    prep = Preprocess(sampler.mean, sampler.std, device)
    torch.manual_seed(0)
    algo = MAML(Conv4(channels, size, hidden=hidden), ways, inner_lr=lr, adaptation_steps=steps,
                first_order=first_order, engine=engine,
                **(MAMLPP if name.startswith("mamlpp") else {})).to(device)
    opt = torch.optim.Adam(algo.parameters(), lr=1e-3, fused=not unfused)  # as optimizer/adam.yaml
    return algo, opt, prep(sampler.sample(mb))


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
        intervals, launches, top, kernels, syncs = [], 0, 0, 0, 0
        for e in events:
            if device.type == "cuda":
                if e.device_type != DeviceType.CUDA:
                    continue
                start, end, dur = e.time_range.start, e.time_range.end, e.time_range.elapsed_us()
            else:  # CPU: aten operators' (and inductor kernels') own time
                if e.device_type != DeviceType.CPU or not _is_op(e):
                    continue
                start, end, dur = e.time_range.start, e.time_range.end, e.self_cpu_time_total
            if not any(a <= start and end <= b + 1 for a, b in windows[phase]):
                continue
            busy[kind_of(e.name)] += dur
            intervals.append((start, end))
            launches += 1
            if device.type == "cpu":
                top += not _under_aten(e)
                kernels += e.name not in METADATA and not any(map(_is_op, e.cpu_children))
                syncs += e.name == "aten::_local_scalar_dense"
        covered = union_us(intervals)
        out[phase] = {"wall_ms": wall / 1e3 / iterations,
                      "busy_ms": {k: v / 1e3 / iterations for k, v in sorted(busy.items())},
                      "idle_ms": max(wall - covered, 0.0) / 1e3 / iterations,
                      "launches": launches / iterations}
        if device.type == "cpu":
            out[phase].update(top_level=top / iterations, kernels=kernels / iterations,
                              host_reads=syncs / iterations)
    return out


def _is_op(e) -> bool:
    """An aten operator, or a kernel inductor generated (`--engine compiled`; named when
    `torch._inductor.config.cpp.enable_kernel_profile` is on)."""
    return e.name.startswith("aten::") or "cpp_fused" in e.name


def _under_aten(e) -> bool:
    p = e.cpu_parent
    while p is not None:
        if _is_op(p):
            return True
        p = p.cpu_parent
    return False


def profile_setting(name: str, setting: tuple, device: torch.device, engine: str,
                    iterations: int, trace_dir: Path | None, unfused: bool = False) -> dict:
    algo, opt, batch = build(name, setting, device, engine, unfused)
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
            **{k: sum(p[k] for p in phases.values()) for k in COUNTS[1:]
               if k in phases["forward"]},
            "idle_ms": sum(p["idle_ms"] for p in phases.values()), "phases": phases}


COUNTS = ("launches", "top_level", "kernels", "host_reads")


def count_table(rows: list[dict]) -> str:
    """Operator calls per meta-iteration and phase (CPU): every aten call, nested ones
    included (`launches`, the profile's historical count); outermost calls only; leaf calls
    that compute (`kernels`: what would launch on a GPU); host reads of a tensor value."""
    lines = ["| setting | phase | calls | top-level | kernels | host reads |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        for phase, p in [*r["phases"].items(), ("**iteration**", r)]:
            lines.append(f"| {r['setting']} | {phase} | "
                         + " | ".join(f"{p.get(k, float('nan')):.0f}" for k in COUNTS) + " |")
    return "\n".join(lines)


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
    if "kernels" in rows[0]:
        lines += ["", count_table(rows)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--small", action="store_true", help="tiny sizes (CPU, tests)")
    parser.add_argument("--settings", nargs="*", default=None)
    parser.add_argument("--iterations", type=int, default=5, help="profiled meta-iterations")
    parser.add_argument("--engine", default="batched", choices=("batched", "compiled", "l2l"))
    parser.add_argument("--optimizer", default="fused", choices=("fused", "loop"),
                        help="Adam's kernels: fused (as optimizer/adam.yaml) or the per-tensor loop")
    parser.add_argument("--trace", type=Path, default=None, help="folder for Chrome traces")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "benchmarks" /
                        "profile.json")
    args = parser.parse_args()
    if args.iterations < 1:
        parser.error("--iterations must be >= 1")
    device = torch.device(args.device)
    if args.engine == "compiled":
        from torch._inductor import config as inductor
        inductor.cpp.enable_kernel_profile = True  # named kernels in the profile
    table = SMALL if args.small else FULL
    unknown = set(args.settings or ()) - set(table)
    if unknown:
        parser.error(f"unknown setting(s) {', '.join(sorted(unknown))}: choose from "
                     f"{', '.join(table)}")
    result = {"device": str(device),
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
              else platform.processor() or platform.machine(),
              "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
              "small": args.small, "engine": args.engine, "optimizer": args.optimizer,
              "unit": "ms per meta-iteration",
              "results": []}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name in args.settings or list(table):  # saved after each setting: a timeout keeps the rest
        row = profile_setting(name, table[name], device, args.engine, args.iterations, args.trace,
                              unfused=args.optimizer == "loop")
        result["results"].append(row)
        args.out.write_text(json.dumps(result, indent=2))
        print(f"{name}: {row['iteration_ms']:.2f} ms/iteration, {row['launches']:.0f} launches"
              + (f" ({row['kernels']:.0f} kernels, {row['host_reads']:.0f} host reads)"
                 if "kernels" in row else "") + f", {row['idle_ms']:.2f} ms idle", flush=True)
    print()
    print(markdown(result["results"]))
    args.out.with_suffix(".md").write_text(markdown(result["results"]) + "\n")
    print(f"\nsaved {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
