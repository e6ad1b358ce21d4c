"""Reptile (Nichol, Achiam & Schulman 2018, "On First-Order Meta-Learning Algorithms").

Each task trains a copy of the model (backbone + linear head) for `adaptation_steps` steps of
an ordinary optimizer on its support set, giving weights phi_i; the initialisation theta then
moves towards them: theta <- theta + eps * mean_i(phi_i - theta). No gradient flows through
the inner loop. The update is not the gradient of any loss, so `forward` returns it as an
objective: sum((theta - phi_i.detach())^2) / 2, whose gradient is theta - phi_i, and the
outer optimizer (SGD with lr = eps, no momentum: `optimizer=sgd optimizer.momentum=0`)
takes exactly Reptile's step. The reported loss is the query loss after adaptation.

`inner_optimizer`: `sgd`, or `adam` (the paper's: beta1 = 0, a fresh state per task here).
Engines, as for MAML (`gbml.py`): `l2l` trains a copy per task with a torch optimizer (the
reference); `batched` runs the same steps for all tasks at once with torch.func, the
optimizer written functionally.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from metalearn.algorithms.base import TaskMetrics, accuracy
from metalearn.algorithms.functional import Params
from metalearn.algorithms.gbml import GBML
from metalearn.data.episodes import Episodes
from metalearn.errors import ConfigError

INNER_OPTIMIZERS = ("sgd", "adam")
ADAM_BETAS = (0.0, 0.999)  # Nichol et al.'s inner Adam
ADAM_EPS = 1e-8


class Reptile(GBML):
    def __init__(self, backbone: nn.Module, ways: int, inner_lr: float = 0.001,
                 adaptation_steps: int = 5, test_adaptation_steps: int | None = 50,
                 inner_optimizer: str = "adam", engine: str = "auto") -> None:
        super().__init__(ways, inner_lr, adaptation_steps, test_adaptation_steps,
                         first_order=True, engine=engine)
        if inner_optimizer not in INNER_OPTIMIZERS:
            raise ConfigError(f"algo.inner_optimizer={inner_optimizer!r}: choose one of "
                              f"{', '.join(INNER_OPTIMIZERS)}")
        self.inner_optimizer = inner_optimizer
        self.model = nn.Sequential(backbone, nn.Linear(backbone.out_features, ways))

    def _adapt(self, x: torch.Tensor, y: torch.Tensor, steps: int, first_order: bool = True,
               query: torch.Tensor | None = None) -> tuple[nn.Module, list[torch.Tensor]]:
        learner = copy.deepcopy(self.model)
        params = list(learner.parameters())
        opt = (torch.optim.SGD(params, lr=self.inner_lr) if self.inner_optimizer == "sgd" else
               torch.optim.Adam(params, lr=self.inner_lr, betas=ADAM_BETAS, eps=ADAM_EPS))
        with torch.enable_grad():
            for _ in range(steps):
                opt.zero_grad()
                F.cross_entropy(learner(x.detach()), y).backward()
                opt.step()
        return learner, []

    def _update(self, step: int, fast: Params, grads: Params, state: Params) -> Params:
        """torch.optim.SGD / Adam's step, functional: `state` holds Adam's second moments."""
        if self.inner_optimizer == "sgd":
            return {n: p - self.inner_lr * grads[n] for n, p in fast.items()}
        b1, b2 = ADAM_BETAS
        t = step + 1
        out = {}
        for n, p in fast.items():
            state[n] = b2 * state[n] + (1 - b2) * grads[n] * grads[n]
            m = grads[n]  # beta1 = 0: the first moment is the gradient itself
            denom = state[n].sqrt() / (1 - b2 ** t) ** 0.5 + ADAM_EPS
            out[n] = p - self.inner_lr / (1 - b1 ** t) * m / denom
        return out

    def _tasks_batched(self, episodes: Episodes, steps: int
                       ) -> tuple[Params, torch.Tensor, torch.Tensor]:
        """Every task's adapted weights {name: [B, ...]}, query loss [B] and logits [B, Q, W]."""
        model = self.model
        theta = {n: p.detach() for n, p in model.named_parameters()}

        def task(sx, sy, qx, qy):
            def support_loss(f: Params) -> torch.Tensor:
                return F.cross_entropy(functional_call(model, f, (sx,)), sy)

            fast, state = dict(theta), {n: torch.zeros_like(p) for n, p in theta.items()}
            for step in range(steps):
                fast = self._update(step, fast, grad(support_loss)(fast), state)
            logits = functional_call(model, fast, (qx,))
            return fast, F.cross_entropy(logits, qy), logits

        return vmap(task, randomness="different")(episodes.support_x, episodes.support_y,
                                                  episodes.query_x, episodes.query_y)

    def _adapt_batched(self, episodes: Episodes, steps: int, first_order: bool,
                       step_weights: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        _, loss, logits = self._tasks_batched(episodes, steps)
        return loss, logits

    def forward(self, episodes: Episodes) -> TaskMetrics:
        steps, names = self.adaptation_steps, [n for n, _ in self.model.named_parameters()]
        if self.engine_for(episodes.support_x.device) == "batched":
            fast, loss, logits = self._tasks_batched(episodes, steps)
            phi = [fast[n] for n in names]                                       # [B, ...] each
        else:
            phi, losses, all_logits = [], [], []
            for t in range(len(episodes)):
                learner, _ = self._adapt(episodes.support_x[t], episodes.support_y[t], steps)
                with torch.no_grad():
                    all_logits.append(learner(episodes.query_x[t]))
                losses.append(F.cross_entropy(all_logits[-1], episodes.query_y[t]))
                phi.append([p.detach() for p in learner.parameters()])
            phi = [torch.stack(ps) for ps in zip(*phi)]
            loss, logits = torch.stack(losses), torch.stack(all_logits)
        objective = sum(((theta[None] - p.detach()) ** 2).flatten(1).sum(1)
                        for theta, p in zip(self.model.parameters(), phi)) / 2
        return TaskMetrics(loss.detach(), accuracy(logits.detach(), episodes.query_y), objective)
