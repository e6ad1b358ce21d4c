"""Torch threads per process (`threads=auto|N`): each process's share of its cores, in the log."""
import logging

import pytest
import torch

from metalearn import threads
from metalearn.engine.loop import train
from metalearn.errors import ConfigError
from tests.conftest import FAST, compose_cfg


@pytest.mark.parametrize("cores, sharing, expected", [
    (2, 1, 2),    # one run on a 2-core machine
    (16, 4, 4),   # torchrun --nproc_per_node=4, or a joblib sweep of 4 jobs
    (2, 4, 1),    # more processes than cores: still one thread each
    (1, 1, 1),    # taskset -c 0
])
def test_auto_is_the_cores_divided_by_the_processes_sharing_them(cores, sharing, expected):
    n, why = threads.choose("auto", cores, sharing)
    assert n == expected
    assert why.startswith("auto: ")


def test_a_user_set_omp_num_threads_beats_auto_but_not_an_explicit_number():
    assert threads.choose("auto", 16, 1, env_omp="3") == (
        3, "OMP_NUM_THREADS=3 in the environment, over threads=auto")
    assert threads.choose(5, 16, 1, env_omp="3") == (5, "threads=5")
    assert threads.choose("auto", 16, 2, env_omp="junk")[0] == 8


@pytest.mark.parametrize("bad", [0, -1, "four", True])
def test_a_bad_setting_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="threads="):
        threads.choose(bad, 4, 1)


def test_sharing_reads_torchruns_local_world_size():
    assert threads.sharing({"LOCAL_WORLD_SIZE": "4"}) == 4
    assert threads.sharing({}) == 1


def test_the_user_omp_recorded_before_a_launcher_wins_over_the_launchers_own():
    # joblib's workers inherit an OMP_NUM_THREADS joblib chose; train.py recorded the user's
    assert threads.user_omp({"OMP_NUM_THREADS": "1", threads.USER_OMP_ENV: ""}) is None
    assert threads.user_omp({"OMP_NUM_THREADS": "1", threads.USER_OMP_ENV: "2"}) == "2"
    assert threads.user_omp({"OMP_NUM_THREADS": "1"}) == "1"


def test_a_bad_threads_value_is_refused_by_the_config_check(tmp_path):
    with pytest.raises(ConfigError, match="threads=0: expected auto or an integer >= 1"):
        train(compose_cfg(*FAST, "threads=0"), tmp_path)


@pytest.mark.parametrize("setting", ["auto", "1"])
def test_a_run_sets_and_logs_its_threads(tmp_path, monkeypatch, caplog, setting):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv(threads.USER_OMP_ENV, raising=False)
    monkeypatch.setattr(threads, "cores", lambda: 3)  # a number torch would not pick by itself
    torch.set_num_threads(2)
    with caplog.at_level(logging.INFO, logger="metalearn.train"):
        train(compose_cfg(*FAST, f"threads={setting}"), tmp_path)
    expected = 3 if setting == "auto" else 1
    assert torch.get_num_threads() == expected
    first = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("run: "))
    why = "auto: 3 cores" if setting == "auto" else "threads=1"
    assert first.endswith(f", threads {expected} ({why})")
