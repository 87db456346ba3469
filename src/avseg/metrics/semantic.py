"""Semantic-mask metrics (AVSS): C classes including background 0.

Inputs are hard class maps ``pred`` (N, H, W) int (the caller's argmax); (N, C, H, W) scores are also
accepted and reduced with argmax over dim 1 (first maximum wins, as ``torch.argmax``; the official code's
softmax before argmax does not change it). ``gt`` (N, H, W) int in 0..C-1. Torch tensors and numpy arrays.

Protocols of :class:`SemanticAccumulator` (see docs/metrics.md):

- ``avsbench``: the official ``calc_color_miou_fscore``. Per frame f and class c: I = #(pred==c & gt==c),
  U = #(pred==c) + #(gt==c) - I; iou_sum[c] += I / (U + eps), count[c] += (U > 0); F_c = 1.3 p r /
  (0.3 p + r) with p = I/#(pred==c), r = I/#(gt==c) (NaN -> 0), f_sum[c] += F_c. Per class
  iou_sum/count and f_sum/count (NaN -> 0), then the mean over all C classes, background included. The
  official evaluation also counts the zero-padded frames of 5-frame videos: the caller passes them and
  ``valid`` is ignored by this protocol. "miou_no_bg"/"fscore_no_bg" drop class 0; the official "noBg"
  numbers dropped the *last* class instead (``miou_pc[:-1]``, AVSBench issue 23), reported here as
  "miou_drop_last"/"fscore_drop_last" for comparison with published tables only.
- ``clean``: one dataset-level confusion matrix over valid (real, unpadded) frames; per-class IoU =
  TP/(TP+FP+FN) and F from dataset-level precision TP/(TP+FP) and recall TP/(TP+FN) (beta^2 = 0.3,
  NaN -> 0), both over the classes present in ground truth or prediction. "miou"/"fscore" average the
  present foreground classes, "miou_all"/"fscore_all" the present classes including background; 0 when
  no class qualifies. Independent of batching.

Pass only frames that have ground truth.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from avseg.metrics.binary import BETA2, ArrayLike, to_tensor

SEMANTIC_PROTOCOLS: tuple[str, ...] = ("clean", "avsbench")
HIST_EPS = 2.220446049250313e-16  # the official IoU epsilon (float64 machine epsilon)


def _f_beta(prec: np.ndarray, rec: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        f = (1 + BETA2) * prec * rec / (BETA2 * prec + rec)
    return np.nan_to_num(f, nan=0.0, posinf=0.0, neginf=0.0)


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a / b with NaN where b == 0 (the official 0/0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return a / b


class SemanticAccumulator:
    """Dataset-level AVSS metrics; ``update`` with any split of the frames, then ``compute``.

    Args:
        num_classes: C, including background 0 (AVSBench AVSS: 71).
        protocol: ``clean`` (default) or ``avsbench`` (module docstring).
    """

    def __init__(self, num_classes: int, protocol: str = "clean") -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (background + classes), got {num_classes}")
        if protocol not in SEMANTIC_PROTOCOLS:
            raise ValueError(f"unknown semantic protocol {protocol!r}; expected one of {SEMANTIC_PROTOCOLS}")
        self.num_classes = int(num_classes)
        self.protocol = protocol
        self.frames = 0
        c = self.num_classes
        # avsbench: per-class sums over frames
        self._iou_sum = np.zeros(c, dtype=np.float64)
        self._f_sum = np.zeros(c, dtype=np.float64)
        self._count = np.zeros(c, dtype=np.int64)
        # clean: confusion[gt, pred]
        self._confusion = np.zeros((c, c), dtype=np.int64)

    def _check(
        self, pred: ArrayLike, gt: ArrayLike, valid: ArrayLike | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        p, g = to_tensor(pred, "pred"), to_tensor(gt, "gt")
        if p.ndim == 4:  # (N, C, H, W) scores
            if p.shape[1] != self.num_classes:
                raise ValueError(f"pred scores have {p.shape[1]} channels; expected num_classes={self.num_classes}")
            p = p.argmax(1)
        if p.ndim != 3 or g.ndim != 3 or p.shape != g.shape:
            raise ValueError(
                f"expected pred (N, H, W) or (N, C, H, W) and gt (N, H, W) of the same size; "
                f"got {tuple(p.shape)} and {tuple(g.shape)}"
            )
        if p.is_floating_point() or g.is_floating_point():
            raise ValueError("pred and gt must be integer class maps (argmax scores first)")
        p, g = p.long(), g.long()
        for name, x in (("pred", p), ("gt", g)):
            if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.num_classes):
                raise ValueError(
                    f"{name} holds class ids {int(x.min())}..{int(x.max())}; expected 0..{self.num_classes - 1}"
                )
        if valid is None:
            v = torch.ones(p.shape[0], dtype=torch.bool)
        else:
            v = to_tensor(valid, "valid").reshape(-1).bool()
            if v.shape[0] != p.shape[0]:
                raise ValueError(f"valid has {v.shape[0]} entries for {p.shape[0]} frames")
        return p, g, v

    def update(self, pred: ArrayLike, gt: ArrayLike, valid: ArrayLike | None = None) -> None:
        """Add frames: pred (N, H, W) int class ids or (N, C, H, W) scores, gt (N, H, W) int,
        valid (N,) bool (False = padding; used by ``clean`` only), None = all valid."""
        p, g, v = self._check(pred, gt, valid)
        n, c = p.shape[0], self.num_classes
        if self.protocol == "avsbench":
            self.frames += n  # padded frames count, as in the official evaluation
            p, g = p.reshape(n, -1), g.reshape(n, -1)
            offs = torch.arange(n).unsqueeze(1) * c
            area_pred = torch.bincount((p + offs).flatten(), minlength=n * c).reshape(n, c).numpy()
            area_gt = torch.bincount((g + offs).flatten(), minlength=n * c).reshape(n, c).numpy()
            inter = torch.bincount((p + offs)[p == g], minlength=n * c).reshape(n, c).numpy()
            area_pred, area_gt, inter = (a.astype(np.float64) for a in (area_pred, area_gt, inter))
            union = area_pred + area_gt - inter
            self._iou_sum += (inter / (union + HIST_EPS)).sum(0)
            self._count += (union > 0).sum(0)
            self._f_sum += _f_beta(_safe_div(inter, area_pred), _safe_div(inter, area_gt)).sum(0)
            return
        p, g = p[v], g[v]
        self.frames += int(p.shape[0])
        idx = (g.reshape(-1) * c + p.reshape(-1))
        self._confusion += torch.bincount(idx, minlength=c * c).reshape(c, c).numpy()

    def compute(self) -> dict:
        """-> {"protocol", "frames", "miou", "fscore", "miou_all", "fscore_all", ...}.

        ``avsbench``: "miou"/"fscore" average all C classes (the official headline numbers, background
        included), "miou_all"/"fscore_all" the same values, "miou_no_bg"/"fscore_no_bg" drop class 0,
        "miou_drop_last"/"fscore_drop_last" reproduce the official noBg bug, "classes_counted" = classes
        with count > 0. ``clean``: "miou"/"fscore" average present foreground classes, "miou_all"/
        "fscore_all" all present classes, "per_class_iou"/"per_class_fscore" {class: value} for present
        classes, "classes_present".
        """
        if self.frames == 0:
            raise ValueError("no frames were accumulated; call update() first")
        out: dict = {"protocol": self.protocol, "frames": self.frames, "num_classes": self.num_classes}
        if self.protocol == "avsbench":
            miou_pc = np.nan_to_num(_safe_div(self._iou_sum, self._count.astype(np.float64)), nan=0.0)
            f_pc = np.nan_to_num(_safe_div(self._f_sum, self._count.astype(np.float64)), nan=0.0)
            out.update(
                miou=float(miou_pc.mean()), fscore=float(f_pc.mean()),
                miou_all=float(miou_pc.mean()), fscore_all=float(f_pc.mean()),
                miou_no_bg=float(miou_pc[1:].mean()), fscore_no_bg=float(f_pc[1:].mean()),
                miou_drop_last=float(miou_pc[:-1].mean()), fscore_drop_last=float(f_pc[:-1].mean()),
                classes_counted=int((self._count > 0).sum()),
            )
            return out
        conf = self._confusion.astype(np.float64)
        tp = np.diag(conf)
        fp = conf.sum(0) - tp
        fn = conf.sum(1) - tp
        present = (tp + fp + fn) > 0
        iou = _safe_div(tp, tp + fp + fn)
        f = _f_beta(_safe_div(tp, tp + fp), _safe_div(tp, tp + fn))
        fg = present.copy()
        fg[0] = False

        def mean(values: np.ndarray, mask: np.ndarray) -> float:
            return float(values[mask].mean()) if mask.any() else 0.0

        out.update(
            miou=mean(iou, fg), fscore=mean(f, fg),
            miou_all=mean(iou, present), fscore_all=mean(f, present),
            per_class_iou={int(c): float(iou[c]) for c in np.flatnonzero(present)},
            per_class_fscore={int(c): float(f[c]) for c in np.flatnonzero(present)},
            classes_present=int(present.sum()),
        )
        return out
