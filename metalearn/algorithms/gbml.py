"""The base of the gradient-based learners (learn2learn's `algorithms/gbml.py` plays this role).

A gradient-based learner adapts `model`, the network whose weights take inner steps, by
gradient steps on a task's support set and classifies the task's queries with the result.
MAML, Meta-SGD, ANIL and Reptile differ only in hooks:
  * `features(x)`: a fixed embedding run before `model` (ANIL's backbone; else identity).
  * `step_lr(name, step)`: the inner lr of parameter `name` at `step`; the only reader of
    `inner_lr` (LSLR and Meta-SGD return learned ones initialised from it).
  * `adapts(name)`: which parameters of `model` take inner steps.
  * `step_weights()`: MAML++'s multi-step loss (None: only the last step's query loss).
  * `_adapt` / `_adapt_batched`: the inner loop itself (Reptile's is a torch optimizer).

Engines (`algo.engine`):
  * `l2l`: one task at a time, learn2learn's `clone_module`/`update_module` (the reference).
  * `batched`: all tasks at once with torch.func (`algorithms/functional.py`); the same
    meta-gradient to float64 round-off.
  * `compiled`: `batched` with the meta-batch function under `torch.compile` (fused kernels,
    a fraction of the operator calls; minutes of compilation first; docs/performance.md).
  * `auto`: `batched` on CUDA; on CPU `CPU_ENGINE` (why: docs/performance.md).
"""
from __future__ import annotations

from typing import Any

import learn2learn as l2l
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import vmap

from metalearn.algorithms.base import Classifier, MetaLearner, TaskMetrics, accuracy
from metalearn.algorithms.functional import Params, adapt_batched
from metalearn.data.episodes import Episodes
from metalearn.errors import ConfigError
from metalearn.models.norm import batch_stats, inner_step

ENGINES = ("auto", "batched", "compiled", "l2l")
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


def _sgd(p: torch.Tensor, lr: float | torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """p - lr * g in one operator (the batched engine's cost is its operator count)."""
    if isinstance(lr, torch.Tensor):
        return torch.addcmul(p, lr, g, value=-1)
    return torch.add(p, g, alpha=-lr)


class GBML(MetaLearner):
    model: nn.Module  # set by the subclass: the network whose parameters adapt
    # old state_dict key prefix -> new, so checkpoints written before a rename still load
    renamed_keys: dict[str, str] = {}

    def __init__(self, ways: int, inner_lr: float, adaptation_steps: int,
                 test_adaptation_steps: int | None, first_order: bool, engine: str) -> None:
        super().__init__()
        self.ways = ways
        self.inner_lr = float(inner_lr)
        self.adaptation_steps = adaptation_steps
        self.test_adaptation_steps = test_adaptation_steps or adaptation_steps
        self.first_order = self.train_first_order = first_order
        self.engine = check_engine(engine)

    def engine_for(self, device: torch.device) -> str:
        return resolve_engine(self.engine, device)

    def batched(self, device: torch.device) -> bool:
        """All tasks at once (`batched` or `compiled`), not one by one."""
        return self.engine_for(device) in ("batched", "compiled")

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args) -> None:
        for key in list(state_dict):
            for old, new in self.renamed_keys.items():
                if key.startswith(prefix + old):
                    state_dict[prefix + new + key[len(prefix + old):]] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args)

    # --- hooks ---
    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def step_lr(self, name: str, step: int) -> float | torch.Tensor:
        return self.inner_lr

    def adapts(self, name: str) -> bool:
        return True

    def step_weights(self) -> torch.Tensor | None:
        return None

    def inner_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """What the inner loop descends on a task's support set (both engines, and Reptile)."""
        return F.cross_entropy(logits, y)

    def query_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """A task's query loss after adaptation: what meta-training minimises and what is
        reported (for Reptile only reported: its update is no loss's gradient)."""
        return F.cross_entropy(logits, y)

    def inner_update(self, step: int, fast: Params, grads: Params) -> Params:
        """One inner SGD step on the fast weights (batched engine); `step` counts from 0."""
        return {n: _sgd(p, self.step_lr(n, step), grads[n]) for n, p in fast.items()}

    # --- the l2l engine: one task at a time ---
    def _inner_step(self, clone: nn.Module, loss: torch.Tensor, step: int,
                    first_order: bool) -> None:
        named = [(n, p) for n, p in clone.named_parameters() if self.adapts(n)]
        grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True,
                                    retain_graph=not first_order, create_graph=not first_order)
        lr = {n: self.step_lr(n, step) for n, _ in named}
        new = {n: None if g is None else -lr[n] * g for (n, _), g in zip(named, grads)}
        l2l.update_module(clone, updates=[new.get(n) for n, _ in clone.named_parameters()])

    def _adapt(self, x: torch.Tensor, y: torch.Tensor, steps: int, first_order: bool,
               query: torch.Tensor | None = None) -> tuple[nn.Module, list[torch.Tensor]]:
        """Adapt a clone of `model` on features (x, y); with `query`, also return its logits
        after every step."""
        clone = l2l.clone_module(self.model)
        logits = []
        for step in range(steps):
            with inner_step(step):
                loss = self.inner_loss(clone(x), y)
            self._inner_step(clone, loss, step, first_order)
            if query is not None:
                with inner_step(step):
                    logits.append(clone(query))
        return clone, logits

    # --- the batched engine: all tasks at once ---
    def _adapt_batched(self, episodes: Episodes, steps: int, first_order: bool,
                       step_weights: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        # support and query embedded in separate calls: each its own BN batch, as on l2l
        embed = vmap(self.features, randomness="different")
        return adapt_batched(self.model, embed(episodes.support_x), episodes.support_y,
                             embed(episodes.query_x), episodes.query_y, steps,
                             self.inner_update, first_order, self.adapts, step_weights,
                             self.inner_loss, self.query_loss,
                             compile=self.engine_for(episodes.support_x.device) == "compiled")

    def forward(self, episodes: Episodes) -> TaskMetrics:
        weights, steps = self.step_weights(), self.adaptation_steps
        if self.batched(episodes.support_x.device):
            loss, logits = self._adapt_batched(episodes, steps, self.train_first_order, weights)
            return TaskMetrics(loss, accuracy(logits.detach(), episodes.query_y))
        losses, accs = [], []
        for t in range(len(episodes)):
            zs, zq = self.features(episodes.support_x[t]), self.features(episodes.query_x[t])
            qy = episodes.query_y[t]
            # query logits after every step only under MSL; otherwise after the last one
            clone, logits = self._adapt(zs, episodes.support_y[t], steps,
                                          self.train_first_order,
                                          query=None if weights is None else zq)
            if weights is None:
                with inner_step(steps - 1):
                    logits = [clone(zq)]
                loss = self.query_loss(logits[0], qy)
            else:
                weights = weights.to(zq.device, zq.dtype)
                loss = sum(w * self.query_loss(l, qy) for w, l in zip(weights, logits))
            losses.append(loss)
            accs.append(accuracy(logits[-1].detach(), qy))
        return TaskMetrics(torch.stack(losses), torch.stack(accs))

    def evaluate(self, episodes: Episodes) -> TaskMetrics:
        steps = self.test_adaptation_steps
        if self.batched(episodes.support_x.device):
            with torch.no_grad():
                loss, logits = self._adapt_batched(episodes, steps, True)
            return TaskMetrics(loss, accuracy(logits, episodes.query_y))
        losses, accs = [], []
        for t in range(len(episodes)):
            with torch.no_grad():  # the embedding is fixed at test time: no graph through it
                zs, zq = self.features(episodes.support_x[t]), self.features(episodes.query_x[t])
            with torch.enable_grad():
                clone, _ = self._adapt(zs, episodes.support_y[t], steps, first_order=True)
            with torch.no_grad(), inner_step(steps - 1):
                logits = clone(zq)
                losses.append(self.query_loss(logits, episodes.query_y[t]))
                accs.append(accuracy(logits, episodes.query_y[t]))
        return TaskMetrics(torch.stack(losses), torch.stack(accs))

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor) -> Classifier:
        steps, stats = self.test_adaptation_steps, []
        with torch.no_grad(), batch_stats(stats, "record"):
            zs = self.features(support_x)
        with torch.enable_grad():
            clone, _ = self._adapt(zs, support_y, steps, first_order=True)
        with torch.no_grad(), inner_step(steps - 1), batch_stats(stats, "record"):
            clone(zs)  # the adapted model's statistics on the support set

        def classify(query_x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad(), inner_step(steps - 1), batch_stats(stats, "reuse"):
                return clone(self.features(query_x))
        return classify
