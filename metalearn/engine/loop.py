"""One meta-training run, top to bottom: build, fit, test.

`train(cfg, out_dir)` is what `train.py` calls after Hydra composed the config; tests call it
too, with a config from `hydra.compose`. The loop is deliberately one function: sample a
meta-batch -> per-task query losses -> backward -> step -> log -> validate -> checkpoint.
"""
from __future__ import annotations

import json
import math
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
from tqdm import tqdm

from metalearn.algorithms.base import MetaLearner
from metalearn.data.base import FewShotDataset
from metalearn.data.episodes import Episodes, EpisodeSampler, Preprocess
from metalearn.engine import checkpoint, distributed
from metalearn.engine.distributed import World, resolve_device  # noqa: F401  (public here too)
from metalearn.engine.evaluation import evaluate
from metalearn.engine.preemption import PREEMPTED_EXIT_CODE, Preempted, StopSignals
from metalearn.errors import ConfigError, TrainingError
from metalearn.inference import preprocessing
from metalearn.tracking import RunLogger


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build(cfg: DictConfig, device: torch.device) -> tuple[FewShotDataset, MetaLearner]:
    data: FewShotDataset = instantiate(cfg.dataset)
    channels, size, _ = data.image_shape
    backbone = instantiate(cfg.backbone, in_channels=channels, image_size=size)
    algo: MetaLearner = instantiate(cfg.algo, backbone=backbone, ways=cfg.task.ways)
    return data, algo.to(device)


def samplers(cfg: DictConfig, data: FewShotDataset, device: torch.device,
             ways: int | None = None, shots: int | None = None,
             query: int | None = None, rank: int = 0) -> dict[str, EpisodeSampler]:
    t = cfg.task
    where = device if cfg.trainer.data_on_device else torch.device("cpu")
    # Snell et al. 2017 train ProtoNets with more ways than they test with.
    train_ways = t.get("train_ways") or t.ways
    out = {name: EpisodeSampler(split, ways or (train_ways if name == "train" else t.ways),
                                shots or t.shots, query or t.query,
                                data.mean, data.std, seed=cfg.seed + i, device=where)
           for i, (name, split) in enumerate(data.splits().items())}
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


def lr_scheduler(tc: DictConfig, opt: torch.optim.Optimizer):
    """`trainer.lr_schedule`: none, cosine (MAML++: to lr_min over the run) or step (ProtoNets)."""
    kind = tc.get("lr_schedule", "none") or "none"
    if kind == "none":
        return None
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, tc.iterations, tc.lr_min)
    if kind == "step":
        return torch.optim.lr_scheduler.StepLR(opt, tc.lr_step_size, tc.lr_gamma)
    raise ConfigError(f"trainer.lr_schedule={kind}: use none, cosine or step")


def train(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    world, device = distributed.setup(cfg.device)  # a world of one unless under torchrun
    try:
        return _train(cfg, Path(out_dir), world, device)
    finally:
        distributed.teardown(world)


def _train(cfg: DictConfig, out_dir: Path, world: World, device: torch.device) -> dict[str, Any]:
    # resume=<run dir> continues that run with its saved config; true/auto use this out_dir
    mode = cfg.get("resume") or False
    own_dir = isinstance(mode, str) and mode != "auto"
    if own_dir:
        out_dir = Path(mode)
    found = checkpoint.latest(out_dir, verbose=world.is_main) if mode else None
    if found is None and mode not in (False, "auto"):
        raise ConfigError(f"resume={mode} but {out_dir} holds no checkpoint "
                          f"({', '.join(checkpoint.RESUMABLE)}): pass the run's directory as "
                          f"hydra.run.dir=<dir> (or resume=<dir>), or drop resume")
    ckpt = found[0] if found else None
    if ckpt is not None:
        cfg = checkpoint.resume_config(cfg, ckpt, use_saved=own_dir)
    if world.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    tc = cfg.trainer
    seed_everything(cfg.seed)
    data, algo = build(cfg, device)
    world.broadcast_(algo)
    sample = samplers(cfg, data, device, rank=world.rank)
    generators = {k: s.generator for k, s in sample.items()}
    # uint8 episodes become normalised floats here, on the training device.
    prep = Preprocess(data.mean, data.std, device, augment=tc.augment,
                      channels_last=tc.channels_last)
    if tc.channels_last:
        algo.to(memory_format=torch.channels_last)
    if cfg.task.get("train_ways"):
        algo.check_ways(cfg.task.train_ways)
    opt = instantiate(cfg.optimizer, params=algo.parameters())
    scheduler = lr_scheduler(tc, opt)
    params = [p for p in algo.parameters() if p.requires_grad]
    lo, hi = world.shard(tc.meta_batch_size)
    best_path, last_path = out_dir / "best.pt", out_dir / "last.pt"
    best_val, best_it, first_it, skipped, bad_run, trained_s = -1.0, 0, 1, 0, 0, 0.0
    if ckpt is not None:
        algo.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        if scheduler is not None and ckpt.get("scheduler") is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        best_val, best_it = ckpt["best_val_acc"], ckpt["best_iteration"]
        first_it, skipped, trained_s = ckpt["iteration"] + 1, ckpt["skipped_steps"], ckpt["train_time_s"]
        if len(ckpt["rng"]) == world.size:
            checkpoint.restore_rng(ckpt["rng"][world.rank], generators)
        elif world.is_main:
            warnings.warn(f"the checkpoint was written by {len(ckpt['rng'])} processes, this run "
                          f"has {world.size}: training continues, with fresh task streams")
    logger = RunLogger(cfg, out_dir, metrics_offset=ckpt["metrics_bytes"] if ckpt else 0,
                       enabled=world.is_main)
    start = time.time()

    def save(it: int, best: bool) -> None:
        state = {"model": algo.state_dict(), "optimizer": opt.state_dict(),
                 "scheduler": scheduler.state_dict() if scheduler is not None else None,
                 "iteration": it, "best_val_acc": best_val, "best_iteration": best_it,
                 "skipped_steps": skipped, "train_time_s": trained_s + time.time() - start,
                 "rng": world.gather(checkpoint.rng_state(generators)),  # every rank's streams
                 "wandb_run_id": logger.run_id, "metrics_bytes": logger.metrics_offset,
                 "config": OmegaConf.to_container(cfg, resolve=True),
                 "preprocessing": preprocessing(data)}  # for metalearn.inference
        if world.is_main:
            if best:
                checkpoint.save(state, best_path)
            checkpoint.save_rotating(state, last_path)  # keeps the previous one as last.prev.pt

    exit_code, preempted = 1, False
    try:
        with StopSignals() as stop:
            bar = tqdm(range(first_it, tc.iterations + 1), desc="meta-train", dynamic_ncols=True,
                       initial=first_it - 1, total=tc.iterations, disable=not world.is_main)
            for it in bar:
                algo.on_iteration(it)
                batch = prep(sample["train"].sample(hi - lo), train=True)  # this rank's share
                opt.zero_grad(set_to_none=True)
                losses, accs = meta_step(algo, batch, tc.chunk_size, tc.amp, tc.meta_batch_size)
                world.sum_grads(params)
                # One reduction for the metrics and "a rank was told to stop", and one host sync
                # per iteration: it carries the gradient norm too, finite iff every gradient is.
                stats = world.sum(torch.stack([losses.sum(), accs.sum(),
                                               torch.tensor(float(stop.requested), device=device)]))
                norm = get_total_norm([p.grad for p in params if p.grad is not None])
                loss, acc, stops, grad_norm = torch.cat(
                    [stats / tc.meta_batch_size, norm.to(stats.dtype)[None]]).tolist()
                stopping = stops > 0
                if math.isfinite(loss) and math.isfinite(grad_norm):
                    opt.step()
                    bad_run = 0
                else:  # skip the step: weights and optimizer state stay as they were
                    skipped, bad_run = skipped + 1, bad_run + 1
                    logger.log(it, {"train/skipped_steps": skipped})
                    if bad_run >= tc.max_bad_steps:
                        raise TrainingError(
                            f"meta-loss or meta-gradient was NaN/Inf for {bad_run} iterations in "
                            f"a row (up to iteration {it}, loss {loss}): lower optimizer.lr or "
                            f"algo.inner_lr, or raise trainer.max_bad_steps. The last good "
                            f"checkpoint is kept at {last_path}")
                if scheduler is not None:  # the schedule follows iterations, skipped or not
                    scheduler.step()
                bar.set_postfix(loss=f"{loss:.3f}", acc=f"{acc:.3f}", best_val=f"{max(best_val, 0):.3f}")
                if it % tc.log_every == 0 or it == 1:
                    logger.log(it, {"train/loss": loss, "train/acc": acc, "train/grad_norm": grad_norm,
                                    "train/lr": opt.param_groups[0]["lr"]})
                evaluated, improved = it % tc.eval_every == 0 or it == tc.iterations, False
                if evaluated:
                    val = evaluate(algo, sample["val"], tc.val_episodes, tc.eval_batch_size,
                                   tc.eval_seed, world, prep)
                    improved = val["acc"] > best_val and bad_run == 0
                    if improved:
                        best_val, best_it = val["acc"], it
                    logger.log(it, {"val/acc": val["acc"], "val/acc_ci95": val["acc_ci95"],
                                    "val/loss": val["loss"], "val/best_acc": best_val})
                # After this iteration's log lines, so a resume cuts metrics.jsonl right here;
                # never while steps are skipped, so the last good checkpoint survives.
                if bad_run == 0 and (evaluated or stopping or it % tc.checkpoint_every == 0):
                    save(it, best=improved)
                if stopping:
                    exit_code, preempted = PREEMPTED_EXIT_CODE, True
                    stop.hand_over()  # under submitit: requeue the job (and exit)
                    raise Preempted(stop.signum or signal.SIGTERM, it, str(last_path))
            bar.close()
        train_time = trained_s + time.time() - start

        world.barrier()  # rank 0 has written best.pt
        algo.load_state_dict(checkpoint.load(best_path, device)["model"])
        test = evaluate(algo, sample["test"], tc.test_episodes, tc.eval_batch_size, tc.eval_seed,
                        world, prep)
        results = {"test_acc": test["acc"], "test_acc_ci95": test["acc_ci95"],
                   "test_loss": test["loss"], "test_episodes": tc.test_episodes,
                   "best_val_acc": best_val, "best_iteration": best_it,
                   "iterations": tc.iterations, "skipped_steps": skipped,
                   "world_size": world.size, "train_time_s": train_time,
                   "wall_time_s": time.time() - start, "device": str(device)}
        logger.log(tc.iterations, {"test/acc": test["acc"], "test/acc_ci95": test["acc_ci95"]})
        logger.summary(results)
        if world.is_main:
            (out_dir / "results.json").write_text(json.dumps(results, indent=2))
            print(f"test accuracy {100 * test['acc']:.2f} ± {100 * test['acc_ci95']:.2f}% "
                  f"({tc.test_episodes} episodes), best val {100 * best_val:.2f}% at iteration "
                  f"{best_it}; results in {out_dir}")
        exit_code = 0
        return results
    finally:
        logger.finish(exit_code, preempted=preempted)
