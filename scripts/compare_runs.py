"""Compare runs without a server: a table and a plot of validation curves.

    python scripts/compare_runs.py outputs/multirun/2026-11-26/16-28-47
    python scripts/compare_runs.py outputs/ --sort test --wandb

Finds every run dir below the given folders (a dir holding `results.json` or `metrics.jsonl`,
or a `wandb/*run-*/run-*.wandb` file), prints one row per run sorted by best validation
accuracy, and writes `compare.{md,csv,png}` into the first folder (or `--out`). The
"overrides" column shows the config keys whose values differ between the runs. With
`--wandb`, or for runs that have only a W&B file, metrics come from the offline W&B run.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SORT_KEYS = {"val": "best_val_acc", "test": "test_acc", "wall": "wall_time_s", "run": "run"}


def find_run_dirs(root: Path) -> list[Path]:
    dirs = {p.parent for name in ("results.json", "metrics.jsonl") for p in root.rglob(name)}
    dirs |= {p.parents[2] for p in root.rglob("run-*.wandb") if p.parent.parent.name == "wandb"}
    return sorted(d for d in dirs if ".submitit" not in d.parts)


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        if k.startswith("_"):  # _target_, W&B's _wandb
            continue
        out.update(_flatten(v, f"{prefix}{k}." if isinstance(v, dict) else f"{prefix}{k}"))
    return out


def _load_local(run_dir: Path) -> dict[str, Any] | None:
    metrics, results = run_dir / "metrics.jsonl", run_dir / "results.json"
    if not metrics.exists() and not results.exists():
        return None
    curve = []
    if metrics.exists():
        for line in metrics.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a run killed mid-write
                continue
            if "val/acc" in row:
                curve.append((row["step"], row["val/acc"]))
    res = json.loads(results.read_text()) if results.exists() else {}
    config = {}
    if (run_dir / "config.yaml").exists():
        from omegaconf import OmegaConf

        config = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"))
    return {"results": res, "curve": curve, "config": config}


def _load_wandb(run_dir: Path) -> dict[str, Any] | None:
    from metalearn.wandb_offline import find_run_file, read_run

    try:
        run = read_run(find_run_file(run_dir))
    except (FileNotFoundError, ValueError):
        return None
    curve = [(h["_step"], h["val/acc"]) for h in run["history"] if "val/acc" in h]
    res = {k: v for k, v in run["summary"].items() if not isinstance(v, dict)}
    return {"results": res, "curve": curve, "config": run["config"]}


def load_run(run_dir: Path, prefer_wandb: bool) -> dict[str, Any] | None:
    loaders = (_load_wandb, _load_local) if prefer_wandb else (_load_local, _load_wandb)
    for load in loaders:
        run = load(run_dir)
        if run is not None:
            return run
    return None


def collect(roots: list[Path], prefer_wandb: bool) -> list[dict[str, Any]]:
    runs = []
    for root in roots:
        for run_dir in find_run_dirs(root):
            run = load_run(run_dir, prefer_wandb)
            if run is None:
                continue
            res = run["results"]
            best_val = res.get("best_val_acc")
            if best_val is None and run["curve"]:  # unfinished run: best so far
                best_val = max(acc for _, acc in run["curve"])
            name = str(run_dir.relative_to(root)) if run_dir != root else run_dir.name
            runs.append({"run": name, "dir": run_dir, "best_val_acc": best_val,
                         "test_acc": res.get("test_acc"), "test_acc_ci95": res.get("test_acc_ci95"),
                         "wall_time_s": res.get("wall_time_s"), "curve": sorted(run["curve"]),
                         "config": _flatten(run["config"])})
    # The overrides worth a column: keys whose values differ between the runs.
    keys = sorted({k for r in runs for k in r["config"]})
    differ = [k for k in keys if len({json.dumps(r["config"].get(k)) for r in runs}) > 1
              and not k.startswith(("paths.", "logger."))]
    for r in runs:
        r["overrides"] = " ".join(f"{k}={_short(r['config'].get(k))}" for k in differ)
    return runs


def _short(v: Any) -> Any:
    return f"{v:.4g}" if isinstance(v, float) else v


def _pct(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{100 * x:.2f}"


def rows(runs: list[dict[str, Any]]) -> list[list[str]]:
    out = []
    for i, r in enumerate(runs, 1):
        test = _pct(r["test_acc"])
        if r["test_acc_ci95"] is not None and test != "-":
            test += f" ± {_pct(r['test_acc_ci95'])}"
        wall = "-" if r["wall_time_s"] is None else f"{r['wall_time_s']:.1f}"
        out.append([str(i), r["run"], r["overrides"] or "-", _pct(r["best_val_acc"]), test, wall])
    return out


HEADER = ["#", "run", "overrides", "best val acc %", "test acc % ± 95% CI", "wall s"]


def markdown(table: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [HEADER, *table]) for i in range(len(HEADER))]
    line = lambda row: "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |"
    return "\n".join([line(HEADER), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                      *map(line, table)])


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for r in runs:
        if r["curve"]:
            steps, accs = zip(*r["curve"])
            ax.plot(steps, [100 * a for a in accs], marker="o", markersize=3,
                    label=r["overrides"] or r["run"])
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("validation accuracy (%)")
    ax.grid(alpha=0.3)
    if any(r["curve"] for r in runs):
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dirs", nargs="+", type=Path, help="sweep dirs or any folders of run dirs")
    ap.add_argument("--sort", choices=sorted(SORT_KEYS), default="val",
                    help="sort column (val, test: best first; wall: fastest first; run: by name)")
    ap.add_argument("--wandb", action="store_true",
                    help="read the offline W&B run files instead of metrics.jsonl/results.json")
    ap.add_argument("--out", type=Path, help="where to write compare.{md,csv,png} (default: first dir)")
    args = ap.parse_args(argv)

    runs = collect(args.dirs, args.wandb)
    if not runs:
        print(f"error: no runs (results.json, metrics.jsonl or W&B run files) under "
              f"{' '.join(map(str, args.dirs))}", file=sys.stderr)
        return 2
    key = SORT_KEYS[args.sort]
    if key == "run":
        runs.sort(key=lambda r: r["run"])
    else:
        missing = -math.inf if key != "wall_time_s" else math.inf
        runs.sort(key=lambda r: missing if r[key] is None else r[key],
                  reverse=key != "wall_time_s")

    table = rows(runs)
    out = args.out or args.dirs[0]
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text(markdown(table) + "\n")
    with open(out / "compare.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "overrides", "best_val_acc", "test_acc", "test_acc_ci95", "wall_time_s"])
        for r in runs:
            w.writerow([r["run"], r["overrides"], r["best_val_acc"], r["test_acc"],
                        r["test_acc_ci95"], r["wall_time_s"]])
    plot(runs, out / "compare.png")
    print(markdown(table))
    print(f"\nwrote {out / 'compare.md'}, {out / 'compare.csv'}, {out / 'compare.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
