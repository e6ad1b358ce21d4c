"""The evaluation app: `metalearn-eval run_dir=<run> [episodes=...] [task.shots=...]` (Hydra).

Loads a finished run's `config.yaml` and checkpoint, rebuilds data and learner with the training
loop's own `build()`/`samplers()` and scores `episodes` tasks drawn from `trainer.eval_seed`, so
with the run's settings it reproduces its `results.json`. Options: metalearn/configs/eval.yaml.
"""
from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

import metalearn  # noqa: F401  (silences gym's import banner before learn2learn loads)
from metalearn import safety
from metalearn.algorithms.base import MetaLearner
from metalearn.data.base import FewShotDataset
from metalearn import checkpoint, io
from metalearn.io import disk_error
from metalearn.engine.evaluation import (cross_domains, cross_line, evaluate_domains,
                                         evaluate_split, result_key)
from metalearn.engine.distributed import resolve_device
from metalearn.engine.loop import build, samplers, seed_everything
from metalearn import threads
from metalearn.errors import ConfigError
from metalearn.cli import hydra_raises, report, say

log = logging.getLogger("metalearn.evaluate")


def load_run(run_dir: Path, which: str, device: str | None = None
             ) -> tuple[DictConfig, FewShotDataset, MetaLearner, torch.device]:
    """A run's config, dataset and learner holding its `which` checkpoint (on the run's device
    unless `device` is given)."""
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir}/config.yaml not found: run_dir must be a training run's "
                          f"output directory")
    cfg = safety.load_config(run_dir / "config.yaml")  # someone else's file: builds no code
    where = resolve_device(device or cfg.device)
    seed_everything(cfg.seed)
    data, algo = build(cfg, where)  # with the training ways: the checkpoint's shapes
    algo.load_state_dict(checkpoint.load(run_dir / f"{which}.pt", where)["model"])
    return cfg, data, algo, where


class Progress:
    """Logs every `every` episodes (a 2,000-episode evaluation on CPU runs for minutes)."""

    def __init__(self, total: int, every: int) -> None:
        self.total, self.every, self.logged = total, max(1, every), 0
        self.start = time.monotonic()

    def __call__(self, done: int) -> None:
        if done // self.every > self.logged // self.every or done == self.total:
            self.logged = done
            spent = time.monotonic() - self.start
            left = spent / done * (self.total - done)
            log.info(f"episodes {done}/{self.total} ({spent:.0f} s, ~{left:.0f} s left)")


def config_tag(name: str, node: DictConfig) -> str:
    """`name` and a short hash of the whole config node: two image folders under one dataset
    name, or two settings of one adapter, write two result files instead of one overwriting
    the other."""
    cfg = OmegaConf.to_container(node, resolve=True)
    digest = hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()
    return f"{name}-{digest[:8]}"


def score(cfg: DictConfig, data: FewShotDataset, algo: MetaLearner, split: str, episodes: int,
          ways: int, shots: int, query: int, device: torch.device,
          progress: Progress | None = None) -> dict[str, float]:
    """Accuracy ± 95% CI on `episodes` fixed tasks of `data`'s `split`."""
    algo.check_ways(ways)
    sample = samplers(cfg, data, device, ways=ways, shots=shots, query=query)
    tc = cfg.trainer
    return evaluate_split(algo, sample, split, episodes, tc.eval_batch_size, tc.eval_seed,
                          progress=progress)


def evaluate_run(ecfg: DictConfig, dataset_name: str | None = None,
                 adapter_name: str | None = None) -> dict[str, Any]:
    """Score the run `ecfg.run_dir` as eval.yaml says; writes and returns the result. With
    `dataset=<name>` the run is scored on that dataset instead (cross-domain: its images mapped
    onto the training images' channels, size and statistics, engine/evaluation.py)."""
    which, split = ecfg.checkpoint, ecfg.split
    cross = ecfg.get("dataset") is not None
    if which not in ("best", "last") or split not in ("test", "val", "all"):
        raise ConfigError(f"checkpoint={which} split={split}: checkpoint must be best or last, "
                          f"split must be test, val or all")
    if split == "all" and not cross:
        raise ConfigError("split=all scores every class of another dataset: give dataset=<name> "
                          "too, or use split=test for the run's own test classes")
    if OmegaConf.is_missing(ecfg, "run_dir"):
        raise ConfigError(NO_RUN_DIR)
    run_dir = Path(ecfg.run_dir)
    threads.apply(ecfg.get("threads", "auto"))
    log.info("evaluating %s (%s checkpoint, %s split), %s", run_dir, which, split,
             threads.summary())
    cfg, data, algo, device = load_run(run_dir, which, ecfg.device)
    adapter = ecfg.get("adapter")  # the command line's own config: built as given
    wrap = None if adapter is None else (lambda learner: instantiate(adapter, learner=learner))
    if wrap is not None:
        algo = wrap(algo)
    t = ecfg.task
    ways, shots, query = t.ways or cfg.task.ways, t.shots or cfg.task.shots, t.query or cfg.task.query
    episodes = ecfg.episodes or cfg.trainer.test_episodes
    progress = Progress(episodes, ecfg.get("log_every") or 100)
    tag = split
    extra: dict[str, Any] = {}
    if cross:
        name = dataset_name or "dataset"
        domains = cross_domains(cfg, {name: OmegaConf.to_container(ecfg.dataset)})
        refs = list(ecfg.get("references") or ())
        found = evaluate_domains(algo, cfg, domains, data, device, episodes=episodes, ways=ways,
                                 shots=shots, query=query, split=split, references=refs,
                                 progress=progress, wrap=wrap)
        key = f"{result_key(split)}/{name}/"
        res = {k[len(key):]: v for k, v in found.items() if k.count("/") == 2}
        extra["references"] = {r: {m: found[f"{key}{r}/{m}"] for m in ("acc", "acc_ci95")}
                               for r in refs}
        if refs:
            log.info(cross_line(found, result_key(split), name, refs))
        tag = f"{split}-{config_tag(name, ecfg.dataset)}"
        extra["dataset_config"] = OmegaConf.to_container(ecfg.dataset, resolve=True)
    else:
        res = score(cfg, data, algo, split, episodes, ways, shots, query, device, progress)
    if adapter is not None:
        tag += f"-{config_tag(adapter_name or 'adapter', adapter)}"
        extra["adapter"] = adapter_name or "adapter"
        extra["adapter_config"] = OmegaConf.to_container(adapter, resolve=True)
    extra.update({k: v for k, v in res.items() if k.count("/") == 2})  # test/<source>/acc
    out = {"acc": res["acc"], "acc_ci95": res["acc_ci95"], "loss": res["loss"],
           "episodes": episodes, "split": split, "checkpoint": which, "ways": ways,
           "shots": shots, "query": query, "eval_seed": cfg.trainer.eval_seed,
           "algorithm": cfg.algo._target_, "device": str(device),
           "dataset": dataset_name or cfg.dataset._target_, **extra}
    out_dir = Path(ecfg.get("output_dir") or run_dir)
    path = out_dir / f"eval-{tag}-{ways}w{shots}s{query}q-{episodes}ep-{which}.json"
    with io.disk_errors(path):
        out_dir.mkdir(parents=True, exist_ok=True)
    if out_dir.resolve() == run_dir.resolve():
        io.note_written(path)  # the run's manifest: an overwrite of the run removes it too
    io.write_text(path, json.dumps(out, indent=2))
    log.info(f"{split} accuracy {100 * res['acc']:.2f} ± {100 * res['acc_ci95']:.2f}% "
             f"({episodes} episodes, {ways}-way {shots}-shot, {which} checkpoint, "
             f"{time.monotonic() - progress.start:.0f} s); saved {path}")
    return out


def _choice(overrides: list[str], group: str) -> str | None:
    """The `<group>=<name>` choice among the overrides (the composed node has no name)."""
    names = [o.split("=", 1)[1] for o in overrides if o.startswith(f"{group}=")]
    return names[-1] if names else None


def run(overrides: list[str]) -> dict[str, Any]:
    """`evaluate_run` from Python, with the command line's overrides (no Hydra run dir or log)."""
    with initialize_config_module("metalearn.configs", version_base="1.3"):
        return evaluate_run(compose("eval", overrides=list(overrides)), _choice(overrides, "dataset"),
                            _choice(overrides, "adapter"))


@hydra.main(config_path="configs", config_name="eval", version_base="1.3")
def app(cfg: DictConfig) -> None:
    try:
        choices = HydraConfig.get().runtime.choices
        evaluate_run(cfg, choices.get("dataset"), choices.get("adapter"))
    except Exception as e:
        code = _report(e)  # here, not in main(): Hydra would add "Error executing job ..."
        if code is None:
            raise
        sys.exit(code)


NO_RUN_DIR = ("no run to evaluate: give run_dir=<a training run's directory>, e.g. "
              "metalearn-eval run_dir=outputs/runs/<date>/<time>")


def _missing_run_dir(e: BaseException | None) -> bool:
    # Hydra resolves hydra.run.dir=${run_dir} before the app runs: the error is its traceback
    while e is not None:
        if isinstance(e, MissingMandatoryValue) and "run_dir" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def _report(e: BaseException) -> int | None:
    """train.py's report, but a failed write advises output_dir=: an evaluation only reads the
    run, and hydra.run.dir or resume cannot help it."""
    err = disk_error(e, None)
    if err is None:
        return report(e)
    say(f"error: {str(err).split('. ', 1)[0]}. The run is only read: write the evaluation to a "
        f"writable folder with output_dir=<dir>")
    return err.exit_code


def main() -> None:
    """Run the app; what a user can fix is one `error:` line and exit code 2 (as train.py)."""
    try:
        with hydra_raises():
            app()
    except Exception as e:
        if _missing_run_dir(e):
            say(f"error: {NO_RUN_DIR}")
            sys.exit(2)
        code = _report(e)
        if code is None:
            raise
        sys.exit(code)


if __name__ == "__main__":
    main()
