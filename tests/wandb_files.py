"""Read offline W&B runs back with W&B's own reader (`wandb leet inspect --json`)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def find_run_file(run_dir: str | Path) -> Path:
    """The `.wandb` file W&B wrote under a metalearn run directory (the newest, by the start
    time in its folder name: a run that fell back to offline leaves its failed online one)."""
    files = sorted(Path(run_dir).glob("wandb/*run-*/run-*.wandb"),
                   key=lambda f: f.parent.name.split("-")[-2])
    if not files:
        raise FileNotFoundError(f"no W&B run file under {run_dir}/wandb")
    return files[-1]


def records(path: str | Path, wait_for_exit: float = 15) -> list[dict[str, Any]]:
    """The run file's records, once wandb's writer has flushed the final `exit` record (it may
    lag a moment behind `run.finish()` returning)."""
    deadline = time.time() + wait_for_exit
    while True:
        out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(path)],
                             capture_output=True, text=True, timeout=120, check=True).stdout
        recs = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        if any(r["type"] == "exit" for r in recs) or time.time() > deadline:
            return recs
        time.sleep(0.5)


def read_run(path: str | Path) -> dict[str, Any]:
    """{'config', 'history': [{key: value}, ...], 'summary', 'run': {'id', 'name', 'group'}}."""
    config: dict[str, Any] = {}
    history, summary, run = [], {}, {}
    for r in records(path):
        body = r.get(r["type"], {})
        if r["type"] == "run":
            run = {"id": body.get("run_id"), "name": body.get("display_name"),
                   "group": body.get("run_group"), "tags": body.get("tags", [])}
            config.update(body.get("config", {}).get("update", {}))
        elif r["type"] == "config":
            config.update(body.get("update", {}))
        elif r["type"] == "history":
            history.append(body.get("item", {}))
        elif r["type"] == "summary":
            summary.update(body.get("update", {}))
    config.pop("_wandb", None)
    return {"config": config, "history": history, "summary": summary, "run": run}
