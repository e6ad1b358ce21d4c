"""Pixel statistics (per-channel mean, std in [0, 1] units) of the image sources the formats
share: one home, so datasets cut from the same images normalise alike and a cross-domain
evaluation can name whose statistics it uses."""
from __future__ import annotations

Stats = tuple[tuple[float, ...], tuple[float, ...]]

# torchvision's ImageNet statistics (CUB pipelines, pretrained backbones).
IMAGENET: Stats = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# mini-ImageNet's training split, as MetaOptNet (Lee et al. 2019) uses; tiered-ImageNet too.
MINIIMAGENET: Stats = ((120.39586422 / 255, 115.59361427 / 255, 104.54012653 / 255),
                       (70.68188272 / 255, 68.27635443 / 255, 72.54505529 / 255))
# CIFAR-100, as MetaOptNet uses for CIFAR-FS and FC100.
CIFAR100: Stats = ((129.37731888 / 255, 124.10583864 / 255, 112.47758569 / 255),
                   (68.20947949 / 255, 65.43124043 / 255, 70.45866994 / 255))
