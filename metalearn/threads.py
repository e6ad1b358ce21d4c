"""Torch's intra-op threads per process: `threads: auto` (the config's root) or an integer.

torch starts one thread per core it sees, whatever else runs: on a shared machine, or with
several processes of one job (torchrun, a joblib multirun), those threads fight over the same
cores and a run goes many times slower. `auto` gives each process its share of the cores it
may run on. An `OMP_NUM_THREADS` the user set beats `auto` (not an integer in the config);
the run's first log line says which won.
"""
from __future__ import annotations

import os
from typing import Mapping

from metalearn.errors import ConfigError

# Set by train.py's main() before Hydra launches jobs: the user's OMP_NUM_THREADS (or empty),
# because joblib's process workers get an OMP_NUM_THREADS of joblib's own choosing.
USER_OMP_ENV = "METALEARN_USER_OMP_NUM_THREADS"

_applied: tuple[int, str] | None = None


def choose(setting: object, cores: int, sharing: int, env_omp: str | None = None) -> tuple[int, str]:
    """(threads, why) for `setting` (auto or an integer) on `cores` cores shared by `sharing`
    processes; `env_omp` is a user-set OMP_NUM_THREADS."""
    if setting != "auto":
        if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
            raise ConfigError(f"threads={setting}: expected auto or an integer >= 1")
        return setting, f"threads={setting}"
    if env_omp and env_omp.strip().isdigit() and int(env_omp) >= 1:
        return int(env_omp), f"OMP_NUM_THREADS={env_omp.strip()} in the environment, over threads=auto"
    n = max(1, cores // max(1, sharing))
    shared = f" / {sharing} processes" if sharing > 1 else ""
    return n, f"auto: {cores} cores{shared}"


def cores() -> int:
    """Cores this process may run on (taskset, cgroups' cpusets, SLURM), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def sharing(environ: Mapping[str, str] = os.environ) -> int:
    """Processes of this job on this machine: torchrun's local world, or a joblib multirun's
    concurrent jobs (n_jobs; -1 = one per core, as joblib reads it)."""
    local = environ.get("LOCAL_WORLD_SIZE", "")
    if local.isdigit() and int(local) > 1:
        return int(local)
    n_jobs = _joblib_jobs()
    if n_jobs is None:
        return 1
    return n_jobs if n_jobs > 0 else max(1, (os.cpu_count() or 1) + 1 + n_jobs)


def _joblib_jobs() -> int | None:
    try:
        from hydra.core.hydra_config import HydraConfig
        if not HydraConfig.initialized():
            return None
        launcher = HydraConfig.get().get("launcher")
    except Exception:
        return None
    if launcher is None or "joblib" not in str(launcher.get("_target_", "")).lower():
        return None
    n_jobs = launcher.get("n_jobs")
    return int(n_jobs) if isinstance(n_jobs, int) else None


def user_omp(environ: Mapping[str, str] = os.environ) -> str | None:
    """OMP_NUM_THREADS as the user gave it to the command (train.py recorded it before any
    launcher could set its own)."""
    if USER_OMP_ENV in environ:
        return environ[USER_OMP_ENV] or None
    return environ.get("OMP_NUM_THREADS") or None


def apply(setting: object = "auto") -> tuple[int, str]:
    """Set torch's intra-op threads for this process; (threads, why), also kept for `summary`."""
    import torch

    global _applied
    _applied = choose(setting, cores(), sharing(), user_omp())
    torch.set_num_threads(_applied[0])
    return _applied


def summary() -> str:
    """`threads N (why)` once `apply` ran in this process, else torch's own count."""
    import torch

    if _applied is None or _applied[0] != torch.get_num_threads():
        return f"threads {torch.get_num_threads()}"
    return f"threads {_applied[0]} ({_applied[1]})"
