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
from metalearn.data.episodes import Episodes, EpisodeSampler, Preprocess
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
    return {name: EpisodeSampler(split, ways or t.ways, shots or t.shots, query or t.query,
                                 data.mean, data.std, seed=cfg.seed + i, device=where)
            for i, (name, split) in enumerate(data.splits().items())}


AMP = {"none": None, "bf16": torch.bfloat16}


def autocast(device: torch.device, amp: str):
    if amp not in AMP:
        raise ConfigError(f"trainer.amp={amp!r}: choose one of {', '.join(AMP)}")
    return torch.autocast(device.type, dtype=AMP[amp] or torch.bfloat16, enabled=amp != "none")


def meta_step(algo: MetaLearner, batch: Episodes, chunk_size: int | None = None,
              amp: str = "none") -> tuple[torch.Tensor, torch.Tensor]:
    """Forward + backward of one meta-batch into `.grad`; per-task (loss, acc), detached.

    Chunks bound memory; summing chunk losses scaled by 1/B gives the same gradient.
    """
    losses, accs = [], []
    for chunk in batch.chunks(chunk_size or len(batch)):
        with autocast(batch.support_x.device, amp):
            m = algo(chunk)
        (m.loss.float().sum() / len(batch)).backward()
        losses.append(m.loss.detach().float())
        accs.append(m.acc.detach())
    return torch.cat(losses), torch.cat(accs)


def train(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    tc = cfg.trainer
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    data, algo = build(cfg, device)
    sample = samplers(cfg, data, device)
    # uint8 episodes become normalised floats here, on the training device.
    prep = Preprocess(data.mean, data.std, device, augment=tc.augment,
                      channels_last=tc.channels_last)
    if tc.channels_last:
        algo.to(memory_format=torch.channels_last)
    opt = instantiate(cfg.optimizer, params=algo.parameters())
    logger = RunLogger(cfg, out_dir)
    best_path, last_path = out_dir / "best.pt", out_dir / "last.pt"
    best_val, best_it, start = -1.0, 0, time.time()

    def state(it: int) -> dict[str, Any]:
        return {"model": algo.state_dict(), "optimizer": opt.state_dict(), "iteration": it,
                "best_val_acc": best_val, "config": OmegaConf.to_container(cfg, resolve=True)}

    exit_code = 1
    try:
        bar = tqdm(range(1, tc.iterations + 1), desc="meta-train", dynamic_ncols=True)
        for it in bar:
            algo.on_iteration(it, tc.iterations)
            batch = prep(sample["train"].sample(tc.meta_batch_size), train=True)
            opt.zero_grad(set_to_none=True)
            losses, accs = meta_step(algo, batch, tc.chunk_size, tc.amp)
            loss, acc = losses.mean().item(), accs.mean().item()
            if not math.isfinite(loss):
                raise TrainingError(
                    f"meta-loss is {loss} at iteration {it}: lower optimizer.lr or algo.inner_lr. "
                    f"The last good checkpoint is kept at {last_path}")
            opt.step()
            bar.set_postfix(loss=f"{loss:.3f}", acc=f"{acc:.3f}", best_val=f"{max(best_val, 0):.3f}")
            if it % tc.log_every == 0 or it == 1:
                logger.log(it, {"train/loss": loss, "train/acc": acc,
                                "train/lr": opt.param_groups[0]["lr"]})
            if it % tc.eval_every == 0 or it == tc.iterations:
                val = evaluate(algo, sample["val"], tc.val_episodes, tc.eval_batch_size, tc.eval_seed,
                               prep)
                if val["acc"] > best_val:
                    best_val, best_it = val["acc"], it
                    checkpoint.save(state(it), best_path)
                checkpoint.save(state(it), last_path)
                logger.log(it, {"val/acc": val["acc"], "val/acc_ci95": val["acc_ci95"],
                                "val/loss": val["loss"], "val/best_acc": best_val})
        bar.close()
        train_time = time.time() - start

        algo.load_state_dict(checkpoint.load(best_path, device)["model"])
        test = evaluate(algo, sample["test"], tc.test_episodes, tc.eval_batch_size, tc.eval_seed,
                        prep)
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
