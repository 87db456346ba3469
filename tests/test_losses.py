"""Losses checked against hand computations on toy tensors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from avseg.losses import (
    bce_loss,
    border_foreground_fraction,
    c2am_losses,
    ce_loss,
    foreground_background_features,
    info_nce,
    iou_loss,
    m2icl_loss,
    mil_similarity_map,
    supervised_contrastive,
)


def _ce(logits: list[float], target: int) -> float:
    return -logits[target] + math.log(sum(math.exp(x) for x in logits))


# ---------------------------------------------------------------- M2ICL


def test_m2icl_toy_case_by_hand() -> None:
    # two samples, D = 2, 1x1 maps; cos(a_m, v_n): a0.v0 = 1, a0.v1 = 0.6, a1.v0 = 0, a1.v1 = 0.8
    audio = torch.tensor([[3.0, 0.0], [0.0, 2.0]])  # not normalised: the loss normalises
    visual = torch.tensor([[1.0, 0.0], [0.6, 0.8]]).mul(5.0)[:, :, None, None]  # (2, 2, 1, 1)
    tau = 0.5
    s = [[1.0, 0.6], [0.0, 0.8]]  # s[m][n] = sim(a_m, v_n)
    visual_anchors = (_ce([s[0][0] / tau, s[1][0] / tau], 0) + _ce([s[0][1] / tau, s[1][1] / tau], 1)) / 2
    audio_anchors = (_ce([s[0][0] / tau, s[0][1] / tau], 0) + _ce([s[1][0] / tau, s[1][1] / tau], 1)) / 2
    expected = visual_anchors + audio_anchors
    got = m2icl_loss(audio, [visual], tau=tau, scale_by_tau=False, gather=False)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    scaled = m2icl_loss(audio, [visual], tau=tau, scale_by_tau=True)
    assert scaled.item() == pytest.approx(expected * tau, rel=1e-6)
    # stages are summed
    two = m2icl_loss(audio, [visual, visual], tau=tau, scale_by_tau=False)
    assert two.item() == pytest.approx(2 * expected, rel=1e-6)


def test_m2icl_symmetric_in_audio_and_visual() -> None:
    torch.manual_seed(0)
    a, v = torch.randn(4, 8), torch.randn(4, 8)
    forward = m2icl_loss(a, [v[:, :, None, None]], tau=0.1)
    swapped = m2icl_loss(v, [a[:, :, None, None]], tau=0.1)
    assert forward.item() == pytest.approx(swapped.item(), rel=1e-6)


def test_m2icl_max_over_positions_and_matching_pairs() -> None:
    torch.manual_seed(0)
    audio = F.normalize(torch.randn(3, 16), dim=1)
    noise = torch.randn(3, 16, 2, 2)
    matched = noise.clone()
    matched[:, :, 1, 0] = audio * 10  # each visual map holds its own audio at one position
    loss_matched = m2icl_loss(audio, [matched], tau=0.03)
    loss_shuffled = m2icl_loss(audio, [matched[[1, 2, 0]]], tau=0.03)
    assert loss_matched < loss_shuffled
    assert loss_matched.item() < 1e-3  # positives at cosine 1 dominate at tau = 0.03


def test_m2icl_gradients_and_shape_check() -> None:
    audio = torch.randn(2, 4, requires_grad=True)
    visual = torch.randn(2, 4, 3, 3, requires_grad=True)
    m2icl_loss(audio, [visual]).backward()
    assert audio.grad is not None and visual.grad is not None
    with pytest.raises(ValueError, match="stage 0"):
        m2icl_loss(audio, [torch.randn(2, 5, 3, 3)])


def _m2icl_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    data = torch.load(Path(out_dir) / "inputs.pt")
    n = data["audio"].shape[0] // world
    audio = data["audio"][rank * n : (rank + 1) * n].clone().requires_grad_(True)
    visual = data["visual"][rank * n : (rank + 1) * n].clone().requires_grad_(True)
    loss = m2icl_loss(audio, [visual], tau=0.1)
    loss.backward()
    torch.save({"loss": loss.detach(), "ga": audio.grad, "gv": visual.grad}, Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_m2icl_distributed_gather_matches_global_batch(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    if not torch.distributed.is_available():
        pytest.skip("torch.distributed not available")
    torch.manual_seed(0)
    world = 2
    audio, visual = torch.randn(4, 6), torch.randn(4, 6, 2, 2)
    torch.save({"audio": audio, "visual": visual}, tmp_path / "inputs.pt")
    mp.spawn(_m2icl_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]

    a, v = audio.clone().requires_grad_(True), visual.clone().requires_grad_(True)
    full = m2icl_loss(a, [v], tau=0.1)
    full.backward()
    # DDP averages over processes: the mean of the local losses is the global-batch loss ...
    assert torch.stack([r["loss"] for r in results]).mean().item() == pytest.approx(full.item(), rel=1e-5)
    # ... and gradients reach every process's inputs through the gather (summed over ranks' losses)
    grads_a = torch.cat([r["ga"] for r in results]) / world
    grads_v = torch.cat([r["gv"] for r in results]) / world
    torch.testing.assert_close(grads_a, a.grad)
    torch.testing.assert_close(grads_v, v.grad)


def test_mil_similarity_map() -> None:
    audio = torch.tensor([[1.0, 0.0]])
    visual = torch.tensor([[[[2.0, 0.0]], [[0.0, -3.0]]]])  # (1, 2, 1, 2): positions (1,0) and (0,-3)
    sim = mil_similarity_map(audio, visual)
    assert sim.shape == (1, 1, 2)
    torch.testing.assert_close(sim, torch.tensor([[[1.0, 0.0]]]))


# ---------------------------------------------------------------- supervised contrast, InfoNCE


def test_supervised_contrastive_by_hand() -> None:
    features = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    labels = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])  # 0~1 share class 0; 2 has no positive
    tau = 0.5
    sim = features @ features.t()

    def log_prob(i: int, p: int) -> float:
        others = [j for j in range(3) if j != i]
        return sim[i, p].item() / tau - math.log(sum(math.exp(sim[i, j].item() / tau) for j in others))

    expected = (-log_prob(0, 1) - log_prob(1, 0)) / 2  # anchors with positives: 0 and 1
    got = supervised_contrastive(features, labels, tau=tau)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # sample ids add positives across modalities: now 2 ~ 1
    ids = torch.tensor([0, 1, 1])
    expected_ids = (-log_prob(0, 1) - (log_prob(1, 0) + log_prob(1, 2)) / 2 - log_prob(2, 1)) / 3
    got_ids = supervised_contrastive(features, labels, tau=tau, sample_ids=ids)
    assert got_ids.item() == pytest.approx(expected_ids, rel=1e-6)
    # no positives at all: zero with a gradient path
    f = torch.randn(3, 2, requires_grad=True)
    zero = supervised_contrastive(f, torch.eye(3))
    zero.backward()
    assert zero.item() == 0.0 and f.grad is not None


def test_info_nce_by_hand() -> None:
    q = torch.tensor([[1.0, 0.0]])
    pos = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # (1, 2, 2): cos 1 and 0
    neg = torch.tensor([[-1.0, 0.0], [0.6, 0.8]])  # shared: cos -1 and 0.6
    tau = 0.5
    expected = (_ce([1 / tau, -1 / tau, 0.6 / tau], 0) + _ce([0.0, -1 / tau, 0.6 / tau], 0)) / 2
    assert info_nce(q, pos, neg, tau=tau).item() == pytest.approx(expected, rel=1e-6)
    # masks: drop the second positive and the first negative
    masked = info_nce(
        q,
        pos,
        neg[None],
        tau=tau,
        positive_mask=torch.tensor([[True, False]]),
        negative_mask=torch.tensor([[False, True]]),
    )
    assert masked.item() == pytest.approx(_ce([1 / tau, 0.6 / tau], 0), rel=1e-6)


# ---------------------------------------------------------------- C2AM


def _rank_weighted_by_hand(emb: torch.Tensor, alpha: float) -> float:
    e = F.normalize(emb, dim=1).tolist()
    n = len(e)
    total = 0.0
    for i in range(n):
        sims = [min(max(sum(x * y for x, y in zip(e[i], e[j])), 5e-4), 0.9995) for j in range(n)]
        order = sorted(range(n), key=lambda j: -sims[j])  # descending; python's sort is stable
        for position, j in enumerate(order):
            total += math.exp(-alpha * (position - 1)) * -math.log(sims[j])
    return total / (n * n)


def test_c2am_losses_by_hand() -> None:
    torch.manual_seed(0)
    features = torch.rand(4, 3, 2, 2)  # non-negative like post-ReLU features
    fg_map = torch.rand(4, 1, 2, 2)
    p, x = fg_map.flatten(2).tolist(), features.flatten(2).tolist()  # [n][0][k], [n][c][k]
    fg = [[sum(p[n][0][k] * x[n][c][k] for k in range(4)) / 4 for c in range(3)] for n in range(4)]
    bg = [[sum((1 - p[n][0][k]) * x[n][c][k] for k in range(4)) / 4 for c in range(3)] for n in range(4)]
    fg_t, bg_t = torch.tensor(fg), torch.tensor(bg)
    got_fg, got_bg = foreground_background_features(features, fg_map)
    torch.testing.assert_close(got_fg, fg_t)
    torch.testing.assert_close(got_bg, bg_t)

    out = c2am_losses(features, fg_map, alpha=0.25)
    assert out["loss_fg"].item() == pytest.approx(_rank_weighted_by_hand(fg_t, 0.25), rel=1e-5)
    assert out["loss_bg"].item() == pytest.approx(_rank_weighted_by_hand(bg_t, 0.25), rel=1e-5)
    fn, bn = F.normalize(fg_t, dim=1), F.normalize(bg_t, dim=1)
    neg = sum(
        -math.log(1 - min(max(float(bn[i] @ fn[j]), 5e-4), 0.9995)) for i in range(4) for j in range(4)
    ) / 16
    assert out["loss_neg"].item() == pytest.approx(neg, rel=1e-5)
    total = out["loss_fg"].item() + out["loss_neg"].item() + out["loss_bg"].item()
    assert out["loss"].item() == pytest.approx(total)


def test_c2am_rank_weights_explicit() -> None:
    # three 2-d embeddings at 0, 60 and 90 degrees: for anchor 0 the order is self, 1, 2
    emb = torch.tensor([[1.0, 0.0], [0.5, math.sqrt(3) / 2], [0.0, 1.0]])
    cos01, cos12 = 0.5, math.sqrt(3) / 2
    row0 = math.exp(0.25) * -math.log(0.9995) + 1.0 * -math.log(cos01) + math.exp(-0.25) * -math.log(5e-4)
    row1 = math.exp(0.25) * -math.log(0.9995) + 1.0 * -math.log(cos12) + math.exp(-0.25) * -math.log(cos01)
    row2 = math.exp(0.25) * -math.log(0.9995) + 1.0 * -math.log(cos12) + math.exp(-0.25) * -math.log(5e-4)
    from avseg.losses.c2am import rank_weighted_similarity_loss

    got = rank_weighted_similarity_loss(emb, alpha=0.25)
    assert got.item() == pytest.approx((row0 + row1 + row2) / 9, rel=1e-5)


def test_c2am_gradients_flow() -> None:
    features = torch.rand(3, 4, 2, 2, requires_grad=True)
    logits = torch.randn(3, 1, 2, 2, requires_grad=True)
    c2am_losses(features, torch.sigmoid(logits))["loss"].backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_border_foreground_fraction() -> None:
    p = torch.zeros(2, 1, 4, 4)
    p[0, 0, 0, :] = 0.9  # top row foreground: top 1, bottom 0, left 1/4, right 1/4
    p[1] = 0.8  # everything foreground
    frac = border_foreground_fraction(p)
    torch.testing.assert_close(frac, torch.tensor([(1 + 0 + 0.25 + 0.25) / 4, 1.0]))


# ---------------------------------------------------------------- segmentation


def test_bce_loss_weight_mask() -> None:
    logits = torch.tensor([[[[2.0, -1.0]]], [[[0.5, 0.5]]]], requires_grad=True)  # (2, 1, 1, 2)
    target = torch.tensor([[[[1.0, 0.0]]], [[[1.0, 1.0]]]])
    expected_first = (math.log(1 + math.exp(-2.0)) + math.log(1 + math.exp(-1.0))) / 2
    frame_mask = torch.tensor([True, False])
    assert bce_loss(logits, target, frame_mask).item() == pytest.approx(expected_first, rel=1e-6)
    pixel_mask = torch.tensor([[[[1.0, 0.0]]], [[[0.0, 0.0]]]])
    expected_pixel = math.log(1 + math.exp(-2.0))
    assert bce_loss(logits, target, pixel_mask).item() == pytest.approx(expected_pixel, rel=1e-6)
    zero = bce_loss(logits, target, torch.zeros(2))
    zero.backward()
    assert zero.item() == 0.0 and logits.grad is not None
    assert bce_loss(logits, target).item() == pytest.approx(
        F.binary_cross_entropy_with_logits(logits, target).item()
    )


def test_iou_loss() -> None:
    target = torch.zeros(2, 1, 4, 4)
    target[:, :, :2] = 1.0
    perfect = (target * 2 - 1) * 50.0
    assert iou_loss(perfect, target).item() == pytest.approx(0.0, abs=1e-6)
    # p = 0.5 everywhere: inter = 4, union = 8 + 8 - 4 = 12 -> 1 - 5/13 with eps = 1
    assert iou_loss(torch.zeros(2, 1, 4, 4), target).item() == pytest.approx(1 - 5 / 13, rel=1e-6)
    # samples without weight are left out
    weighted = iou_loss(torch.stack([perfect[0], torch.zeros(1, 4, 4)]), target, torch.tensor([1.0, 0.0]))
    assert weighted.item() == pytest.approx(0.0, abs=1e-6)


def test_ce_loss_ignore_index() -> None:
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]]]])  # (1, 2 classes, 1, 2)
    target = torch.tensor([[[0, 255]]])
    assert ce_loss(logits, target).item() == pytest.approx(_ce([2.0, 0.0], 0), rel=1e-6)
    logits.requires_grad_(True)
    all_ignored = ce_loss(logits, torch.full((1, 1, 2), 255))
    all_ignored.backward()
    assert all_ignored.item() == 0.0 and logits.grad is not None
