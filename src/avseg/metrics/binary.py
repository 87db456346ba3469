"""Binary-mask metrics (S4, MS3): the official AVSBench protocol and a batch-independent one.

Every function takes *probabilities* ``probs`` in [0, 1] (or hard 0/1 masks), never logits: nothing here
applies a sigmoid. The official code applies ``sigmoid`` to logits and then thresholds ``sigmoid(P) > 0.5``
and sweeps ``sigmoid(P) >= t``; passing ``probs = sigmoid(P)`` gives exactly the same masks, so
``B = probs > 0.5`` and the F-score uses ``probs`` directly. Values outside [0, 1] raise ``ValueError``.

Shapes: ``probs`` (N, H, W) float, ``gt`` (N, H, W) with any non-zero value meaning foreground. Torch
tensors (any device) and numpy arrays are accepted. Threshold comparisons are done in float32 against the
official float32 thresholds (``torch.linspace(0, 1 - 1e-10, 255)``, whose last value rounds to 1.0), so the
binary masks are identical to the official ones; ratios are computed in float64, so values agree with the
official float32 code to float32 rounding.

Protocols of :class:`BinaryAccumulator` (see docs/metrics.md):

- ``clean`` (default): mIoU = mean over all frames of the per-frame IoU at 0.5 (empty ground truth: 1 if
  the prediction is empty, else 0); F = max over the 255 thresholds of one dataset-level PR curve (tp,
  predicted and positive pixels summed over every frame with non-empty ground truth). Independent of batching.
- ``avsbench``: the official ``mask_iou`` / ``Eval_Fmeasure`` per batch of ``batch_frames`` consecutive
  frames, then the unweighted mean of batch values. Depends on ``batch_frames`` (official test: 20).
- ``per-frame-max``: the WS-AVS released test script, i.e. ``avsbench`` with one frame per batch: mIoU =
  mean of the official per-frame ``mask_iou``; F = mean over *all* frames of each frame's best-threshold F,
  where a frame with empty ground truth counts 0 (``Eval_Fmeasure`` returns 0 for a batch without
  foreground, and the script averages over every batch). More lenient than ``avsbench`` on frames with
  foreground, stricter on silent ones.
"""

from __future__ import annotations

from typing import Union

import numpy as np
import torch
from torch import Tensor

ArrayLike = Union[Tensor, np.ndarray]

PROTOCOLS: tuple[str, ...] = ("clean", "avsbench", "per-frame-max")
NUM_THRESHOLDS = 255
BETA2 = 0.3
IOU_EPS = 1e-7  # mask_iou
PR_EPS = 1e-20  # _eval_pr
_CHUNK = 64  # frames per vectorised step; bounds the (chunk, H*W) int64 index tensor

# Eval_Fmeasure's thresholds, float32 exactly as torch builds them in the official code.
THRESHOLDS: Tensor = torch.linspace(0.0, 1.0 - 1e-10, NUM_THRESHOLDS, dtype=torch.float32)


# --- input handling ---------------------------------------------------------------------------------
def to_tensor(x: ArrayLike, name: str) -> Tensor:
    """A detached CPU tensor view of a torch tensor or numpy array."""
    if isinstance(x, Tensor):
        return x.detach().cpu()
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    raise TypeError(f"{name}: expected a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


def _check_binary(probs: ArrayLike, gt: ArrayLike) -> tuple[Tensor, Tensor]:
    """-> probs (N, H, W) float32 in [0, 1], gt (N, H, W) bool."""
    p, g = to_tensor(probs, "probs"), to_tensor(gt, "gt")
    if p.ndim != 3 or g.ndim != 3:
        raise ValueError(
            f"expected probs and gt of shape (N, H, W); got {tuple(p.shape)} and {tuple(g.shape)}"
        )
    if p.shape != g.shape:
        raise ValueError(f"probs {tuple(p.shape)} and gt {tuple(g.shape)} differ in shape")
    p = p.to(torch.float32)
    if p.numel():
        lo, hi = float(p.min()), float(p.max())
        if not (0.0 <= lo and hi <= 1.0):  # also catches NaN
            raise ValueError(
                f"probs must be probabilities in [0, 1] (apply sigmoid to logits first); "
                f"got min {lo} and max {hi}"
            )
    return p, g != 0


# --- per-frame statistics ---------------------------------------------------------------------------
def _frame_iou_avsbench(p: Tensor, g: Tensor) -> Tensor:
    """Official mask_iou per frame: (N, H, W) float32, bool -> (N,) float64."""
    n = p.shape[0]
    b = (p > 0.5).reshape(n, -1)
    g = g.reshape(n, -1)
    empty = ~g.any(1)
    inter = torch.where(empty, (~b & ~g).sum(1), (b & g).sum(1)).double()
    union = torch.where(empty, torch.full_like(inter, b.shape[1]), (b | g).sum(1).double())
    return inter / (union + IOU_EPS)


def _frame_iou_clean(p: Tensor, g: Tensor) -> Tensor:
    """Clean per-frame IoU at 0.5: (N,) float64; empty GT scores 1 if the prediction is empty, else 0."""
    n = p.shape[0]
    b = (p > 0.5).reshape(n, -1)
    g = g.reshape(n, -1)
    inter = (b & g).sum(1).double()
    union = (b | g).sum(1).double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def _pr_counts(p: Tensor, g: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per frame and threshold: tp (N, 255) = #(S >= t_k & G), predicted (N, 255) = #(S >= t_k),
    positives (N,) = #G; all int64."""
    n = p.shape[0]
    s = p.reshape(n, -1).contiguous()
    g = g.reshape(n, -1)
    # m = number of thresholds t_k <= S, i.e. S >= t_k exactly for k < m (float32 as in the official code)
    m = torch.searchsorted(THRESHOLDS, s, right=True)  # (N, P) in 0..255
    m = m + torch.arange(n).unsqueeze(1) * (NUM_THRESHOLDS + 1)
    hist = torch.bincount(m.flatten(), minlength=n * (NUM_THRESHOLDS + 1)).reshape(n, -1)
    hist_tp = torch.bincount(m[g], minlength=n * (NUM_THRESHOLDS + 1)).reshape(n, -1)
    # count for threshold k = #(m > k) = reversed cumulative sum from bin k + 1
    predicted = hist.flip(1).cumsum(1).flip(1)[:, 1:]
    tp = hist_tp.flip(1).cumsum(1).flip(1)[:, 1:]
    return tp, predicted, g.sum(1)


def _f_curve(tp: Tensor, predicted: Tensor, positives: Tensor) -> Tensor:
    """F_beta (beta^2 = 0.3) per threshold, NaN -> 0, float64; broadcasts (..., 255) with (..., 1)."""
    tp = tp.double()
    prec = tp / (predicted.double() + PR_EPS)
    rec = tp / (positives.double() + PR_EPS)
    f = (1 + BETA2) * prec * rec / (BETA2 * prec + rec)
    return torch.nan_to_num(f, nan=0.0)


def _frame_f_curves(p: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
    """-> F curves (N, 255) float64 and the non-empty-GT flag (N,) bool."""
    tp, predicted, positives = _pr_counts(p, g)
    return _f_curve(tp, predicted, positives.unsqueeze(1)), positives > 0


# --- public per-batch functions ---------------------------------------------------------------------
def avsbench_frame_iou(probs: ArrayLike, gt: ArrayLike) -> np.ndarray:
    """Official ``mask_iou`` of each frame: (N, H, W) -> (N,) float64.

    B = probs > 0.5; empty GT: IoU = #(B == 0 & G == 0) / (H*W) (rewards an empty prediction), else
    #(B & G) / #(B | G); the denominator carries the official + 1e-7.
    """
    p, g = _check_binary(probs, gt)
    return _frame_iou_avsbench(p, g).numpy()


def avsbench_batch_miou(probs: ArrayLike, gt: ArrayLike) -> float:
    """Official ``mask_iou`` of one batch: mean over its N frames of :func:`avsbench_frame_iou`.

    Args: probs (N, H, W) probabilities (= sigmoid of the official logits), gt (N, H, W) binary.
    """
    p, g = _check_binary(probs, gt)
    if p.shape[0] == 0:
        raise ValueError("avsbench_batch_miou needs at least one frame")
    return float(_frame_iou_avsbench(p, g).mean())


def avsbench_batch_fscore(probs: ArrayLike, gt: ArrayLike) -> float:
    """Official ``Eval_Fmeasure`` of one batch (beta^2 = 0.3, 255 thresholds).

    Frames with empty GT are skipped; for each remaining frame, F_k with Y = probs >= t_k; the F curves are
    averaged over those frames and the maximum over k is returned (0 if no frame has foreground).

    Args: probs (N, H, W) probabilities (= sigmoid of the official logits), gt (N, H, W) binary.
    """
    p, g = _check_binary(probs, gt)
    curves, counted = _frame_f_curves(p, g)
    if not bool(counted.any()):
        return 0.0
    return float(curves[counted].mean(0).max())


def per_frame_max_fscore(probs: ArrayLike, gt: ArrayLike) -> float:
    """WS-AVS released test script (batches of one frame): mean over all N frames of each frame's
    best-threshold F, a frame with empty GT counting 0 as the official ``Eval_Fmeasure`` returns for it.
    (N, H, W) -> float; the same as ``avsbench`` with ``batch_frames=1``."""
    p, g = _check_binary(probs, gt)
    if p.shape[0] == 0:
        raise ValueError("per_frame_max_fscore needs at least one frame")
    curves, counted = _frame_f_curves(p, g)
    best = torch.where(counted, curves.max(1).values, torch.zeros_like(curves[:, 0]))
    return float(best.mean())


def frame_iou_clean(probs: ArrayLike, gt: ArrayLike) -> np.ndarray:
    """Clean per-frame IoU at threshold 0.5: (N, H, W) -> (N,) float64.

    B = probs > 0.5; IoU = #(B & G) / #(B | G); a frame with empty GT scores 1 if B is empty, else 0.
    """
    p, g = _check_binary(probs, gt)
    return _frame_iou_clean(p, g).numpy()


# --- dataset-level accumulator ----------------------------------------------------------------------
class BinaryAccumulator:
    """Dataset-level binary metrics; ``update`` with any split of the frames, then ``compute``.

    Args:
        protocol: ``clean`` (default), ``avsbench`` or ``per-frame-max`` (module docstring).
        batch_frames: ``avsbench`` only: frames are grouped into consecutive batches of this many frames
            in update order, however ``update`` was called (the last, partial batch is included).

    Memory is bounded: ``clean`` keeps 255-long count vectors, ``avsbench`` the statistics of at most
    ``batch_frames`` pending frames; no masks are stored.
    """

    def __init__(self, protocol: str = "clean", batch_frames: int = 20) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown binary protocol {protocol!r}; expected one of {PROTOCOLS}")
        if batch_frames < 1:
            raise ValueError(f"batch_frames must be >= 1, got {batch_frames}")
        self.protocol = protocol
        self.batch_frames = int(batch_frames)
        self.frames = 0
        self.fscore_frames = 0  # frames with non-empty GT
        self._iou_sum = 0.0  # clean: clean IoU; per-frame-max: official mask_iou
        # clean: dataset-level PR counts
        self._tp = torch.zeros(NUM_THRESHOLDS, dtype=torch.int64)
        self._predicted = torch.zeros(NUM_THRESHOLDS, dtype=torch.int64)
        self._positives = 0
        self._tp05 = 0
        self._predicted05 = 0
        # per-frame-max: sum of per-frame best F (empty-GT frames add 0 but count in the mean)
        self._fmax_sum = 0.0
        # avsbench: pending frames of the current batch and sums over finished batches
        self._pending_iou: list[float] = []
        self._pending_curves: list[Tensor] = []  # only frames with non-empty GT
        self._batches = 0
        self._batch_miou_sum = 0.0
        self._batch_f_sum = 0.0

    def update(self, probs: ArrayLike, gt: ArrayLike) -> None:
        """Add frames: probs (N, H, W) in [0, 1], gt (N, H, W) binary (non-zero = foreground)."""
        p, g = _check_binary(probs, gt)
        for start in range(0, p.shape[0], _CHUNK):
            self._update_chunk(p[start : start + _CHUNK], g[start : start + _CHUNK])

    def _update_chunk(self, p: Tensor, g: Tensor) -> None:
        n = p.shape[0]
        self.frames += n
        if self.protocol == "clean":
            self._iou_sum += float(_frame_iou_clean(p, g).sum())
            tp, predicted, positives = _pr_counts(p, g)
            counted = positives > 0
            self.fscore_frames += int(counted.sum())
            self._tp += tp[counted].sum(0)
            self._predicted += predicted[counted].sum(0)
            self._positives += int(positives.sum())
            b = p[counted] > 0.5  # same mask as the IoU
            self._tp05 += int((b & g[counted]).sum())
            self._predicted05 += int(b.sum())
            return
        ious = _frame_iou_avsbench(p, g)
        curves, counted = _frame_f_curves(p, g)
        self.fscore_frames += int(counted.sum())
        if self.protocol == "per-frame-max":
            self._iou_sum += float(ious.sum())
            self._fmax_sum += float(curves[counted].max(1).values.sum()) if bool(counted.any()) else 0.0
            return
        for i in range(n):  # avsbench: cut a batch every batch_frames frames
            self._pending_iou.append(float(ious[i]))
            if bool(counted[i]):
                self._pending_curves.append(curves[i])
            if len(self._pending_iou) == self.batch_frames:
                self._flush()

    def _batch_values(self) -> tuple[float, float]:
        miou = sum(self._pending_iou) / len(self._pending_iou)
        f = float(torch.stack(self._pending_curves).mean(0).max()) if self._pending_curves else 0.0
        return miou, f

    def _flush(self) -> None:
        miou, f = self._batch_values()
        self._batches += 1
        self._batch_miou_sum += miou
        self._batch_f_sum += f
        self._pending_iou, self._pending_curves = [], []

    def compute(self) -> dict:
        """-> {"protocol", "frames", "miou", "fscore", "fscore_frames", ...}; may be called repeatedly.

        Extra keys: ``clean``: "fscore_at_0.5" (F of the mask probs > 0.5, the one the IoU uses, from the
        dataset-level counts) and "fscore_threshold" (the threshold t_k maximising F); ``avsbench``:
        "batches", "batch_frames".
        """
        if self.frames == 0:
            raise ValueError("no frames were accumulated; call update() first")
        out: dict = {"protocol": self.protocol, "frames": self.frames, "fscore_frames": self.fscore_frames}
        if self.protocol == "clean":
            curve = _f_curve(self._tp, self._predicted, torch.tensor(self._positives))
            k = int(curve.argmax())
            f05 = _f_curve(torch.tensor(self._tp05), torch.tensor(self._predicted05),
                           torch.tensor(self._positives))
            out.update(
                miou=self._iou_sum / self.frames,
                fscore=float(curve[k]) if self._positives else 0.0,
                **{"fscore_at_0.5": float(f05) if self._positives else 0.0},
                fscore_threshold=float(THRESHOLDS[k]),
            )
        elif self.protocol == "per-frame-max":
            # one frame per official batch: a silent frame is a batch with F = 0, and F is the mean over
            # all batches, so the denominator is every frame, not only those with foreground
            out.update(miou=self._iou_sum / self.frames, fscore=self._fmax_sum / self.frames)
        else:
            batches, miou_sum, f_sum = self._batches, self._batch_miou_sum, self._batch_f_sum
            if self._pending_iou:  # the last, partial batch; state is left untouched
                miou, f = self._batch_values()
                batches, miou_sum, f_sum = batches + 1, miou_sum + miou, f_sum + f
            out.update(miou=miou_sum / batches, fscore=f_sum / batches, batches=batches,
                       batch_frames=self.batch_frames)
        return out
