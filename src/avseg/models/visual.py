"""Visual encoders: ``(N, 3, H, W)`` ImageNet-normalised frames -> a 4-level feature pyramid.

Every encoder returns ``[(N, C1, H/4, W/4), (N, C2, H/8, W/8), (N, C3, H/16, W/16), (N, C4, H/32, W/32)]``
(sizes rounded up for sizes not divisible by 32) and exposes ``channels = (C1, C2, C3, C4)``.
Encoders are built around an already constructed backbone (see ``zoo.py`` for the builders that create the
backbones and load their weights); they never download anything.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch
from torch import Tensor, nn
from torchvision.models import ResNet

from avseg.types import IMAGENET_MEAN, IMAGENET_STD

if TYPE_CHECKING:  # an optional dependency (the `weights` extra), untyped: mypy reads it as Any
    from efficientnet_lite_pytorch import EfficientNet

__all__ = ["ResNetEncoder", "EfficientNetLiteEncoder", "TinyVisualEncoder", "encoder_channels", "group_norm"]


def encoder_channels(encoder: nn.Module) -> tuple[int, ...]:
    """The ``channels`` every visual encoder exposes (the widths of its pyramid levels, finest first)."""
    return tuple(cast("tuple[int, ...]", encoder.channels))


def group_norm(channels: int, max_groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with the largest power-of-two number of groups <= ``max_groups`` dividing ``channels``."""
    groups = max_groups
    while channels % groups:
        groups //= 2
    return nn.GroupNorm(groups, channels)


class ResNetEncoder(nn.Module):
    """torchvision ResNet trunk; the pyramid is the outputs of layer1..layer4 (strides 4, 8, 16, 32).

    Args:
        backbone: a torchvision ``ResNet`` (weights already loaded); its ``avgpool``/``fc`` are not kept.
    """

    def __init__(self, backbone: ResNet) -> None:
        super().__init__()
        # Same attribute names as torchvision, so torchvision state dicts (minus fc) load directly.
        self.conv1 = backbone.conv1
        self.bn1 = backbone.bn1
        self.relu = backbone.relu
        self.maxpool = backbone.maxpool
        self.layer1 = backbone.layer1
        self.layer2 = backbone.layer2
        self.layer3 = backbone.layer3
        self.layer4 = backbone.layer4
        self.channels: tuple[int, int, int, int] = tuple(  # type: ignore[assignment]
            _out_channels(layer) for layer in (self.layer1, self.layer2, self.layer3, self.layer4)
        )

    def forward(self, images: Tensor) -> list[Tensor]:
        """images (N, 3, H, W) -> [(N, C1, H/4, W/4), (N, C2, H/8, W/8), (N, C3, H/16, W/16), (N, C4, H/32, W/32)]."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))  # (N, 64, H/4, W/4)
        c1 = self.layer1(x)
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        c4 = self.layer4(c3)
        return [c1, c2, c3, c4]


def _out_channels(layer: nn.Sequential) -> int:
    last = layer[-1]
    bn = last.bn3 if hasattr(last, "bn3") else last.bn2  # Bottleneck ends with bn3, BasicBlock with bn2
    return int(cast(nn.BatchNorm2d, bn).num_features)


class EfficientNetLiteEncoder(nn.Module):
    """EfficientNet-Lite trunk from the ``efficientnet-lite-pytorch`` package; pyramid = the last block of each
    resolution (Lite0: blocks 2, 4, 10, 15 -> channels (24, 40, 112, 320) at strides 4, 8, 16, 32).

    Args:
        backbone: ``efficientnet_lite_pytorch.EfficientNet`` (weights already loaded). Build it with
            ``image_size=None`` so its convolutions use TensorFlow "SAME" padding computed from the actual
            input size (the static padding is only right at the size it was built for). The 1x1 head conv,
            pooling and classifier are not kept.
        tf_input_range: the Lite checkpoints come from TensorFlow, trained on ``(pixel - 127) / 128``; with
            True the ImageNet-normalised frames of our batch contract are mapped to that range first.
    """

    def __init__(self, backbone: EfficientNet, tf_input_range: bool = True) -> None:
        super().__init__()
        self.conv_stem = backbone._conv_stem
        self.bn0 = backbone._bn0
        self.act = backbone._swish  # ReLU6 for the Lite variants
        self.blocks = backbone._blocks
        self.drop_connect_rate = float(backbone._global_params.drop_connect_rate or 0.0)
        self.tf_input_range = tf_input_range
        # (x * std + mean) * 255 -> (p - 127) / 128, folded into one affine map per channel
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self.input_scale: Tensor
        self.input_shift: Tensor
        self.register_buffer("input_scale", std * 255.0 / 128.0, persistent=False)
        self.register_buffer("input_shift", (mean * 255.0 - 127.0) / 128.0, persistent=False)

        strides = [int(_as_int(b._depthwise_conv.stride)) for b in self.blocks]
        total, taps = 2, {}  # the stem has stride 2
        for i, s in enumerate(strides):
            total *= s
            taps[total] = i  # last block seen at this total stride
        missing = [s for s in (4, 8, 16, 32) if s not in taps]
        if missing:
            raise ValueError(f"backbone has no blocks at strides {missing}; cannot build a 4-level pyramid")
        self.taps: tuple[int, ...] = tuple(taps[s] for s in (4, 8, 16, 32))
        self.channels: tuple[int, int, int, int] = tuple(  # type: ignore[assignment]
            int(self.blocks[i]._bn2.num_features) for i in self.taps
        )

    def forward(self, images: Tensor) -> list[Tensor]:
        """images (N, 3, H, W) -> [(N, C1, H/4, W/4), (N, C2, H/8, W/8), (N, C3, H/16, W/16), (N, C4, H/32, W/32)]."""
        x = images * self.input_scale + self.input_shift if self.tf_input_range else images
        x = self.act(self.bn0(self.conv_stem(x)))  # (N, 32, H/2, W/2)
        features = []
        last = self.taps[-1]
        for i, block in enumerate(self.blocks[: last + 1]):
            # stochastic depth grows linearly with depth, as in the package's extract_features
            x = block(x, drop_connect_rate=self.drop_connect_rate * i / len(self.blocks))
            if i in self.taps:
                features.append(x)
        return features


def _as_int(stride: int | tuple[int, ...] | list[int]) -> int:
    return stride if isinstance(stride, int) else stride[0]


class TinyVisualEncoder(nn.Module):
    """A few-thousand-parameter CNN for tests and demos: five conv3x3-GN-ReLU layers, four with stride 2 after a
    stride-2 stem.

    Args:
        channels: output channels of the four pyramid levels.
    """

    def __init__(self, channels: tuple[int, int, int, int] = (8, 16, 16, 32)) -> None:
        super().__init__()
        self.channels = tuple(channels)  # type: ignore[assignment]
        stem = channels[0]
        self.stem = _conv_gn_relu(3, stem, stride=2)  # H/2
        ins = (stem,) + tuple(channels[:-1])
        self.stages = nn.ModuleList(_conv_gn_relu(i, o, stride=2) for i, o in zip(ins, channels))

    def forward(self, images: Tensor) -> list[Tensor]:
        """images (N, 3, H, W) -> [(N, C1, H/4, W/4), (N, C2, H/8, W/8), (N, C3, H/16, W/16), (N, C4, H/32, W/32)]."""
        x = self.stem(images)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class SmallVisualEncoder(nn.Module):
    """A small CNN for CPU demos (~0.4 M parameters): a stride-2 stem, then per level a stride-2 and a
    stride-1 conv3x3-GN-ReLU, so each level sees a useful receptive field at a few tens of MFLOPs per
    128 px frame.

    Args:
        channels: output channels of the four pyramid levels.
    """

    def __init__(self, channels: tuple[int, int, int, int] = (32, 64, 96, 128)) -> None:
        super().__init__()
        self.channels = tuple(channels)  # type: ignore[assignment]
        stem = channels[0] // 2
        self.stem = nn.Sequential(_conv_gn_relu(3, stem, stride=2), _conv_gn_relu(stem, stem))  # H/2
        ins = (stem,) + tuple(channels[:-1])
        self.stages = nn.ModuleList(nn.Sequential(_conv_gn_relu(i, o, stride=2), _conv_gn_relu(o, o)) for i, o in zip(ins, channels))

    def forward(self, images: Tensor) -> list[Tensor]:
        """images (N, 3, H, W) -> [(N, C1, H/4, W/4), (N, C2, H/8, W/8), (N, C3, H/16, W/16), (N, C4, H/32, W/32)]."""
        x = self.stem(images)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


def _conv_gn_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        group_norm(out_channels, max_groups=4),
        nn.ReLU(inplace=True),
    )
