"""Metric tests on hand-computed toy arrays (every branch of docs/metrics.md) plus property tests."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from avseg.metrics import (
    BinaryAccumulator,
    LocalizationAccumulator,
    SemanticAccumulator,
    auc_from_cious,
    avsbench_batch_fscore,
    avsbench_batch_miou,
    avsbench_frame_iou,
    ciou,
    frame_iou_clean,
    per_frame_max_fscore,
)
from avseg.metrics.binary import THRESHOLDS

approx = pytest.approx


def F(p: float, r: float) -> float:
    """F_beta with beta^2 = 0.3, for hand computations."""
    return 1.3 * p * r / (0.3 * p + r) if p + r > 0 else 0.0


def arr(x, dtype=np.float32) -> np.ndarray:
    return np.array(x, dtype=dtype)


# Frame A: probs   gt      thresholds t in:   Y              tp pred  p    r    F
#   1.0  0.6      1 0      [0]               all 4          2  4    1/2  1    F(.5,1)  = 0.5652
#   0.3  0.0      1 0      (0, .3]           1.0 .6 .3      2  3    2/3  1    F(2/3,1) = 13/18
#                          (.3, .6]          1.0 .6         1  2    1/2  1/2  0.5
#                          (.6, 1]           1.0            1  1    1    1/2  F(1,.5)  = 0.8125  <- max
# IoU at 0.5: B = {1.0, .6}, G = {1.0, .3}: 1/3.
PA, GA = arr([[1.0, 0.6], [0.3, 0.0]]), arr([[1, 0], [1, 0]], np.int64)
# Frame B: probs 0.2 0.2 / 0.2 0.0, gt 1 1 / 1 0:
#   t = 0: all, tp 3 pred 4: F(.75, 1) = 0.7959;  (0, .2]: tp 3 pred 3: F = 1;  t > .2: empty -> NaN -> 0.
# IoU at 0.5: nothing predicted, GT non-empty: 0.
PB, GB = arr([[0.2, 0.2], [0.2, 0.0]]), arr([[1, 1], [1, 0]], np.int64)
# Frame C: all ones, perfect: IoU 1 (avsbench: 4 / (4 + 1e-7)), F = 1 for every threshold.
PC, GC = np.ones((2, 2), np.float32), np.ones((2, 2), np.int64)


def stack(*frames: np.ndarray) -> np.ndarray:
    return np.stack(frames)


# --- avsbench per-frame / per-batch ---------------------------------------------------------------
def test_avsbench_iou_branches():
    z = np.zeros((2, 2), np.int64)
    probs = stack(
        arr([[0.1, 0.2], [0.3, 0.5]]),  # empty GT, empty prediction (0.5 is not > 0.5): 4/4
        arr([[0.9, 0.2], [0.3, 0.4]]),  # empty GT, one predicted pixel: #(B==0 & G==0) = 3 of 4
        arr([[0.1, 0.2], [0.3, 0.4]]),  # non-empty GT, empty prediction: 0
        PC,  # all ones: 1
        arr([[0.9, 0.8], [0.1, 0.1]]),  # B = {(0,0), (0,1)}, G = {(0,1), (1,1)}: 1/3
    )
    gt = stack(z, z, arr([[1, 0], [0, 0]], np.int64), GC, arr([[0, 1], [0, 1]], np.int64))
    expected = [4 / (4 + 1e-7), 3 / (4 + 1e-7), 0.0, 4 / (4 + 1e-7), 1 / (3 + 1e-7)]
    assert avsbench_frame_iou(probs, gt) == approx(expected, rel=1e-12)
    assert avsbench_batch_miou(probs, gt) == approx(sum(expected) / 5, rel=1e-12)
    # the clean IoU gives an empty GT credit only for an empty prediction, and has no epsilon
    assert frame_iou_clean(probs, gt).tolist() == approx([1.0, 0.0, 0.0, 1.0, 1 / 3])


def test_avsbench_fscore_single_frames():
    assert avsbench_batch_fscore(PA[None], GA[None]) == approx(F(1, 0.5))  # 0.8125, at t > 0.6
    assert avsbench_batch_fscore(PB[None], GB[None]) == approx(1.0)  # at 0 < t <= 0.2
    assert avsbench_batch_fscore(PC[None], GC[None]) == approx(1.0)
    # empty prediction at every t > 0 and non-empty GT: t = 0 predicts everything: F(1/4, 1); NaN-free
    zeros = np.zeros((1, 2, 2), np.float32)
    assert avsbench_batch_fscore(zeros, arr([[[1, 0], [0, 0]]])) == approx(F(0.25, 1))


def test_avsbench_fscore_threshold_edges():
    # Y = S >= t: a probability of exactly 1 is kept at the last threshold (float32 1 - 1e-10 == 1.0),
    # and 0.5 is kept at t_127 == 0.5.
    assert float(THRESHOLDS[-1]) == 1.0 and float(THRESHOLDS[127]) == 0.5 and float(THRESHOLDS[0]) == 0.0
    # 1x2 frame, probs (1.0, 0.999), gt (1, 0): t <= 253/254 keeps both: F(.5, 1); t = 1 keeps one: 1
    assert avsbench_batch_fscore(arr([[[1.0, 0.999]]]), arr([[[1, 0]]])) == approx(1.0)
    # probs (0.5, 0.5 - 1e-3), gt (1, 0): t_127 = 0.5 keeps only the first: F = 1
    assert avsbench_batch_fscore(arr([[[0.5, 0.499]]]), arr([[[1, 0]]])) == approx(1.0)
    # but the IoU threshold is strict: 0.5 is background -> IoU 0
    assert avsbench_batch_miou(arr([[[0.5, 0.499]]]), arr([[[1, 0]]])) == 0.0


def test_avsbench_fscore_skips_empty_gt_and_averages_curves():
    z = np.zeros((2, 2), np.int64)
    # an empty-GT frame is skipped, whatever it predicts
    assert avsbench_batch_fscore(stack(PA, PC), stack(GA, z)) == approx(F(1, 0.5))
    # only empty GT frames: 0 (not NaN)
    assert avsbench_batch_fscore(stack(PC, PA), stack(z, z)) == 0.0
    # A and B together: mean curve per threshold interval
    #   [0]: (F(.5,1) + F(.75,1))/2; (0,.2]: (13/18 + 1)/2 = 31/36 <- max; (.2,.3]: 13/36; (.3,.6]: 1/4; (.6,1]: 0.40625
    assert avsbench_batch_fscore(stack(PA, PB), stack(GA, GB)) == approx(31 / 36)
    # the per-frame maximum is more lenient: (0.8125 + 1) / 2
    assert per_frame_max_fscore(stack(PA, PB), stack(GA, GB)) == approx((0.8125 + 1) / 2)
    # ... but a silent frame (empty GT) is a one-frame official batch whose F is 0, and it counts in the
    # mean: (0.8125 + 1 + 0) / 3, whatever the silent frame predicts
    assert per_frame_max_fscore(stack(PA, PB, PC), stack(GA, GB, z)) == approx((0.8125 + 1 + 0) / 3)
    assert per_frame_max_fscore(stack(PA, PB, np.zeros((2, 2), np.float32)), stack(GA, GB, z)) == approx(1.8125 / 3)
    assert per_frame_max_fscore(stack(PA), stack(z)) == 0.0


def test_torch_and_numpy_inputs_agree():
    probs, gt = stack(PA, PB), stack(GA, GB)
    assert avsbench_batch_fscore(torch.from_numpy(probs), torch.from_numpy(gt).bool()) == approx(31 / 36)
    assert avsbench_batch_miou(torch.from_numpy(probs).double(), gt) == approx(avsbench_batch_miou(probs, gt))


def test_logits_and_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="sigmoid"):
        avsbench_batch_miou(arr([[[2.0, -1.0]]]), arr([[[1, 0]]]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        BinaryAccumulator("clean").update(arr([[[np.nan, 0.0]]]), arr([[[1, 0]]]))
    with pytest.raises(ValueError, match="shape"):
        avsbench_batch_fscore(arr([[1.0, 0.0]]), arr([[1, 0]]))
    with pytest.raises(ValueError, match="differ"):
        frame_iou_clean(np.zeros((1, 2, 2), np.float32), np.zeros((1, 2, 3)))
    with pytest.raises(ValueError, match="protocol"):
        BinaryAccumulator("official")
    with pytest.raises(ValueError, match="no frames"):
        BinaryAccumulator("clean").compute()


# --- accumulators -----------------------------------------------------------------------------------
def test_clean_accumulator_hand_computed():
    # Dataset-level PR counts over A and B (both non-empty GT, 5 positives in all):
    #   [0]: tp 5 pred 8: F(5/8, 1); (0,.2]: tp 5 pred 6: F(5/6, 1) = 13/15 <- max;
    #   (.2,.3]: tp 2 pred 3: F(2/3, 2/5); (.3,.6]: tp 1 pred 2: F(1/2, 1/5); (.6,1]: tp 1 pred 1: F(1, 1/5)
    # F at 0.5 (B = S > 0.5): tp 1 pred 2: F(1/2, 1/5) = 13/35. mIoU: (1/3 + 0) / 2.
    acc = BinaryAccumulator("clean")
    acc.update(stack(PA, PB), stack(GA, GB))
    out = acc.compute()
    assert out["protocol"] == "clean" and out["frames"] == 2 and out["fscore_frames"] == 2
    assert out["miou"] == approx(1 / 6)
    assert out["fscore"] == approx(13 / 15) == approx(F(5 / 6, 1))
    assert out["fscore_at_0.5"] == approx(13 / 35) == approx(F(0.5, 0.2))
    assert out["fscore_threshold"] == approx(1 / 254, rel=1e-6)  # the first threshold of (0, 0.2]


def test_clean_accumulator_empty_gt_frames():
    z = np.zeros((2, 2), np.int64)
    acc = BinaryAccumulator("clean")
    # empty GT + empty prediction: IoU 1; empty GT + prediction: IoU 0; neither enters the F counts
    acc.update(stack(np.full((2, 2), 0.1, np.float32), PC), stack(z, z))
    out = acc.compute()
    assert out["miou"] == approx(0.5)
    assert out["fscore"] == 0.0 and out["fscore_at_0.5"] == 0.0 and out["fscore_frames"] == 0
    acc.update(PA[None], GA[None])  # adding A: F only from A's counts (the false positives of PC are ignored)
    out = acc.compute()
    assert out["miou"] == approx((1 + 0 + 1 / 3) / 3)
    assert out["fscore"] == approx(0.8125)


def test_avsbench_accumulator_batches():
    frames, gts = stack(PA, PB, PC), stack(GA, GB, GC)  # official per-frame IoUs ~ 1/3, 0, 1
    ious = avsbench_frame_iou(frames, gts)
    acc2 = BinaryAccumulator("avsbench", batch_frames=2)
    acc2.update(frames, gts)
    out2 = acc2.compute()
    # batches [A, B] and [C] (the last partial batch counts): mIoU ((1/3 + 0)/2 + 1)/2 = 7/12
    assert out2["batches"] == 2 and out2["batch_frames"] == 2 and out2["frames"] == 3
    assert out2["miou"] == approx(((ious[0] + ious[1]) / 2 + ious[2]) / 2) == approx(7 / 12, rel=1e-6)
    assert out2["fscore"] == approx((31 / 36 + 1) / 2)
    acc20 = BinaryAccumulator("avsbench", batch_frames=20)
    acc20.update(frames, gts)
    out20 = acc20.compute()
    assert out20["batches"] == 1
    assert out20["miou"] == approx(4 / 9, rel=1e-6)
    # one batch of three: mean curve on (0, .2]: (13/18 + 1 + 1)/3 = 49/54; on (.6, 1]: (.8125 + 0 + 1)/3
    assert out20["fscore"] == approx(49 / 54)
    acc1 = BinaryAccumulator("avsbench", batch_frames=1)
    acc1.update(frames, gts)
    assert acc1.compute()["fscore"] == approx((0.8125 + 1 + 1) / 3)
    # compute() leaves the pending batch alone: more frames can follow
    acc2.update(PC[None], GC[None])  # completes batch [C, C]
    assert acc2.compute()["batches"] == 2
    assert acc2.compute()["miou"] == approx(((ious[0] + ious[1]) / 2 + ious[2]) / 2)


def test_avsbench_batch_with_only_empty_gt_counts_as_zero_f():
    z = np.zeros((2, 2), np.int64)
    acc = BinaryAccumulator("avsbench", batch_frames=1)
    acc.update(stack(PC, PC), stack(GC, z))  # batch 1: F 1; batch 2: no foreground frame -> 0
    out = acc.compute()
    assert out["fscore"] == approx(0.5) and out["fscore_frames"] == 1
    assert out["miou"] == approx((4 / (4 + 1e-7) + 0.0) / 2)  # empty GT, full prediction: 0 of 4 agree


def test_per_frame_max_accumulator():
    z = np.zeros((2, 2), np.int64)
    acc = BinaryAccumulator("per-frame-max", batch_frames=7)  # batch_frames is irrelevant here
    acc.update(stack(PA, PB), stack(GA, GB))
    acc.update(np.full((1, 2, 2), 0.1, np.float32), z[None])
    out = acc.compute()
    # mIoU: official per-frame IoUs 1/3, 0 and 4/4 (empty GT, empty prediction)
    assert out["miou"] == approx((1 / 3 + 0 + 1) / 3, rel=1e-6)
    # F: best-threshold F of A (0.8125, t > 0.6) and B (1, 0 < t <= 0.2); the silent frame is an official
    # batch of one frame without foreground, F = 0, and the mean runs over all three batches
    assert out["fscore"] == approx((0.8125 + 1 + 0) / 3) == approx(0.6041666, rel=1e-6)
    assert out["frames"] == 3 and out["fscore_frames"] == 2  # fscore_frames: frames with foreground


def test_per_frame_max_is_avsbench_with_one_frame_batches():
    """per-frame-max is the official evaluation run with batch size 1, silent frames included."""
    z = np.zeros((2, 2), np.int64)
    probs = stack(PA, np.full((2, 2), 0.9, np.float32), PB, np.zeros((2, 2), np.float32), PC)
    gts = stack(GA, z, GB, z, GC)
    pfm, one = BinaryAccumulator("per-frame-max"), BinaryAccumulator("avsbench", batch_frames=1)
    pfm.update(probs, gts)
    one.update(probs, gts)
    a, b = pfm.compute(), one.compute()
    assert a["fscore"] == approx(b["fscore"]) == approx((0.8125 + 0 + 1 + 0 + 1) / 5)
    assert a["miou"] == approx(b["miou"])
    assert per_frame_max_fscore(probs, gts) == approx(a["fscore"])


def _run(protocol: str, chunks: list[int], batch_frames: int, probs: np.ndarray, gt: np.ndarray) -> dict:
    acc = BinaryAccumulator(protocol, batch_frames=batch_frames)
    start = 0
    for n in chunks:
        acc.update(probs[start : start + n], gt[start : start + n])
        start += n
    assert start == len(probs)
    return acc.compute()


def test_clean_is_batch_independent_avsbench_is_not():
    z = np.zeros((2, 2), np.int64)
    probs = stack(PA, PB, PC, PC, PA, np.full((2, 2), 0.1, np.float32), PB)
    gt = stack(GA, GB, GC, z, GB, z, GA)
    keys = ("miou", "fscore", "fscore_at_0.5", "frames")
    ref = _run("clean", [7], 20, probs, gt)
    for chunks, bf in (([1] * 7, 1), ([3, 4], 2), ([2, 2, 3], 5), ([7], 3)):
        out = _run("clean", chunks, bf, probs, gt)
        assert {k: out[k] for k in keys} == approx({k: ref[k] for k in keys})
    # avsbench: the update() split does not matter, batch_frames does
    a2 = _run("avsbench", [7], 2, probs, gt)
    a2_split = _run("avsbench", [1, 4, 2], 2, probs, gt)
    assert (a2["miou"], a2["fscore"]) == approx((a2_split["miou"], a2_split["fscore"]))
    a5 = _run("avsbench", [7], 5, probs, gt)
    assert a2["miou"] != approx(a5["miou"]) and a2["fscore"] != approx(a5["fscore"])


# --- semantic (AVSS) --------------------------------------------------------------------------------
# C = 3. Frame 1: gt 0 1 / 1 2, pred 0 1 / 2 2
#   c0: I 1 P 1 G 1 U 1 -> IoU 1,   F(1, 1) = 1
#   c1: I 1 P 1 G 2 U 2 -> IoU 1/2, F(1, 1/2) = 0.8125
#   c2: I 1 P 2 G 1 U 2 -> IoU 1/2, F(1/2, 1) = 13/23
# Frame 2: gt all 0, pred 0 0 / 0 1
#   c0: I 3 P 3 G 4 U 4 -> IoU 3/4, F(1, 3/4) = 13/14
#   c1: I 0 P 1 G 0 U 1 -> IoU 0 (counted), F NaN -> 0
#   c2: U 0 -> not counted, F NaN -> 0
SEM_GT = np.array([[[0, 1], [1, 2]], [[0, 0], [0, 0]]], np.int64)
SEM_PRED = np.array([[[0, 1], [2, 2]], [[0, 0], [0, 1]]], np.int64)


def test_semantic_avsbench_hand_computed():
    acc = SemanticAccumulator(3, "avsbench")
    acc.update(SEM_PRED, SEM_GT)
    out = acc.compute()
    miou_pc = [(1 + 0.75) / 2, (0.5 + 0) / 2, 0.5 / 1]
    f_pc = [(1 + 13 / 14) / 2, 0.8125 / 2, (13 / 23) / 1]
    assert out["protocol"] == "avsbench" and out["frames"] == 2
    assert out["miou"] == approx(np.mean(miou_pc)) == approx(out["miou_all"])
    assert out["fscore"] == approx(np.mean(f_pc))
    assert out["miou_no_bg"] == approx(np.mean(miou_pc[1:]))
    assert out["fscore_no_bg"] == approx(np.mean(f_pc[1:]))
    assert out["miou_drop_last"] == approx(np.mean(miou_pc[:-1]))  # the official noBg bug
    assert out["classes_counted"] == 3
    assert F(1, 0.75) == approx(13 / 14) and F(0.5, 1) == approx(13 / 23)


def test_semantic_clean_hand_computed():
    # confusion[gt, pred]: [0,0] 4, [0,1] 1, [1,1] 1, [1,2] 1, [2,2] 1
    #   c0: TP 4 FP 0 FN 1 -> IoU 4/5, F(1, 4/5);  c1: TP 1 FP 1 FN 1 -> IoU 1/3, F(1/2, 1/2) = 1/2
    #   c2: TP 1 FP 1 FN 0 -> IoU 1/2, F(1/2, 1) = 13/23
    acc = SemanticAccumulator(3, "clean")
    acc.update(SEM_PRED[:1], SEM_GT[:1])
    acc.update(SEM_PRED[1:], SEM_GT[1:])
    out = acc.compute()
    assert out["miou"] == approx((1 / 3 + 1 / 2) / 2)
    assert out["miou_all"] == approx((4 / 5 + 1 / 3 + 1 / 2) / 3)
    assert out["fscore"] == approx((0.5 + 13 / 23) / 2)
    assert out["fscore_all"] == approx((F(1, 0.8) + 0.5 + 13 / 23) / 3)
    assert out["per_class_iou"] == approx({0: 0.8, 1: 1 / 3, 2: 0.5})
    assert out["classes_present"] == 3


def test_semantic_padded_frames():
    # a padded frame: gt all background, the model predicted class 2 on one pixel of the black frame
    pad_pred, pad_gt = np.array([[[0, 0], [0, 2]]]), np.zeros((1, 2, 2), np.int64)
    pred, gt = np.concatenate([SEM_PRED, pad_pred]), np.concatenate([SEM_GT, pad_gt])
    valid = np.array([True, True, False])
    official = SemanticAccumulator(3, "avsbench")
    official.update(pred, gt, valid)  # valid is ignored: the official code counts padding
    out = official.compute()
    # padding: c0 I 3 U 4 -> 3/4, F(1, 3/4); c2 I 0 U 1 -> 0 counted; c1 untouched
    assert out["frames"] == 3
    miou_pc = [(1 + 0.75 + 0.75) / 3, 0.25, 0.5 / 2]
    assert out["miou"] == approx(np.mean(miou_pc))
    clean = SemanticAccumulator(3, "clean")
    clean.update(pred, gt, torch.tensor(valid))
    ref = SemanticAccumulator(3, "clean")
    ref.update(SEM_PRED, SEM_GT)
    assert clean.compute() == ref.compute() and clean.compute()["frames"] == 2


def test_semantic_background_only_and_scores():
    # all background everywhere: no foreground class present -> foreground means 0, background IoU 1
    acc = SemanticAccumulator(4, "clean")
    acc.update(np.zeros((2, 3, 3), np.int64), np.zeros((2, 3, 3), np.int64))
    out = acc.compute()
    assert out["miou"] == 0.0 and out["miou_all"] == 1.0 and out["fscore_all"] == approx(1.0)
    assert out["classes_present"] == 1
    off = SemanticAccumulator(4, "avsbench")
    off.update(np.zeros((2, 3, 3), np.int64), np.zeros((2, 3, 3), np.int64))
    out = off.compute()  # only class 0 counted: its IoU 1 averaged with three zeros
    assert out["miou"] == approx(0.25) and out["miou_no_bg"] == 0.0 and out["fscore"] == approx(0.25)
    # (N, C, H, W) scores are reduced with argmax
    scores = torch.nn.functional.one_hot(torch.from_numpy(SEM_PRED), 3).permute(0, 3, 1, 2).float()
    a, b = SemanticAccumulator(3, "avsbench"), SemanticAccumulator(3, "avsbench")
    a.update(scores, SEM_GT)
    b.update(SEM_PRED, SEM_GT)
    assert a.compute() == b.compute()


def test_semantic_rejects_bad_input():
    acc = SemanticAccumulator(3, "clean")
    with pytest.raises(ValueError, match="class ids"):
        acc.update(np.full((1, 2, 2), 3), np.zeros((1, 2, 2), np.int64))
    with pytest.raises(ValueError, match="integer"):
        acc.update(np.zeros((1, 2, 2), np.float32), np.zeros((1, 2, 2), np.int64))
    with pytest.raises(ValueError, match="valid"):
        acc.update(np.zeros((2, 2, 2), np.int64), np.zeros((2, 2, 2), np.int64), np.array([True]))
    with pytest.raises(ValueError, match="protocol"):
        SemanticAccumulator(3, "official")


# --- localisation -----------------------------------------------------------------------------------
HEAT = np.arange(16, dtype=np.float64).reshape(4, 4)  # median 7.5 -> pred = the bottom two rows


def test_ciou_hand_computed():
    bottom_left = np.zeros((4, 4)); bottom_left[2:, :2] = 1  # noqa: E702
    bottom = np.zeros((4, 4)); bottom[2:] = 1  # noqa: E702
    assert ciou(HEAT, bottom_left) == approx(4 / (4 + 4))  # inter 4; sum(gt) 4 + pred outside gt 4
    assert ciou(HEAT, bottom) == 1.0
    assert ciou(HEAT, np.zeros((4, 4))) == 0.0  # empty gt: 0 / (0 + 8)
    assert ciou(np.ones((4, 4)), np.zeros((4, 4))) == 0.0  # constant map, empty gt: 0/0 -> 0
    assert ciou(np.ones((4, 4)), bottom) == 0.0  # constant map: nothing above the median
    assert ciou(torch.from_numpy(HEAT), bottom, threshold=11.5) == approx(4 / 8)  # explicit threshold


def test_localization_accumulator_auc():
    # cIoUs 1, 1/2, 0: fraction >= t is 1 at t = 0, 2/3 on (0, .5], 1/3 on (.5, 1]
    # trapezoid: .05*(1 + 2/3)/2 + 9*.05*2/3 + .05*(2/3 + 1/3)/2 + 9*.05/3
    bottom_left = np.zeros((4, 4)); bottom_left[2:, :2] = 1  # noqa: E702
    bottom = np.zeros((4, 4)); bottom[2:] = 1  # noqa: E702
    acc = LocalizationAccumulator()
    acc.update(np.stack([HEAT, HEAT]), np.stack([bottom, bottom_left]))
    acc.update(HEAT, np.zeros((4, 4)))
    out = acc.compute()
    expected_auc = 0.05 * (1 + 2 / 3) / 2 + 9 * 0.05 * 2 / 3 + 0.05 * (2 / 3 + 1 / 3) / 2 + 9 * 0.05 / 3
    assert out["auc"] == approx(expected_auc) and out["auc"] == approx(0.5166666667)
    assert out["ciou_ap50"] == approx(2 / 3) and out["mean_ciou"] == approx(0.5) and out["samples"] == 3
    assert auc_from_cious([1.0] * 5) == approx(1.0) and auc_from_cious([0.0]) == approx(0.05 / 2)
    with pytest.raises(ValueError):
        LocalizationAccumulator().compute()


# --- properties -------------------------------------------------------------------------------------
@st.composite
def binary_frames(draw):
    n, h, w = draw(st.integers(1, 6)), draw(st.integers(1, 5)), draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    probs = rng.random((n, h, w), dtype=np.float32)
    # sprinkle exact 0 / 0.5 / 1 values to hit threshold edges
    probs[rng.random((n, h, w)) < 0.2] = draw(st.sampled_from([0.0, 0.5, 1.0]))
    gt = (rng.random((n, h, w)) < draw(st.sampled_from([0.0, 0.3, 0.7, 1.0]))).astype(np.int64)
    return probs, gt


@settings(max_examples=60, deadline=None)
@given(binary_frames(), st.integers(1, 4))
def test_binary_results_in_unit_interval(frames, batch_frames):
    probs, gt = frames
    for fn in (avsbench_batch_miou, avsbench_batch_fscore, per_frame_max_fscore):
        v = fn(probs, gt)
        assert math.isfinite(v) and 0.0 <= v <= 1.0
    for values in (frame_iou_clean(probs, gt), avsbench_frame_iou(probs, gt)):
        assert np.isfinite(values).all() and (values >= 0).all() and (values <= 1).all()
    for protocol in ("clean", "avsbench", "per-frame-max"):
        out = _run(protocol, [len(probs)], batch_frames, probs, gt)
        for key in ("miou", "fscore"):
            assert math.isfinite(out[key]) and 0.0 <= out[key] <= 1.0


@settings(max_examples=40, deadline=None)
@given(binary_frames(), st.lists(st.integers(1, 3), min_size=1, max_size=6), st.integers(1, 4))
def test_clean_invariant_to_update_split_property(frames, sizes, batch_frames):
    probs, gt = frames
    chunks, left = [], len(probs)
    for s in sizes:
        if left == 0:
            break
        chunks.append(min(s, left))
        left -= chunks[-1]
    if left:
        chunks.append(left)
    ref, out = _run("clean", [len(probs)], 20, probs, gt), _run("clean", chunks, batch_frames, probs, gt)
    for key in ("miou", "fscore", "fscore_at_0.5"):
        assert out[key] == approx(ref[key], abs=1e-12)
    # avsbench depends on batch_frames only, not on the update() split
    a_ref = _run("avsbench", [len(probs)], batch_frames, probs, gt)
    a_out = _run("avsbench", chunks, batch_frames, probs, gt)
    assert (a_out["miou"], a_out["fscore"]) == approx((a_ref["miou"], a_ref["fscore"]), abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 5), st.integers(1, 4), st.integers(1, 4), st.integers(1, 4), st.integers(0, 2**32 - 1))
def test_semantic_results_in_unit_interval(c, n, h, w, seed):
    rng = np.random.default_rng(seed)
    pred, gt = rng.integers(0, c, (n, h, w)), rng.integers(0, c, (n, h, w))
    valid = rng.random(n) < 0.7
    valid[0] = True
    for protocol in ("clean", "avsbench"):
        acc = SemanticAccumulator(c, protocol)
        acc.update(pred, gt, valid)
        out = acc.compute()
        for key in ("miou", "fscore", "miou_all", "fscore_all"):
            assert math.isfinite(out[key]) and 0.0 <= out[key] <= 1.0 + 1e-12
    # predictions equal to ground truth: every present class scores 1
    acc = SemanticAccumulator(c, "clean")
    acc.update(gt, gt)
    assert set(acc.compute()["per_class_iou"].values()) == {1.0}


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(1, 6), st.integers(0, 2**32 - 1))
def test_localization_in_unit_interval(h, w, seed):
    rng = np.random.default_rng(seed)
    heat, gt = rng.random((3, h, w)), rng.random((3, h, w)) < 0.4
    acc = LocalizationAccumulator()
    acc.update(heat, gt)
    out = acc.compute()
    for key in ("ciou_ap50", "auc", "mean_ciou"):
        assert math.isfinite(out[key]) and 0.0 <= out[key] <= 1.0


def _naive_avsbench(probs: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """docs/metrics.md pseudo-code, one threshold at a time (float32 thresholds), for one batch."""
    s, g = torch.from_numpy(probs), torch.from_numpy(gt).float()
    n, h, w = s.shape
    ious = []
    for i in range(n):
        b = (s[i] > 0.5).float()
        if g[i].sum() == 0:
            ious.append(float(((b == 0) & (g[i] == 0)).sum()) / (h * w + 1e-7))
        else:
            ious.append(float((b * g[i]).sum()) / (float(torch.maximum(b, g[i]).sum()) + 1e-7))
    acc, counted = np.zeros(255), 0
    for i in range(n):
        if g[i].sum() == 0:
            continue
        for k, t in enumerate(torch.linspace(0, 1 - 1e-10, 255)):
            y = (s[i] >= t).float()
            tp = float((y * g[i]).sum())
            prec, rec = tp / (float(y.sum()) + 1e-20), tp / (float(g[i].sum()) + 1e-20)
            acc[k] += F(prec, rec)
        counted += 1
    return float(np.mean(ious)), float((acc / counted).max()) if counted else 0.0


@settings(max_examples=25, deadline=None)
@given(binary_frames())
def test_avsbench_matches_naive_spec(frames):
    probs, gt = frames
    miou, f = _naive_avsbench(probs, gt)
    assert avsbench_batch_miou(probs, gt) == approx(miou, rel=1e-9, abs=1e-12)
    assert avsbench_batch_fscore(probs, gt) == approx(f, rel=1e-9, abs=1e-12)
