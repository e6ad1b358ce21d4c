"""One meta-training run, top to bottom: resolve resume, prepare the run directory, build,
restore, meta-train, test.

`train(cfg, out_dir)` is what `train.py` calls after Hydra composed the config; tests call it
too, with a config from `hydra.compose`. The loop is deliberately one function: sample a
meta-batch -> per-task query losses -> backward -> step -> log -> validate -> checkpoint.
"""
from __future__ import annotations

import functools
import json
import os
import random
import signal
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.nn.utils import get_total_norm

from metalearn.algorithms.base import MetaLearner
from metalearn.data.base import FewShotDataset
from metalearn.data.episodes import Episodes, EpisodeSampler, Preprocess
from metalearn.build import learner as build_learner
from metalearn.config_check import validate
from metalearn import checkpoint, io
from metalearn.engine import distributed
from metalearn.engine.checkpoint import TrainingState
from metalearn.engine.evaluation import (check_domains, cross_domains, cross_line,
                                         evaluate_domains, evaluate_split, result_key)
from metalearn.engine.preemption import PREEMPTED_EXIT_CODE, Preempted, StopSignals
from metalearn.engine.progress import Progress, log
from metalearn.engine.run import Run, command_line, open_run
from metalearn.errors import ConfigError, TrainingError
from metalearn import threads
from metalearn.tracking import RunLogger


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build(cfg: DictConfig, device: torch.device) -> tuple[FewShotDataset, MetaLearner]:
    data: FewShotDataset = instantiate(cfg.dataset)
    channels, size, _ = data.image_shape
    return data, build_learner(cfg, channels, size, data.train.num_classes).to(device)


def samplers(cfg: DictConfig, data: FewShotDataset, device: torch.device,
             ways: int | None = None, shots: int | None = None,
             query: int | None = None, rank: int = 0) -> dict[str, EpisodeSampler]:
    t = cfg.task
    where = device if cfg.trainer.data_on_device else torch.device("cpu")
    # Snell et al. 2017 train ProtoNets with more ways than they test with; Nichol et al. 2018
    # train Reptile on 10-shot tasks and test on 1-shot ones.
    train = {"ways": t.get("train_ways") or t.ways, "shots": t.get("train_shots") or t.shots}
    out = data.samplers((ways or train["ways"], shots or train["shots"]),
                        (ways or t.ways, shots or t.shots), query or t.query, cfg.seed, where)
    # each rank draws its own training tasks; rank 0 keeps the single-process stream
    out["train"].generator.manual_seed(cfg.seed + (rank << 32))
    return out


AMP = {"none": None, "bf16": torch.bfloat16}


def autocast(device: torch.device, amp: str):
    if amp not in AMP:
        raise ConfigError(f"trainer.amp={amp!r}: choose one of {', '.join(AMP)}")
    return torch.autocast(device.type, dtype=AMP[amp] or torch.bfloat16, enabled=amp != "none")


def meta_step(algo: MetaLearner, batch: Episodes, chunk_size: int | None = None,
              amp: str = "none", total: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward + backward of one meta-batch into `.grad`; per-task (loss, acc), detached.

    Chunks bound memory; scaling by 1/total (the global meta-batch, default this batch) keeps
    the gradient the mean over all tasks, however they are split over chunks and ranks.
    """
    losses, accs = [], []
    for chunk in batch.chunks(chunk_size or len(batch)):
        with autocast(batch.support_x.device, amp):
            m = algo(chunk)
        (m.to_minimise.float().sum() / (total or len(batch))).backward()
        losses.append(m.loss.detach().float())
        accs.append(m.acc.detach())
    return torch.cat(losses), torch.cat(accs)


@functools.lru_cache(maxsize=1)
def code_commit() -> str | None:
    """The commit the running code is at ("-dirty" with uncommitted changes), read once: at
    the start of a run, before anyone edits the tree it runs from."""
    import subprocess
    git = ["git", "-C", str(Path(__file__).parent)]
    try:
        commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=5).stdout.strip()
        if commit and subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"],
                                     capture_output=True, text=True, timeout=5).stdout.strip():
            commit += "-dirty"  # the run's config.yaml says what ran
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return commit or None


def provenance(device: torch.device) -> dict[str, Any]:
    """What a measured number needs beside it: this process's CPU time (a resumed run's
    earlier processes not included), threads, processor, torch and the code's commit."""
    import platform
    cpuinfo = Path("/proc/cpuinfo")
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                if line.startswith("model name")), None) if cpuinfo.exists() else None
    return {"cpu_time_s": time.process_time(), "threads": torch.get_num_threads(),
            "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "processor": torch.cuda.get_device_name(device) if device.type == "cuda"
            else cpu or platform.processor(),
            "torch": torch.__version__, "commit": code_commit()}


def lr_scheduler(cfg: DictConfig, opt: torch.optim.Optimizer, done: int = 0):
    """The `scheduler` group's schedule (none: None) for this run's length, at iteration `done`.

    A resumed run rebuilds it and replays `done` steps rather than loading the old state, which
    would keep the old length: resumed with more iterations, the lr then follows the curve of a
    fresh run of the new length."""
    if not cfg.get("scheduler"):
        return None
    for group in opt.param_groups:  # restart from the base lr a fresh run starts from
        group["lr"] = group.setdefault("initial_lr", group["lr"])
    scheduler = instantiate(cfg.scheduler)(opt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "lr_scheduler.step() before optimizer.step()"
        for _ in range(done):
            scheduler.step()
    return scheduler


def train(cfg: DictConfig, out_dir: Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """`overrides`: the command line's Hydra overrides (under train.py, read from Hydra), which
    `resume=<run dir>` applies on top of that run's saved config."""
    if overrides is None:
        overrides = command_line(Path(out_dir))
    validate(cfg)  # every value checked before any work (docs/faults.md)
    check_domains(cfg)  # a wrong eval.datasets fails now, not after the training it follows
    code_commit()  # now, not when results.json is written
    threads.apply(cfg.get("threads", "auto"))
    # a world of one unless under torchrun
    world, device = distributed.setup(cfg.device, cfg.trainer.collective_timeout_s)
    try:
        return _train(cfg, Path(out_dir), world, device, overrides or [])
    finally:
        distributed.teardown(world)


def _train(cfg: DictConfig, out_dir: Path, world: distributed.World, device: torch.device,
           overrides: list[str]) -> dict[str, Any]:
    # 1-2. resolve resume and claim the directory: one writer; an earlier run there is resumed,
    # overwritten or kept; resume=<run dir> continues that run, in its directory
    with open_run(cfg, out_dir, TrainingState, overrides, is_main=world.is_main) as run:
        cfg, out_dir, saved = run.cfg, run.dir, run.saved

        # 3. build: data, learner, optimizer; the state a checkpoint holds
        tc = cfg.trainer
        seed_everything(cfg.seed)
        data, algo = build(cfg, device)
        world.broadcast_(algo)
        sample = samplers(cfg, data, device, rank=world.rank)
        # uint8 episodes become normalised floats here, on the training device.
        prep = Preprocess(data.mean, data.std, device, augment=tc.augment,
                          channels_last=tc.channels_last)
        if tc.channels_last:
            algo.to(memory_format=torch.channels_last)
        if cfg.task.get("train_ways"):
            algo.check_ways(cfg.task.train_ways)
        opt = instantiate(cfg.optimizer, params=algo.parameters())
        state = TrainingState(algo, opt, {k: s.generator for k, s in sample.items()},
                              world, config=OmegaConf.to_container(cfg),
                              preprocessing=data.preprocessing())

        # 4. restore
        if saved is not None:
            state.load_state_dict(saved)
        scheduler = lr_scheduler(cfg, opt, done=state.iteration)
        logger = run.start_logger(state)

        exit_code, preempted = 1, False
        try:
            # 5. meta-train
            with StopSignals() as stop:
                stopped_at = _fit(cfg, state, scheduler, sample, prep, run, stop)
                if stopped_at is not None:
                    exit_code, preempted = PREEMPTED_EXIT_CODE, True
                    stop.hand_over()  # under submitit: requeue the job (and exit)
                    raise Preempted(stop.signum or signal.SIGTERM, stopped_at,
                                    str(out_dir / "last.pt"), state.saved_iteration)
            # 6. test the best checkpoint; everything is saved, so a signal now stops at once
            with StopSignals() as stop:
                stop.interrupt_now(cfg.trainer.iterations, str(out_dir / "last.pt"),
                                   state.saved_iteration)
                results = _test(cfg, state, data, sample, prep, logger, out_dir, device)
            exit_code = 0
            return results
        except Preempted:
            exit_code, preempted = PREEMPTED_EXIT_CODE, True
            raise
        finally:
            logger.finish(exit_code, preempted=preempted)


def _save(state: TrainingState, run: Run, best: bool) -> None:
    run.save(state, best=best)  # keeps the previous last.pt as last.prev.pt
    state.saved_iteration = state.iteration


def _fit(cfg: DictConfig, state: TrainingState, scheduler: Any,
         sample: dict[str, EpisodeSampler], prep: Preprocess, run: Run,
         stop: StopSignals) -> int | None:
    """Meta-train from `state.iteration` to `trainer.iterations`; the iteration at which a stop
    signal ended it (after saving), or None."""
    tc, world, algo, opt = cfg.trainer, state.world, state.model, state.optimizer
    logger, out_dir = run.logger, run.dir
    params = [p for p in algo.parameters() if p.requires_grad]
    lo, hi = world.shard(tc.meta_batch_size)
    # A fused optimizer skips a NaN/Inf step on the device (`found_inf`, as under GradScaler),
    # so the meta-step never waits for the host and values are read only at `reads`. Other
    # optimizers are stepped or not by the host, which then reads every iteration; so do
    # several ranks, which must agree every iteration on whether one of them was told to stop.
    on_device = getattr(opt, "_step_supports_amp_scaling", False) and world.size == 1
    device = params[0].device
    bad_run = skipped = torch.zeros((), device=device)  # steps in a row / since the last read
    host_bad_run, loss = 0, float("nan")
    bar = Progress(cfg, out_dir, state.iteration + 1, enabled=world.is_main)
    for it in bar:
        algo.on_iteration(it)
        batch = prep(algo.training_batch(sample["train"], hi - lo), train=True)  # this rank's share
        opt.zero_grad(set_to_none=True)
        losses, accs = meta_step(algo, batch, tc.chunk_size, tc.amp, tc.meta_batch_size)
        world.sum_grads(params)
        stats = world.sum(torch.stack([losses.sum(), accs.sum()])) / tc.meta_batch_size
        norm = get_total_norm([p.grad for p in params if p.grad is not None])
        bad = ~(stats[0].isfinite() & norm.isfinite())
        evaluated, improved = it % tc.eval_every == 0 or it == tc.iterations, False
        stops = stop.requested
        if world.size > 1:
            stops = world.sum(torch.tensor(float(stops), device=device)).item() > 0
        read = (not on_device or stops or evaluated or it == 1 or it % tc.log_every == 0
                or it % tc.checkpoint_every == 0)
        if on_device:
            opt.found_inf = bad.float()  # the fused step leaves weights and state as they were
            opt.step()
        bad_run = torch.where(bad, bad_run + 1, 0)
        skipped = skipped + bad
        if read:  # the one host read: metrics, the gradient norm and the NaN/Inf counts
            loss, acc, grad_norm, host_bad_run, newly = torch.cat(
                [stats, norm.to(stats.dtype)[None], bad_run.to(stats.dtype)[None],
                 skipped.to(stats.dtype)[None]]).tolist()
            host_bad_run, newly = int(host_bad_run), int(newly)
            skipped = torch.zeros((), device=device)
            if not on_device and not newly:
                opt.step()
            if newly:  # weights and optimizer state stayed as they were
                state.skipped_steps += newly
                logger.log(it, {"train/skipped_steps": state.skipped_steps})
            if host_bad_run >= tc.max_bad_steps:
                raise TrainingError(
                    f"meta-loss or meta-gradient was NaN/Inf for {host_bad_run} iterations in "
                    f"a row (up to iteration {it}, loss {loss}): lower optimizer.lr or "
                    f"algo.inner_lr, or raise trainer.max_bad_steps. " + (
                        "No checkpoint was saved yet" if state.saved_iteration is None else
                        f"The last good checkpoint is kept at {out_dir / 'last.pt'} "
                        f"(iteration {state.saved_iteration})"))
            bar.set_postfix(loss=f"{loss:.3f}", acc=f"{acc:.3f}",
                            best_val=f"{state.best_val_acc:.3f}" if state.best_val_acc >= 0
                            else "-")
        if scheduler is not None:  # the schedule follows iterations, skipped or not
            scheduler.step()
        if it % tc.log_every == 0 or it == 1:
            logger.log(it, {"train/loss": loss, "train/acc": acc, "train/grad_norm": grad_norm,
                            "train/lr": opt.param_groups[0]["lr"]})
        if evaluated:
            val = evaluate_split(algo, sample, "val", tc.val_episodes, tc.eval_batch_size,
                                 tc.eval_seed, world, prep)
            improved = val["acc"] > state.best_val_acc and host_bad_run == 0
            if improved:
                state.best_val_acc, state.best_iteration = val["acc"], it
            sources = {k: v for k, v in val.items() if k.count("/") == 2}  # val/<source>/acc
            logger.log(it, {"val/acc": val["acc"], "val/acc_ci95": val["acc_ci95"],
                            "val/loss": val["loss"], "val/best_acc": state.best_val_acc,
                            **sources})
            bar.validation(it, {"acc": val["acc"], "acc_ci95": val["acc_ci95"],
                                "loss": val["loss"], "best_acc": state.best_val_acc,
                                **{f"{k.split('/')[1]}_acc": v for k, v in sources.items()
                                   if k.endswith("/acc")}})
        state.iteration = it
        # never while steps are skipped, so the last good checkpoint survives
        if host_bad_run == 0 and (evaluated or stops or it % tc.checkpoint_every == 0):
            _save(state, run, best=improved)
        if stops:
            return it
    bar.close()
    return None


def _test(cfg: DictConfig, state: TrainingState, data: FewShotDataset,
          sample: dict[str, EpisodeSampler],
          prep: Preprocess, logger: RunLogger, out_dir: Path, device: torch.device) -> dict[str, Any]:
    """Score best.pt on the test split; write results.json."""
    tc, world, algo = cfg.trainer, state.world, state.model
    train_time = state.elapsed()
    world.barrier()  # rank 0 has written best.pt
    algo.load_state_dict(checkpoint.load(out_dir / "best.pt", device)["model"])
    test = evaluate_split(algo, sample, "test", tc.test_episodes, tc.eval_batch_size,
                          tc.eval_seed, world, prep)
    sources = {k: v for k, v in test.items() if k.count("/") == 2}  # test/<source>/acc
    results = {"test_acc": test["acc"], "test_acc_ci95": test["acc_ci95"],
               "test_loss": test["loss"], "test_episodes": tc.test_episodes, **sources,
               "best_val_acc": state.best_val_acc, "best_iteration": state.best_iteration,
               "iterations": tc.iterations, "skipped_steps": state.skipped_steps,
               "world_size": world.size, "train_time_s": train_time,
               "wall_time_s": state.elapsed(), "device": str(device),  # all processes, as train
               **provenance(device)}
    ev = cfg.get("eval") or {}
    domains, refs = cross_domains(cfg), list(ev.get("references") or ())
    split = ev.get("split", "all")
    cross = evaluate_domains(algo, cfg, domains, data, device, world, prep, split=split,
                             references=refs)
    results.update(cross)  # flat test/<domain>/acc keys (eval.datasets)
    for name in domains if world.is_main else ():
        log.info(cross_line(cross, result_key(split), name, refs))
    logger.log(tc.iterations, {"test/acc": test["acc"], "test/acc_ci95": test["acc_ci95"],
                               **sources, **cross})
    logger.summary(results)
    if world.is_main:
        io.write_text(out_dir / "results.json", json.dumps(results, indent=2))
        io.note_written(out_dir / "results.json")
        log.info(f"test accuracy {100 * test['acc']:.2f} ± {100 * test['acc_ci95']:.2f}% "
             f"({tc.test_episodes} episodes), best val {100 * state.best_val_acc:.2f}% at "
             f"iteration {state.best_iteration}; results in {out_dir}")
        for key in (k[:-len("/acc")] for k in sources if k.endswith("/acc")):
            log.info(f"{key}: {100 * sources[key + '/acc']:.2f} ± "
                     f"{100 * sources[key + '/acc_ci95']:.2f}%")
    return results
