"""Audio encoders: a 1-channel spectrogram ``(N, 1, F, W)`` (frequency bins x time steps) -> ``(N, D_a)``.

Every encoder exposes ``out_dim = D_a``. The spectrogram itself comes from the dataset's audio front-end;
see each encoder for the front-end its pretrained weights expect. ``EmbeddingMLPEncoder`` is the exception
that keeps the contract: its "spectrogram" is a frozen pretrained embedding ``(N, 1, D_in, 1)`` (front-end
``aisfx-embed``), so the pretrained network runs once per clip instead of once per step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import ResNet

from avseg.models.visual import group_norm

__all__ = [
    "ResNetAudioEncoder",
    "AisfxEncoder",
    "TinyAudioEncoder",
    "EmbeddingMLPEncoder",
    "mono_conv_from_rgb",
    "AISFX_SAMPLE_RATE",
    "AISFX_N_MELS",
    "AISFX_WIN_LENGTH",
    "AISFX_HOP_LENGTH",
    "AISFX_BLOCK_FRAMES",
    "AISFX_LOG_MAX",
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
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        bias=conv.bias is not None,
    )
    if average_weights:
        with torch.no_grad():
            mono.weight.copy_(conv.weight.mean(dim=1, keepdim=True))
            if conv.bias is not None:
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


# The front-end aisfx was trained with (aisfx 0.1.2, inference.py / spectrogram_essentia.py):
AISFX_SAMPLE_RATE = 44100  # Hz
AISFX_N_MELS = 96  # mel bands, 0 - 22050 Hz, HTK scale, unit-sum filters on the power spectrum
AISFX_WIN_LENGTH = 2048  # samples (46 ms)
AISFX_HOP_LENGTH = 1024  # samples (23 ms)
AISFX_BLOCK_FRAMES = 100  # time steps per embedding (~2.3 s)
AISFX_LOG_MAX = 9.457798957824707  # log10(1 + 10000 * mel) is divided by this ("original" normalisation)


class _AisfxConvBlock(nn.Module):
    """conv3x3-BN-ReLU x2 then max pooling; names match aisfx's ``ConvBlock`` so its weights load."""

    def __init__(self, in_channels: int, out_channels: int, pool: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.pool = pool
        for conv in (self.conv1, self.conv2):  # aisfx's init_layer
            nn.init.kaiming_uniform_(conv.weight, nonlinearity="leaky_relu")

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return F.max_pool2d(x, kernel_size=self.pool) if self.pool > 1 else x


class AisfxEncoder(nn.Module):
    """The 4-block CNN of aisfx (``EmbeddingNet('max', ks=3, strd=1, hl1=64)``, DCASE cross-task baseline).

    Pretrained weights (``checkpoint.pth`` of the PyPI package ``aisfx==0.1.2``, CC BY 4.0) expect a
    96-band log-mel spectrogram of 44.1 kHz audio: window 2048, hop 1024 (23 ms), mel bands over 0-22050 Hz,
    ``log10(1 + 10000 * mel_power) / 9.4578`` (see the ``AISFX_*`` constants), blocks of ~100 time steps
    (2.3 s). Other front-ends run, but the pretrained features are only meaningful on that one.

    Architecture: four blocks of conv3x3-BN-ReLU x2 (64, 128, 256, 512 channels), 2x2 max pooling after the
    first three; then mean over frequency and max over time -> 512-d embedding.

    Args:
        base_channels: channels of the first block (64 for the pretrained weights); doubled per block.
    """

    def __init__(self, base_channels: int = 64) -> None:
        super().__init__()
        c = base_channels
        self.conv_block1 = _AisfxConvBlock(1, c, pool=2)
        self.conv_block2 = _AisfxConvBlock(c, 2 * c, pool=2)
        self.conv_block3 = _AisfxConvBlock(2 * c, 4 * c, pool=2)
        self.conv_block4 = _AisfxConvBlock(4 * c, 8 * c, pool=1)
        self.out_dim = 8 * c

    def forward(self, spectrogram: Tensor) -> Tensor:
        """spectrogram (N, 1, F, W) with F = 96 mel bands, W >= 8 time steps -> embedding (N, 512)."""
        # aisfx was trained on (time, frequency) inputs; our contract is (frequency, time): transpose so the
        # pretrained kernels see the orientation they were trained on.
        x = spectrogram.transpose(2, 3)  # (N, 1, W, F)
        x = self.conv_block4(self.conv_block3(self.conv_block2(self.conv_block1(x))))  # (N, 512, W/8, F/8)
        x = x.mean(dim=3)  # over frequency: (N, 512, W/8)
        return x.amax(dim=2)  # over time: (N, 512)


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
