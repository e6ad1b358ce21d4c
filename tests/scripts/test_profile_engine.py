"""scripts/profile_engine.py: the per-phase time table that docs/performance.md quotes."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_profile_table_attributes_time_to_phases_and_kernels(tmp_path):
    out = tmp_path / "profile.json"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "profile_engine.py"), "--device", "cpu",
                    "--small", "--settings", "omniglot_20w1s_2nd", "--iterations", "1",
                    "--out", str(out)], check=True, capture_output=True, text=True, timeout=300)
    row = json.loads(out.read_text())["results"][0]
    phases = row["phases"]
    assert list(phases) == ["forward", "backward", "optimizer"]
    for name, p in phases.items():
        assert p["launches"] > 0 and p["wall_ms"] > 0, name
        # busy time by kind plus idle time cannot exceed the phase's wall time by much
        # (nested operators' self times add up to at most the wall time)
        assert sum(p["busy_ms"].values()) <= p["wall_ms"] * 1.05, name
    # second-order MAML: the outer backward runs convolutions (their double backward)
    assert phases["backward"]["busy_ms"]["conv"] > 0
    assert phases["forward"]["busy_ms"]["conv"] > 0
    assert phases["optimizer"]["busy_ms"].get("conv", 0.0) == 0
    assert row["iteration_ms"] == sum(p["wall_ms"] for p in phases.values())
    # operator counts: outermost calls and computing leaves are subsets of all calls; Adam is
    # the fused step (one kernel over every tensor), not a dozen operators per tensor
    for name, p in phases.items():
        assert 0 < p["top_level"] <= p["launches"] and 0 < p["kernels"] <= p["launches"], name
    assert phases["optimizer"]["top_level"] <= 3
    assert row["kernels"] == sum(p["kernels"] for p in phases.values())
    table = out.with_suffix(".md").read_text()
    assert "| omniglot_20w1s_2nd | backward |" in table
    assert "| setting | phase | calls | top-level | kernels | host reads |" in table


def test_cuda_graph_script_runs_its_eager_half_without_cuda(tmp_path):
    out = tmp_path / "cuda_graph.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "cuda_graph_step.py"), "--small",
                           "--settings", "omniglot_20w1s_1st", "--iterations", "1",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = json.loads(out.read_text())["results"]
    assert row["eager_ms"] > 0 and ("graph_ms" in row) == torch_cuda()
    assert "capture skipped" in proc.stdout or "graph" in proc.stdout


def torch_cuda() -> bool:
    import torch
    return torch.cuda.is_available()
