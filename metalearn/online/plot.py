"""Learning curves of online runs: one run's (written at the end of every run) or several
runs' on one figure: `python -m metalearn.online.plot RUN_DIR... --out curves.png`."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402


def _running_mean(values: list[float]) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values, 1):
        total += v
        out.append(total / i)
    return out


def _smooth(values: list[float], window: int) -> list[float]:
    return [sum(values[max(0, i - window + 1): i + 1]) / len(values[max(0, i - window + 1): i + 1])
            for i in range(len(values))]


def _boundaries(ax, domains: list[int]) -> None:
    for r in range(1, len(domains)):
        if domains[r] != domains[r - 1]:
            ax.axvline(r + 0.5, color="0.85", lw=0.8, zorder=0)


def curve(path: Path, accs: list[float], stream, title: str = "") -> None:
    fig, ax = plt.subplots(figsize=(7, 3.5))
    rounds = range(1, len(accs) + 1)
    _boundaries(ax, stream.domain[: len(accs)].tolist())
    ax.plot(rounds, accs, ".", ms=3, alpha=0.4, label="task accuracy")
    ax.plot(rounds, _smooth(accs, 10), lw=1.5, label="10-round mean")
    ax.plot(rounds, _running_mean(accs), lw=1.5, label="running mean")
    ax.set(xlabel="round (task)", ylabel="query accuracy before learning the task", ylim=(0, 1),
           title=title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def compare(run_dirs: list[Path], out: Path, window: int = 10) -> None:
    """10-round mean accuracy of several runs on the same stream (grey lines: domain changes)."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    # a run still going (or stopped) is drawn as far as it got, named by its directory
    names = [json.loads((d / "results.json").read_text())["learner"]
             if (d / "results.json").exists() else d.name for d in run_dirs]
    for i, d in enumerate(run_dirs):
        rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
        rows = [r for r in rows if "online/acc" in r]
        if i == 0:
            _boundaries(ax, [r["online/domain"] for r in rows])
        label = names[i] if names.count(names[i]) == 1 else f"{names[i]} ({d.name})"
        ax.plot([r["step"] for r in rows], _smooth([r["online/acc"] for r in rows], window),
                lw=1.5, label=label)
    ax.set(xlabel="round (task)", ylabel=f"accuracy before learning ({window}-round mean)",
           ylim=(0, 1))
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--window", type=int, default=10)
    a = p.parse_args()
    compare(a.runs, a.out, a.window)
