"""No host read of a tensor value inside the meta-step: between two reads (log, evaluation,
checkpoint iterations) an iteration runs without waiting for the device, so on a GPU it can
run ahead of the host and be captured whole in a CUDA graph."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from metalearn.algorithms.maml import MAML
from metalearn.engine.loop import train
from tests.conftest import FAST, compose_cfg

# aten operators that copy a tensor's value to the host (`.item()`, `float(t)`, `if t:`)
SCALAR_READS = {"aten._local_scalar_dense.default", "aten.is_nonzero.default",
                "aten.equal.default"}


class HostReads(TorchDispatchMode):
    """Counts host reads per training iteration (`iteration` is set by the learner's hook)."""

    def __init__(self) -> None:
        super().__init__()
        self.iteration, self.reads = 0, {}

    def count(self, what: str) -> None:
        self.reads.setdefault(self.iteration, []).append(what)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func) in SCALAR_READS:
            self.count(str(func))
        return func(*args, **(kwargs or {}))


def counted(method, name: str, spy: HostReads):
    def wrapper(self, *args, **kwargs):
        spy.count(name)
        return method(self, *args, **kwargs)
    return wrapper


@pytest.mark.parametrize("engine", ["l2l", "batched"])
def test_iterations_between_reads_never_read_a_tensor_value(tmp_path, monkeypatch, engine):
    spy = HostReads()
    real = MAML.on_iteration

    def on_iteration(self, iteration):
        spy.iteration = iteration
        real(self, iteration)
    monkeypatch.setattr(MAML, "on_iteration", on_iteration)
    for name in ("tolist", "cpu", "numpy"):  # reads that bypass the dispatcher on a CPU tensor
        monkeypatch.setattr(torch.Tensor, name, counted(getattr(torch.Tensor, name), name, spy))
    cfg = compose_cfg(*FAST, f"algo.engine={engine}", "trainer.iterations=12",
                      "trainer.log_every=5", "trainer.eval_every=6", "trainer.checkpoint_every=100")
    with spy:
        train(cfg, tmp_path / "run")
    reading = {1, 5, 6, 10, 12}  # first, log_every, eval_every, last
    in_steps = {it: r for it, r in spy.reads.items() if 1 <= it <= 12}
    assert {it for it in in_steps if it not in reading} == set(), in_steps
    assert {1, 5, 10} <= set(in_steps)  # the reads the log needs do happen
