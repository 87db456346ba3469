"""Does the model listen? Metrics of masks predicted under replaced soundtracks (docs/metrics.md, "Listening").

Every function takes *binary probabilities* ``probs`` in [0, 1] (a semantic model's p = 1 - P(background),
see :func:`foreground_probs`); nothing applies a sigmoid. Shapes: ``probs`` (N, H, W), ``gt`` / ``target``
(N, H, W) with any non-zero value meaning foreground.

Conditions (what the model hears; :data:`CONDITIONS`): ``own`` (the clip's soundtrack), ``silence``
(zeros), ``noise`` (white noise at the clip's RMS), ``other`` (another video's soundtrack, of a different
category), ``swap`` (synthetic data: only the sound of a visible *silent* object).

- FPR of a frame = fraction of its pixels with p > 0.5 (AVSBench-Robust's evaluation code); FPR of a
  condition = mean over the frames evaluated under it.
- mIoU (own / other) = the ``clean`` protocol of :mod:`avseg.metrics.binary` against the clip's own ground
  truth: IoU at 0.5 per frame, a frame with empty ground truth scores 1 if the prediction is empty, else 0.
- audio dependence = 100 * (mIoU(own) - mIoU(other)), in points; a deaf model scores exactly 0.
- G-mIoU = harmonic mean of mIoU(own) and 1 - mean(FPR(silence), FPR(noise)).
- swap IoU = mean over swap frames of the IoU at 0.5 of the mask predicted under the swapped sound against
  the swap target's visible pixels.
- deaf ceiling = mIoU (clean) of marking every visible object exactly, against the sounding ground truth.
"""

from __future__ import annotations

import numpy as np

from avseg.metrics.binary import ArrayLike, BinaryAccumulator, frame_iou_clean, to_tensor

CONDITIONS: tuple[str, ...] = ("own", "silence", "noise", "other", "swap")

# Keys of ListeningAccumulator.compute() that the tables show, in table order; all but
# "audio_dependence" (points) are fractions in [0, 1].
SUMMARY_KEYS: tuple[str, ...] = (
    "miou_own", "fscore_own", "miou_other", "audio_dependence", "fpr_silence", "fpr_noise", "fpr_other",
    "g_miou", "swap_iou", "deaf_ceiling",
)  # fmt: skip


def foreground_probs(output: ArrayLike) -> np.ndarray:
    """A model output -> binary foreground probabilities.

    (N, H, W) binary probabilities pass through; (N, C, H, W) semantic class probabilities (class 0 =
    background) give p = 1 - P(background), clipped to [0, 1]. A single semantic frame (C, H, W) must be
    given as ``output[None]``: a 3-d array is always read as N binary frames.
    """
    x = to_tensor(output, "output").float()
    if x.ndim == 4:
        return (1.0 - x[:, 0]).clamp_(0.0, 1.0).numpy()
    if x.ndim in (2, 3):
        return x.numpy()
    raise ValueError(f"expected (N, H, W) probabilities or (N, C, H, W) class probabilities, got {tuple(x.shape)}")


def frame_fpr(probs: ArrayLike) -> np.ndarray:
    """Fraction of pixels with p > 0.5 in each frame: (N, H, W) -> (N,) float64."""
    p = to_tensor(probs, "probs").float()
    if p.ndim != 3:
        raise ValueError(f"expected probs of shape (N, H, W), got {tuple(p.shape)}")
    if p.numel() and not (0.0 <= float(p.min()) and float(p.max()) <= 1.0):  # also catches NaN
        raise ValueError(f"probs must be probabilities in [0, 1]; got min {float(p.min())} and max {float(p.max())}")
    return (p > 0.5).flatten(1).double().mean(1).numpy()


def frame_iou(probs: ArrayLike, target: ArrayLike) -> np.ndarray:
    """Clean IoU at 0.5 of each frame (empty target: 1 if the prediction is empty, else 0): (N,) float64."""
    return frame_iou_clean(probs, target)


def audio_dependence(miou_own: float, miou_other: float) -> float:
    """mIoU(own) - mIoU(other) in points (mIoUs given as fractions)."""
    return 100.0 * (float(miou_own) - float(miou_other))


def g_miou(miou_own: float, fpr_silence: float, fpr_noise: float) -> float:
    """Harmonic mean of mIoU(own) and 1 - mean(FPR(silence), FPR(noise)); 0 when both are 0."""
    a = float(miou_own)
    b = 1.0 - 0.5 * (float(fpr_silence) + float(fpr_noise))
    return 2.0 * a * b / (a + b) if a + b > 0 else 0.0


class ListeningAccumulator:
    """Dataset-level listening metrics; ``update`` per condition with any split of the frames, then ``compute``.

    Frames without ground truth still count for FPR (``gt=None``); mIoU own / other use only frames with
    ground truth. ``swap`` frames need their ``target`` (the swap object's visible pixels). ``deaf`` adds
    frames to the deaf ceiling: ``update_deaf(visible, gt)`` with the mask of every visible object.
    """

    def __init__(self) -> None:
        self._miou = {"own": BinaryAccumulator("clean"), "other": BinaryAccumulator("clean")}
        self._fpr_sum = {c: 0.0 for c in CONDITIONS}
        self._frames = {c: 0 for c in CONDITIONS}
        self._swap_iou_sum = 0.0
        self._deaf = BinaryAccumulator("clean")
        self._change_sum = {c: 0.0 for c in CONDITIONS}
        self._change_frames = {c: 0 for c in CONDITIONS}

    def update(self, condition: str, probs: ArrayLike, gt: ArrayLike | None = None, target: ArrayLike | None = None) -> None:
        """Frames predicted under ``condition``: probs (N, H, W) binary probabilities; gt (N, H, W) the
        clip's own ground truth (own / other; None: FPR only); target (N, H, W) the swap object's pixels."""
        if condition not in CONDITIONS:
            raise ValueError(f"unknown listening condition {condition!r}; expected one of {CONDITIONS}")
        fpr = frame_fpr(probs)
        self._fpr_sum[condition] += float(fpr.sum())
        self._frames[condition] += len(fpr)
        if condition == "swap":
            if target is None:
                raise ValueError("swap frames need their target (the swap object's visible pixels)")
            self._swap_iou_sum += float(frame_iou(probs, target).sum())
        elif gt is not None and condition in self._miou:
            self._miou[condition].update(probs, gt)

    def update_change(self, condition: str, probs: ArrayLike, own_probs: ArrayLike) -> None:
        """How far the probabilities moved from those under the own sound: adds the per-frame mean |p - p_own|
        of (N, H, W) frames (a diagnostic finer than any threshold: exactly 0 for a model that ignores audio)."""
        p, q = to_tensor(probs, "probs").double(), to_tensor(own_probs, "own_probs").double()
        if p.shape != q.shape or p.ndim != 3:
            raise ValueError(f"expected two (N, H, W) arrays of one shape, got {tuple(p.shape)} and {tuple(q.shape)}")
        self._change_sum[condition] += float((p - q).abs().flatten(1).mean(1).sum()) if p.numel() else 0.0
        self._change_frames[condition] += p.shape[0]

    def update_deaf(self, visible: ArrayLike, gt: ArrayLike) -> None:
        """Deaf ceiling frames: visible (N, H, W) every visible object, gt (N, H, W) the sounding objects."""
        self._deaf.update(to_tensor(visible, "visible") != 0, gt)

    def compute(self) -> dict:
        """-> flat dict: SUMMARY_KEYS (None where nothing was measured) and frame counts.

        Keys: miou_own, fscore_own, fscore_own_at_0.5, miou_other, audio_dependence (points), fpr_own,
        fpr_silence, fpr_noise, fpr_other, fpr_swap, g_miou, swap_iou, deaf_ceiling, prob_change_<condition>
        (mean |p - p_own| per pixel, for silence / noise / other / swap), frames (per condition),
        gt_frames, swap_frames, deaf_frames.
        """
        out: dict = {}
        own = self._miou["own"].compute() if self._miou["own"].frames else None
        other = self._miou["other"].compute() if self._miou["other"].frames else None
        out["miou_own"] = own["miou"] if own else None
        out["fscore_own"] = own["fscore"] if own else None
        out["fscore_own_at_0.5"] = own["fscore_at_0.5"] if own else None
        out["miou_other"] = other["miou"] if other else None
        out["audio_dependence"] = audio_dependence(own["miou"], other["miou"]) if own and other else None
        for c in CONDITIONS:
            out[f"fpr_{c}"] = self._fpr_sum[c] / self._frames[c] if self._frames[c] else None
        fs, fn = out["fpr_silence"], out["fpr_noise"]
        out["g_miou"] = g_miou(own["miou"], fs, fn) if own and fs is not None and fn is not None else None
        n_swap = self._frames["swap"]
        out["swap_iou"] = self._swap_iou_sum / n_swap if n_swap else None
        out["deaf_ceiling"] = self._deaf.compute()["miou"] if self._deaf.frames else None
        for c in CONDITIONS[1:]:
            n = self._change_frames[c]
            out[f"prob_change_{c}"] = self._change_sum[c] / n if n else None
        out["frames"] = dict(self._frames)
        out["gt_frames"] = self._miou["own"].frames
        out["swap_frames"] = n_swap
        out["deaf_frames"] = self._deaf.frames
        return out


def format_table(rows: dict[str, dict], title: str = "run") -> str:
    """A markdown table of listening summaries {row name: compute() dict}: percent / points, 'n/a' if unmeasured."""

    def cell(key: str, value: float | None) -> str:
        if value is None:
            return "n/a"
        return f"{value:+.1f}" if key == "audio_dependence" else f"{100 * value:.1f}"

    heads = ["mIoU own", "F own", "mIoU other", "audio dep. (pts)", "FPR silence %", "FPR noise %",
             "FPR other %", "G-mIoU", "swap IoU", "deaf ceiling"]  # fmt: skip
    lines = [f"| {title} | " + " | ".join(heads) + " |", "|---" * (len(heads) + 1) + "|"]
    for name, s in rows.items():
        lines.append(f"| {name} | " + " | ".join(cell(k, s.get(k)) for k in SUMMARY_KEYS) + " |")
    return "\n".join(lines)
