"""One meta-training run, top to bottom: build, fit, test.

`train(cfg, out_dir)` is what `train.py` calls after Hydra composed the config; tests call it
too, with a config from `hydra.compose`. The loop is deliberately one function: sample a
meta-batch -> per-task query losses -> backward -> step -> log -> validate -> checkpoint.
"""
from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from metalearn.algorithms.base import MetaLearner
from metalearn.data.base import FewShotDataset
from metalearn.data.episodes import EpisodeSampler
from metalearn.engine import checkpoint
from metalearn.engine.evaluation import evaluate
from metalearn.errors import ConfigError, TrainingError
from metalearn.tracking import RunLogger


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but CUDA is not available: use device=auto or cpu")
    return torch.device(name)


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
             query: int | None = None) -> dict[str, EpisodeSampler]:
    t = cfg.task
    where = device if cfg.trainer.data_on_device else torch.device("cpu")
    # Snell et al. 2017 train ProtoNets with more ways than they test with.
    train_ways = t.get("train_ways") or t.ways
    return {name: EpisodeSampler(split, ways or (train_ways if name == "train" else t.ways),
                                 shots or t.shots, query or t.query,
                                 data.mean, data.std, seed=cfg.seed + i, device=where)
            for i, (name, split) in enumerate(data.splits().items())}


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
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    tc = cfg.trainer
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    data, algo = build(cfg, device)
    sample = samplers(cfg, data, device)
    if cfg.task.get("train_ways"):
        algo.check_ways(cfg.task.train_ways)
    opt = instantiate(cfg.optimizer, params=algo.parameters())
    sched = lr_scheduler(tc, opt)
    logger = RunLogger(cfg, out_dir)
    best_path, last_path = out_dir / "best.pt", out_dir / "last.pt"
    best_val, best_it, start = -1.0, 0, time.time()

    def state(it: int) -> dict[str, Any]:
        return {"model": algo.state_dict(), "optimizer": opt.state_dict(), "iteration": it,
                "scheduler": sched.state_dict() if sched else None,
                "best_val_acc": best_val, "config": OmegaConf.to_container(cfg, resolve=True)}

    exit_code = 1
    try:
        bar = tqdm(range(1, tc.iterations + 1), desc="meta-train", dynamic_ncols=True)
        for it in bar:
            algo.on_iteration(it, tc.iterations)
            batch = sample["train"].sample(tc.meta_batch_size).to(device)
            opt.zero_grad(set_to_none=True)
            losses, accs = [], []
            # Chunks bound memory; summing chunk losses scaled by 1/B gives the same gradient.
            for chunk in batch.chunks(tc.chunk_size or len(batch)):
                m = algo(chunk)
                (m.loss.sum() / len(batch)).backward()
                losses.append(m.loss.detach())
                accs.append(m.acc.detach())
            loss, acc = torch.cat(losses).mean().item(), torch.cat(accs).mean().item()
            if not math.isfinite(loss):
                raise TrainingError(
                    f"meta-loss is {loss} at iteration {it}: lower optimizer.lr or algo.inner_lr. "
                    f"The last good checkpoint is kept at {last_path}")
            opt.step()
            if sched:
                sched.step()
            bar.set_postfix(loss=f"{loss:.3f}", acc=f"{acc:.3f}", best_val=f"{max(best_val, 0):.3f}")
            if it % tc.log_every == 0 or it == 1:
                logger.log(it, {"train/loss": loss, "train/acc": acc,
                                "train/lr": opt.param_groups[0]["lr"]})
            if it % tc.eval_every == 0 or it == tc.iterations:
                val = evaluate(algo, sample["val"], tc.val_episodes, tc.eval_batch_size, tc.eval_seed)
                if val["acc"] > best_val:
                    best_val, best_it = val["acc"], it
                    checkpoint.save(state(it), best_path)
                checkpoint.save(state(it), last_path)
                logger.log(it, {"val/acc": val["acc"], "val/acc_ci95": val["acc_ci95"],
                                "val/loss": val["loss"], "val/best_acc": best_val})
        bar.close()
        train_time = time.time() - start

        algo.load_state_dict(checkpoint.load(best_path, device)["model"])
        test = evaluate(algo, sample["test"], tc.test_episodes, tc.eval_batch_size, tc.eval_seed)
        results = {"test_acc": test["acc"], "test_acc_ci95": test["acc_ci95"],
                   "test_loss": test["loss"], "test_episodes": tc.test_episodes,
                   "best_val_acc": best_val, "best_iteration": best_it,
                   "iterations": tc.iterations, "train_time_s": train_time,
                   "wall_time_s": time.time() - start, "device": str(device)}
        logger.log(tc.iterations, {"test/acc": test["acc"], "test/acc_ci95": test["acc_ci95"]})
        logger.summary(results)
        (out_dir / "results.json").write_text(json.dumps(results, indent=2))
        print(f"test accuracy {100 * test['acc']:.2f} ± {100 * test['acc_ci95']:.2f}% "
              f"({tc.test_episodes} episodes), best val {100 * best_val:.2f}% at iteration "
              f"{best_it}; results in {out_dir}")
        exit_code = 0
        return results
    finally:
        logger.finish(exit_code)
