"""Any timm architecture as a backbone: `backbone=timm backbone.name=<model>`.

`timm.create_model(name, num_classes=0, in_chans=C)` drops the classifier, so the model's
output is its pooled features (`num_features` of them). Random init by default, which needs
no network; `pretrained=true` fetches timm's weights (network or a filled Hugging Face cache),
and `checkpoint_path` loads a file you have (a timm/torchvision state dict: timm drops the
classifier and adapts the first conv to `in_channels`). BatchNorm is converted to the exact
`metalearn.models.norm.BatchNorm2d`, so running statistics of pretrained weights are dropped.
Attention runs timm's unfused path: the fused kernels cannot be differentiated twice.
"""
from __future__ import annotations

from typing import Any

import timm
import torch
from torch import nn

from metalearn.errors import ConfigError
from metalearn.models.norm import convert_batchnorm


class TimmBackbone(nn.Module):
    def __init__(self, in_channels: int, image_size: int, name: str, pretrained: bool = False,
                 checkpoint_path: str | None = None, kwargs: dict[str, Any] | None = None) -> None:
        super().__init__()
        options = dict(kwargs or {})
        if checkpoint_path:
            pretrained = True
            options["pretrained_cfg_overlay"] = {"file": str(checkpoint_path)}
        if not timm.is_model(name):
            raise ConfigError(f"backbone.name={name!r} is not a timm model: list them with "
                              f"python -c \"import timm; print(timm.list_models('*{name[:6]}*'))\"")
        try:
            model = timm.create_model(name, pretrained=pretrained, num_classes=0,
                                      in_chans=in_channels, **options)
        except (OSError, ValueError, RuntimeError, TypeError) as e:
            fix = ("check backbone.kwargs against the model's constructor" if not pretrained else
                   "give a readable backbone.checkpoint_path or use backbone.pretrained=false")
            raise ConfigError(f"backbone=timm: timm.create_model({name!r}) failed ({e}): "
                              f"{fix}") from e
        self.model = convert_batchnorm(model)
        for m in self.model.modules():
            if hasattr(m, "fused_attn"):  # torch's fused attention kernels have no double
                m.fused_attn = False        # backward, which second-order MAML takes
        self.out_features = model.num_features
        with torch.no_grad():  # fail here, not at the first step, if the image is too small
            try:
                shape = self.model(torch.zeros(2, in_channels, image_size, image_size)).shape
            except RuntimeError as e:
                raise ConfigError(f"timm {name} cannot take {image_size} px images ({e}): use a "
                                  f"bigger dataset.image_size, or pass the size the model needs "
                                  f"in backbone.kwargs (e.g. img_size for ViTs)") from e
        if tuple(shape) != (2, self.out_features):
            raise ConfigError(f"timm {name} gives features of shape {tuple(shape)[1:]}, not "
                              f"[{self.out_features}]: set backbone.kwargs.global_pool=avg")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
