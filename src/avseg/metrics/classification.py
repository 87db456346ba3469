"""Multi-label classification metrics of (N, K) class probabilities against (N, K) 0/1 targets (pure numpy)."""

from __future__ import annotations

import numpy as np

__all__ = ["average_precision", "classification_scores"]


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """AP of one class: mean precision at the rank of each positive (scores descending)."""
    order = np.argsort(-scores, kind="stable")
    hits = targets[order] > 0
    if not hits.any():
        return float("nan")
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].mean())


def classification_scores(probs: np.ndarray, targets: np.ndarray, threshold: float) -> dict[str, float]:
    """mAP (classes with a positive), micro F1 at ``threshold`` and exact-match accuracy of (N, K) predictions."""
    aps = [average_precision(probs[:, k], targets[:, k]) for k in range(targets.shape[1])]
    aps = [a for a in aps if not np.isnan(a)]
    pred = probs > threshold
    tp = float((pred & (targets > 0)).sum())
    f1 = 2 * tp / max(1.0, float(pred.sum() + (targets > 0).sum()))
    exact = float((pred == (targets > 0)).all(axis=1).mean()) if len(targets) else float("nan")
    return {"map": float(np.mean(aps)) if aps else float("nan"), "f1": f1, "exact_match": exact, "frames": int(len(targets))}
