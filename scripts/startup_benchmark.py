"""How long `train.py` takes to answer when it does no work: --help, --cfg job, a config error.

    python scripts/startup_benchmark.py [--repeats 5] [--out docs/startup.json]

Each command runs `--repeats` times in a fresh process; prints and saves the median and worst
wall time, the peak memory (max RSS) and whether torch was imported. Timings depend on the
machine and its load: the JSON records both.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {
    "--help": ["--help"],
    "--cfg job": ["--cfg", "job"],
    "config error (task.ways=five)": ["task.ways=five"],
    "unknown key (trainer.iteration=5)": ["trainer.iteration=5"],
}
# Runs train.py's main() and reports afterwards whether torch was imported on the way.
PROBE = ("import atexit, sys; "
         "atexit.register(lambda: sys.stderr.write('\\ntorch imported: %s\\n' % ('torch' in sys.modules))); "
         "sys.argv = ['train.py'] + sys.argv[1:]; "
         "from metalearn.train import main; main()")


def run_once(args: list[str]) -> dict:
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", PROBE, *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read()
    proc.stderr.close()
    return {"wall_s": wall, "max_rss_mb": usage.ru_maxrss / 1024,
            "exit_code": os.waitstatus_to_exitcode(status),
            "torch_imported": "torch imported: True" in err}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "startup.json")
    args = parser.parse_args(argv)
    results = {}
    for name, cmd in COMMANDS.items():
        runs = [run_once(cmd) for _ in range(args.repeats)]
        walls = [r["wall_s"] for r in runs]
        results[name] = {"command": "python train.py " + " ".join(cmd),
                         "median_s": round(statistics.median(walls), 2),
                         "max_s": round(max(walls), 2),
                         "max_rss_mb": round(max(r["max_rss_mb"] for r in runs)),
                         "exit_code": runs[0]["exit_code"],
                         "torch_imported": any(r["torch_imported"] for r in runs)}
        r = results[name]
        print(f"{name:36s} median {r['median_s']:5.2f} s  max {r['max_s']:5.2f} s  "
              f"{r['max_rss_mb']:5d} MB  exit {r['exit_code']}  torch imported: {r['torch_imported']}")
    report = {"machine": {"cpu": _cpu(), "cores": os.cpu_count(), "python": platform.python_version(),
                          "load_average_1m": round(os.getloadavg()[0], 2)},
              "repeats": args.repeats, "env": {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
              "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"saved {args.out}")
    return report


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
