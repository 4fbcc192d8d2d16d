"""Pretrained backbones: their layers by name and stride, their weights, and feature extraction."""
