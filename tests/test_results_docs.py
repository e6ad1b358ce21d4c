"""docs/results.md shows what the run records in results/ say, and nothing typed over them."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import render_results  # noqa: E402


def test_docs_results_is_rendered_from_the_records():
    records = render_results.load()
    doc = render_results.DOC.read_text()
    assert render_results.render(records, render_results.comparisons(),
                                 render_results.crossdomain()) in doc, \
        "docs/results.md is stale: run python scripts/render_results.py"
    for r in records:  # every record carries what a reader needs to trust and rerun it
        res = r["results"]
        assert r["command"].startswith("python train.py ")
        for key in ("test_acc", "test_acc_ci95", "test_episodes", "wall_time_s", "cpu_time_s",
                    "threads", "processor", "commit", "iterations"):
            assert res.get(key) is not None, (r["name"], key)
    if any(r["val_curve"] for r in records):
        assert render_results.FIGURE.is_file()


def test_the_check_fails_when_a_number_is_retyped(tmp_path, monkeypatch):
    records = tmp_path / "results"
    records.mkdir()
    record = {"name": "x", "command": "python train.py a=1", "overrides": ["a=1"], "target": 90,
              "paper": {"acc": 97.7, "source": "someone"}, "note": None, "recorded": "2026-12-03",
              "results": {"test_acc": 0.9123, "test_acc_ci95": 0.005, "test_episodes": 600,
                          "iterations": 10, "wall_time_s": 60, "cpu_time_s": 50, "threads": 1,
                          "cpus": 2, "processor": "cpu", "commit": "abc"},
              "val_curve": [[5, 0.8], [10, 0.9]], "config": {}}
    (records / "x.json").write_text(json.dumps(record))
    doc = tmp_path / "results.md"
    doc.write_text("# Results\n\nprose\n")
    monkeypatch.setattr(render_results, "RESULTS", records)
    monkeypatch.setattr(render_results, "DOC", doc)
    monkeypatch.setattr(render_results, "FIGURE", tmp_path / "img" / "c.png")
    monkeypatch.setattr(render_results, "ROOT", tmp_path)
    assert render_results.main([]) == 0
    assert "**91.23 ± 0.50%**" in doc.read_text() and "**met**" in doc.read_text()
    assert (tmp_path / "img" / "c.png").is_file()
    assert render_results.main(["--check"]) == 0
    doc.write_text(doc.read_text().replace("91.23", "97.00"))
    assert render_results.main(["--check"]) == 1


def test_a_rescore_becomes_the_records_test_number_with_its_command(tmp_path):
    import record_result
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("- task.ways=5\n- hydra.run.dir=/x\n")
    (run / "config.yaml").write_text("task: {ways: 5}\n")
    (run / "metrics.jsonl").write_text(json.dumps({"step": 10, "val/acc": 0.9}) + "\n")
    (run / "results.json").write_text(json.dumps({"test_acc": 0.98, "test_acc_ci95": 0.003,
                                                  "test_episodes": 600, "iterations": 10}))
    (run / "eval-test-20w1s5q-600ep-best.json").write_text(json.dumps(
        {"acc": 0.949, "acc_ci95": 0.0026, "loss": 0.18, "episodes": 600, "split": "test",
         "checkpoint": "best", "ways": 20, "shots": 1, "query": 5}))
    out = tmp_path / "results"
    assert record_result.main([str(run), "--name", "r", "--out", str(out),
                               "--eval", "missing.json"]) == 2
    assert record_result.main([str(run), "--name", "r", "--out", str(out),
                               "--eval", "eval-test-20w1s5q-600ep-best.json"]) == 0
    r = json.loads((out / "r.json").read_text())
    assert r["results"]["test_acc"] == 0.949 and r["results"]["iterations"] == 10
    assert r["command"] == "python train.py task.ways=5"
    assert "task.ways=20" in r["evaluation"]["command"]
    section = render_results.render([r])
    assert "**94.90 ± 0.26%**" in section and r["evaluation"]["command"] in section


def _crossdomain_run(tmp_path, **evaluation):
    """A run dir with one digits score in it (`evaluation` adds to or replaces its keys);
    returns the dir and the score file's name."""
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("- experiment=e\n- hydra.run.dir=/x\n")
    (run / "config.yaml").write_text("task: {ways: 5}\n")
    (run / "metrics.jsonl").write_text("")
    (run / "results.json").write_text(json.dumps({"test_acc": 0.97, "test_acc_ci95": 0.003,
                                                  "test_episodes": 600, "iterations": 10,
                                                  "commit": "abc1234"}))
    name = "eval-all-digits-0a1b2c3d-5w1s5q-600ep-best.json"
    (run / name).write_text(json.dumps(
        {"acc": 0.71, "acc_ci95": 0.009, "loss": 0.8, "episodes": 600, "split": "all",
         "checkpoint": "best", "ways": 5, "shots": 1, "query": 5, "dataset": "digits",
         "dataset_config": {"_target_": "metalearn.data.digits.load_digits", "image_size": 28},
         "references": {"pixels": {"acc": 0.655, "acc_ci95": 0.01},
                        "untrained": {"acc": 0.6, "acc_ci95": 0.01}}, **evaluation}))
    return run, name


def test_a_cross_domain_score_is_recorded_beside_its_references_and_rendered(tmp_path):
    import record_result
    run, name = _crossdomain_run(tmp_path)
    out = tmp_path / "results"
    assert record_result.main([str(run), "--name", "m_digits", "--out", str(out),
                               "--crossdomain", name]) == 0
    r = json.loads((out / "crossdomain" / "m_digits.json").read_text())
    assert r["trained"] == "python train.py experiment=e" and r["acc"] == 0.71
    assert "dataset=digits" in r["command"] and "split=all" in r["command"]
    assert "dataset.image_size=28" in r["command"] and "task.shots=1" in r["command"]
    section = render_results.render([], None, [r])
    assert "| **71.00 ± 0.90%** | 65.50 ± 1.00% | 60.00 ± 1.00% | +5.5 |" in section
    assert r["trained"] in section and r["command"] in section


def test_a_cross_domain_command_names_the_adapter_settings_that_differ_from_its_yaml(tmp_path):
    import record_result
    config = {"_target_": "metalearn.algorithms.transductive.TransductiveFineTune",
              "entropy_weight": 0.5, "steps": 100, "lr": 0.01, "momentum": 0.9,
              "weight_decay": 0.001, "augment": "none", "scale": 10.0, "seed": 0}
    run, name = _crossdomain_run(tmp_path, adapter="transductive", adapter_config=config)
    out = tmp_path / "results"
    assert record_result.main([str(run), "--name", "v", "--out", str(out),
                               "--crossdomain", name]) == 0
    command = json.loads((out / "crossdomain" / "v.json").read_text())["command"]
    assert command.endswith(' adapter=transductive adapter.entropy_weight=0.5 '
                            'adapter.augment="none"')
