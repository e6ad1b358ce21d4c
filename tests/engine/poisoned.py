"""Test-only MAML whose meta-loss turns NaN on chosen iterations (exercises the NaN guard)."""
from metalearn.algorithms.base import TaskMetrics
from metalearn.algorithms.maml import MAML


class PoisonedMAML(MAML):
    def __init__(self, *args, poison_from: int = 10**9, poison_until: int = 10**9, **kwargs):
        super().__init__(*args, **kwargs)
        self.poison = range(poison_from, poison_until + 1)

    def on_iteration(self, iteration: int) -> None:
        super().on_iteration(iteration)
        self.iteration = iteration

    def forward(self, episodes):
        m = super().forward(episodes)
        if self.iteration in self.poison:  # NaN flows into every gradient, as a real blow-up
            return TaskMetrics(m.loss * float("nan"), m.acc)
        return m
