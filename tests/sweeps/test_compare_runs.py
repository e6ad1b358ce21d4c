"""compare_runs on a folder of mixed runs: only what differs, legend off the plot, CI bands."""
import json
import sys

import yaml

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import compare_runs  # noqa: E402


def _run(root, name, algo, lr, accs, test, extra=None):
    d = root / name
    d.mkdir(parents=True)
    config = {"algo": {"_target_": f"metalearn.algorithms.x.{algo}", "lr": lr,
                       **({"inner_lr": 0.4, "steps": 1} if algo == "MAML" else {"distance": "l2"})},
              "task": {"ways": 5}, "paths": {"data_dir": str(d)}, "seed": 0}
    (d / "config.yaml").write_text(yaml.safe_dump(config))
    (d / "metrics.jsonl").write_text("".join(
        json.dumps({"step": 10 * (i + 1), "val/acc": a, "val/acc_ci95": 0.02}) + "\n"
        for i, a in enumerate(accs)))
    (d / "results.json").write_text(json.dumps({"test_acc": test, "test_acc_ci95": 0.01,
                                                "best_val_acc": max(accs), "wall_time_s": 3.0,
                                                **(extra or {})}))


def test_mixed_runs_are_labelled_by_what_differs_and_plotted_with_ci(tmp_path):
    _run(tmp_path, "a", "MAML", 0.001, [0.5, 0.6], 0.61)
    _run(tmp_path, "b", "MAML", 0.01, [0.4, 0.7], 0.69, {"test/cub/acc": 0.3,
                                                        "test/cub/acc_ci95": 0.02})
    _run(tmp_path, "c", "ProtoNet", 0.001, [0.55, 0.65], 0.66)
    runs = compare_runs.collect([tmp_path])
    labels = {r["run"]: r["label"] for r in runs}
    # no paths.data_dir, seed or task.ways; ProtoNet's and MAML's own options collapse to algo=
    assert labels == {"a": "algo=MAML algo.lr=0.001", "b": "algo=MAML algo.lr=0.01",
                      "c": "algo=ProtoNet algo.lr=0.001"}
    header, rows = compare_runs.table(runs)
    assert header[-2] == "test cub acc %" and rows[1][-2] == "30.00 ± 2.00"
    assert rows[0][4] == "61.00 ± 1.00"
    fig = compare_runs.figure(runs)
    ax = fig.axes[0]
    bands = [c for c in ax.collections if type(c).__name__ in ("PolyCollection", "FillBetweenPolyCollection")]
    assert len(bands) == 3
    fig.canvas.draw()
    legend, axes = ax.get_legend().get_window_extent(), ax.get_window_extent()
    assert legend.y1 <= axes.y0, "the legend covers the plot"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [labels[r] for r in "abc"]
