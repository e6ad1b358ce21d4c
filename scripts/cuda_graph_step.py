"""One whole meta-iteration (inner loop, second-order backward, fused Adam step) captured in a
CUDA graph and replayed, against the same iterations run eagerly from the same start.

The batched engine does no host read inside the step (`tests/engine/test_host_reads.py`), so
the step can be captured as PyTorch's whole-network example does (`torch.cuda.graph`, Adam
with `capturable=True`); replaying it costs one launch instead of thousands. Prints, per
setting, eager and replayed ms per iteration and the largest parameter difference after
`--iterations` steps. On a machine without CUDA it runs the eager iterations only (what CI
can check).

    python scripts/cuda_graph_step.py [--small] [--settings NAME ...] [--iterations N]
                                      [--out FILE.json]
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

sys.modules.setdefault("gym_notices", None)  # learn2learn imports gym, which prints a notice

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from benchmark import FULL, SMALL  # noqa: E402
from profile_engine import build  # noqa: E402


def step(algo, opt, batch) -> torch.Tensor:
    """One meta-iteration as the training loop runs it, without its host reads."""
    loss = algo(batch).loss.sum() / len(batch)
    loss.backward()
    opt.step()
    return loss.detach()


def eager(algo, opt, batch, iterations: int, device: torch.device) -> float:
    """ms per iteration of `iterations` eager steps (the state moves on)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t = time.perf_counter()
    for _ in range(iterations):
        opt.zero_grad(set_to_none=True)
        step(algo, opt, batch)
    sync()
    return (time.perf_counter() - t) / iterations * 1e3


def graphed(algo, opt, batch, iterations: int) -> float:
    """ms per iteration of `iterations` replays of one captured step (the state moves on)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the graph: lazy init, autotuning
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            step(algo, opt, batch)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):  # gradients live in the graph's pool, overwritten each replay
        step(algo, opt, batch)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iterations):
        graph.replay()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / iterations * 1e3


def compare(name: str, setting: tuple, device: torch.device, iterations: int) -> dict:
    algo, _, batch = build(name, setting, device, "batched")
    row = {"setting": name, "iterations": iterations}
    capturable = device.type == "cuda"
    # two copies from the same start, each 3 warm-up steps then `iterations` timed ones (a
    # capture records the step without running it)
    a, b = algo, copy.deepcopy(algo)
    opt_a = torch.optim.Adam(a.parameters(), lr=1e-3, fused=True, capturable=capturable)
    opt_b = torch.optim.Adam(b.parameters(), lr=1e-3, fused=True, capturable=capturable)
    eager(a, opt_a, batch, 3, device)
    row["eager_ms"] = eager(a, opt_a, batch, iterations, device)
    if capturable:
        row["graph_ms"] = graphed(b, opt_b, batch, iterations)
        row["speedup"] = row["eager_ms"] / row["graph_ms"]
        row["max_param_diff"] = max(float((p - q).abs().max())
                                    for p, q in zip(a.parameters(), b.parameters()))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="tiny sizes")
    parser.add_argument("--settings", nargs="*", default=None)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "benchmarks" /
                        "cuda_graph.json")
    args = parser.parse_args()
    table = SMALL if args.small else FULL
    names = args.settings or [n for n in table if not n.startswith("mamlpp")]
    unknown = set(names) - set(table)
    if unknown:
        parser.error(f"unknown setting(s) {', '.join(sorted(unknown))}: choose from "
                     f"{', '.join(table)}")
    if any(n.startswith("mamlpp") for n in names):
        parser.error("MAML++'s multi-step-loss weights change every iteration on the host: "
                     "not capturable as one graph")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "results": []}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name in names:
        row = compare(name, table[name], device, args.iterations)
        result["results"].append(row)
        args.out.write_text(json.dumps(result, indent=2))
        print(f"{name}: eager {row['eager_ms']:.2f} ms" + (
            f", graph {row['graph_ms']:.2f} ms ({row['speedup']:.2f}x), parameters differ by "
            f"{row['max_param_diff']:.1e} after {args.iterations} steps" if "graph_ms" in row
            else " (no CUDA: capture skipped)"), flush=True)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
