"""C2AM losses (Xie et al., "C2AM: Contrastive learning of Class-agnostic Activation Map", CVPR 2022).

Given features X (N, C, h, w) and the foreground map P (N, 1, h, w) of ``C2AMHead``:

- ``fg = mean_positions(P * X)``, ``bg = mean_positions((1 - P) * X)`` (N, C), L2-normalised;
- cosine similarities clamped to [5e-4, 0.9995] (keeps the logs finite);
- ``loss_fg``: rank-weighted ``-log(sim)`` among foreground pairs (pull objects of different images
  together), ``loss_neg``: ``-log(1 - sim)`` between every background and every foreground (push apart),
  ``loss_bg``: rank-weighted ``-log(sim)`` among background pairs;
- ``loss = loss_fg + loss_neg + loss_bg``.

Rank weighting, exactly as the official ``SimMaxLoss`` (and implemented here): for the (N, N) similarity
matrix of one set (the diagonal included), each row is sorted by similarity in descending order (stable
sort, ties by index); an entry's rank is its position in that order minus 1, so the anchor itself (similarity
clamped to 0.9995, normally first) gets rank -1 and the other samples ranks 0, 1, 2, ...; the entry's weight
is ``exp(-alpha * rank)`` (alpha = 0.25), the self pair thus ``exp(alpha)`` on a near-zero ``-log(0.9995)``;
the loss is the mean of ``weight * -log(sim)`` over all N^2 entries. The weights down-weight the least
similar pairs, which are the likeliest to show different kinds of objects.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "SIM_MIN",
    "SIM_MAX",
    "foreground_background_features",
    "clamped_cosine",
    "rank_weighted_similarity_loss",
    "dissimilarity_loss",
    "c2am_losses",
    "border_foreground_fraction",
]

SIM_MIN = 5e-4
SIM_MAX = 0.9995


def foreground_background_features(features: Tensor, fg_map: Tensor) -> tuple[Tensor, Tensor]:
    """features (N, C, h, w), fg_map P (N, 1, h, w) -> (fg, bg), each (N, C): position means of P*X, (1-P)*X."""
    fg = (fg_map * features).mean(dim=(2, 3))
    bg = ((1.0 - fg_map) * features).mean(dim=(2, 3))
    return fg, bg


def clamped_cosine(x: Tensor, y: Tensor) -> Tensor:
    """x (N, C), y (M, C) -> (N, M) cosine similarities clamped to [5e-4, 0.9995]."""
    return (F.normalize(x, dim=1) @ F.normalize(y, dim=1).t()).clamp(SIM_MIN, SIM_MAX)


def rank_weighted_similarity_loss(embeddings: Tensor, alpha: float = 0.25) -> Tensor:
    """Official ``SimMaxLoss``: mean over all (i, j) of ``exp(-alpha * rank_ij) * -log(sim_ij)`` (see module doc).

    Args:
        embeddings: (N, C).
        alpha: rank decay.

    Returns:
        Scalar loss.
    """
    sim = clamped_cosine(embeddings, embeddings)  # (N, N)
    loss = -torch.log(sim)
    order = sim.detach().argsort(dim=1, descending=True, stable=True)  # (N, N): column indices by similarity
    rank = order.argsort(dim=1, stable=True) - 1  # position of each column in its row's order, minus 1
    weights = torch.exp(-alpha * rank.to(loss.dtype))
    return (loss * weights).mean()


def dissimilarity_loss(bg: Tensor, fg: Tensor) -> Tensor:
    """Official ``SimMinLoss``: mean over all (i, j) of ``-log(1 - sim(bg_i, fg_j))``; bg (N, C), fg (M, C)."""
    return -torch.log(1.0 - clamped_cosine(bg, fg)).mean()


def c2am_losses(features: Tensor, fg_map: Tensor, alpha: float = 0.25) -> dict[str, Tensor]:
    """The three C2AM losses and their sum.

    Args:
        features: X (N, C, h, w), N > 1 (the paper uses batches > 32).
        fg_map: P (N, 1, h, w) in [0, 1].
        alpha: rank decay of the weighting.

    Returns:
        {"loss_fg", "loss_neg", "loss_bg", "loss"}: scalars; "loss" is the sum of the other three.
    """
    if features.shape[0] < 2:
        raise ValueError("C2AM contrasts samples of a batch: it needs at least 2 samples")
    fg, bg = foreground_background_features(features, fg_map)
    out = {
        "loss_fg": rank_weighted_similarity_loss(fg, alpha),
        "loss_neg": dissimilarity_loss(bg, fg),
        "loss_bg": rank_weighted_similarity_loss(bg, alpha),
    }
    out["loss"] = out["loss_fg"] + out["loss_neg"] + out["loss_bg"]
    return out


def border_foreground_fraction(fg_map: Tensor, threshold: float = 0.5) -> Tensor:
    """Fraction of the image border that P calls foreground, per sample: the C2AM polarity check.

    As the official ``check_positive``: binarise P at ``threshold`` (> is foreground), average the
    foreground fraction of the top row, bottom row, left column and right column. A value above 0.5 means
    P marks the background: flip the polarity (``C2AMHead.set_flipped(True)``). The official code checks the
    first sample of one batch; average this over many samples instead.

    Args:
        fg_map: (N, 1, h, w) or (N, h, w).

    Returns:
        (N,) in [0, 1].
    """
    m = (fg_map > threshold).float()
    if m.dim() == 4:
        m = m[:, 0]
    edges = (m[:, 0, :].mean(1), m[:, -1, :].mean(1), m[:, :, 0].mean(1), m[:, :, -1].mean(1))
    return torch.stack(edges, dim=1).mean(dim=1)
