"""Keep a measured run as a record in results/: what was run, on what, and what it scored.

    python scripts/record_result.py <run dir> --name reptile_omniglot_5w1s \
        --target 90 --paper 97.68 --paper-source "Nichol et al. 2018, transductive" \
        [--note "..."] [--eval eval-test-20w1s5q-600ep-best.json]

With --eval, the record's test number is that re-score of the run (scripts/evaluate.py with
other ways, shots or episodes, written into the run dir) and its command is the evaluation's,
after the training command. With --crossdomain, the record is of the run scored on another
dataset (scripts/evaluate.py ... dataset=<name>, which also scores the references on the same
episodes) and goes to results/crossdomain/.

The record holds the run's overrides (so the command that reproduces it), its resolved
config, results.json (test mean ± CI, episodes, wall and CPU time, threads, processor,
commit), the validation curve from metrics.jsonl, and the paper's number and the target.
docs/results.md is rendered from these records (scripts/render_results.py), never typed.
"""
from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"


# the evaluation app's keys that a re-score file records, as overrides that reproduce it
EVAL_KEYS = {"split": "split", "checkpoint": "checkpoint", "episodes": "episodes",
             "ways": "task.ways", "shots": "task.shots", "query": "task.query"}


def _adapter_overrides(name: str, config: dict) -> list[str]:
    """`adapter=<name>` and an `adapter.<key>=<value>` for each value that differs from the
    adapter's YAML: a variant's command must reproduce it, the default's stays short."""
    path = ROOT / "metalearn" / "configs" / "adapter" / f"{name}.yaml"
    default = yaml.safe_load(path.read_text()) if path.is_file() else {}
    return [f"adapter={name}",
            *(f"adapter.{k}={json.dumps(v, separators=(',', ':'))}" for k, v in config.items()
              if k != "_target_" and (k not in default or default[k] != v))]


def _dataset_overrides(evaluation: dict) -> list[str]:
    """`dataset=<name>` and the dataset config's values, for a cross-domain score; the
    test-time adapter and its changed settings, if one was used."""
    adapter = (_adapter_overrides(evaluation["adapter"], evaluation.get("adapter_config") or {})
               if evaluation.get("adapter") else [])
    if "dataset_config" not in evaluation:
        return adapter
    given = {k: v for k, v in evaluation["dataset_config"].items() if k != "_target_"}
    return [f"dataset={evaluation['dataset']}",
            *(f"dataset.{k}={json.dumps(v, separators=(',', ':'))}" for k, v in given.items()),
            *adapter]


def build_crossdomain(run_dir: Path, name: str, eval_file: str, note: str | None) -> dict:
    trained = build_record(run_dir, name, None, None, None, None, eval_file)
    e, own = trained["evaluation"], json.loads((run_dir / "results.json").read_text())
    return {"name": name, "note": note, "recorded": trained["recorded"],
            "trained": trained["command"], "trained_test_acc": own["test_acc"],
            "command": e["command"], "dataset": e["dataset"], "split": e["split"],
            "ways": e["ways"], "shots": e["shots"], "query": e["query"],
            "episodes": e["episodes"], "acc": e["acc"], "acc_ci95": e["acc_ci95"],
            "references": e.get("references") or {}, "commit": own.get("commit")}


def build_record(run_dir: Path, name: str, target: float | None, paper: float | None,
                 paper_source: str | None, note: str | None, eval_file: str | None = None) -> dict:
    results = json.loads((run_dir / "results.json").read_text())
    evaluation = None
    if eval_file:
        evaluation = json.loads((run_dir / eval_file).read_text())
        results = {**results, "test_acc": evaluation["acc"], "test_acc_ci95": evaluation["acc_ci95"],
                   "test_loss": evaluation.get("loss"), "test_episodes": evaluation["episodes"]}
        evaluation["command"] = "python scripts/evaluate.py run_dir=<the run's dir> " + " ".join(
            [*(f"{key}={evaluation[k]}" for k, key in EVAL_KEYS.items() if k in evaluation),
             *_dataset_overrides(evaluation)])
    overrides = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text()) or []
    # where the run was written says nothing about the result: leave it out of the command
    overrides = [o for o in overrides
                 if not o.startswith(("hydra.run.dir=", "resume=", "overwrite="))]
    curve = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "val/acc" in row:
            curve.append([row["step"], row["val/acc"]])
    return {
        "name": name,
        "command": "python train.py " + " ".join(overrides),
        "overrides": overrides,
        "target": target,
        "paper": {"acc": paper, "source": paper_source} if paper is not None else None,
        "note": note,
        "recorded": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "results": results,
        "val_curve": curve,
        "config": yaml.safe_load((run_dir / "config.yaml").read_text()),
        **({"evaluation": evaluation} if evaluation else {}),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--name", required=True, help="the record's file name in results/")
    p.add_argument("--target", type=float, help="the accuracy (%%) the run is meant to reach")
    p.add_argument("--paper", type=float, help="the paper's accuracy (%%)")
    p.add_argument("--paper-source", help="who reported it, and in which setting")
    p.add_argument("--note", help="what differs from the preset or the paper, and why")
    p.add_argument("--eval", dest="eval_file", help="a re-score file in the run dir "
                   "(eval-*.json from scripts/evaluate.py) that gives the record's test number")
    p.add_argument("--crossdomain", metavar="EVAL_FILE", help="a cross-domain eval-*.json in the "
                   "run dir (scripts/evaluate.py ... dataset=<name>): a record in "
                   "results/crossdomain/ of the run on that dataset beside its references")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    if not (a.run_dir / "results.json").is_file():
        print(f"error: {a.run_dir} has no results.json: record a finished run", file=sys.stderr)
        return 2
    given = a.crossdomain or a.eval_file
    if given and not (a.run_dir / given).is_file():
        print(f"error: {a.run_dir / given} not found: give the name of an eval-*.json that "
              f"scripts/evaluate.py wrote into the run dir", file=sys.stderr)
        return 2
    if a.crossdomain:
        record = build_crossdomain(a.run_dir, a.name, a.crossdomain, a.note)
        out = a.out / "crossdomain"
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{a.name}.json").write_text(json.dumps(record, indent=1) + "\n")
        print(f"{out / a.name}.json: {100 * record['acc']:.2f}%")
        return 0
    record = build_record(a.run_dir, a.name, a.target, a.paper, a.paper_source, a.note,
                          a.eval_file)
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / f"{a.name}.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"{path}: {100 * record['results']['test_acc']:.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
