"""PCAS's progressive contrastive alignment (coarse to fine): CMC, CMPC and CMCC.

- CMC (instance level): supervised contrast over the audio semantic token, the visual semantic token and
  the visual class token of every frame of the batch; positives share a video label (and the three rows
  of one frame are always positives). Built on :func:`avseg.losses.contrastive.supervised_contrastive`.
- CMPC (patch level): cosine of each patch token to its frame's audio token, min-max normalised per frame;
  patches above ``high`` are positives (pulled: 1 - cos), below ``low`` negatives (pushed:
  max(cos, 0), i.e. towards orthogonal, as ToCo's patch contrast), between them ignored.
- CMCC (class-token level): InfoNCE between the global class token of a frame and the class tokens of
  local crops; foreground crops are positives, background crops negatives.
  Built on :func:`avseg.losses.contrastive.info_nce`.

All take projected features (the caller owns the projection heads) and return a scalar that is zero, with a
gradient path, when nothing qualifies.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from avseg.losses.contrastive import info_nce, supervised_contrastive

__all__ = ["cmc_loss", "cmpc_loss", "cmpc_targets", "cmcc_loss", "minmax_normalise"]


def minmax_normalise(x: Tensor, eps: float = 1e-6) -> Tensor:
    """(N, ...) -> each sample rescaled to [0, 1] over its trailing dimensions."""
    flat = x.flatten(1)
    lo = flat.min(dim=1).values.view(-1, *([1] * (x.dim() - 1)))
    hi = flat.max(dim=1).values.view(-1, *([1] * (x.dim() - 1)))
    return (x - lo) / (hi - lo).clamp_min(eps)


def cmc_loss(audio: Tensor, visual_sem: Tensor, visual_cls: Tensor, labels: Tensor, tau: float = 0.1) -> Tensor:
    """Cross-modal instance contrast.

    Args:
        audio, visual_sem, visual_cls: (N, D) projected a_sem, v_sem, v_cls of N frames (one space).
        labels: (N, K) multi-hot labels of each frame (its video's labels).
        tau: temperature.

    Returns:
        Scalar: ``supervised_contrastive`` over the 3N rows, rows of one frame sharing a sample id.
    """
    n = audio.shape[0]
    if not (visual_sem.shape[0] == visual_cls.shape[0] == labels.shape[0] == n):
        raise ValueError(f"cmc_loss: row counts differ: {audio.shape[0]}, {visual_sem.shape[0]}, {visual_cls.shape[0]}, {labels.shape[0]}")
    features = torch.cat([audio, visual_sem, visual_cls])  # (3N, D)
    ids = torch.arange(n, device=audio.device).repeat(3)
    return supervised_contrastive(features, labels.repeat(3, 1), tau=tau, sample_ids=ids)


def cmpc_targets(similarity: Tensor, high: float = 0.7, low: float = 0.25) -> tuple[Tensor, Tensor]:
    """(N, h, w) patch-to-audio cosine -> (positive, negative) bool masks from the min-max normalised map."""
    s = minmax_normalise(similarity.detach())
    return s > high, s < low


def cmpc_loss(patches: Tensor, audio: Tensor, high: float = 0.7, low: float = 0.25, frame_mask: Tensor | None = None) -> Tensor:
    """Cross-modal patch contrast.

    Args:
        patches: (N, D, h, w) projected patch tokens.
        audio: (N, D) projected audio semantic tokens (detach them to move only the visual side).
        high / low: thresholds on the min-max normalised similarity (0.7 / 0.25).
        frame_mask: (N,) bool, frames that take part (e.g. frames whose audio says something sounds).

    Returns:
        Scalar: mean over positive patches of (1 - cos) + mean over negative patches of max(cos, 0).
    """
    cos = torch.einsum("ndhw,nd->nhw", F.normalize(patches, dim=1), F.normalize(audio, dim=1))  # (N, h, w)
    pos, neg = cmpc_targets(cos, high, low)
    if frame_mask is not None:
        keep = frame_mask.bool()[:, None, None]
        pos, neg = pos & keep, neg & keep
    pos_f, neg_f = pos.to(cos.dtype), neg.to(cos.dtype)
    pull = ((1.0 - cos) * pos_f).sum() / pos_f.sum().clamp_min(1.0)
    push = (cos.clamp_min(0.0) * neg_f).sum() / neg_f.sum().clamp_min(1.0)
    return pull + push


def cmcc_loss(
    global_cls: Tensor,
    crop_cls: Tensor,
    positive: Tensor,
    negative: Tensor,
    tau: float = 0.5,
    batch_negatives: bool = True,
) -> Tensor:
    """Cross-modal class-token contrast (ToCo-style class-token contrast).

    Args:
        global_cls: (N, D) projected class token of each frame.
        crop_cls: (N, M, D) projected class tokens of M local crops of each frame.
        positive: (N, M) bool, crop is confident foreground of its frame.
        negative: (N, M) bool, crop is background.
        tau: InfoNCE temperature (0.5).
        batch_negatives: every background crop of the batch is a negative of every frame (True), or only
            the frame's own background crops.

    Returns:
        Scalar: InfoNCE of each (frame, positive crop) pair against the negatives.
    """
    n, m, d = crop_cls.shape
    if batch_negatives:
        negs = crop_cls.reshape(n * m, d)[None].expand(n, n * m, d)  # (N, N*M, D)
        neg_mask = negative.reshape(1, n * m).expand(n, n * m)
    else:
        negs, neg_mask = crop_cls, negative
    return info_nce(global_cls, crop_cls, negs, tau=tau, positive_mask=positive, negative_mask=neg_mask)
