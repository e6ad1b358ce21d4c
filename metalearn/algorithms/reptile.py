"""Reptile (Nichol, Achiam & Schulman 2018, "On First-Order Meta-Learning Algorithms").

Each task trains a copy of the model (backbone + linear head) for `adaptation_steps` steps of
an ordinary optimizer on its support set, giving weights phi_i; the initialisation theta then
moves towards them: theta <- theta + eps * mean_i(phi_i - theta). No gradient flows through
the inner loop. The update is not the gradient of any loss, so `forward` returns it as an
objective: sum((theta - phi_i.detach())^2) / 2, whose gradient is theta - phi_i, and the
outer optimizer (SGD with lr = eps, no momentum: `optimizer=sgd optimizer.momentum=0`)
takes exactly Reptile's step. The reported loss is the query loss after adaptation.

The inner loop follows the paper's code (openai/supervised-reptile), which the tests check
step by step against an independent re-implementation:
  * `inner_optimizer=adam`: TensorFlow's Adam with beta1 = 0 (its epsilon is added to
    sqrt(v) before the bias correction of the step, unlike torch.optim.Adam's).
  * `carry_state=true`: Adam's second moments and step count are one state that runs on
    from task to task and iteration to iteration (the paper resets only the trainable
    variables between tasks); each evaluation task starts from a copy of it, as the paper's
    `evaluate` restores every variable afterwards. The state is part of the checkpoint.
  * `inner_batch` / `test_inner_batch`: each step takes a mini-batch of this many support
    images, drawn as the paper's `_mini_batches` does (shuffle, cut into batches, reshuffle
    when the set runs out); null = the whole support set every step.

Engines: `l2l` trains tasks one after another (the reference); `batched` runs all tasks of a
batch at once with torch.func. Tasks that share a carried state in training depend on each
other, so that training stays sequential on either engine; evaluation, where every task starts
from the same state, and training with `carry_state=false` use the batched engine.
"""
from __future__ import annotations

import copy
import math
from typing import Annotated, Optional

from annotated_types import Ge

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from metalearn.algorithms.base import TaskMetrics, accuracy
from metalearn.algorithms.functional import Params
from metalearn.algorithms.gbml import GBML
from metalearn.data.episodes import Episodes
from metalearn.errors import ConfigError

INNER_OPTIMIZERS = ("sgd", "adam")
ADAM_BETA2 = 0.999  # beta1 = 0, the paper's
ADAM_EPS = 1e-8     # TensorFlow's default


def minibatches(n: int, size: int | None, count: int) -> list[torch.Tensor | None]:
    """`count` index batches of `size` out of range(n), as supervised-reptile's
    `_mini_batches(replacement=False)`: the set shuffled in place, cut into batches, a batch
    running on into the next shuffle. None stands for the whole set, which a batch is whenever
    `size` is a multiple of n (duplicates change neither the mean loss nor BatchNorm's
    statistics); then no random numbers are drawn."""
    if size is None or size % n == 0:
        return [None] * count
    order, out, cur = list(range(n)), [], []
    while True:
        order = [order[i] for i in torch.randperm(n).tolist()]
        for i in order:
            cur.append(i)
            if len(cur) == size:
                out.append(torch.tensor(cur))
                cur = []
                if len(out) == count:
                    return out


class Reptile(GBML):
    def __init__(self, backbone: nn.Module, ways: int, inner_lr: float = 0.001,
                 adaptation_steps: int = 5, test_adaptation_steps: int | None = 50,
                 inner_optimizer: str = "adam", inner_batch: Optional[Annotated[int, Ge(1)]] = None,
                 test_inner_batch: Optional[Annotated[int, Ge(1)]] = None, carry_state: bool = True,
                 engine: str = "auto") -> None:
        super().__init__(ways, inner_lr, adaptation_steps, test_adaptation_steps,
                         first_order=True, engine=engine)
        if engine == "compiled":
            raise ConfigError("algo.engine=compiled is the MAML family's (maml, fomaml, mamlpp, "
                              "metasgd, anil); Reptile runs on batched or l2l")
        if inner_optimizer not in INNER_OPTIMIZERS:
            raise ConfigError(f"algo.inner_optimizer={inner_optimizer!r}: choose one of "
                              f"{', '.join(INNER_OPTIMIZERS)}")
        for key, value in (("inner_batch", inner_batch), ("test_inner_batch", test_inner_batch)):
            if value is not None and value < 1:
                raise ConfigError(f"algo.{key}={value}: expected null or an integer >= 1")
        self.inner_optimizer, self.carry_state = inner_optimizer, carry_state
        self.inner_batch, self.test_inner_batch = inner_batch, test_inner_batch
        self.model = nn.Sequential(backbone, nn.Linear(backbone.out_features, ways))
        numel = sum(p.numel() for p in self.model.parameters())
        # the carried Adam state: second moments of every weight (flat) and the step count
        self.register_buffer("inner_sq", torch.zeros(numel))
        self.register_buffer("inner_t", torch.zeros((), dtype=torch.long))

    def embedding(self) -> nn.Module:
        return self.model[0]

    def _load_from_state_dict(self, state_dict, prefix, *args) -> None:
        # checkpoints from before the carried state: start it fresh
        state_dict.setdefault(prefix + "inner_sq", torch.zeros_like(self.inner_sq))
        state_dict.setdefault(prefix + "inner_t", torch.zeros_like(self.inner_t))
        super()._load_from_state_dict(state_dict, prefix, *args)

    # --- the inner optimizer ---
    def _state(self, fresh: bool) -> tuple[list[torch.Tensor], int]:
        """Adam's second moments as per-parameter tensors, and the step count: a fresh state,
        or a copy of the carried one."""
        flat = torch.zeros_like(self.inner_sq) if fresh else self.inner_sq.clone()
        shapes = [p.shape for p in self.model.parameters()]
        sq = [v.view(s) for v, s in zip(flat.split([math.prod(s) for s in shapes]), shapes)]
        return sq, 0 if fresh else int(self.inner_t)

    def _save_state(self, sq: list[torch.Tensor], t: int) -> None:
        with torch.no_grad():
            self.inner_sq.copy_(torch.cat([v.flatten() for v in sq]))
            self.inner_t.fill_(t)

    def _step_size(self, t: int) -> float:
        """The step's lr; `t` counts steps from 1. TF's Adam folds the bias correction into
        it: lr * sqrt(1 - beta2^t) / (1 - beta1^t), and beta1 = 0."""
        if self.inner_optimizer == "sgd":
            return self.inner_lr
        return self.inner_lr * math.sqrt(1 - ADAM_BETA2 ** t)

    def _update(self, step: int, fast: Params, grads: Params, state: Params) -> Params:
        """The inner step, functional (batched engine): `state` holds Adam's second moments
        and is updated in place; `step` is the step count after this step."""
        if self.inner_optimizer == "sgd":
            return {n: p - self.inner_lr * grads[n] for n, p in fast.items()}
        lr = self._step_size(step)
        out = {}
        for n, p in fast.items():
            state[n] = ADAM_BETA2 * state[n] + (1 - ADAM_BETA2) * grads[n] * grads[n]
            out[n] = p - lr * grads[n] / (state[n].sqrt() + ADAM_EPS)
        return out

    def _worker(self) -> nn.Module:
        """A second copy of the model that tasks train in place (never registered, so it is
        neither meta-trained nor saved); kept across tasks to save a copy per task."""
        ref = next(self.model.parameters())
        w = self.__dict__.get("_worker_model")
        if w is None or next(w.parameters()).dtype != ref.dtype or \
                next(w.parameters()).device != ref.device:
            w = copy.deepcopy(self.model).requires_grad_(True)
            self.__dict__["_worker_model"] = w
        return w

    def _train(self, x: torch.Tensor, y: torch.Tensor, steps: int, batch: int | None,
               sq: list[torch.Tensor], t: int) -> tuple[nn.Module, int]:
        """The worker set to the model's weights, then trained `steps` steps on (x, y);
        `sq` is updated in place. Returns the worker and the step count."""
        w = self._worker()
        params = list(w.parameters())
        with torch.no_grad():
            torch._foreach_copy_(params, [p.detach() for p in self.model.parameters()])
        for idx in minibatches(len(x), batch, steps):
            xb, yb = (x, y) if idx is None else (x[idx.to(x.device)], y[idx.to(y.device)])
            with torch.enable_grad():
                grads = torch.autograd.grad(self.inner_loss(w(xb.detach()), yb), params)
            t += 1
            with torch.no_grad():
                if self.inner_optimizer == "adam":
                    torch._foreach_mul_(sq, ADAM_BETA2)
                    torch._foreach_addcmul_(sq, grads, grads, value=1 - ADAM_BETA2)
                    denom = torch._foreach_add(torch._foreach_sqrt(sq), ADAM_EPS)
                    torch._foreach_addcdiv_(params, grads, denom, value=-self._step_size(t))
                else:
                    torch._foreach_add_(params, grads, alpha=-self.inner_lr)
        return w, t

    def _adapt(self, x: torch.Tensor, y: torch.Tensor, steps: int, first_order: bool = True,
               query: torch.Tensor | None = None) -> tuple[nn.Module, list[torch.Tensor]]:
        """Test-time adaptation (GBML.evaluate and adapt): from a copy of the carried state."""
        sq, t = self._state(fresh=not self.carry_state)
        clone, _ = self._train(x, y, steps, self.test_inner_batch, sq, t)
        return copy.deepcopy(clone), []

    # --- the batched engine ---
    def _tasks_batched(self, episodes: Episodes, steps: int, batch: int | None
                       ) -> tuple[Params, torch.Tensor, torch.Tensor]:
        """Every task's adapted weights {name: [B, ...]}, query loss [B] and logits [B, Q, W],
        each task from a copy of the same state (fresh, or the carried one)."""
        model = self.model
        theta = {n: p.detach() for n, p in model.named_parameters()}
        sq0, t0 = self._state(fresh=not self.carry_state)
        sq0 = dict(zip(theta, sq0))
        n = episodes.support_x.shape[1]
        # drawn here in the order the sequential engine draws them: task by task
        idx = [minibatches(n, batch, steps) for _ in range(len(episodes))]
        full = torch.arange(n)
        idx = torch.stack([torch.stack([full if i is None else i for i in task]) for task in idx]
                          ).to(episodes.support_x.device)

        def task(sx, sy, qx, qy, order):
            def support_loss(f: Params, xb, yb) -> torch.Tensor:
                return self.inner_loss(functional_call(model, f, (xb,)), yb)

            fast, state = dict(theta), dict(sq0)
            for step in range(steps):
                xb, yb = sx[order[step]], sy[order[step]]
                fast = self._update(t0 + step + 1, fast, grad(support_loss)(fast, xb, yb), state)
            logits = functional_call(model, fast, (qx,))
            return fast, self.query_loss(logits, qy), logits

        return vmap(task, randomness="different")(episodes.support_x, episodes.support_y,
                                                  episodes.query_x, episodes.query_y, idx)

    def _adapt_batched(self, episodes: Episodes, steps: int, first_order: bool,
                       step_weights: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        _, loss, logits = self._tasks_batched(episodes, steps, self.test_inner_batch)
        return loss, logits

    def forward(self, episodes: Episodes) -> TaskMetrics:
        steps, names = self.adaptation_steps, [n for n, _ in self.model.named_parameters()]
        batched = self.batched(episodes.support_x.device)
        if batched and not self.carry_state:
            fast, loss, logits = self._tasks_batched(episodes, steps, self.inner_batch)
            phi = [fast[n] for n in names]                                       # [B, ...] each
        else:
            phi, losses, all_logits = [], [], []
            sq, t = self._state(fresh=not self.carry_state)
            for i in range(len(episodes)):
                if i and not self.carry_state:
                    sq, t = self._state(fresh=True)
                clone, t = self._train(episodes.support_x[i], episodes.support_y[i], steps,
                                         self.inner_batch, sq, t)
                with torch.no_grad():
                    all_logits.append(clone(episodes.query_x[i]))
                losses.append(self.query_loss(all_logits[-1], episodes.query_y[i]))
                phi.append([p.detach().clone() for p in clone.parameters()])
            if self.carry_state:
                self._save_state(sq, t)
            phi = [torch.stack(ps) for ps in zip(*phi)]
            loss, logits = torch.stack(losses), torch.stack(all_logits)
        objective = sum(((theta[None] - p.detach()) ** 2).flatten(1).sum(1)
                        for theta, p in zip(self.model.parameters(), phi)) / 2
        return TaskMetrics(loss.detach(), accuracy(logits.detach(), episodes.query_y), objective)
