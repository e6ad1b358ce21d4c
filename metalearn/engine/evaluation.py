"""Paper-style few-shot evaluation: mean accuracy over many episodes with a 95% CI."""
from __future__ import annotations

import math

import torch

from metalearn.algorithms.base import MetaLearner
from metalearn.data.episodes import EpisodeSampler, Preprocess
from metalearn.engine.distributed import World


def mean_ci95(values: torch.Tensor) -> tuple[float, float]:
    """Mean and 1.96 * std / sqrt(n) (normal approximation, as in Finn 2017 / Snell 2017)."""
    v = values.double().flatten()
    if v.numel() < 2:
        return float(v.mean()), float("nan")
    return float(v.mean()), float(1.96 * v.std(unbiased=True) / math.sqrt(v.numel()))


def evaluate(algo: MetaLearner, sampler: EpisodeSampler, episodes: int, batch_size: int,
             seed: int, world: World | None = None,
             preprocess: Preprocess | None = None) -> dict[str, float]:
    """Accuracy over `episodes` tasks; the same `seed` always gives the same tasks.

    Under torchrun each rank adapts to every world.size-th batch, but draws all of them: the
    episodes, and so the result, do not depend on the number of processes. `preprocess` turns
    the sampler's uint8 episodes into the model's input (default: the dataset's normalisation
    onto the model's device; never augmented).
    """
    world = world or World()
    if preprocess is None:
        device = next(algo.parameters()).device
        preprocess = Preprocess(sampler.mean, sampler.std, device)
    sampler.generator.manual_seed(seed)
    accs, losses = torch.zeros(episodes), torch.zeros(episodes)
    was_training = algo.training
    algo.eval()
    with torch.no_grad():
        for k, start in enumerate(range(0, episodes, batch_size)):
            batch = sampler.sample(min(batch_size, episodes - start))
            if k % world.size == world.rank:
                m = algo.evaluate(preprocess(batch))
                accs[start : start + len(batch)] = m.acc.float().cpu()
                losses[start : start + len(batch)] = m.loss.float().cpu()
    algo.train(was_training)
    # each episode was scored by exactly one rank, the others hold 0: the sum is exact
    accs, losses = world.sum(accs), world.sum(losses)
    acc, ci = mean_ci95(accs)
    return {"acc": acc, "acc_ci95": ci, "loss": float(losses.mean()), "episodes": episodes}
