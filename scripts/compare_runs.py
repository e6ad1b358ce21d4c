"""Compare runs without a server: a table and a plot of validation curves.

    python scripts/compare_runs.py outputs/multirun/2026-11-26/16-28-47
    python scripts/compare_runs.py outputs/ --sort test

Finds every run dir below the given folders (a dir holding `results.json` or `metrics.jsonl`),
prints one row per run sorted by best validation accuracy, and writes `compare.{md,csv,png}`
into the first folder (or `--out`). Runs are labelled by the config values that differ between
them only (an `algo` of another class shows as `algo=<class>`, not as its every option). The
plot draws each run's validation accuracy with its 95% confidence band and its test accuracy
with its 95% interval at the last iteration; the legend sits below the plot. A run scored on
other datasets too (`test/<domain>/acc` in results.json) gets one column per domain.
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

from metalearn.tracking import summary_name  # noqa: E402

SORT_KEYS = {"val": "val/best_acc", "test": "test/acc", "wall": "run/wall_time_s", "run": "run"}
# Config keys that never explain a difference in results.
IGNORED = ("paths.", "logger.", "hydra.", "resume", "device")


def find_run_dirs(root: Path) -> list[Path]:
    dirs = {p.parent for name in ("results.json", "metrics.jsonl") for p in root.rglob(name)}
    return sorted(d for d in dirs if ".submitit" not in d.parts)


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """{'a.b': value}; a node built from a `_target_` also gives {'a': <class name>}."""
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    if prefix and isinstance(d.get("_target_"), str):
        out[prefix.rstrip(".")] = d["_target_"].rsplit(".", 1)[-1]
    for k, v in d.items():
        if k.startswith("_"):  # _target_, _partial_
            continue
        out.update(_flatten(v, f"{prefix}{k}." if isinstance(v, dict) else f"{prefix}{k}"))
    return out


def load_run(run_dir: Path) -> dict[str, Any]:
    curve = []
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        for line in metrics.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a run killed mid-write
                continue
            if "val/acc" in row:
                curve.append((row["step"], row["val/acc"], row.get("val/acc_ci95")))
    results = run_dir / "results.json"
    res = json.loads(results.read_text()) if results.exists() else {}
    config = {}
    if (run_dir / "config.yaml").exists():
        from omegaconf import OmegaConf

        config = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"))
    return {"results": {summary_name(k): v for k, v in res.items()}, "curve": sorted(curve),
            "config": _flatten(config)}


def differing(configs: list[dict[str, Any]]) -> list[str]:
    """The keys whose values differ between the runs, minus the options that only some of
    the classes of a node have (its class name already says they differ)."""
    keys = sorted({k for c in configs for k in c if not k.startswith(IGNORED)})
    differ = [k for k in keys if len({json.dumps(c.get(k)) for c in configs}) > 1]
    nodes = [k for k in differ if all(isinstance(c.get(k), (str, type(None))) for c in configs)
             and any(other.startswith(k + ".") for other in keys)]
    return [k for k in differ if all(k in c for c in configs)
            or not any(k.startswith(n + ".") for n in nodes)]


def collect(roots: list[Path]) -> list[dict[str, Any]]:
    runs = []
    for root in roots:
        for run_dir in find_run_dirs(root):
            run = load_run(run_dir)
            res = run["results"]
            if res.get("val/best_acc") is None and run["curve"]:  # unfinished: best so far
                res["val/best_acc"] = max(acc for _, acc, _ in run["curve"])
            run["run"] = str(run_dir.relative_to(root)) if run_dir != root else run_dir.name
            runs.append(run)
    keys = differing([r["config"] for r in runs])
    for r in runs:
        r["label"] = " ".join(f"{k}={_short(r['config'].get(k))}" for k in keys)
    return runs


def _short(v: Any) -> Any:
    return f"{v:.4g}" if isinstance(v, float) else v


def _pct(x: float | None, ci: float | None = None) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{100 * x:.2f}" + (f" ± {100 * ci:.2f}" if ci is not None else "")


def domains(runs: list[dict[str, Any]]) -> list[str]:
    """Other datasets some run was scored on (`test/<domain>/acc`)."""
    return sorted({k.split("/")[1] for r in runs for k in r["results"]
                   if k.startswith("test/") and k.endswith("/acc") and k.count("/") == 2})


def table(runs: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    extra = domains(runs)
    header = ["#", "run", "differs", "best val acc %", "test acc % ± 95% CI",
              *(f"test {d} acc %" for d in extra), "wall s"]
    rows = []
    for i, r in enumerate(runs, 1):
        res = r["results"]
        wall = res.get("run/wall_time_s")
        rows.append([str(i), r["run"], r["label"] or "-", _pct(res.get("val/best_acc")),
                     _pct(res.get("test/acc"), res.get("test/acc_ci95")),
                     *(_pct(res.get(f"test/{d}/acc"), res.get(f"test/{d}/acc_ci95"))
                       for d in extra),
                     "-" if wall is None else f"{wall:.1f}"])
    return header, rows


def markdown(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    line = lambda row: "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |"
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                      *map(line, rows)])


def figure(runs: list[dict[str, Any]]) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for r in runs:
        color = None
        if r["curve"]:
            steps, accs, cis = zip(*r["curve"])
            line, = ax.plot(steps, [100 * a for a in accs], marker="o", markersize=3,
                            label=r["label"] or r["run"])
            color = line.get_color()
            if all(c is not None for c in cis):
                ax.fill_between(steps, [100 * (a - c) for a, c in zip(accs, cis)],
                                [100 * (a + c) for a, c in zip(accs, cis)], color=color,
                                alpha=0.15, linewidth=0)
        test, ci = r["results"].get("test/acc"), r["results"].get("test/acc_ci95")
        if test is not None:
            x = r["curve"][-1][0] if r["curve"] else r["results"].get("run/iterations", 0)
            ax.errorbar([x], [100 * test], yerr=[100 * (ci or 0)], color=color, marker="*",
                        markersize=9, capsize=4, label=None if r["curve"] else r["label"] or r["run"])
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("accuracy (%): validation ± 95% CI, test at the end (*)")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if handles:  # below the axes, never over the curves
        ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.14),
                  ncol=1 if max(map(len, labels)) > 40 else 2, fontsize="small", frameon=False)
    return fig


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = figure(runs)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dirs", nargs="+", type=Path, help="sweep dirs or any folders of run dirs")
    ap.add_argument("--sort", choices=sorted(SORT_KEYS), default="val",
                    help="sort column (val, test: best first; wall: fastest first; run: by name)")
    ap.add_argument("--out", type=Path, help="where to write compare.{md,csv,png} (default: first dir)")
    args = ap.parse_args(argv)

    runs = collect(args.dirs)
    if not runs:
        print(f"error: no runs (results.json or metrics.jsonl) under "
              f"{' '.join(map(str, args.dirs))}", file=sys.stderr)
        return 2
    key = SORT_KEYS[args.sort]
    if key == "run":
        runs.sort(key=lambda r: r["run"])
    else:
        value = lambda r: r["results"].get(key)
        missing = math.inf if key == "run/wall_time_s" else -math.inf
        runs.sort(key=lambda r: missing if value(r) is None else value(r),
                  reverse=key != "run/wall_time_s")

    header, rows = table(runs)
    out = args.out or args.dirs[0]
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text(markdown(header, rows) + "\n")
    columns = ["val/best_acc", "test/acc", "test/acc_ci95",
               *(f"test/{d}/{m}" for d in domains(runs) for m in ("acc", "acc_ci95")),
               "run/wall_time_s"]
    with open(out / "compare.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "differs", *columns])
        for r in runs:
            w.writerow([r["run"], r["label"], *(r["results"].get(c) for c in columns)])
    plot(runs, out / "compare.png")
    print(markdown(header, rows))
    print(f"\nwrote {out / 'compare.md'}, {out / 'compare.csv'}, {out / 'compare.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
