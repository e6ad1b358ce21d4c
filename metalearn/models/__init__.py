"""Backbones: image -> feature vector. The contract is in `metalearn.models.base`."""
