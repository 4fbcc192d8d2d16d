"""MobileNet V1 (Howard et al., 2017): a standard 3×3 convolution, then 13 depthwise-separable blocks.

Each block is a 3×3 depthwise convolution (one filter per channel) and a 1×1 pointwise convolution, each
followed by BatchNorm and ReLU: about 8–9× fewer mult-adds than a standard 3×3 convolution of the same
widths. The width multiplier α thins every layer (channels × α: cost and parameters fall by about α²);
the resolution multiplier ρ is the input side (224, 192, 160, 128: cost falls by about ρ², parameters stay).
Global average pooling makes any input side work.

No ImageNet weights of MobileNet V1 exist on our machines; the network is built untrained and a user's
weights file (a state dict of this layout) is loaded through `features.weights`.
"""

from __future__ import annotations

from torch import nn

#: (stride, output channels at α = 1) of the 13 depthwise-separable blocks, the paper's Table 1. (The table
#: prints stride 2 for the last block too; its own output size, 7×7, and every implementation use 1.)
SEPARABLE_BLOCKS = ((1, 64), (2, 128), (1, 128), (2, 256), (1, 256), (2, 512),
                    (1, 512), (1, 512), (1, 512), (1, 512), (1, 512), (2, 1024), (1, 1024))
STEM_CHANNELS = 32
#: The width multipliers and input sides of the paper's 16 models (Figures 4 and 5).
WIDTH_MULTIPLIERS = (1.0, 0.75, 0.5, 0.25)
RESOLUTIONS = (224, 192, 160, 128)


def scaled_channels(channels: int, width_mult: float) -> int:
    """Channels of a layer thinned by the width multiplier α (rounded down, at least 1)."""
    return max(1, int(channels * width_mult))


def _conv_bn_relu(in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    # ReLU6 as in the released TensorFlow models (the paper writes ReLU): their converted weights behave as trained.
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU6(inplace=True))


class DepthwiseSeparable(nn.Sequential):
    """A 3×3 depthwise convolution (stride here) and a 1×1 pointwise one, each with BatchNorm and ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__(_conv_bn_relu(in_channels, in_channels, 3, stride, groups=in_channels),
                         _conv_bn_relu(in_channels, out_channels, 1))


class MobileNetV1(nn.Module):
    """MobileNet V1 classifier: ``features`` (stem + 13 separable blocks, stride 32), pooling, ``classifier``."""

    def __init__(self, width_mult: float = 1.0, resolution: int = 224, num_classes: int = 1000):
        super().__init__()
        if not 0 < width_mult <= 1:
            raise ValueError(f"width_mult must be in (0, 1], got {width_mult}")
        self.width_mult = width_mult
        self.resolution = resolution  # the input side the network is meant for; any side works
        channels = scaled_channels(STEM_CHANNELS, width_mult)
        layers: list[nn.Module] = [_conv_bn_relu(3, channels, 3, stride=2)]
        for stride, out_channels in SEPARABLE_BLOCKS:
            layers.append(DepthwiseSeparable(channels, scaled_channels(out_channels, width_mult), stride))
            channels = scaled_channels(out_channels, width_mult)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes) if num_classes else nn.Identity()

    def forward(self, images):
        return self.classifier(self.pool(self.features(images)).flatten(1))


def mobilenet_v1(width_mult: float = 1.0, resolution: int = 224, num_classes: int = 1000) -> MobileNetV1:
    """MobileNet V1 with width multiplier α and input side ρ·224, classifier head included, untrained."""
    return MobileNetV1(width_mult, resolution, num_classes)


def layer_strides() -> list[int]:
    """The stride of ``features.0`` … ``features.13``: the stem and each block's output."""
    strides, stride = [2], 2
    for block_stride, _ in SEPARABLE_BLOCKS:
        stride *= block_stride
        strides.append(stride)
    return strides


def layer_channels(width_mult: float) -> list[int]:
    """The channels of ``features.0`` … ``features.13`` at width multiplier α."""
    return [scaled_channels(STEM_CHANNELS, width_mult)] + [scaled_channels(c, width_mult) for _, c in SEPARABLE_BLOCKS]
