"""The other ways to launch many jobs: Optuna, W&B sweep agents, submitit."""
import itertools
import json
import subprocess
import sys

import pytest
import yaml
from omegaconf import OmegaConf

from tests.conftest import CONFIGS, ROOT, compose_cfg
from tests.sweeps.conftest import TINY, train_cli

SWEEP_FILES = sorted((ROOT / "sweeps" / "wandb").glob("*.yaml"))


def test_optuna_sweep_writes_best_params(tmp_path):
    sweep = tmp_path / "optuna"
    train_cli("-m", "hparams_search=maml_omniglot", *TINY, "hydra.sweeper.n_trials=3",
              f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) == {"algo.inner_lr", "algo.adaptation_steps", "optimizer.lr"}
    trials = [json.loads((sweep / str(i) / "results.json").read_text()) for i in range(3)]
    # maximised: the best value is the highest best_val_acc that train.py returned
    assert best["best_value"] == pytest.approx(max(t["best_val_acc"] for t in trials))
    p = best["best_params"]
    assert 0.01 <= p["algo.inner_lr"] <= 1.0 and 1 <= p["algo.adaptation_steps"] <= 5
    assert 1e-4 <= p["optimizer.lr"] <= 1e-2
    # the trial's overrides reached the job's config (TINY's dataset beat the search's omniglot)
    winner = next(i for i, t in enumerate(trials) if t["best_val_acc"] == best["best_value"])
    cfg = yaml.safe_load((sweep / str(winner) / "config.yaml").read_text())
    assert cfg["algo"]["inner_lr"] == pytest.approx(p["algo.inner_lr"])
    assert cfg["dataset"]["_target_"].endswith("load_synthetic")


def _agent_commands(sweep_file):
    """The argv the W&B agent builds for this sweep file, for a few sampled parameter sets
    (wandb's own command builder; `${interpreter}` etc. substituted as wandb_agent.py does)."""
    from wandb.sdk.launch.sweeps import utils as sweep_utils

    spec = yaml.safe_load(sweep_file.read_text())
    choices = {}
    for key, p in spec["parameters"].items():
        if "value" in p:
            choices[key] = [p["value"]]
        elif "values" in p:
            choices[key] = p["values"]
        else:  # a distribution: its ends (ints stay ints, like the agent's int_uniform)
            choices[key] = [p["min"], p["max"]]
    for combo in itertools.product(*choices.values()):
        args = {k: {"value": v} for k, v in zip(choices, combo)}
        sweep_vars = sweep_utils.create_sweep_command_args({"args": args})
        sweep_vars.update(interpreter=[sys.executable], program=[spec["program"]], env=[])
        argv = []
        for c in sweep_utils.create_sweep_command(spec["command"]):
            if c.startswith("${") and c.endswith("}"):
                argv += sweep_vars.get(c[2:-1]) or []
            else:
                argv.append(c)
        yield dict(zip(choices, combo)), argv


@pytest.mark.parametrize("sweep_file", SWEEP_FILES, ids=lambda p: p.stem)
def test_wandb_sweep_file_arguments_are_hydra_overrides(sweep_file):
    spec = yaml.safe_load(sweep_file.read_text())
    assert spec["program"] == "train.py" and spec["method"] in ("grid", "bayes")
    assert spec["metric"] == {"name": "val/best_acc", "goal": "maximize"}
    assert (ROOT / spec["program"]).exists()
    n = 0
    for values, argv in _agent_commands(sweep_file):
        assert argv[:2] == [sys.executable, "train.py"]
        overrides = argv[2:]
        assert all("=" in a and not a.startswith("-") for a in overrides), overrides
        cfg = compose_cfg(*overrides)
        for key, value in values.items():
            if key != "experiment":
                assert OmegaConf.select(cfg, key) == pytest.approx(value), key
        n += 1
    assert n >= 2


def test_wandb_agent_command_runs_through_train_py_parser(tmp_path):
    """The rendered command, as a process: train.py's Hydra parser accepts it."""
    values, argv = next(_agent_commands(ROOT / "sweeps" / "wandb" / "maml_omniglot_grid.yaml"))
    proc = subprocess.run([*argv, "--cfg", "job"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    cfg = yaml.safe_load(proc.stdout)
    assert cfg["algo"]["inner_lr"] == values["algo.inner_lr"]
    assert cfg["algo"]["adaptation_steps"] == values["algo.adaptation_steps"]
    preset = yaml.safe_load((ROOT / "metalearn" / "configs" / "experiment" /
                             "omniglot_5w1s_cpu.yaml").read_text())
    assert cfg["trainer"]["iterations"] == preset["trainer"]["iterations"]  # the preset applied


def test_submitit_local_launcher_runs_two_jobs(tmp_path):
    sweep = tmp_path / "submitit"
    train_cli("-m", "hydra/launcher=submitit_local", *TINY, "algo.adaptation_steps=1,2",
              f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    for num, steps in (("0", 1), ("1", 2)):
        assert json.loads((sweep / num / "results.json").read_text())["iterations"] == 2
        assert yaml.safe_load((sweep / num / "config.yaml").read_text())["algo"]["adaptation_steps"] == steps
    assert list((sweep / ".submitit").glob("*/*_result.pkl"))  # really went through submitit


def test_slurm_preset_extends_the_plugin_and_requeues(monkeypatch):
    monkeypatch.setenv("METALEARN_SLURM_PARTITION", "gpu")
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert launcher.partition == "gpu" and launcher.account is None
    assert launcher.gpus_per_node == 1 and launcher.max_num_timeout > 0
    assert launcher.signal_delay_s >= 60
