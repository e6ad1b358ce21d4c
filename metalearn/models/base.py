"""What a backbone takes and what it exposes.

Takes: the training loop builds every backbone as
    instantiate(cfg.backbone, in_channels=C, image_size=S)
with C and S from the dataset (`FewShotDataset.image_shape`), so the class (or factory) named
by `_target_` accepts `in_channels: int, image_size: int` plus its own options, each a YAML key.

Exposes: a module mapping images [N, C, S, S] to features [N, out_features], with the int
`out_features` set at construction: every learner reads it to size its head (MAML's linear
layer, SNAIL's input). The name is `nn.Linear`'s; timm calls it `num_features` and its
`forward_features`/`forward_head` split is internal to timm models: `metalearn.models.timm`
reads them, and nothing else in metalearn needs a second name.

Normalisation: MAML-family learners need batch-statistics BN that is exact under vmap, i.e.
`metalearn.models.norm.BatchNorm2d` (which is also what MAML++'s `per_step_bn` finds). A
backbone built on torch layers calls `metalearn.models.norm.convert_batchnorm` on itself; the
batched engine refuses a model that still holds a torch BatchNorm.

Adding a backbone is one Python file here plus one YAML in metalearn/configs/backbone/
(`_target_` and its options); no registry, and the tests find it by globbing that folder.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Backbone(Protocol):
    out_features: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """[N, in_channels, image_size, image_size] -> [N, out_features]."""
        ...
