"""The task buffer of FTML: the tasks seen so far (as stream positions), oldest dropped first."""
from __future__ import annotations

import torch

from metalearn.errors import ConfigError

SAMPLING = ("uniform", "recent")


class TaskBuffer:
    """`size` most recent tasks; meta-batches drawn `uniform`ly or favouring `recent` ones
    (weight decay**age, age 0 = newest). Holds stream positions only, so its state is a list."""

    def __init__(self, size: int = 1000, sampling: str = "uniform", decay: float = 0.9) -> None:
        if size < 1:
            raise ConfigError(f"online.buffer.size={size}: the buffer must hold at least 1 task")
        if sampling not in SAMPLING:
            raise ConfigError(f"online.buffer.sampling={sampling!r}: choose one of "
                              f"{', '.join(SAMPLING)}")
        if not 0 < decay <= 1:
            raise ConfigError(f"online.buffer.decay={decay}: must be in (0, 1]")
        self.size, self.sampling, self.decay = size, sampling, decay
        self.tasks: list[int] = []

    def __len__(self) -> int:
        return len(self.tasks)

    def add(self, task: int) -> None:
        self.tasks.append(task)
        del self.tasks[: -self.size]

    def sample(self, n: int, generator: torch.Generator) -> list[int]:
        """`n` tasks, without replacement while the buffer has that many."""
        if not self.tasks:
            raise ValueError("sample from an empty buffer")
        k = len(self.tasks)
        if self.sampling == "uniform":
            weights = torch.ones(k, dtype=torch.float64)
        else:
            weights = self.decay ** torch.arange(k - 1, -1, -1, dtype=torch.float64)
        picks = torch.multinomial(weights, n, replacement=n > k, generator=generator)
        return [self.tasks[i] for i in picks.tolist()]

    def state_dict(self) -> dict:
        return {"tasks": list(self.tasks)}

    def load_state_dict(self, state: dict) -> None:
        self.tasks = list(state["tasks"])
