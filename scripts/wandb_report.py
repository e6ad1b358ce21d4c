"""Set up a W&B report for a sweep: val/acc curves grouped by each swept key, and a
parallel-coordinates panel from the swept keys to val/best_acc and test/acc.

    python scripts/wandb_report.py --entity me --sweep-file sweeps/wandb/maml_omniglot_grid.yaml --sweep <id>
    python scripts/wandb_report.py --entity me --group 2026-11-26_16-28-47 --keys algo.inner_lr algo.adaptation_steps

The runs are a W&B sweep's (`--sweep <id>`) or a Hydra multirun's (`--group`: its runs share
the sweep dir's name as their W&B group). The swept keys come from `--keys` or from the sweep
file's parameters that take more than one value. Needs `pip install wandb-workspaces` and a
W&B login; without `--save` it only builds the report and prints its panels.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

METRICS = ("val/best_acc", "test/acc")


def swept_keys(sweep_file: Path) -> list[str]:
    """Parameters of a W&B sweep file that vary (a list of values or a distribution)."""
    params = yaml.safe_load(sweep_file.read_text()).get("parameters", {})
    return [k for k, spec in params.items()
            if isinstance(spec, dict) and "value" not in spec
            and not (isinstance(spec.get("values"), list) and len(spec["values"]) < 2)]


def build_report(entity: str, project: str, keys: list[str], group: str | None = None,
                 sweep: str | None = None, title: str | None = None) -> Any:
    import wandb_workspaces.reports.v2 as wr

    if (group is None) == (sweep is None):
        raise ValueError("give the runs as exactly one of a group or a sweep id")
    if not keys:
        raise ValueError("no swept keys: pass --keys or a sweep file with a varying parameter")
    which = f"Metric('Group') == '{group}'" if group else f"Metric('Sweep') == '{sweep}'"
    runset = wr.Runset(entity=entity, project=project, name=group or f"sweep {sweep}",
                       filters=which)
    curves = [wr.LinePlot(title=f"val/acc by {k}", x="Step", y=["val/acc"],
                          groupby=f"config.{k}", groupby_aggfunc="mean",
                          groupby_rangefunc="minmax", legend_position="south") for k in keys]
    columns = [wr.ParallelCoordinatesPlotColumn(f"c::{k}") for k in keys]
    columns += [wr.ParallelCoordinatesPlotColumn(f"summary:{m}") for m in METRICS]
    grid = wr.PanelGrid(runsets=[runset], panels=[
        *curves, wr.ParallelCoordinatesPlot(columns=columns, title="swept keys -> accuracy")])
    return wr.Report(project=project, entity=entity, title=title or f"{group or sweep}: "
                     f"{', '.join(keys)}", description="val/acc curves grouped by each swept "
                     "key; parallel coordinates to the best validation and test accuracy",
                     blocks=[grid])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entity", required=True, help="W&B entity (user or team)")
    ap.add_argument("--project", default="metalearn")
    runs = ap.add_mutually_exclusive_group(required=True)
    runs.add_argument("--group", help="a Hydra multirun's W&B group (<date>_<time>)")
    runs.add_argument("--sweep", help="a W&B sweep id")
    ap.add_argument("--keys", nargs="+", default=[], help="swept config keys, e.g. algo.inner_lr")
    ap.add_argument("--sweep-file", type=Path, help="take the swept keys from this sweep file")
    ap.add_argument("--title")
    ap.add_argument("--save", action="store_true", help="save the report to W&B and print its URL")
    args = ap.parse_args(argv)
    keys = args.keys or (swept_keys(args.sweep_file) if args.sweep_file else [])
    try:
        report = build_report(args.entity, args.project, keys, args.group, args.sweep, args.title)
    except ImportError:
        print("error: scripts/wandb_report.py needs wandb-workspaces: pip install wandb-workspaces",
              file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for panel in report.blocks[0].panels:
        print(f"{type(panel).__name__}: {panel.title}")
    if args.save:
        report.save()
        print(report.url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
