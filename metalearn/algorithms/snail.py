"""A model-based meta-learner after SNAIL (Mishra, Rohaninejad, Chen & Abbeel 2018).

As in SNAIL, a task is one sequence: every support image's embedding plus its label, and the
query embeddings with a "no label" token; a sequence model reads it and predicts the query
labels in one forward pass, with no inner gradient steps. SNAIL's temporal convolutions and
causal attention are replaced by a Transformer encoder without positional encoding (a support
set has no order), masked so that each query sees only the support set and itself: queries
are classified independently, as in the other learners.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from metalearn.algorithms.base import MetaLearner, TaskMetrics, accuracy
from metalearn.data.episodes import Episodes
from metalearn.errors import ConfigError


class SequenceLearner(MetaLearner):
    def __init__(self, backbone: nn.Module, ways: int, d_model: int = 128, heads: int = 4,
                 layers: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        self.ways = ways
        self.backbone = backbone
        self.embed = nn.Linear(backbone.out_features, d_model)
        self.labels = nn.Embedding(ways + 1, d_model)  # index `ways` = "no label"
        layer = nn.TransformerEncoderLayer(d_model, heads, 4 * d_model, dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, ways)

    def check_ways(self, ways: int) -> None:
        if ways > self.ways:
            raise ConfigError(f"this sequence learner was built for at most {self.ways} ways "
                              f"(its label tokens and output head), not {ways}: lower task.ways")

    def logits(self, episodes: Episodes) -> torch.Tensor:
        """[B, Q, ways of the task]."""
        sx, sy, qx = episodes.support_x, episodes.support_y, episodes.query_x
        b, s, q = sx.shape[0], sx.shape[1], qx.shape[1]
        # Per-task backbone passes keep batch-statistics BN within one task, as elsewhere.
        z = torch.stack([self.backbone(torch.cat([sx[t], qx[t]])) for t in range(b)])
        labels = torch.cat([sy, torch.full((b, q), self.ways, device=sy.device)], 1)
        tokens = self.embed(z) + self.labels(labels)
        blocked = torch.ones(s + q, s + q, dtype=torch.bool, device=z.device)
        blocked[:, :s] = False                                   # everyone sees the support
        blocked[s:, s:] = ~torch.eye(q, dtype=torch.bool, device=z.device)  # a query: itself
        h = self.encoder(tokens, mask=blocked)
        return self.head(h[:, s:])[..., : int(sy.max()) + 1]

    def forward(self, episodes: Episodes) -> TaskMetrics:
        logits, y = self.logits(episodes), episodes.query_y
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
        return TaskMetrics(loss.view_as(y).mean(1), accuracy(logits.detach(), y))

    def evaluate(self, episodes: Episodes) -> TaskMetrics:
        with torch.no_grad():
            m = self(episodes)
        return TaskMetrics(m.loss.detach(), m.acc)
