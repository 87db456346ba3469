"""Audio-visual fusion: WS-AVS Eq. 1, the "TPAVI" block of AVS (Zhou et al., ECCV 2022) on one frame.

    z = v + mu( theta(v) phi(a_rep)^T / (H W) * omega(v) )

theta, phi, omega, mu are 1x1 convolutions; ``a`` is projected to the visual width and repeated over the
H x W positions (``a_rep``); mu is followed by a norm layer whose weight and bias start at zero, so the block
starts as the identity. Unlike the official code we do not apply a LayerNorm after the residual sum (it
would break the identity start), and we reshape with explicit permutes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from avseg.models.visual import group_norm

__all__ = ["AVFusion", "IdentityFusion"]


class AVFusion(nn.Module):
    """Audio-guided non-local block (TPAVI) for one pyramid level.

    Args:
        visual_channels: C of the visual map.
        audio_dim: D_a of the audio embedding.
        inter_channels: width of theta/phi/omega; None = ``visual_channels // 2`` (official default).
        norm: norm layer after mu, ``"batch"`` (official) or ``"group"`` (small or uneven batches).
    """

    def __init__(
        self, visual_channels: int, audio_dim: int, inter_channels: int | None = None, norm: str = "batch"
    ) -> None:
        super().__init__()
        inter = inter_channels if inter_channels is not None else max(1, visual_channels // 2)
        self.inter_channels = inter
        self.audio_proj = nn.Linear(audio_dim, visual_channels)  # a -> visual width, then repeated over H x W
        self.theta = nn.Conv2d(visual_channels, inter, 1)
        self.phi = nn.Conv2d(visual_channels, inter, 1)
        self.omega = nn.Conv2d(visual_channels, inter, 1)
        self.mu = nn.Conv2d(inter, visual_channels, 1)
        if norm == "batch":
            self.mu_norm: nn.Module = nn.BatchNorm2d(visual_channels)
        elif norm == "group":
            self.mu_norm = group_norm(visual_channels)
        else:
            raise ValueError(f"norm must be 'batch' or 'group', got {norm!r}")
        # zero weight AND bias: mu_norm outputs 0 at init, so z = v (the block starts as the identity)
        nn.init.zeros_(self.mu_norm.weight)
        nn.init.zeros_(self.mu_norm.bias)

    def forward(self, visual: Tensor, audio: Tensor) -> Tensor:
        """visual (N, C, h, w), audio (N, D_a) -> fused visual map (N, C, h, w)."""
        n, _, h, w = visual.shape
        a = self.audio_proj(audio)[:, :, None, None]  # (N, C, 1, 1)
        theta = self.theta(visual).flatten(2).transpose(1, 2)  # (N, hw, Ci)
        # phi(a_rep) is the same vector phi(a) at every position, so it is computed once
        phi = self.phi(a).flatten(1)  # (N, Ci)
        omega = self.omega(visual).flatten(2).transpose(1, 2)  # (N, hw, Ci)
        # theta phi_rep^T / (hw): (N, hw, hw) with identical columns theta_i . phi; multiplying it by omega
        # gives y_i = (theta_i . phi) * mean_j omega_j -- computed without the (hw x hw) matrix (exact).
        affinity = torch.einsum("nic,nc->ni", theta, phi)  # (N, hw): one column of theta phi_rep^T
        y = affinity[:, :, None] * omega.mean(dim=1, keepdim=True)  # (N, hw, Ci)
        y = y.transpose(1, 2).reshape(n, self.inter_channels, h, w)  # (N, Ci, h, w)
        return visual + self.mu_norm(self.mu(y))


class IdentityFusion(nn.Module):
    """No fusion: returns the visual map unchanged (audio-free ablations keep the same model layout)."""

    def forward(self, visual: Tensor, audio: Tensor) -> Tensor:
        """visual (N, C, h, w), audio (N, D_a) (ignored) -> visual (N, C, h, w)."""
        return visual
