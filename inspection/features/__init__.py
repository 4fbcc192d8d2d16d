"""Pretrained backbones: their layers by name and stride, their weights, their cost, and feature extraction.
Imports only the ground (`errors`, `params`, `progress`, `device`, `outputs`)."""
