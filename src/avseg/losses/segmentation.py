"""Mask losses on logits: binary cross-entropy, soft IoU and multi-class cross-entropy.

Each loss takes logits (never probabilities) and returns a scalar. Where every pixel is masked out the
losses return zero with a gradient path (a batch without any supervised frame must not give NaN); no
loss branches on tensor values, so none forces a device-to-host sync.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["bce_loss", "iou_loss", "ce_loss"]


def _weights(weight_mask: Tensor | None, like: Tensor) -> Tensor | None:
    if weight_mask is None:
        return None
    w = weight_mask.to(like.dtype)
    while w.dim() < like.dim():  # (N,) frame mask -> (N, 1, 1[, 1])
        w = w[..., None]
    return w.expand_as(like)


def bce_loss(logits: Tensor, target: Tensor, weight_mask: Tensor | None = None) -> Tensor:
    """Binary cross-entropy with logits, averaged over the (weighted) pixels.

    Args:
        logits: (N, 1, H, W) or (N, H, W).
        target: same shape, float in [0, 1] (soft pseudo masks allowed).
        weight_mask: None, or a mask broadcastable after trailing expansion: (N,) per frame (e.g.
            ``has_pseudo``), (N, 1, H, W) / (N, H, W) per pixel; 0 = ignored. The loss is
            ``sum(w * bce) / sum(w)``.

    Returns:
        Scalar loss.
    """
    target = target.to(logits.dtype)
    if target.shape != logits.shape:
        raise ValueError(f"target shape {tuple(target.shape)} != logits shape {tuple(logits.shape)}")
    per_pixel = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    w = _weights(weight_mask, logits)
    if w is None:
        return per_pixel.mean()
    # clamp instead of a branch: no host sync, and an all-zero mask gives 0 / eps = 0
    return (per_pixel * w).sum() / w.sum().clamp(min=1e-12)


def iou_loss(logits: Tensor, target: Tensor, weight_mask: Tensor | None = None, eps: float = 1.0) -> Tensor:
    """Soft IoU loss ``1 - (sum(p t) + eps) / (sum(p + t - p t) + eps)`` per sample, p = sigmoid(logits).

    Args:
        logits: (N, 1, H, W) or (N, H, W).
        target: same shape, float in [0, 1].
        weight_mask: None or a per-frame (N,) / per-pixel mask as in :func:`bce_loss`; the sums run over
            weighted pixels and samples without any weight are left out of the mean.
        eps: smoothing, keeps empty masks defined (an empty prediction on an empty target costs 0).

    Returns:
        Scalar: mean over samples.
    """
    target = target.to(logits.dtype)
    if target.shape != logits.shape:
        raise ValueError(f"target shape {tuple(target.shape)} != logits shape {tuple(logits.shape)}")
    probs = torch.sigmoid(logits)
    w = _weights(weight_mask, logits)
    if w is None:
        w = torch.ones_like(probs)
    dims = tuple(range(1, logits.dim()))
    inter = (w * probs * target).sum(dims)
    union = (w * (probs + target - probs * target)).sum(dims)
    per_sample = 1.0 - (inter + eps) / (union + eps)  # (N,)
    keep = (w.sum(dims) > 0).to(per_sample.dtype)
    return (per_sample * keep).sum() / keep.sum().clamp(min=1.0)


def ce_loss(logits: Tensor, target: Tensor, ignore_index: int = 255) -> Tensor:
    """Multi-class cross-entropy over pixels.

    Args:
        logits: (N, K, H, W).
        target: (N, H, W) int64 class ids; ``ignore_index`` pixels are left out.
        ignore_index: label of ignored pixels (uncertain pseudo labels, padding).

    Returns:
        Scalar: mean over non-ignored pixels (zero when all are ignored).
    """
    target = target.long()
    total = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="sum")
    return total / (target != ignore_index).sum().clamp(min=1)
