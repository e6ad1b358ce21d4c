"""A run directory or checkpoint someone else wrote builds nothing metalearn does not ship.

Payloads are planted in a real tiny run's config.yaml and in its checkpoints' stored config, then
loaded by every path that rebuilds a run: the evaluation app, inference.load (run dir and bare
.pt), metalearn-predict, training's resume=<dir> and an online resume=<dir>. Each must refuse in
one line naming the key and the target, and no marker file may appear (each payload writes it
when built; comment out the check in metalearn/safety.py and these tests see the marker)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from metalearn import inference, safety
from metalearn import checkpoint
from metalearn.engine.loop import train
from metalearn.errors import ConfigError
from metalearn.evaluate import run as evaluate
from metalearn.online.run import run_online
from tests.conftest import FAST, ROOT, compose_cfg

from tests.engine.conftest import TINY
ONLINE = ["online=ftml", "dataset=synthetic_domains", "dataset.image_size=12",
          "dataset.signal_size=6", "backbone.hidden=8", "logger=none", "device=cpu",
          "task.ways=3", "task.query=3", "online.efficiency.max_shots=0",
          "online.forgetting.domains=0", "online.learner.meta_batch_size=2",
          "online.learner.steps_per_round=1", "online/stream=iid", "online.stream.rounds=2"]


def payloads(marker: Path, source: Path) -> dict[str, tuple[str, str, object]]:
    """name -> (where in the config, the target, the node); each, when built, makes `marker`."""
    return {
        "dataset": ("dataset", "shutil.copyfile",
                    {"_target_": "shutil.copyfile", "src": str(source), "dst": str(marker)}),
        "nested": ("algo.hook", "runpy._run_module_code",
                   {"_target_": "runpy._run_module_code", "mod_name": "payload",
                    "code": f"open({str(marker)!r}, 'w').close()"}),
        "list": ("algo.hooks", "pathlib.Path.write_text",
                 [{"_target_": "pathlib.Path.write_text",
                   "_args_": [{"_target_": "pathlib.Path", "_args_": [str(marker)]}, "x"]}]),
    }


def plant(config: dict, where: str, node: object) -> dict:
    *parents, last = where.split(".")
    d = config
    for k in parents:
        d = d[k]
    d[last] = node
    return config


def key(where: str, node: object) -> str:
    return f"{where}[0]._target_" if isinstance(node, list) else f"{where}._target_"


def plant_checkpoint(path: Path, where: str, node: object) -> None:
    state = torch.load(path, weights_only=True)
    state["config"] = plant(state["config"], where, node)
    checkpoint.save(state, path)


def refused(call, marker: Path, where: str, target: str, node: object) -> str:
    """Run `call`; it must raise a one-line ConfigError naming the key and target, and build
    nothing (checked first: with the guard gone, some payload fails only after it ran)."""
    with pytest.raises(Exception) as e:
        call()
    assert not marker.exists(), f"the planted {target} ran"
    assert isinstance(e.value, ConfigError), repr(e.value)
    msg = str(e.value)
    assert f"{key(where, node)}={target}" in msg and "\n" not in msg, msg
    return msg


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1",
                                         "PYTHONPATH": str(ROOT)})


def one_error_line(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and all(n in last for n in needles), last


@pytest.fixture
def run(run_copy) -> Path:
    return run_copy


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "marker"


NAMES = ["dataset", "nested", "list"]


def test_the_shipped_targets_come_from_the_config_files():
    found = set()
    for f in (ROOT / "metalearn" / "configs").rglob("*.yaml"):
        safety._collect(yaml.safe_load(f.read_text()), found)
    assert safety.shipped() == found >= {"metalearn.algorithms.maml.MAML", "torch.optim.Adam",
                                         "metalearn.models.conv4.Conv4"}


@pytest.mark.parametrize("name", NAMES)
def test_the_evaluation_app_refuses_a_planted_config_yaml(run, marker, name):
    where, target, node = payloads(marker, run / "results.json")[name]
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump(plant(cfg, where, node)))
    msg = refused(lambda: evaluate([f"run_dir={run}"]), marker, where, target, node)
    assert msg.startswith(f"{run / 'config.yaml'}: ") and "METALEARN_ALLOW_TARGETS=" in msg


def test_the_evaluation_cli_refuses_in_one_line(run, marker):
    where, target, node = payloads(marker, run / "results.json")["nested"]
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump(plant(cfg, where, node)))
    one_error_line(cli("scripts/evaluate.py", f"run_dir={run}"), f"{where}._target_={target}")
    assert not marker.exists()


@pytest.mark.parametrize("bare", [False, True], ids=["run-dir", "bare-pt"])
@pytest.mark.parametrize("name", NAMES)
def test_inference_load_refuses_a_planted_checkpoint_config(run, marker, tmp_path, name, bare):
    where, target, node = payloads(marker, run / "results.json")[name]
    plant_checkpoint(run / "best.pt", where, node)
    path = shutil.copy(run / "best.pt", tmp_path / "shared.pt") if bare else run
    refused(lambda: inference.load(path), marker, where, target, node)


def test_a_checkpoint_config_that_is_a_yaml_string_is_refused(run, marker):
    state = torch.load(run / "best.pt", weights_only=True)
    state["config"] = (f"dataset: {{_target_: shutil.copyfile, src: {run / 'results.json'}, "
                       f"dst: {marker}}}")  # OmegaConf.create would parse it into nodes
    checkpoint.save(state, run / "best.pt")
    with pytest.raises(ConfigError, match="its config is a str, not a mapping"):
        inference.load(run)
    assert not marker.exists()


def test_metalearn_predict_refuses_in_one_line(run, marker, tmp_path, capsys):
    where, target, node = payloads(marker, run / "results.json")["dataset"]
    plant_checkpoint(run / "best.pt", where, node)
    for folder in (tmp_path / "support" / "a", tmp_path / "query"):
        folder.mkdir(parents=True)
        Image.new("L", (12, 12)).save(folder / "x.png")
    with pytest.raises(SystemExit) as e:
        inference.main([str(run), str(tmp_path / "support"), str(tmp_path / "query")])
    assert e.value.code == 2 and not marker.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and f"{where}._target_={target}" in err[0]


@pytest.mark.parametrize("name", NAMES)
def test_resume_from_a_run_dir_refuses_a_planted_checkpoint_config(run, marker, tmp_path, name):
    where, target, node = payloads(marker, run / "results.json")[name]
    for pt in checkpoint.RESUMABLE:
        if (run / pt).exists():
            plant_checkpoint(run / pt, where, node)
    refused(lambda: train(compose_cfg(*TINY, f"resume={run}"), tmp_path / "new"),
            marker, where, target, node)


def test_resume_cli_refuses_in_one_line(run, marker):
    where, target, node = payloads(marker, run / "results.json")["list"]
    for pt in checkpoint.RESUMABLE:
        if (run / pt).exists():
            plant_checkpoint(run / pt, where, node)
    one_error_line(cli("train.py", *TINY, f"resume={run}", "trainer.iterations=4"),
                   f"{where}[0]._target_={target}", "last.pt")
    assert not marker.exists()


@pytest.fixture(scope="module")
def online_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("online") / "run"
    run_online(compose_cfg(*ONLINE), run)
    return run


@pytest.mark.parametrize("name", NAMES)
def test_online_resume_from_a_run_dir_refuses_a_planted_checkpoint_config(
        online_run, marker, tmp_path, name):
    run = Path(shutil.copytree(online_run, tmp_path / "online"))
    (run / "results.json").unlink()  # an unfinished stream, as one would resume
    where, target, node = payloads(marker, run / "stream.json")[name]
    plant_checkpoint(run / "online.pt", where, node)
    refused(lambda: run_online(compose_cfg(*ONLINE, f"resume={run}"), tmp_path / "x"),
            marker, where, target, node)


def test_targets_hidden_in_interpolations_or_positional_args_are_refused(marker):
    hidden = {"a": 1, "algo": "${oc.decode:'{_target_: shutil.copyfile, src: a, dst: b}'}"}
    with pytest.raises(ConfigError, match=r"algo\._target_=shutil\.copyfile is not a class"):
        safety.checked(hidden, "x.pt")
    args = {"algo": {"_target_": "metalearn.algorithms.maml.MAML", "_args_": [1]}}
    with pytest.raises(ConfigError, match=r"x\.pt: algo\._args_ is refused"):
        safety.checked(args, "x.pt")
    fake = {"algo": {"_target_": "os.system\nerror: all fine"}}  # no second line faked
    with pytest.raises(ConfigError, match=r"_target_='os\.system\\nerror: all fine'"):
        safety.checked(fake, "x.pt")


def test_a_class_you_allow_loads(run, tmp_path, monkeypatch):
    (tmp_path / "myext.py").write_text("from metalearn.models.conv4 import Conv4 as MyNet\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    state = torch.load(run / "best.pt", weights_only=True)
    state["config"]["backbone"]["_target_"] = "myext.MyNet"
    checkpoint.save(state, run / "best.pt")
    with pytest.raises(ConfigError, match=r"backbone\._target_=myext\.MyNet is not a class .* "
                                          r"METALEARN_ALLOW_TARGETS=myext\.MyNet"):
        inference.load(run)
    monkeypatch.setenv(safety.ENV, "other.Thing, myext.MyNet")
    assert inference.load(run).learner is not None
    monkeypatch.delenv(safety.ENV)
    monkeypatch.setattr(safety, "_allowed", set())
    safety.allow("myext.*")
    assert inference.load(run).learner is not None


def test_a_cross_domain_dataset_given_as_a_yaml_string_is_refused(run, marker, tmp_path):
    # checked() sees a string; OmegaConf.create in cross_domains would parse it into a node
    node = f"{{_target_: shutil.copyfile, src: {run / 'results.json'}, dst: {marker}}}"
    for pt in checkpoint.RESUMABLE:
        if (run / pt).exists():
            plant_checkpoint(run / pt, "eval.datasets", {"x": node})
    with pytest.raises(ConfigError, match=r"eval\.datasets\.x: expected overrides or a dataset "
                                          r"config \(a mapping\), got a str"):
        train(compose_cfg(*TINY, f"resume={run}"), tmp_path / "new")
    assert not marker.exists()
