"""aisfx's pretrained audio CNN: the encoder architecture and the frozen copy the ``aisfx-embed`` front-end runs.

It lives beside the front-ends (not in :mod:`avseg.models`) because ``aisfx-embed`` runs it frozen as part
of feature extraction, as AVSBench's VGGish features are; ``avseg.models.zoo`` builds the trainable
``AUDIO_ENCODERS["aisfx"]`` from the same class, importing it downward.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avseg.weights import load_aisfx_embedding_state_dict

__all__ = ["AisfxEncoder", "AISFX_EMBED_DIM", "frozen_aisfx"]


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
    ``log10(1 + 10000 * mel_power) / 9.4578`` (``avseg.audio.frontends.aisfx_log_mel``), blocks of ~100 time steps
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


AISFX_EMBED_DIM = 512


@lru_cache(maxsize=1)
def frozen_aisfx() -> AisfxEncoder:
    """aisfx's pretrained 4-block CNN, eval mode, no gradients; loaded once per process, on first use.

    Built with the global random state saved and restored: the layers' random initialisation (overwritten by
    the checkpoint) would otherwise consume torch's random stream at whatever point of a run first needs the
    features, so a stage resumed in a new process (where it loads first) and the same stage after others in
    one process (where an earlier stage loaded it) drew different dropout, augmentation and order.
    """
    with torch.random.fork_rng(devices=[]):
        model = AisfxEncoder(base_channels=64)
    model.load_state_dict(load_aisfx_embedding_state_dict())
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
