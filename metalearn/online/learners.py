"""What learns along a stream: FTML and the baselines Finn et al. 2019 compare it with.

Each learner `score`s a round's task without learning from it (adapt on the support set, score
the query set), then `learn`s from its buffer. Only the public meta-learner API is used:
`algo(episodes)` for a differentiable objective, `algo.evaluate(episodes)` to adapt and score.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from metalearn.algorithms.base import MetaLearner, TaskMetrics, accuracy
from metalearn.data.episodes import Episodes
from metalearn.errors import ConfigError, TrainingError
from metalearn.online.buffer import TaskBuffer


@dataclass
class Context:
    """What the run gives a learner."""

    algo: MetaLearner
    make_backbone: Callable[[], nn.Module]
    make_optimizer: Callable[[Any], torch.optim.Optimizer]
    episodes: Callable[[list[int]], Episodes]  # stream positions -> float training episodes
    labelled: Callable[[list[int]], tuple[torch.Tensor, torch.Tensor]]  # images, split class ids
    num_classes: int  # classes of the stream's split
    ways: int
    total_rounds: int


class OnlineLearner:
    uses_meta_learner = False  # whether online.checkpoint (meta-parameters) means anything

    def setup(self, ctx: Context) -> None:
        self.ctx = ctx

    def score(self, episodes: Episodes) -> TaskMetrics:
        """Query loss and accuracy per task after adapting on its support set; learns nothing."""
        raise NotImplementedError

    def learn(self, buffer: TaskBuffer, generator: torch.Generator) -> dict[str, float]:
        return {}

    def generators(self) -> dict[str, torch.Generator]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class FTML(OnlineLearner):
    """Follow the meta-leader: `steps_per_round` meta-steps on meta-batches from the buffer."""

    uses_meta_learner = True

    def __init__(self, steps_per_round: int = 5, meta_batch_size: int = 8) -> None:
        if steps_per_round < 0 or meta_batch_size < 1:
            raise ConfigError(f"online.learner: steps_per_round={steps_per_round} must be >= 0 "
                              f"and meta_batch_size={meta_batch_size} >= 1")
        self.steps_per_round, self.meta_batch_size = steps_per_round, meta_batch_size
        self.steps = 0

    def setup(self, ctx: Context) -> None:
        super().setup(ctx)
        self.algo = ctx.algo
        self.opt = ctx.make_optimizer(self.algo.parameters())

    def score(self, episodes: Episodes) -> TaskMetrics:
        self.algo.eval()
        try:
            with torch.no_grad():
                m = self.algo.evaluate(episodes)
            return TaskMetrics(m.loss.float(), m.acc.float())
        finally:
            self.algo.train()

    def learn(self, buffer: TaskBuffer, generator: torch.Generator) -> dict[str, float]:
        losses = []
        for _ in range(self.steps_per_round):
            self.steps += 1
            self.algo.on_iteration(self.steps)
            batch = self.ctx.episodes(buffer.sample(self.meta_batch_size, generator))
            self.opt.zero_grad(set_to_none=True)
            loss = self.algo(batch).to_minimise.float().mean()  # what training back-propagates
            if not torch.isfinite(loss):
                raise TrainingError(f"the meta-loss became {float(loss)} at meta-step {self.steps}:"
                                    f" lower optimizer.lr or algo.inner_lr")
            loss.backward()
            self.opt.step()
            losses.append(loss.item())
        return {"online/meta_loss": sum(losses) / len(losses)} if losses else {}

    def state_dict(self) -> dict[str, Any]:
        return {"algo": self.algo.state_dict(), "optimizer": self.opt.state_dict(),
                "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.algo.load_state_dict(state["algo"])
        self.opt.load_state_dict(state["optimizer"])
        self.steps = state["steps"]


class Frozen(FTML):
    """Meta-parameters fixed (an i.i.d. meta-training run's, via online.checkpoint): each task
    is only adapted to, as at meta-test time."""

    def __init__(self) -> None:
        super().__init__(steps_per_round=0)


def finetune(body: nn.Module, ways: int, x: torch.Tensor, y: torch.Tensor, steps: int,
             lr: float) -> nn.Module:
    """`body` + a zero-initialised `ways`-way head, all trained with Adam on (x, y)."""
    head = nn.Linear(body.out_features, ways).to(x.device)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    model = nn.Sequential(body, head)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model


class _FineTuner(OnlineLearner):
    def __init__(self, finetune_steps: int, finetune_lr: float) -> None:
        if finetune_steps < 0 or not finetune_lr > 0:
            raise ConfigError(f"online.learner: finetune_steps={finetune_steps} must be >= 0 and "
                              f"finetune_lr={finetune_lr} > 0")
        self.finetune_steps, self.finetune_lr = finetune_steps, finetune_lr

    def body(self) -> nn.Module:
        raise NotImplementedError

    def score(self, episodes: Episodes) -> TaskMetrics:
        losses, accs = [], []
        for t in range(len(episodes)):
            ways = int(episodes.support_y[t].max()) + 1
            with torch.enable_grad():
                model = finetune(self.body(), ways, episodes.support_x[t], episodes.support_y[t],
                                 self.finetune_steps, self.finetune_lr)
            with torch.no_grad():
                logits = model(episodes.query_x[t])
                losses.append(F.cross_entropy(logits, episodes.query_y[t]))
                accs.append(accuracy(logits, episodes.query_y[t]))
        return TaskMetrics(torch.stack(losses).float(), torch.stack(accs).float())


class Scratch(_FineTuner):
    """Train from scratch: a freshly initialised network fine-tuned on each task's support set."""

    def __init__(self, finetune_steps: int = 50, finetune_lr: float = 0.01, seed: int = 0) -> None:
        super().__init__(finetune_steps, finetune_lr)
        self.gen = torch.Generator().manual_seed(seed)

    def body(self) -> nn.Module:
        # each task's init from this learner's own generator: resumable, and independent of
        # whatever else draws from the global RNG
        seed = int(torch.randint(2**62, (1,), generator=self.gen))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.ctx.make_backbone()

    def generators(self) -> dict[str, torch.Generator]:
        return {"scratch_init": self.gen}


class FollowTheLeader(_FineTuner):
    """Follow the leader: one network trained by plain supervised learning on every image seen
    so far (a head over all classes of the split), fine-tuned on each new task's support set."""

    def __init__(self, steps_per_round: int = 5, tasks_per_batch: int = 8,
                 finetune_steps: int = 50, finetune_lr: float = 0.01) -> None:
        super().__init__(finetune_steps, finetune_lr)
        if steps_per_round < 0 or tasks_per_batch < 1:
            raise ConfigError(f"online.learner: steps_per_round={steps_per_round} must be >= 0 "
                              f"and tasks_per_batch={tasks_per_batch} >= 1")
        self.steps_per_round, self.tasks_per_batch = steps_per_round, tasks_per_batch

    def setup(self, ctx: Context) -> None:
        super().setup(ctx)
        backbone = ctx.make_backbone()
        self.net = nn.Sequential(backbone, nn.Linear(backbone.out_features, ctx.num_classes))
        self.net.to(next(ctx.algo.parameters()).device)
        self.opt = ctx.make_optimizer(self.net.parameters())

    def body(self) -> nn.Module:
        return copy.deepcopy(self.net[0])

    def learn(self, buffer: TaskBuffer, generator: torch.Generator) -> dict[str, float]:
        losses = []
        for _ in range(self.steps_per_round):
            x, y = self.ctx.labelled(buffer.sample(self.tasks_per_batch, generator))
            self.opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(self.net(x), y)
            losses.append(loss.item())
            if not math.isfinite(losses[-1]):
                raise TrainingError(f"the supervised loss became {losses[-1]}: lower optimizer.lr")
            loss.backward()
            self.opt.step()
        return {"online/train_loss": sum(losses) / len(losses)} if losses else {}

    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.state_dict(), "optimizer": self.opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["optimizer"])
