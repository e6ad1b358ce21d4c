"""SNAIL, "A Simple Neural Attentive Meta-Learner" (Mishra, Rohaninejad, Chen & Abbeel 2018).

The model-based family: no inner gradient steps. Each query is classified by one forward pass
of a sequence model over the task's labelled support embeddings followed by the query with its
label unknown: [(z_1, y_1), ..., (z_NK, y_NK), (z_q, 0)] -> logits at the last position.
The sequence model is SNAIL's: dense blocks of causal dilated 1-d convolutions with gated
activations (TC blocks) interleaved with causal soft-attention blocks, each block's output
concatenated to its input; Omniglot's architecture is the default (paper §4.1 / Appendix B).

Causality makes support order matter, and the sampler lays supports out class by class; like
the paper, each task's supports are shuffled (a fresh order per training step, a fixed seed at
evaluation so scores are reproducible) so the model must read the labels, not the positions.
Every query sees the same support prefix and never another query (no transduction through the
sequence model; the backbone's batch-statistics BN sees the whole task, as with ProtoNets here).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from metalearn.algorithms.base import Classifier, MetaLearner, TaskMetrics, accuracy
from metalearn.data.episodes import Episodes
from metalearn.models.norm import batch_stats

EVAL_ORDER_SEED = 0


class DenseBlock(nn.Module):
    """Causal dilated convolution (kernel 2) with a tanh * sigmoid gate, concatenated to its input."""

    def __init__(self, channels: int, dilation: int, filters: int) -> None:
        super().__init__()
        self.dilation = dilation
        self.conv = nn.Conv1d(channels, 2 * filters, kernel_size=2, dilation=dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, T, C] -> [N, T, C + filters]
        h = self.conv(F.pad(x.transpose(1, 2), (self.dilation, 0))).transpose(1, 2)
        return self._gate(x, h)

    def extend(self, prefix: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """`forward`'s output at one more position after `prefix` [N, T, C], for each of the
        inputs `last` [N, Q, C] on its own: -> [N, Q, C + filters]."""
        w = self.conv.weight  # [2F, C, 2]: tap 0 reads position t - dilation, tap 1 reads t
        h = last @ w[:, :, 1].t() + self.conv.bias
        if prefix.shape[1] >= self.dilation:  # else tap 0 reads the zero padding
            h = h + (prefix[:, -self.dilation] @ w[:, :, 0].t())[:, None]
        return self._gate(last, h)

    @staticmethod
    def _gate(x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        f, g = h.chunk(2, dim=-1)
        return torch.cat([x, torch.tanh(f) * torch.sigmoid(g)], dim=-1)


class AttentionBlock(nn.Module):
    """Single-head causal scaled dot-product attention, its read concatenated to the input."""

    def __init__(self, channels: int, key_size: int, value_size: int) -> None:
        super().__init__()
        self.query = nn.Linear(channels, key_size)
        self.key = nn.Linear(channels, key_size)
        self.value = nn.Linear(channels, value_size)
        # Query and key start equal, so attention starts as a similarity (q.k = |Wx|^2 for
        # equal inputs) rather than a random bilinear form. In-context learning starts with a
        # chance-level plateau; this shortened it (5-way tasks of Gaussian class prototypes,
        # one attention block: ~150 -> ~100 Adam steps to 100% accuracy).
        self.query.load_state_dict(self.key.state_dict())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, T, C] -> [N, T, C + value]
        read = F.scaled_dot_product_attention(self.query(x), self.key(x), self.value(x),
                                              is_causal=True)
        return torch.cat([x, read], dim=-1)

    def extend(self, prefix: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """`forward`'s output at one more position after `prefix` [N, T, C], for each of the
        inputs `last` [N, Q, C] on its own: each attends to the prefix and to itself."""
        q, k, v = self.query(last), self.key(last), self.value(last)
        scores = torch.cat([q @ self.key(prefix).transpose(1, 2), (q * k).sum(-1, keepdim=True)],
                           dim=-1) / math.sqrt(q.shape[-1])
        attn = scores.softmax(-1)
        read = attn[..., :-1] @ self.value(prefix) + attn[..., -1:] * v
        return torch.cat([last, read], dim=-1)


class SNAIL(MetaLearner):
    def __init__(self, backbone: nn.Module, ways: int, shots: int, tc_filters: int = 128,
                 attention: tuple[tuple[int, int], ...] = ((64, 32), (256, 128), (512, 256))
                 ) -> None:
        super().__init__()
        self.backbone, self.ways = backbone, ways
        # TC blocks cover the training sequence (N*K supports + 1 query) with dilations
        # 1, 2, 4, ...; longer test sequences (more shots) still reach all supports by attention.
        depth = math.ceil(math.log2(ways * shots + 1))
        channels = backbone.out_features + ways
        blocks: list[nn.Module] = []
        for i, (key_size, value_size) in enumerate(attention):
            if i > 0:
                for d in range(depth):
                    blocks.append(DenseBlock(channels, 2 ** d, tc_filters))
                    channels += tc_filters
            blocks.append(AttentionBlock(channels, key_size, value_size))
            channels += value_size
        self.sequence = nn.Sequential(*blocks)
        self.out = nn.Linear(channels, ways)

    def _logits(self, episodes: Episodes, generator: torch.Generator | None) -> torch.Tensor:
        """Query logits [B, Q, ways]."""
        s = episodes.support_x.shape[1]
        z = [self.backbone(torch.cat([sx, qx])) for sx, qx in zip(episodes.support_x,
                                                                   episodes.query_x)]
        return torch.stack([self._read(zt[:s], sy, zt[s:], generator)
                            for zt, sy in zip(z, episodes.support_y)])

    def _read(self, zs: torch.Tensor, sy: torch.Tensor, zq: torch.Tensor,
              generator: torch.Generator | None) -> torch.Tensor:
        """One task's query logits [Q, ways] from its embeddings: supports zs [S, D] with
        labels sy [S], queries zq [Q, D]."""
        order = torch.rand(len(zs), generator=generator, device=zs.device).argsort()
        labels = F.one_hot(sy[order], self.ways).to(zs.dtype)
        support = torch.cat([zs[order], labels], -1)[None]                     # [1, S, D+W]
        query = torch.cat([zq, zq.new_zeros(len(zq), self.ways)], -1)[None]    # [1, Q, D+W]
        # Each query's sequence is the supports then itself; causality makes the supports'
        # activations the same in all of them, so they are computed once per task, and each
        # query adds only its own last position: O(S + Q) per task, not O(S * Q).
        for block in self.sequence:
            support, query = block(support), block.extend(support, query)
        return self.out(query)[0]

    @staticmethod
    def _metrics(logits: torch.Tensor, labels: torch.Tensor) -> TaskMetrics:
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none")
        return TaskMetrics(loss.view(labels.shape).mean(1), accuracy(logits.detach(), labels))

    def forward(self, episodes: Episodes) -> TaskMetrics:
        return self._metrics(self._logits(episodes, None), episodes.query_y)

    def evaluate(self, episodes: Episodes) -> TaskMetrics:
        g = torch.Generator(episodes.support_x.device).manual_seed(EVAL_ORDER_SEED)
        with torch.no_grad():
            return self._metrics(self._logits(episodes, g), episodes.query_y)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor) -> Classifier:
        stats = []
        with torch.no_grad(), batch_stats(stats, "record"):
            support = self.backbone(support_x)

        def classify(query_x: torch.Tensor) -> torch.Tensor:
            g = torch.Generator(support.device).manual_seed(EVAL_ORDER_SEED)
            with torch.no_grad(), batch_stats(stats, "reuse"):
                return self._read(support, support_y, self.backbone(query_x), g)
        return classify
