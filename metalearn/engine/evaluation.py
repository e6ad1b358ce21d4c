"""Paper-style few-shot evaluation: mean accuracy over many episodes with a 95% CI."""
from __future__ import annotations

import math

import torch

from metalearn.algorithms.base import MetaLearner
from metalearn.data.episodes import EpisodeSampler, Preprocess


def mean_ci95(values: torch.Tensor) -> tuple[float, float]:
    """Mean and 1.96 * std / sqrt(n) (normal approximation, as in Finn 2017 / Snell 2017)."""
    v = values.double().flatten()
    if v.numel() < 2:
        return float(v.mean()), float("nan")
    return float(v.mean()), float(1.96 * v.std(unbiased=True) / math.sqrt(v.numel()))


def evaluate(algo: MetaLearner, sampler: EpisodeSampler, episodes: int, batch_size: int,
             seed: int, preprocess: Preprocess | None = None) -> dict[str, float]:
    """Accuracy over `episodes` tasks; the same `seed` always gives the same tasks.

    `preprocess` turns the sampler's uint8 episodes into the model's input (default: the
    dataset's normalisation onto the model's device; never augmented).
    """
    if preprocess is None:
        device = next(algo.parameters()).device
        preprocess = Preprocess(sampler.mean, sampler.std, device)
    sampler.generator.manual_seed(seed)
    accs, losses = [], []
    was_training = algo.training
    algo.eval()
    with torch.no_grad():
        for start in range(0, episodes, batch_size):
            m = algo.evaluate(preprocess(sampler.sample(min(batch_size, episodes - start))))
            accs.append(m.acc.float().cpu())
            losses.append(m.loss.float().cpu())
    algo.train(was_training)
    acc, ci = mean_ci95(torch.cat(accs))
    return {"acc": acc, "acc_ci95": ci, "loss": float(torch.cat(losses).mean()),
            "episodes": episodes}
