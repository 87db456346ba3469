"""Mask decoders: a feature pyramid -> per-pixel logits at the input size."""

from __future__ import annotations

from typing import cast

import torch.nn.functional as F
from torch import Tensor, nn

from avseg.models.visual import group_norm

__all__ = ["PanopticFPNDecoder"]


def _conv_gn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        group_norm(out_channels),
        nn.ReLU(inplace=True),
    )


class PanopticFPNDecoder(nn.Module):
    """FPN + the Panoptic-FPN semantic head (Kirillov et al., CVPR 2019), as the WS-AVS paper uses.

    FPN: 1x1 lateral convs to ``channels``, top-down pathway (upsample the coarser level to the finer one's
    size and add), a 3x3 output conv per level. Semantic head: level i (stride 4 * 2^i) goes through
    max(1, i) x [conv3x3-GN-ReLU, x2 bilinear upsampling (none for stride 4)] to stride 4; the levels are
    summed, a 1x1 conv gives K logits, bilinearly upsampled to ``out_size``.

    Args:
        in_channels: channels of the pyramid levels, finest (stride 4) first, each next level stride x2.
        channels: width of the FPN and of the semantic head.
        num_classes: K output logits per pixel (1 for binary masks).
    """

    def __init__(self, in_channels: tuple[int, ...], channels: int = 128, num_classes: int = 1) -> None:
        super().__init__()
        if not in_channels:
            raise ValueError("in_channels must name at least one pyramid level")
        self.in_channels = tuple(in_channels)
        self.num_classes = num_classes
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in in_channels)
        # level i needs i x2-upsamplings to reach stride 4; the stride-4 level still gets one conv
        self.scale_heads = nn.ModuleList(
            nn.ModuleList(_conv_gn_relu(channels, channels) for _ in range(max(1, i)))
            for i in range(len(in_channels))
        )
        self.predictor = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: list[Tensor], out_size: tuple[int, int]) -> Tensor:
        """features [(N, C_i, H/4/2^i, W/4/2^i)] -> logits (N, K, out_size[0], out_size[1])."""
        if len(features) != len(self.lateral):
            raise ValueError(f"expected {len(self.lateral)} pyramid levels, got {len(features)}")
        laterals = [conv(f) for conv, f in zip(self.lateral, features)]
        # top-down: coarse to fine; interpolate to the exact size (odd sizes are not exactly x2)
        for i in range(len(laterals) - 2, -1, -1):
            coarser = F.interpolate(laterals[i + 1], size=laterals[i].shape[-2:], mode="nearest")
            laterals[i] = laterals[i] + coarser
        pyramid = [conv(x) for conv, x in zip(self.output, laterals)]

        target = pyramid[0].shape[-2:]  # stride 4
        fused = None
        for i, (x, head) in enumerate(zip(pyramid, self.scale_heads)):
            convs = cast(nn.ModuleList, head)  # scale_heads holds one ModuleList per level
            for k, conv in enumerate(convs):
                x = conv(x)
                if i > 0:
                    last = k == len(convs) - 1
                    size = target if last else (x.shape[-2] * 2, x.shape[-1] * 2)
                    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            fused = x if fused is None else fused + x  # (N, channels, H/4, W/4)
        logits = self.predictor(fused)  # (N, K, H/4, W/4)
        return F.interpolate(logits, size=tuple(out_size), mode="bilinear", align_corners=False)
