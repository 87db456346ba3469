"""Contrastive objectives: multiple-instance audio-visual contrast (EZ-VSL / WS-AVS M2ICL), similarity maps,
supervised contrast and InfoNCE (PCAS).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

__all__ = ["m2icl_loss", "m2icl_per_second", "mil_logits", "mil_similarity_map", "supervised_contrastive", "info_nce"]


def _distributed_world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _AllGatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every process's gradient of the gathered tensor and returns this
    process's slice (reduce-scatter on NCCL, all-reduce elsewhere).

    Not ``torch.distributed.nn.functional.all_gather``: deprecated in torch 2.14, and on gloo its backward
    receives into buffers that copy the strides of non-contiguous gradients (the gradient of an einsum
    usually is), which scrambles the gradient -- tests/test_losses.py catches that.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        world, rank = dist.get_world_size(), dist.get_rank()
        ctx.world, ctx.rank, ctx.n = world, rank, x.shape[0]
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.clone(memory_format=torch.contiguous_format)  # own buffer: collectives write raw memory
        if dist.get_backend() == dist.Backend.NCCL:
            out = torch.empty_like(grad[: ctx.n])
            dist.reduce_scatter(out, list(grad.chunk(ctx.world, dim=0)))
            return out
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def _gather_no_grad(x: Tensor) -> Tensor:
    """All processes' ``x`` (same shape everywhere) concatenated along dim 0 in rank order, no gradient."""
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def _gather_with_grad(x: Tensor) -> Tensor:
    """All processes' ``x`` (same shape everywhere) concatenated along dim 0 in rank order; the backward
    sends every process's gradient back to the process that owns the rows."""
    return _AllGatherWithGrad.apply(x)


def mil_logits(audio: Tensor, visual: Tensor) -> Tensor:
    """Multiple-instance similarity of every audio to every visual map.

    Args:
        audio: (N_a, D), L2-normalised.
        visual: (N_v, D, h, w), L2-normalised over D.

    Returns:
        (N_a, N_v): ``S[m, n] = max over positions of cos(audio_m, visual_n)``.
    """
    per_position = torch.einsum("md,ndk->mnk", audio, visual.flatten(2))  # (N_a, N_v, hw)
    return per_position.amax(dim=-1)


def m2icl_loss(
    audio: Tensor,
    visual: list[Tensor],
    tau: float = 0.03,
    scale_by_tau: bool = True,
    gather: bool = True,
    anchors: Tensor | None = None,
    labels: Tensor | None = None,
    candidates: Tensor | None = None,
) -> Tensor:
    """Multi-scale multiple-instance contrastive loss (WS-AVS M2ICL; one stage = EZ-VSL's loss).

    Per stage s, with L2-normalised audio ``a`` and visual tokens ``v^s``:
    ``S^s[n, m] = max_positions cos(a_m, v^s_n)``;
    ``L = sum_s CE(S^s / tau, diag) + CE(S^s^T / tau, diag)`` (CE averaged over anchors), times ``tau``
    when ``scale_by_tau`` (as the official code does; it keeps gradient magnitudes independent of tau).

    Under torch.distributed (initialised, world size > 1, ``gather=True``) audio and visual tokens of all
    processes are gathered with a gradient-preserving all_gather: each process's own samples are the
    anchors, every sample of the global batch is a candidate (negatives from the whole batch), targets are
    offset by ``rank * N``. Every process must pass the same N (use a sampler that drops the last
    uneven batch). Averaging this loss over processes (DDP's gradient mean) equals the loss of the global
    batch on one process.

    Args:
        audio: (N, D) projected audio embeddings (normalised inside).
        visual: per stage (N, D, h_s, w_s) projected visual tokens (normalised inside).
        tau: temperature.
        scale_by_tau: multiply the loss by tau (official default).
        gather: gather negatives across processes when distributed.
        anchors: (N,) bool, samples whose pairs are positives (None: all). The others stay candidates
            (negatives of everyone) but are no anchors: negative-audio training clips, whose sound belongs
            to nothing in their frame. Shapes do not change, so processes stay in step under DDP.
        labels: (N, K) multi-hot video labels, or None. Given, a candidate that shares a label with the
            anchor is no negative (its logit is masked out; the pair itself stays the positive): with few
            classes most of a batch's "negatives" hold the anchor's sounding class, and the instance
            contrast then fights itself (our option, off in the paper recipes).
        candidates: (N,) bool, samples that exist (None: all): the others (AVSS padding frames: a black
            frame and silence) are neither anchors nor negatives of anyone. Shapes do not change.

    Returns:
        Scalar loss.
    """
    if not visual:
        raise ValueError("m2icl_loss needs at least one visual stage")
    n = audio.shape[0]
    for s, v in enumerate(visual):
        if v.dim() != 4 or v.shape[0] != n or v.shape[1] != audio.shape[1]:
            raise ValueError(
                f"visual stage {s} has shape {tuple(v.shape)}; expected ({n}, {audio.shape[1]}, h, w)"
            )
    rank, world = _distributed_world()
    distributed = gather and world > 1
    audio = F.normalize(audio, dim=1)
    audio_all = _gather_with_grad(audio) if distributed else audio  # (N_g, D)
    targets = torch.arange(n, device=audio.device) + (rank * n if distributed else 0)

    real_all = None  # (N_g,) bool: candidates that exist
    if candidates is not None:
        real = candidates.to(device=audio.device, dtype=torch.bool)
        real_all = (_gather_no_grad(real.to(audio.dtype)) > 0.5) if distributed else real
        anchors = real if anchors is None else anchors.to(device=audio.device, dtype=torch.bool) & real
    weights = None if anchors is None else anchors.to(device=audio.device, dtype=audio.dtype)  # (N,)

    def ce(logits: Tensor) -> Tensor:
        if weights is None:
            return F.cross_entropy(logits, targets)
        per_anchor = F.cross_entropy(logits, targets, reduction="none")  # (N,)
        return (per_anchor * weights).sum() / weights.sum().clamp_min(1.0)

    # (N, N_g) True where a candidate is no negative of the anchor: it shares a label with it, or does not
    # exist. Never the pair itself (an anchor that does not exist keeps only its pair: loss 0, weight 0).
    same = None
    if labels is not None:
        lab = labels.to(device=audio.device, dtype=audio.dtype)
        lab_all = _gather_no_grad(lab) if distributed else lab  # (N_g, K)
        same = (lab @ lab_all.t()) > 0
    if real_all is not None and not bool(real_all.all()):
        missing = (~real_all)[None, :].expand(n, -1)
        same = missing.clone() if same is None else same | missing
    if same is not None:
        same[torch.arange(n, device=audio.device), targets] = False

    loss = audio.new_zeros(())
    for v in visual:
        v = F.normalize(v, dim=1)
        v_all = _gather_with_grad(v) if distributed else v  # (N_g, D, h, w)
        audio_to_visual = mil_logits(audio, v_all) / tau  # (N, N_g): local audio anchors
        visual_to_audio = mil_logits(audio_all, v).t() / tau  # (N, N_g): local visual anchors
        if same is not None:
            audio_to_visual = audio_to_visual.masked_fill(same, float("-inf"))
            visual_to_audio = visual_to_audio.masked_fill(same, float("-inf"))
        loss = loss + ce(visual_to_audio) + ce(audio_to_visual)
    return loss * tau if scale_by_tau else loss


def m2icl_per_second(
    audio: Tensor, visual: list[Tensor], b: int, t: int, tau: float = 0.03, scale_by_tau: bool = True, heard: Tensor | None = None,
    labels: Tensor | None = None, valid: Tensor | None = None,
) -> Tensor:
    """``m2icl_loss`` of B videos x T seconds, averaged over the seconds.

    Negatives of an anchor are the other videos at the same second, never other seconds of the same
    video (they share its sound class and would be false negatives).

    Args:
        audio: (B*T, D) audio embeddings, video-major.
        visual: per stage (B*T, D, h_s, w_s) visual tokens, video-major.
        heard: (B,) bool, videos that hear their own sound (the anchors; see ``m2icl_loss``); None: all.
        labels: (B, K) video labels: candidates sharing one with the anchor are no negatives (``m2icl_loss``).
        valid: (B, T) bool, real frames (False on AVSS padding: no anchor, no negative); None: all. The mean
            runs over the seconds that hold a real frame (every second is computed, so that processes under
            DDP gather in step).
    """
    a = audio.view(b, t, -1)
    vs = [v.view(b, t, *v.shape[1:]) for v in visual]
    terms = torch.stack([
        m2icl_loss(a[:, i], [v[:, i] for v in vs], tau=tau, scale_by_tau=scale_by_tau, anchors=heard, labels=labels,
                   candidates=None if valid is None else valid[:, i])
        for i in range(t)
    ])  # fmt: skip
    if valid is None:
        return terms.mean()
    seconds = valid.to(device=terms.device).any(dim=0)  # (T,)
    return terms[seconds].mean() if bool(seconds.any()) else terms.sum() * 0.0


def mil_similarity_map(audio: Tensor, visual: Tensor) -> Tensor:
    """Cosine similarity of each sample's audio to each position of its own visual map.

    Args:
        audio: (N, D).
        visual: (N, D, h, w).

    Returns:
        (N, h, w) in [-1, 1] (heat maps for EZ-VSL / WS-AVS inference).
    """
    audio = F.normalize(audio, dim=1)
    visual = F.normalize(visual, dim=1)
    return torch.einsum("nd,ndhw->nhw", audio, visual)


def supervised_contrastive(
    features: Tensor, labels: Tensor, tau: float = 0.1, sample_ids: Tensor | None = None
) -> Tensor:
    """Supervised contrastive loss (Khosla et al., 2020, "L_out"); PCAS's instance-level CMC.

    Positives of anchor i: every other row j sharing at least one label with i (``labels_i . labels_j > 0``)
    or, when given, the same ``sample_ids`` (e.g. the audio and visual rows of one frame). For each anchor
    with positives: ``-mean_{p in P(i)} log softmax_{j != i}(z_i . z_j / tau)[p]``; the loss is the mean
    over those anchors (zero, with a gradient path, when no anchor has a positive).

    Args:
        features: (N, D), normalised inside (concatenate modalities along N to contrast across them).
        labels: (N, K) multi-hot.
        tau: temperature.
        sample_ids: (N,) int, rows with equal ids are positives whatever their labels; None = labels only.

    Returns:
        Scalar loss.
    """
    n = features.shape[0]
    if labels.shape[0] != n:
        raise ValueError(f"features have {n} rows but labels have {labels.shape[0]}")
    z = F.normalize(features, dim=1)
    logits = z @ z.t() / tau  # (N, N)
    self_mask = torch.eye(n, dtype=torch.bool, device=features.device)
    labels = labels.float()
    positive = (labels @ labels.t()) > 0
    if sample_ids is not None:
        positive = positive | (sample_ids[:, None] == sample_ids[None, :])
    positive = positive & ~self_mask
    log_prob = logits.masked_fill(self_mask, float("-inf")).log_softmax(dim=1)  # over j != i
    log_prob = log_prob.masked_fill(self_mask, 0.0)  # -inf on the diagonal would poison 0 * -inf
    num_pos = positive.sum(dim=1)
    has_pos = num_pos > 0
    if not has_pos.any():
        return features.sum() * 0.0
    per_anchor = -(log_prob * positive).sum(dim=1)[has_pos] / num_pos[has_pos]
    return per_anchor.mean()


def info_nce(
    query: Tensor,
    positives: Tensor,
    negatives: Tensor,
    tau: float = 0.5,
    positive_mask: Tensor | None = None,
    negative_mask: Tensor | None = None,
) -> Tensor:
    """InfoNCE with several positives per query: each positive is contrasted against the negatives.

    ``loss = mean over valid (query, positive) pairs of -log( e^{q.p/tau} / (e^{q.p/tau} + sum_neg e^{q.k/tau}) )``
    with cosine similarities (all inputs normalised inside).

    Args:
        query: (N, D).
        positives: (N, P, D) per-query positives, or (N, D) for one each.
        negatives: (N, M, D) per-query negatives, or (M, D) shared by all queries.
        tau: temperature (0.5 for PCAS's class-token contrast).
        positive_mask: (N, P) bool, False = padding (ignored); None = all valid.
        negative_mask: (N, M) bool, False = padding (excluded from the denominator); None = all valid.

    Returns:
        Scalar loss (zero, with a gradient path, when no positive is valid).
    """
    q = F.normalize(query, dim=-1)
    if positives.dim() == 2:
        positives = positives[:, None]
    pos = F.normalize(positives, dim=-1)
    neg = F.normalize(negatives, dim=-1)
    pos_logits = torch.einsum("nd,npd->np", q, pos) / tau  # (N, P)
    if neg.dim() == 2:
        neg_logits = q @ neg.t() / tau  # (N, M)
    else:
        neg_logits = torch.einsum("nd,nmd->nm", q, neg) / tau  # (N, M)
    if negative_mask is not None:
        neg_logits = neg_logits.masked_fill(~negative_mask, float("-inf"))
    neg_lse = torch.logsumexp(neg_logits, dim=1, keepdim=True)  # (N, 1); -inf when no negative
    # -log(e^p / (e^p + e^neg_lse)) = logaddexp(p, neg_lse) - p
    per_pair = torch.logaddexp(pos_logits, neg_lse.expand_as(pos_logits)) - pos_logits  # (N, P)
    if positive_mask is None:
        return per_pair.mean()
    valid = positive_mask.bool()
    if not valid.any():
        return query.sum() * 0.0
    return per_pair[valid].mean()
