"""What an online run's checkpoint holds: `OnlineState`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from metalearn.engine.checkpoint import restore_rng, rng_state
from metalearn.engine.run import RunState
from metalearn.errors import ConfigError
from metalearn.online import STATE_FILES
from metalearn.online.buffer import TaskBuffer
from metalearn.online.learners import OnlineLearner


def new_history() -> dict[str, Any]:
    """Per round: the score, the efficiency measure; per domain: the forgetting probe."""
    return {"acc": [], "examples": [], "probe_after": {}, "elapsed_s": 0.0}


@dataclass
class OnlineState(RunState):
    """Everything a stream needs to continue bit for bit: the learner (its optimizer within),
    the buffer, the position in the stream, what was measured so far and every RNG.
    `state_dict()` is the only place an online checkpoint is built, `load_state_dict()` the
    only place one is read."""

    NAME = "online run"
    FILES = STATE_FILES
    OUTPUTS = ("stream.json", "online_curve.png")
    KEYS = ("round", "learner", "buffer", "rng", "history", "stream", "metrics_bytes",
            "wandb_run_id", "config")
    PROGRESS = "round"

    learner: OnlineLearner
    buffer: TaskBuffer
    generators: dict[str, torch.Generator]
    stream: int  # TaskStream.fingerprint() of the stream this run draws
    round: int = 0  # rounds done
    history: dict[str, Any] = field(default_factory=new_history)

    def state_dict(self) -> dict[str, Any]:
        return {**self.run_dict(), "round": self.round, "learner": self.learner.state_dict(),
                "buffer": self.buffer.state_dict(), "rng": rng_state(self.generators),
                "history": {**self.history, "elapsed_s": self.elapsed()},
                "stream": self.stream}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Everything but `config`, which engine/run.py read before anything was built."""
        if state["stream"] != self.stream:
            raise ConfigError("resume: the stream drawn now differs from the checkpoint's (the "
                              "data under paths.data_dir changed?): start a new run")
        self.learner.load_state_dict(state["learner"])
        self.buffer.load_state_dict(state["buffer"])
        restore_rng(state["rng"], self.generators)
        self.history, self.round = state["history"], state["round"]
        self.load_run_dict(state, time_before_s=state["history"]["elapsed_s"])
