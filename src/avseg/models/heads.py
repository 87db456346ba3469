"""Small heads shared by the methods: token projection, C2AM foreground head, CAM classifier, attention pool."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["ProjectionHead", "C2AMHead", "ClassifierHead", "AttentionPool"]


class ProjectionHead(nn.Module):
    """LayerNorm -> Dropout -> Linear on tokens (the WS-AVS projection to the contrastive space).

    Args:
        in_dim: C of the input tokens.
        out_dim: D of the projected tokens (512 in WS-AVS).
        dropout: dropout probability; the official WS-AVS code uses 0.9 on visual tokens.
    """

    def __init__(self, in_dim: int, out_dim: int = 512, dropout: float = 0.9) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(in_dim, out_dim)
        self.out_dim = out_dim

    def forward(self, x: Tensor) -> Tensor:
        """x (N, C) -> (N, D); (N, L, C) tokens -> (N, L, D); (N, C, h, w) map -> (N, D, h, w).

        A map is treated as h*w tokens: the LayerNorm normalises each position over its channels.
        """
        if x.dim() == 4:
            y = self.linear(self.dropout(self.norm(x.permute(0, 2, 3, 1))))  # (N, h, w, D)
            return y.permute(0, 3, 1, 2)  # (N, D, h, w)
        if x.dim() in (2, 3):
            return self.linear(self.dropout(self.norm(x)))
        raise ValueError(f"expected (N, C), (N, L, C) or (N, C, h, w), got shape {tuple(x.shape)}")


class C2AMHead(nn.Module):
    """C2AM foreground head (Xie et al., CVPR 2022): conv3x3 -> BN -> sigmoid = foreground map P.

    C2AM is class-agnostic, so which side of P is the object is decided after training starts: when the
    border of P is mostly "foreground" the polarity is flipped (``set_flipped(True)``) and P becomes 1 - P
    from then on. The flag is a buffer, so it is saved with the checkpoint.

    Args:
        in_channels: C of the feature map.
    """

    flipped: Tensor

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 1, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(1)
        self.register_buffer("flipped", torch.zeros((), dtype=torch.bool))

    def set_flipped(self, flipped: bool) -> None:
        self.flipped.fill_(bool(flipped))

    def logits(self, features: Tensor) -> Tensor:
        """features (N, C, h, w) -> pre-sigmoid map (N, 1, h, w), polarity applied (negated when flipped)."""
        x = self.bn(self.conv(features))
        return torch.where(self.flipped, -x, x)

    def forward(self, features: Tensor) -> Tensor:
        """features (N, C, h, w) -> foreground map P (N, 1, h, w) in (0, 1)."""
        return torch.sigmoid(self.logits(features))  # sigmoid(-x) = 1 - sigmoid(x)


class ClassifierHead(nn.Module):
    """1x1 conv to K class logits; class scores are its spatial mean, class activation maps its output map.

    Because the conv is linear, mean-pooling the map equals the classic GAP -> linear classifier (Zhou et
    al. 2016), so ``forward`` and ``cam`` share one set of weights.

    Args:
        in_channels: C of the feature map.
        num_classes: K.
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, num_classes, 1)

    def cam(self, features: Tensor) -> Tensor:
        """features (N, C, h, w) -> class activation maps (N, K, h, w) (raw logits, not normalised)."""
        return self.conv(features)

    def forward(self, features: Tensor) -> Tensor:
        """features (N, C, h, w) -> class logits (N, K)."""
        return self.conv(features.mean(dim=(2, 3), keepdim=True)).flatten(1)


class AttentionPool(nn.Module):
    """A learned query token attending over the positions of a map: a "class token" for CNN encoders.

    Args:
        dim: C of the tokens.
        num_heads: attention heads (must divide ``dim``).
    """

    def __init__(self, dim: int, num_heads: int = 8) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide dim={dim}")
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.query, std=0.02)
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)

    def forward(self, x: Tensor, return_weights: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """x (N, C, h, w) map or (N, L, C) tokens -> pooled token (N, C).

        With ``return_weights`` also the attention over positions, (N, h*w) or (N, L) (mean over heads).
        """
        tokens = x.flatten(2).transpose(1, 2) if x.dim() == 4 else x  # (N, L, C)
        kv = self.norm(tokens)
        q = self.query.expand(tokens.shape[0], -1, -1)  # (N, 1, C)
        pooled, weights = self.attn(q, kv, kv, need_weights=return_weights)
        pooled = pooled[:, 0]  # (N, C)
        if return_weights:
            return pooled, weights[:, 0]
        return pooled
