"""Audio encoders: a 1-channel spectrogram ``(N, 1, F, W)`` (frequency bins x time steps) -> ``(N, D_a)``.

Every encoder exposes ``out_dim = D_a``. The spectrogram itself comes from the dataset's audio front-end;
see each encoder for the front-end its pretrained weights expect. ``EmbeddingMLPEncoder`` is the exception
that keeps the contract: its "spectrogram" is a frozen pretrained embedding ``(N, 1, D_in, 1)`` (front-end
``aisfx-embed``), so the pretrained network runs once per clip instead of once per step.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor, nn
from torchvision.models import ResNet

from avseg.audio.aisfx import AisfxEncoder  # defined beside the aisfx front-ends that run it frozen
from avseg.models.visual import group_norm

__all__ = [
    "ResNetAudioEncoder",
    "AisfxEncoder",
    "TinyAudioEncoder",
    "EmbeddingMLPEncoder",
    "mono_conv_from_rgb",
]


def mono_conv_from_rgb(conv: nn.Conv2d, average_weights: bool) -> nn.Conv2d:
    """A 1-input-channel copy of an RGB conv.

    Args:
        conv: the 3-channel convolution (e.g. a ResNet's conv1).
        average_weights: True: the new kernel is the RGB mean of ``conv``'s (pretrained) kernel. False: a
            freshly initialised kernel (averaging random weights would shrink their scale by sqrt(3)).
    """
    mono = nn.Conv2d(
        1,
        conv.out_channels,
        # a Conv2d's size tuples have two entries (torch annotates them as tuple[int, ...])
        kernel_size=cast("tuple[int, int]", conv.kernel_size),
        stride=cast("tuple[int, int]", conv.stride),
        padding=cast("str | tuple[int, int]", conv.padding),
        dilation=cast("tuple[int, int]", conv.dilation),
        bias=conv.bias is not None,
    )
    if average_weights:
        with torch.no_grad():
            mono.weight.copy_(conv.weight.mean(dim=1, keepdim=True))
            if conv.bias is not None:
                assert mono.bias is not None  # built with bias=True just above
                mono.bias.copy_(conv.bias)
    return mono


class ResNetAudioEncoder(nn.Module):
    """torchvision ResNet on a 1-channel spectrogram, global max pooling over frequency and time.

    Args:
        backbone: a torchvision ``ResNet`` (3-channel; weights already loaded); ``avgpool``/``fc`` are not kept.
        average_rgb_conv1: conv1 becomes 1-channel: True (pretrained backbones) = ImageNet conv1 averaged
            over RGB; False = freshly initialised.
    """

    def __init__(self, backbone: ResNet, average_rgb_conv1: bool) -> None:
        super().__init__()
        self.conv1 = mono_conv_from_rgb(backbone.conv1, average_weights=average_rgb_conv1)
        self.bn1 = backbone.bn1
        self.relu = backbone.relu
        self.maxpool = backbone.maxpool
        self.layer1 = backbone.layer1
        self.layer2 = backbone.layer2
        self.layer3 = backbone.layer3
        self.layer4 = backbone.layer4
        self.out_dim = int(backbone.fc.in_features)

    def forward(self, spectrogram: Tensor) -> Tensor:
        """spectrogram (N, 1, F, W) -> embedding (N, D_a) (512 for ResNet-18, 2048 for ResNet-50)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(spectrogram))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (N, D_a, F/32, W/32)
        return torch.amax(x, dim=(2, 3))


class TinyAudioEncoder(nn.Module):
    """A small CNN for tests and demos: three conv3x3-GN-ReLU layers with stride 2, global max pool, linear.

    Args:
        out_dim: embedding size D_a.
        width: channels of the conv layers.
    """

    def __init__(self, out_dim: int = 32, width: int = 16) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 1
        for _ in range(3):
            layers += [nn.Conv2d(in_ch, width, 3, stride=2, padding=1, bias=False), group_norm(width, 4), nn.ReLU()]
            in_ch = width
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Linear(width, out_dim)
        self.out_dim = out_dim

    def forward(self, spectrogram: Tensor) -> Tensor:
        """spectrogram (N, 1, F, W) -> embedding (N, out_dim)."""
        x = self.convs(spectrogram)  # (N, width, F/8, W/8)
        return self.proj(torch.amax(x, dim=(2, 3)))


class SmallAudioEncoder(nn.Module):
    """A small spectrogram CNN for CPU demos: four levels of (stride-2 + stride-1) conv3x3-GN-ReLU,
    global max pool over time and frequency, linear to ``out_dim``.

    Args:
        out_dim: embedding size D_a.
        widths: channels of the four levels.
    """

    def __init__(self, out_dim: int = 128, widths: tuple[int, int, int, int] = (16, 32, 64, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 1
        for w in widths:
            layers += [
                nn.Conv2d(in_ch, w, 3, stride=2, padding=1, bias=False), group_norm(w, 4), nn.ReLU(),
                nn.Conv2d(w, w, 3, padding=1, bias=False), group_norm(w, 4), nn.ReLU(),
            ]  # fmt: skip
            in_ch = w
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Linear(in_ch, out_dim)
        self.out_dim = out_dim

    def forward(self, spectrogram: Tensor) -> Tensor:
        """spectrogram (N, 1, F, W) -> embedding (N, out_dim)."""
        x = self.convs(spectrogram)  # (N, C, F/16, W/16)
        return self.proj(torch.amax(x, dim=(2, 3)))


class EmbeddingMLPEncoder(nn.Module):
    """A small trainable head on frozen pretrained audio embeddings: (N, 1, D_in, W) -> (N, out_dim).

    The embeddings (``aisfx-embed`` front-end: W = 1, D_in = 512) are computed once per clip by the data
    pipeline; only this head trains. Frozen aisfx embeddings of different sounds are close in cosine
    (0.87 against 0.96 for the same class on synthetic S4: a large shared component), hence the input
    BatchNorm, which removes the shared offset and scales every feature before the MLP.

    Architecture: mean over W, BatchNorm1d(D_in), Linear(D_in, hidden), ReLU, Linear(hidden, out_dim).

    Args:
        in_dim: embedding size D_in (512 for aisfx).
        hidden: width of the hidden layer.
        out_dim: D_a.
    """

    def __init__(self, in_dim: int = 512, hidden: int = 256, out_dim: int = 128) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.norm = nn.BatchNorm1d(in_dim)
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))
        self.out_dim = out_dim

    def forward(self, embedding: Tensor) -> Tensor:
        """embedding (N, 1, D_in, W) -> (N, out_dim)."""
        if embedding.dim() != 4 or embedding.shape[1] != 1 or embedding.shape[2] != self.in_dim:
            raise ValueError(
                f"embed-mlp expects (N, 1, {self.in_dim}, W) embeddings (data.audio_frontend: aisfx-embed), "
                f"got {tuple(embedding.shape)}: a spectrogram front-end needs a spectrogram encoder"
            )
        x = embedding[:, 0].mean(dim=-1)  # (N, D_in)
        return self.mlp(self.norm(x))
