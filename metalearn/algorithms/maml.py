"""MAML (Finn, Abbeel & Levine 2017) through learn2learn's `MAML` wrapper, with the MAML++
options of Antoniou, Edwards & Storkey 2019 (each off by default, so plain MAML is unchanged).

The model is backbone + a linear head over `ways` classes; each task clones the wrapper,
takes `adaptation_steps` SGD steps on its support set and is scored on its queries. The
meta-gradient flows through the adaptation (second order) unless `first_order`.

MAML++ switches:
- `multi_step_loss`: the query loss after every inner step, weighted by `msl_weights`, whose
  weight moves to the last step over `msl_iterations`; after that only the last step counts.
- `lslr`: one learned inner lr per parameter tensor (layer weight or bias) and per step.
- `per_step_bn`: one set of BN weights/biases per step (`models/norm.BatchNorm2d.per_step`).
- `first_order_iterations`: derivative-order annealing: first order up to that iteration.

Engines (`algo.engine`):
  * `l2l`: learn2learn's `MAML` wrapper, one `clone()`/`adapt()` per task: the reference.
  * `batched`: all tasks at once with torch.func (`algorithms/functional.py`); same
    meta-gradient to float64 round-off, every MAML++ switch included; ~8x faster on an
    H100 (docs/performance.md).
  * `auto`: `batched` on CUDA; on CPU `CPU_ENGINE`.
Subclasses reuse both engines through the hooks `step_lr`, `inner_update` and `adapts`
(and `wrapper`: Meta-SGD swaps in learn2learn's MetaSGD).
"""
from __future__ import annotations

import learn2learn as l2l
import torch
import torch.nn.functional as F
from torch import nn

from metalearn.algorithms.base import MetaLearner, TaskMetrics, accuracy
from metalearn.algorithms.functional import Params, adapt_batched
from metalearn.data.episodes import Episodes
from metalearn.errors import ConfigError
from metalearn.models.norm import BatchNorm2d, inner_step

ENGINES = ("auto", "batched", "l2l")
# On a CPU, time goes to convolutions and vmap buys nothing at full size: batched vs l2l measured
# 1.03x on the README's main job (1 step) and 0.73x on Omniglot 20w1s (5 steps); only tiny nets
# gain (docs/performance.md).
CPU_ENGINE = "l2l"


def check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise ConfigError(f"algo.engine={engine!r}: choose one of {', '.join(ENGINES)}")
    return engine


def resolve_engine(engine: str, device: torch.device) -> str:
    """The engine that `engine` means on `device`."""
    if engine != "auto":
        return engine
    return "batched" if device.type == "cuda" else CPU_ENGINE


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


class MAML(MetaLearner):
    def __init__(self, backbone: nn.Module, ways: int, inner_lr: float = 0.4,
                 adaptation_steps: int = 1, test_adaptation_steps: int | None = None,
                 first_order: bool = False, multi_step_loss: bool = False,
                 msl_iterations: int = 0, lslr: bool = False, per_step_bn: bool = False,
                 first_order_iterations: int = 0, engine: str = "auto") -> None:
        super().__init__()
        self.engine = check_engine(engine)
        if multi_step_loss and msl_iterations < 1:
            raise ConfigError("algo.multi_step_loss=true needs algo.msl_iterations >= 1: the "
                              "iterations over which the loss weights anneal to the last step")
        self.ways = ways
        if per_step_bn:
            norms = [m for m in backbone.modules() if isinstance(m, BatchNorm2d)]
            if not norms:
                raise ConfigError("algo.per_step_bn=true but the backbone has no "
                                  "metalearn.models.norm.BatchNorm2d layer")
            for m in norms:
                m.per_step(adaptation_steps)
        model = nn.Sequential(backbone, nn.Linear(backbone.out_features, ways))
        self.maml = l2l.algorithms.MAML(model, lr=inner_lr, first_order=first_order)
        self.inner_lr = inner_lr  # Meta-SGD: the learned lrs' initial value
        self.adaptation_steps = adaptation_steps
        self.test_adaptation_steps = test_adaptation_steps or adaptation_steps
        self.first_order = first_order
        self.multi_step_loss, self.msl_iterations = multi_step_loss, msl_iterations
        self.first_order_iterations = first_order_iterations
        self.per_step_bn = per_step_bn
        # [steps] learned lrs per parameter tensor; test steps past the last reuse the last lr.
        self.lrs = nn.ParameterList(
            [nn.Parameter(torch.full((adaptation_steps,), float(inner_lr)))
             for _ in model.parameters()]) if lslr else None
        # learned lrs (LSLR's, Meta-SGD's) are lists in parameters() order
        self.param_index = {n: i for i, (n, _) in enumerate(model.named_parameters())}
        self.iteration = 0
        self.on_iteration(1, 1)

    @property
    def wrapper(self) -> nn.Module:
        """The learn2learn wrapper that the l2l engine clones per task."""
        return self.maml

    @property
    def model(self) -> nn.Module:
        """The network whose parameters adapt (the batched engine calls it functionally)."""
        return self.wrapper.module

    def engine_for(self, device: torch.device) -> str:
        return resolve_engine(self.engine, device)

    # --- hooks of the batched engine (override in MAML-family subclasses) ---
    def step_lr(self, name: str, step: int) -> float | torch.Tensor:
        """The inner lr of parameter `name` at `step`: LSLR's learned one, else `inner_lr`."""
        if self.lrs is None:
            return self.inner_lr
        lr = self.lrs[self.param_index[name]]
        return lr[min(step, len(lr) - 1)]

    def inner_update(self, step: int, fast: Params, grads: Params) -> Params:
        """One inner SGD step on the fast weights; `step` counts from 0."""
        return {n: p - self.step_lr(n, step) * grads[n] for n, p in fast.items()}

    def adapts(self, name: str) -> bool:
        """Whether parameter `name` of `self.model` adapts in the inner loop."""
        return True

    def _batched(self, episodes: Episodes, steps: int, first_order: bool,
                 step_weights: torch.Tensor | None = None) -> TaskMetrics:
        loss, logits = adapt_batched(self.model, episodes.support_x, episodes.support_y,
                                     episodes.query_x, episodes.query_y, steps,
                                     self.inner_update, first_order, self.adapts, step_weights)
        return TaskMetrics(loss, accuracy(logits.detach(), episodes.query_y))

    def on_iteration(self, iteration: int, total: int) -> None:
        self.iteration = iteration
        self.train_first_order = self.first_order or iteration <= self.first_order_iterations
        self.use_msl = self.multi_step_loss and iteration <= self.msl_iterations

    def step_weights(self) -> torch.Tensor:
        """Weights of the query loss after each training step (MSL, else only the last)."""
        if self.use_msl:
            return msl_weights(self.adaptation_steps, self.iteration / self.msl_iterations)
        w = torch.zeros(self.adaptation_steps, dtype=torch.float64)
        w[-1] = 1.0
        return w

    def _inner_update(self, learner, loss: torch.Tensor, step: int, first_order: bool) -> None:
        if self.lrs is None:
            learner.adapt(loss, first_order=first_order)
            return
        grads = torch.autograd.grad(loss, list(learner.parameters()), allow_unused=True,
                                    retain_graph=not first_order, create_graph=not first_order)
        updates = [None if g is None else -lr[min(step, len(lr) - 1)] * g
                   for lr, g in zip(self.lrs, grads)]
        l2l.update_module(learner.module, updates=updates)

    def _adapt(self, x, y, steps: int, first_order: bool, query=None):
        """Adapt a clone on (x, y); with `query`, also return its logits after every step."""
        learner = self.wrapper.clone()  # each adapt step gets `first_order`
        logits = []
        for step in range(steps):
            with inner_step(step):
                loss = F.cross_entropy(learner(x), y)
            self._inner_update(learner, loss, step, first_order)
            if query is not None:
                with inner_step(step):
                    logits.append(learner(query))
        return learner, logits

    def forward(self, episodes: Episodes) -> TaskMetrics:
        if self.engine_for(episodes.support_x.device) == "batched":
            return self._batched(episodes, self.adaptation_steps, self.train_first_order,
                                 self.step_weights() if self.use_msl else None)
        losses, accs = [], []
        for t in range(len(episodes)):
            qx, qy = episodes.query_x[t], episodes.query_y[t]
            # Query logits after every step only under MSL; otherwise after the last one.
            learner, logits = self._adapt(episodes.support_x[t], episodes.support_y[t],
                                          self.adaptation_steps, self.train_first_order,
                                          query=qx if self.use_msl else None)
            if self.use_msl:
                weights = self.step_weights().to(qx.dtype).to(qx.device)
                loss = sum(w * F.cross_entropy(l, qy) for w, l in zip(weights, logits))
            else:
                with inner_step(self.adaptation_steps - 1):
                    logits = [learner(qx)]
                loss = F.cross_entropy(logits[0], qy)
            losses.append(loss)
            accs.append(accuracy(logits[-1].detach(), qy))
        return TaskMetrics(torch.stack(losses), torch.stack(accs))

    def evaluate(self, episodes: Episodes) -> TaskMetrics:
        if self.engine_for(episodes.support_x.device) == "batched":
            with torch.no_grad():
                return self._batched(episodes, self.test_adaptation_steps, True)
        losses, accs = [], []
        steps = self.test_adaptation_steps
        for t in range(len(episodes)):
            with torch.enable_grad():
                learner, _ = self._adapt(episodes.support_x[t], episodes.support_y[t],
                                         steps, first_order=True)
            with torch.no_grad(), inner_step(steps - 1):
                logits = learner(episodes.query_x[t])
                losses.append(F.cross_entropy(logits, episodes.query_y[t]))
                accs.append(accuracy(logits, episodes.query_y[t]))
        return TaskMetrics(torch.stack(losses), torch.stack(accs))
