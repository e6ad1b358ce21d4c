"""scripts/wandb_report.py builds its report offline (saving it needs a W&B login)."""
import sys

import pytest

from tests.conftest import ROOT

pytest.importorskip("wandb_workspaces")  # the optional [sweeps] extra
sys.path.insert(0, str(ROOT / "scripts"))
import wandb_report  # noqa: E402


def test_sweep_file_keys_become_grouped_curves_and_parallel_coordinates():
    keys = wandb_report.swept_keys(ROOT / "sweeps" / "wandb" / "maml_omniglot_grid.yaml")
    assert keys == ["algo.inner_lr", "algo.adaptation_steps"]  # not the fixed experiment
    report = wandb_report.build_report("me", "metalearn", keys, sweep="abc123")
    grid = report.blocks[0]
    assert grid.runsets[0].filters == "Metric('Sweep') == 'abc123'"
    curves, parallel = grid.panels[:-1], grid.panels[-1]
    assert [(p.y, p.groupby) for p in curves] == [(["val/acc"], f"config.{k}") for k in keys]
    assert [c.metric for c in parallel.columns] == [
        "c::algo.inner_lr", "c::algo.adaptation_steps", "summary:val/best_acc", "summary:test/acc"]
    bayes = wandb_report.swept_keys(ROOT / "sweeps" / "wandb" / "maml_omniglot_bayes.yaml")
    assert bayes == ["algo.inner_lr", "algo.adaptation_steps", "optimizer.lr"]
    with pytest.raises(ValueError, match="exactly one of a group or a sweep"):
        wandb_report.build_report("me", "metalearn", keys)
