"""MAML (Finn, Abbeel & Levine 2017), with the MAML++ options of Antoniou, Edwards & Storkey
2019 (each off by default, so plain MAML is unchanged).

The model is backbone + a linear head over `ways` classes; each task adapts a copy by
`adaptation_steps` SGD steps on its support set and is scored on its queries. The
meta-gradient flows through the adaptation (second order) unless `first_order`. Engines,
adaptation and evaluation are the gradient-based base's (`gbml.py`).

MAML++ switches:
- `multi_step_loss`: the query loss after every inner step, weighted by `msl_weights`, whose
  weight moves to the last step over `msl_iterations`; after that only the last step counts.
- `lslr`: one learned inner lr per parameter tensor (layer weight or bias) and per step.
- `per_step_bn`: one set of BN weights/biases per step (`models/norm.BatchNorm2d.per_step`).
- `first_order_iterations`: derivative-order annealing: first order up to that iteration.
"""
from __future__ import annotations

import torch
from torch import nn

from metalearn.algorithms.gbml import GBML
from metalearn.errors import ConfigError
from metalearn.models.norm import BatchNorm2d


def msl_weights(steps: int, progress: float) -> torch.Tensor:
    """Per-step query-loss weights of MAML++ (`get_per_step_loss_importance_vector`).

    progress 0 -> uniform; each non-final weight then decays linearly to 0.03/steps at
    progress 1 while the last step takes the rest. They always sum to 1.
    """
    progress = min(max(progress, 0.0), 1.0)
    floor = 0.03 / steps
    w = torch.full((steps,), 1.0 / steps, dtype=torch.float64)
    w[:-1] = torch.clamp(w[:-1] - progress / steps, min=floor)
    w[-1] = min(1.0 / steps + progress * (steps - 1) / steps, 1.0 - (steps - 1) * floor)
    return w


class MAML(GBML):
    # checkpoints from before the shared base hold learn2learn's wrapper around the model
    renamed_keys = {"maml.module.": "model."}

    def embedding(self) -> nn.Module:
        return self.model[0]

    def __init__(self, backbone: nn.Module, ways: int, inner_lr: float = 0.4,
                 adaptation_steps: int = 1, test_adaptation_steps: int | None = None,
                 first_order: bool = False, multi_step_loss: bool = False,
                 msl_iterations: int = 0, lslr: bool = False, per_step_bn: bool = False,
                 first_order_iterations: int = 0, engine: str = "auto") -> None:
        super().__init__(ways, inner_lr, adaptation_steps, test_adaptation_steps, first_order,
                         engine)
        if multi_step_loss and msl_iterations < 1:
            raise ConfigError("algo.multi_step_loss=true needs algo.msl_iterations >= 1: the "
                              "iterations over which the loss weights anneal to the last step")
        if per_step_bn:
            norms = [m for m in backbone.modules() if isinstance(m, BatchNorm2d)]
            if not norms:
                raise ConfigError("algo.per_step_bn=true but the backbone has no "
                                  "metalearn.models.norm.BatchNorm2d layer")
            for m in norms:
                m.per_step(adaptation_steps)
        self.model = nn.Sequential(backbone, nn.Linear(backbone.out_features, ways))
        self.multi_step_loss, self.msl_iterations = multi_step_loss, msl_iterations
        self.first_order_iterations = first_order_iterations
        self.per_step_bn = per_step_bn
        # [steps] learned lrs per parameter tensor; test steps past the last reuse the last lr.
        self.lrs = nn.ParameterList(
            [nn.Parameter(torch.full((adaptation_steps,), self.inner_lr))
             for _ in self.model.parameters()]) if lslr else None
        # learned lrs (LSLR's, Meta-SGD's) are lists in parameters() order
        self.param_index = {n: i for i, (n, _) in enumerate(self.model.named_parameters())}
        self.on_iteration(1)

    def step_lr(self, name: str, step: int) -> float | torch.Tensor:
        """LSLR's learned lr of parameter `name` at `step`, else `inner_lr`."""
        if self.lrs is None:
            return self.inner_lr
        lr = self.lrs[self.param_index[name]]
        return lr[min(step, len(lr) - 1)]

    def on_iteration(self, iteration: int) -> None:
        self.iteration = iteration
        self.train_first_order = self.first_order or iteration <= self.first_order_iterations
        self.use_msl = self.multi_step_loss and iteration <= self.msl_iterations

    def step_weights(self) -> torch.Tensor | None:
        """Weights of the query loss after each training step under MSL."""
        if not self.use_msl:
            return None
        return msl_weights(self.adaptation_steps, self.iteration / self.msl_iterations)
