"""The framework's Reptile against an independent re-implementation of the paper's code
(openai/supervised-reptile: reptile.py's train_step/evaluate/_mini_batches, TensorFlow's
AdamOptimizer(beta1=0)), written here with plain loops and lists, sharing no code with
metalearn.algorithms.reptile: every meta-iteration's weights, Adam's carried state and the
evaluation's query logits must agree to float64 round-off."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from metalearn.algorithms.reptile import Reptile
from metalearn.engine.loop import meta_step
from metalearn.models.conv4 import Conv4
from tests.algorithms.test_engine import episodes

LR, BETA2, EPS = 0.01, 0.999, 1e-8
BIASES_BEFORE_BN = {f"0.features.{i}.bias" for i in (0, 3, 6, 9)}


class PaperReptile:
    """supervised-reptile's Reptile class on one network, its variables held as lists."""

    def __init__(self, model, inner_batch, inner_iters, eval_batch, eval_iters):
        self.model = model
        self.names = [n for n, _ in model.named_parameters()]
        self.theta = [p.detach().clone() for p in model.parameters()]
        self.v = [torch.zeros_like(p) for p in self.theta]  # Adam's slots (global variables)
        self.t = 0                                            # Adam's beta power accumulators
        self.inner = (inner_batch, inner_iters)
        self.eval = (eval_batch, eval_iters)

    def logits(self, weights, x):
        return functional_call(self.model, dict(zip(self.names, weights)), (x,))

    def minimize_op(self, weights, inputs, labels):
        """One AdamOptimizer(beta1=0).minimize step: m_t = g, v_t = b2 v + (1-b2) g^2,
        lr_t = lr sqrt(1-b2^t) / (1-b1^t), w -= lr_t m_t / (sqrt(v_t) + eps)."""
        w = [p.clone().requires_grad_() for p in weights]
        loss = F.cross_entropy(self.logits(w, inputs), labels)
        grads = torch.autograd.grad(loss, w)
        self.t += 1
        lr_t = LR * math.sqrt(1 - BETA2 ** self.t) / (1 - 0.0 ** self.t)
        out = []
        for i, (p, g) in enumerate(zip(weights, grads)):
            m = 0.0 * torch.zeros_like(g) + (1 - 0.0) * g
            self.v[i] = BETA2 * self.v[i] + (1 - BETA2) * g * g
            out.append(p - lr_t * m / (torch.sqrt(self.v[i]) + EPS))
        return out

    @staticmethod
    def mini_batches(samples, batch_size, num_batches):
        """_mini_batches(replacement=False), random.shuffle as a torch permutation."""
        samples = list(samples)
        cur_batch, batch_count = [], 0
        while True:
            if batch_size % len(samples):  # the framework draws no permutation otherwise
                perm = torch.randperm(len(samples)).tolist()
                samples = [samples[i] for i in perm]
            for sample in samples:
                cur_batch.append(sample)
                if len(cur_batch) < batch_size:
                    continue
                yield cur_batch
                batch_count += 1
                if batch_count == num_batches:
                    return
                cur_batch = []

    def run_task(self, x, y, batch_size, iters):
        weights = [p.clone() for p in self.theta]
        for batch in self.mini_batches(zip(x, y), batch_size, iters):
            inputs, labels = zip(*batch)
            weights = self.minimize_op(weights, torch.stack(inputs), torch.stack(labels))
        return weights

    def train_step(self, tasks, meta_step_size):
        old_vars, new_vars = self.theta, []
        for x, y in tasks:
            new_vars.append(self.run_task(x, y, *self.inner))
            self.theta = old_vars  # import_variables(old_vars): trainable ones only
        avg = [sum(vs[i] for vs in new_vars) / len(new_vars) for i in range(len(old_vars))]
        self.theta = [o + (a - o) * meta_step_size for o, a in zip(old_vars, avg)]

    def evaluate(self, x, y, query_x):
        v, t = [s.clone() for s in self.v], self.t  # _full_state: every variable restored
        weights = self.run_task(x, y, *self.eval)
        self.v, self.t = v, t
        return self.logits(weights, query_x).detach()  # transductive: the queries as one batch


def make(engine, inner_batch, test_inner_batch, steps=3, test_steps=4):
    torch.manual_seed(0)
    algo = Reptile(Conv4(1, 12, hidden=6, flatten=True), ways=3, inner_lr=LR,
                   adaptation_steps=steps, test_adaptation_steps=test_steps,
                   inner_optimizer="adam", inner_batch=inner_batch,
                   test_inner_batch=test_inner_batch, carry_state=True, engine=engine).double()
    ref = PaperReptile(algo.model, inner_batch or 9, steps, test_inner_batch or 9, test_steps)
    return algo, ref


@pytest.mark.parametrize("engine", ["l2l", "batched"])
@pytest.mark.parametrize("batches", [(4, 2), (None, None)], ids=["mini-batches", "full-batch"])
def test_reptile_equals_the_papers_algorithm_step_by_step(engine, batches):
    # 3 ways x 3 shots: batches of 4 run on from one shuffle into the next
    algo, ref = make(engine, *batches)
    opt = torch.optim.SGD(algo.parameters(), lr=1.0)
    iterations = 3
    for it in range(iterations):
        ep = episodes(batch=2, shots=3, seed=it)
        eps = 1.0 * (1 - it / iterations)  # the paper's meta-step annealing (scheduler=linear)
        torch.manual_seed(100 + it)
        ref.train_step([(ep.support_x[t], ep.support_y[t]) for t in range(len(ep))], eps)
        torch.manual_seed(100 + it)
        for group in opt.param_groups:
            group["lr"] = eps
        opt.zero_grad()
        meta_step(algo, ep)
        opt.step()
        for name, got, want in zip(ref.names, algo.model.parameters(), ref.theta):
            # a conv bias before BN has a true gradient of 0, so Adam steps on round-off there
            # (lr * 1e-17 / eps); BN removes the bias from every output
            atol = 1e-9 if name in BIASES_BEFORE_BN else 1e-13
            assert torch.allclose(got, want, rtol=1e-10, atol=atol), (it, name)
        sq = torch.cat([v.flatten() for v in ref.v])
        assert int(algo.inner_t) == ref.t == (it + 1) * 2 * 3  # the state ran on over tasks
        assert torch.allclose(algo.inner_sq, sq, rtol=1e-9, atol=1e-20)
    # evaluation starts each task from the carried state and leaves it as it was
    ep = episodes(batch=3, shots=3, seed=9)
    state = algo.inner_sq.clone(), int(algo.inner_t)
    torch.manual_seed(7)
    want = [ref.evaluate(ep.support_x[t], ep.support_y[t], ep.query_x[t]) for t in range(3)]
    torch.manual_seed(7)
    got = algo.evaluate(ep)
    want_loss = torch.stack([F.cross_entropy(w, ep.query_y[t]) for t, w in enumerate(want)])
    assert torch.allclose(got.loss, want_loss, rtol=1e-9)
    assert torch.equal(algo.inner_sq, state[0]) and int(algo.inner_t) == state[1]


def test_a_fresh_state_per_task_is_not_the_papers_algorithm():
    """The carried state matters: resetting it per task gives other weights (the old bug)."""
    algo, ref = make("l2l", 4, 2)
    algo.carry_state = False
    ep = episodes(batch=2, shots=3)
    torch.manual_seed(1)
    ref.train_step([(ep.support_x[t], ep.support_y[t]) for t in range(2)], 1.0)
    torch.manual_seed(1)
    opt = torch.optim.SGD(algo.parameters(), lr=1.0)
    meta_step(algo, ep)
    opt.step()
    head = list(algo.model.parameters())[-2]
    assert not torch.allclose(head, ref.theta[-2], rtol=1e-6)
