"""The main job's pace alone and beside another job's threads, on this machine.

    python scripts/pace_benchmark.py [--iterations 300] [--out docs/pace.json]

Runs the README's main job (experiment=omniglot_5w1s_cpu, which sets threads: 1) for
`--iterations` meta-iterations three ways: alone; beside a busy neighbour (a process doing
matrix products with torch's default threads, one per core, as a notebook or a second run
left at its defaults does); and beside that neighbour with torch's default threads instead
of the preset's one (`threads=<cores>`). Prints and saves meta-iterations per second from each
run's results.json (train_time_s: training only). Needs Omniglot where the main job reads it.

    python scripts/pace_benchmark.py --commits OLD NEW [--rounds 3] [--out FILE.json]

instead runs the main job alone at two commits (each checked out in a temporary worktree),
alternating OLD, NEW, OLD, NEW, ... so that both see the same machine, and counts meta-
iterations per second of the process's CPU time (steady when other jobs share the machine);
prints each pace and NEW's as a fraction of OLD's (the median round).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# matrix products on every core with torch's own thread count, until killed
NEIGHBOUR = ("import torch; a = torch.randn(512, 512)\n"
             "while True: a = torch.tanh(a @ a)")


def pace(iterations: int, extra: list[str], neighbour: bool, root: Path = ROOT,
         cpu: bool = False) -> tuple[float, str]:
    """Meta-iterations per second of training time; with `cpu`, per second of the process's
    CPU time instead (start-up and the short evaluations included: a slight bias towards 1 in
    a ratio, but steady on a machine other jobs share, where wall time is not)."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
        busy = subprocess.Popen([sys.executable, "-c", NEIGHBOUR], env=env) if neighbour else None
        try:
            time.sleep(2 if busy else 0)  # the neighbour at full speed first
            subprocess.run([sys.executable, "train.py", "experiment=omniglot_5w1s_cpu",
                            "logger=none", f"trainer.iterations={iterations}",
                            f"trainer.eval_every={iterations}", "trainer.val_episodes=10",
                            "trainer.test_episodes=10", *extra, f"hydra.run.dir={tmp}/run"],
                           cwd=root, env=env, check=True, stdout=subprocess.DEVNULL)
        finally:
            if busy:
                busy.kill()
                busy.wait()
        results = json.loads((Path(tmp) / "run" / "results.json").read_text())
    spent = results["cpu_time_s"] if cpu else results["train_time_s"]
    return iterations / spent, results.get("processor", "?")


def at_commits(commits: list[str], iterations: int, rounds: int) -> dict:
    """The main job's pace at each commit, `rounds` times, alternating between them."""
    with tempfile.TemporaryDirectory() as tmp:
        trees = {}
        for c in commits:
            trees[c] = Path(tmp) / c
            subprocess.run(["git", "worktree", "add", "-q", "--detach", str(trees[c]), c],
                           cwd=ROOT, check=True)
        try:
            paces = {c: [] for c in commits}
            for r in range(rounds):
                for c in commits:
                    rate, processor = pace(iterations, [], False, trees[c], cpu=True)
                    paces[c].append(round(rate, 3))
                    print(f"round {r + 1}, {c}: {rate:.3f} it per CPU second", flush=True)
        finally:
            for tree in trees.values():
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT)
    old, new = (sorted(paces[c])[len(paces[c]) // 2] for c in commits)
    return {"its_per_cpu_s": paces, "median_ratio_new_over_old": round(new / old, 3),
            "processor": processor}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--commits", nargs=2, metavar=("OLD", "NEW"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "pace.json")
    a = p.parse_args(argv)
    if a.commits:
        report = {"iterations": a.iterations, "commits": a.commits, "machine": platform.machine(),
                  **at_commits(a.commits, a.iterations, a.rounds),
                  "measured": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
        print(f"{a.commits[1]} runs at {report['median_ratio_new_over_old']}x the pace of "
              f"{a.commits[0]} (median of {a.rounds} rounds)")
        a.out.write_text(json.dumps(report, indent=1) + "\n")
        print(f"saved {a.out}")
        return 0
    cores = len(os.sched_getaffinity(0))
    cases = {"alone (threads: 1, the preset)": ([], False),
             "beside a busy neighbour (threads: 1, the preset)": ([], True),
             f"beside a busy neighbour (threads={cores}, torch's default)": ([f"threads={cores}"], True)}
    rows = {}
    for name, (extra, neighbour) in cases.items():
        rate, processor = pace(a.iterations, extra, neighbour)
        rows[name] = round(rate, 3)
        print(f"{name}: {rows[name]} it/s", flush=True)
    report = {"iterations": a.iterations, "cores": cores, "processor": processor,
              "machine": platform.machine(), "its_per_s": rows,
              "measured": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
    a.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"saved {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
