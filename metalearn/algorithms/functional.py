"""The batched engine of the MAML family: every task of a meta-batch adapted at once.

learn2learn's wrapper clones the model per task and runs tasks one after another, which
leaves a GPU mostly idle on these small convolutions. Here the model is called functionally
(`torch.func.functional_call`) on a dict of fast weights, the inner gradient is
`torch.func.grad`, and `torch.func.vmap` runs the whole inner loop for all B tasks in one
pass. The outer (meta) gradient is ordinary autograd through all of it: second order unless
the inner gradients are detached (first-order MAML).

Exactness: vmap + native `BatchNorm2d` gives silently wrong second-order gradients
(pytorch/functorch#534); the backbones use `metalearn.models.norm.BatchNorm2d`, written with
primitive ops, and this engine matches learn2learn's to ~1e-15 in float64.

Reuse by the MAML family: what differs between MAML, Meta-SGD, ANIL and MAML++ is the inner
update, which parameters adapt and which query losses count, so they are arguments:
  * `update(step, fast, grads) -> new fast`: MAML `p - lr * g`; Meta-SGD `p - lrs[n] * g`
    with learned per-parameter `lrs` (closed over; autograd reaches them); MAML++ (LSLR)
    picks a per-layer lr with `step`.
  * `adapt(name) -> bool`: which parameters get fast weights; the others stay the module's
    own (shared by all tasks, still meta-trained).
  * `step_weights`: MAML++'s multi-step loss, a weighted sum of the query losses after every
    step.
ANIL passes only its linear head as `model` and backbone features as x, so the backbone runs
once per task instead of once per inner step.

Per-step BN (MAML++): step s's support forward and the query forward after step s run under
`inner_step(s)`, as on learn2learn's engine; the step is a context variable, plain Python,
so it holds inside vmap and functional_call.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from metalearn.models.norm import inner_step, require_exact_norms

Params = dict[str, torch.Tensor]
UpdateRule = Callable[[int, Params, Params], Params]
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, labels) -> scalar


def adapt_batched(model: nn.Module, support_x: torch.Tensor, support_y: torch.Tensor,
                  query_x: torch.Tensor, query_y: torch.Tensor, steps: int,
                  update: UpdateRule, first_order: bool,
                  adapt: Callable[[str], bool] = lambda name: True,
                  step_weights: torch.Tensor | None = None,
                  inner_loss: Loss = F.cross_entropy, query_loss: Loss = F.cross_entropy,
                  compile: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Adapt on each task's support set, score its queries: (loss [B], query logits [B, Q, ways]).

    x: [B, N, ...] (images, or features for a head), y: [B, N]. The loss is the query loss
    after the last step, or with `step_weights` [steps] the sum over steps s of
    w_s * (query loss after step s); the logits are the last step's either way. The loss
    carries the meta-gradient to the model's parameters (and to whatever `update` closes
    over) unless called under `torch.no_grad()`; the inner gradients are computed either way
    (`torch.func.grad` ignores an outer no_grad), so the same call serves test-time adaptation.
    `compile`: the whole vmapped inner loop under `torch.compile` (inductor fuses the
    elementwise work into a few kernels; compiled once per distinct call, e.g. training and
    evaluation, then reused).
    """
    require_exact_norms(model)
    fast0 = {n: p for n, p in model.named_parameters() if adapt(n)}
    weights = None if step_weights is None else step_weights.to(query_x.device, query_x.dtype)
    scored = {steps - 1}
    if step_weights is not None:  # a zero-weight step adds exactly nothing: skip its forward
        scored |= {s for s, w in enumerate(step_weights.tolist()) if w != 0}

    def task(fast: Params, sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor,
             qy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        def support_loss(f: Params) -> torch.Tensor:
            return inner_loss(functional_call(model, f, (sx,)), sy)

        loss = 0
        for step in range(steps):
            with inner_step(step):
                grads = grad(support_loss)(fast)
            if first_order:
                grads = {n: g.detach() for n, g in grads.items()}
            fast = update(step, fast, grads)
            if step in scored:
                with inner_step(step):
                    logits = functional_call(model, fast, (qx,))
                step_loss = query_loss(logits, qy)
                loss = step_loss if weights is None else loss + weights[step] * step_loss
        return loss, logits

    # "different": dropout/DropBlock draw independent masks per task, as with per-task clones.
    run = vmap(task, in_dims=(None, 0, 0, 0, 0), randomness="different")
    if compile:
        run = torch.compile(run, dynamic=False)
    return run(fast0, support_x, support_y, query_x, query_y)
