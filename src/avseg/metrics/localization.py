"""Localisation metrics for EZ-VSL-style heat maps: cIoU, AP50 ("cIoU" in EZ-VSL tables) and AUC.

cIoU = sum(pred * gt) / (sum(gt) + sum(pred * (gt == 0))) with pred = heatmap > median(heatmap).
EZ-VSL's test script thresholds at ``>= sorted(map)[H*W // 2]`` instead; the two agree whenever the map
values around the median are distinct (a continuous heat map), and differ only on ties.
"""

from __future__ import annotations

import numpy as np

from avseg.metrics.binary import ArrayLike, to_tensor

AUC_THRESHOLDS: tuple[float, ...] = tuple(0.05 * i for i in range(21))  # as in EZ-VSL utils


def ciou(heatmap: ArrayLike, gt: ArrayLike, threshold: float | None = None) -> float:
    """cIoU of one heat map: heatmap (H, W) any real scale, gt (H, W) binary (non-zero = source).

    pred = heatmap > threshold, the map's median when ``threshold`` is None. When both gt and pred are
    empty the ratio is 0/0; it is reported as 0 (EZ-VSL would give NaN, which also fails every cIoU >= t).
    """
    h = to_tensor(heatmap, "heatmap").double().numpy()
    g = to_tensor(gt, "gt").numpy() != 0
    if h.ndim != 2 or h.shape != g.shape:
        raise ValueError(f"expected heatmap and gt of the same shape (H, W); got {h.shape} and {g.shape}")
    if np.isnan(h).any():
        raise ValueError("heatmap contains NaN")
    thr = float(np.median(h)) if threshold is None else float(threshold)
    pred = h > thr
    inter = float((pred & g).sum())
    denom = float(g.sum() + (pred & ~g).sum())
    return inter / denom if denom > 0 else 0.0


def auc_from_cious(cious: ArrayLike | list[float]) -> float:
    """Area under the curve of fraction-with-cIoU >= t over t = 0, 0.05, ..., 1 (trapezoid rule; the
    t range is [0, 1], so the area is in [0, 1]), as ``sklearn.metrics.auc`` in EZ-VSL utils."""
    values = np.asarray(cious, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no cIoU values")
    fractions = [float(np.mean(values >= t)) for t in AUC_THRESHOLDS]
    x = AUC_THRESHOLDS
    return float(sum((x[i + 1] - x[i]) * (fractions[i + 1] + fractions[i]) / 2 for i in range(len(x) - 1)))


class LocalizationAccumulator:
    """Collect per-sample cIoU; ``compute`` -> {"ciou_ap50", "auc", "mean_ciou", "samples"}.

    ``ciou_ap50`` is the fraction of samples with cIoU >= 0.5 (the "cIoU" column of EZ-VSL tables).
    Stores one float per sample.
    """

    def __init__(self, threshold: float | None = None) -> None:
        self.threshold = threshold  # None = per-map median
        self.cious: list[float] = []

    def update(self, heatmaps: ArrayLike, gt: ArrayLike) -> None:
        """heatmaps (N, H, W) or (H, W), gt of the same shape (binary)."""
        h, g = to_tensor(heatmaps, "heatmaps"), to_tensor(gt, "gt")
        if h.ndim == 2:
            h, g = h.unsqueeze(0), g.unsqueeze(0)
        if h.ndim != 3 or h.shape != g.shape:
            raise ValueError(
                f"expected heatmaps and gt of the same shape (N, H, W); got {tuple(h.shape)} and {tuple(g.shape)}"
            )
        self.cious.extend(ciou(h[i], g[i], self.threshold) for i in range(h.shape[0]))

    def compute(self) -> dict:
        if not self.cious:
            raise ValueError("no samples were accumulated; call update() first")
        values = np.asarray(self.cious)
        return {
            "protocol": "ez-vsl",
            "samples": len(self.cious),
            "ciou_ap50": float(np.mean(values >= 0.5)),
            "auc": auc_from_cious(values),
            "mean_ciou": float(values.mean()),
        }
