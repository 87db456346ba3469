"""A small fully connected (dense) CRF (Kraehenbuehl & Koltun 2011), mean-field inference, for two labels
(``dense_crf``: WS-AVS initial masks; ``crf_refine_mask``: WS-AVS-AV pseudo masks) and for C labels
(``dense_crf_multi``: PCAS semantic masks).

Exact dense pairwise terms (appearance + smoothness Gaussian kernels, Potts compatibility) computed on a
grid of at most ``max_side`` pixels per side, then upsampled: pseudo masks only need object-level
boundaries, and an exact kernel on 64x64 (4096^2 pairs) costs about 0.15 s on one CPU thread, with no compiled
dependency.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F


def _grid(h: int, w: int, max_side: int) -> tuple[int, int]:
    scale = min(1.0, max_side / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


# Kernel exponents below this are set to exp(-80) ~ 2e-35: a normal float. Without the floor the far pairs'
# weights are subnormal floats, which the CPU handles on a slow path (the exp and the matrix products took 3-5x
# longer); against the pairs that matter (weights of order 1e-3 and above) the change is below float precision.
_EXP_FLOOR = -80.0

# The kernels' defaults (grid pixels, colour levels, weights): appearance (bilateral) and smoothness terms.
SXY_BILATERAL, SRGB, W_BILATERAL, SXY_GAUSSIAN, W_GAUSSIAN = 20.0, 13.0, 5.0, 1.5, 3.0
_DEFAULT_KERNELS = (SXY_BILATERAL, SRGB, W_BILATERAL, SXY_GAUSSIAN, W_GAUSSIAN)


@functools.lru_cache(maxsize=2)  # one entry is two (P, P) float32 tensors, 128 MB on the 64 x 64 grid; a run's frames share one grid
def _grid_terms(gh: int, gw: int, sxy_bilateral: float, sxy_gaussian: float, w_gaussian: float) -> tuple[torch.Tensor, torch.Tensor]:
    """For a gh x gw grid: the bilateral kernel's spatial exponent -|dp|^2 / (2 sxy_b^2) and the whole smoothness
    kernel w_g exp(-|dp|^2 / (2 sxy_g^2)), both (P, P); they depend on the grid only, so they are computed once
    (callers read them, never write them)."""
    ys, xs = torch.meshgrid(torch.arange(gh, dtype=torch.float32), torch.arange(gw, dtype=torch.float32), indexing="ij")
    pos = torch.stack([ys.reshape(-1), xs.reshape(-1)], dim=1)  # (P, 2)
    d_pos = (pos[:, None, :] - pos[None, :, :]).pow(2).sum(dim=2)
    spatial = -d_pos / (2 * sxy_bilateral**2)
    smooth = w_gaussian * torch.exp((-d_pos / (2 * sxy_gaussian**2)).clamp_(min=_EXP_FLOOR))
    return spatial, smooth


def _mean_field(
    image: np.ndarray,
    probs: torch.Tensor,
    iterations: int,
    sxy_bilateral: float,
    srgb: float,
    w_bilateral: float,
    sxy_gaussian: float,
    w_gaussian: float,
    one_product: bool = False,
) -> torch.Tensor:
    """Mean-field marginals on the grid of ``probs``: (C, gh, gw) -> (P, C); a batch (B, C, gh, gw) of
    unaries on the same frame -> (P, B, C), each exactly the marginals it has alone (the kernel, which depends on
    the frame only, is built once). Unary = -log(probs). ``one_product``: the batch's messages in one matrix
    product per iteration (the kernel read once, ~4x faster for 18 inferences at 64 x 64), each marginal then
    within ~1e-4 of its value alone instead of equal to it (products of another shape round differently)."""
    single = probs.dim() == 3
    batch = probs[None] if single else probs
    b, c, gh, gw = batch.shape
    img = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)[None]
    img = F.interpolate(img, size=(gh, gw), mode="bilinear", align_corners=False)[0].reshape(3, -1).T  # (P, 3)
    unary = -torch.log(batch.reshape(b, c, -1).permute(2, 0, 1).clamp(1e-5, 1.0))  # (P, B, C)
    spatial, smooth = _grid_terms(gh, gw, float(sxy_bilateral), float(sxy_gaussian), float(w_gaussian))
    sq = img.pow(2).sum(dim=1)
    # in place on one (P, P) buffer: |Ii - Ij|^2 = |Ii|^2 + |Ij|^2 - 2 Ii.Ij, then the bilateral exponent, its exp
    kernel = (img @ img.T).mul_(-2.0).add_(sq[:, None]).add_(sq[None, :]).clamp_(min=0.0)
    kernel.mul_(-1.0 / (2 * srgb**2)).add_(spatial).clamp_(min=_EXP_FLOOR).exp_().mul_(w_bilateral).add_(smooth)
    kernel.fill_diagonal_(0.0)
    p = unary.shape[0]
    q = torch.softmax(-unary, dim=2)
    for _ in range(iterations):
        # (P, B, C): similarity-weighted label mass of all other pixels (the kernel is symmetric); one product per
        # inference, of the same shape as alone, so a batched inference gives exactly what it gives alone
        if one_product:
            message = (q.reshape(p, b * c).T @ kernel).T.reshape(p, b, c)
        else:
            message = torch.stack([(q[:, i].T @ kernel).T for i in range(b)], dim=1)
        # Potts: label l pays for the mass of every other label = total - own
        energy = unary + message.sum(dim=2, keepdim=True) - message
        q = torch.softmax(-energy, dim=2)
    return q[:, 0] if single else q


def dense_crf(
    image: np.ndarray,
    prob: np.ndarray,
    threshold: float = 0.5,
    iterations: int = 5,
    max_side: int = 64,
    sxy_bilateral: float = SXY_BILATERAL,
    srgb: float = SRGB,
    w_bilateral: float = W_BILATERAL,
    sxy_gaussian: float = SXY_GAUSSIAN,
    w_gaussian: float = W_GAUSSIAN,
    sharpness: float = 8.0,
) -> np.ndarray:
    """Refine a foreground map with a dense CRF.

    Args:
        image: (H, W, 3) uint8 frame.
        prob: (H, W) foreground map in [0, 1]; ``threshold`` maps to an even unary (p = 0.5).
        sxy_*: kernel widths in pixels of the (downsampled) grid; srgb in colour levels.
    Returns:
        (H, W) float32 mask in {0, 1}.
    """
    kernels = (sxy_bilateral, srgb, w_bilateral, sxy_gaussian, w_gaussian)
    return _dense_crf_maps(image, np.asarray(prob)[None], threshold, iterations, max_side, kernels, sharpness)[0]


def _dense_crf_maps(
    image: np.ndarray, probs: np.ndarray, threshold: float, iterations: int, max_side: int, kernels: tuple[float, float, float, float, float],
    sharpness: float, one_product: bool = False,
) -> np.ndarray:  # fmt: skip
    """``dense_crf`` of K foreground maps of one frame, (K, H, W) -> (K, H, W) float32 in {0, 1}: each map
    resampled to the grid, its unary sigmoid((p - threshold) * sharpness), one ``_mean_field`` for all (the
    frame's kernel built once), the foreground marginal resampled back and cut at 0.5."""
    k, h, w = probs.shape
    gh, gw = _grid(h, w, max_side)
    p = F.interpolate(torch.from_numpy(probs.astype(np.float32))[:, None], size=(gh, gw), mode="bilinear", align_corners=False)[:, 0]  # (K, gh, gw)
    fg = torch.sigmoid((p - threshold) * sharpness).clamp(1e-4, 1 - 1e-4)
    q = _mean_field(image, torch.stack([1 - fg, fg], dim=1), iterations, *kernels, one_product)  # (P, K, 2)
    out = F.interpolate(q[:, :, 1].T.reshape(k, 1, gh, gw), size=(h, w), mode="bilinear", align_corners=False)[:, 0]
    return (out > 0.5).float().numpy()


def crf_refine_mask(image: np.ndarray, mask: np.ndarray, confidence: float = 0.7, iterations: int = 5, max_side: int = 64) -> np.ndarray:
    """A binary mask refined by ``dense_crf``'s CRF: the unary says foreground with probability ``confidence`` inside
    ``mask`` and 1 - ``confidence`` outside, so the pairwise terms can move the boundary to the image's edges.
    The pairwise terms are not normalised (each pixel's message is a sum over every pixel of similar colour
    and position), so over a uniform object they outweigh the unary: the CRF acts as a vote, a mask covering
    most of the object grows to all of it (and off the background), one covering less than half of it is
    erased. An empty mask stays empty (no unary says foreground anywhere).

    Args:
        image: (H, W, 3) uint8 frame.
        mask: (H, W) mask, foreground where > 0.5.
        confidence: in (0.5, 1).
    Returns:
        (H, W) float32 mask in {0, 1}.
    """
    return crf_refine_masks(image, np.asarray(mask)[None], confidence, iterations, max_side)[0]


def crf_refine_masks(
    image: np.ndarray, masks: np.ndarray, confidence: float = 0.7, iterations: int = 5, max_side: int = 64, one_product: bool = False,
) -> np.ndarray:  # fmt: skip
    """``crf_refine_mask`` of several masks on one frame, (K, H, W) -> (K, H, W) float32 in {0, 1}: each the
    mask ``crf_refine_mask`` gives it alone, the frame's kernel built once (the costly part). ``one_product``
    (``_mean_field``): faster for many masks, a pixel whose marginal lies within ~1e-4 of 0.5 may then differ
    from the mask refined alone (for scoring candidates, not for writing masks)."""
    if not 0.5 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0.5, 1), got {confidence}")
    binary = (np.asarray(masks) > 0.5).astype(np.float32)
    if binary.ndim != 3:
        raise ValueError(f"crf_refine_masks expects (K, H, W) masks, got shape {binary.shape}")
    out = np.zeros_like(binary)
    todo = [k for k in range(len(binary)) if binary[k].any()]  # an empty mask stays empty
    if not todo:
        return out
    sharpness = 2.0 * float(np.log(confidence / (1.0 - confidence)))  # sigmoid((p - 0.5) * sharpness) = confidence at p = 1
    out[todo] = _dense_crf_maps(image, binary[todo], 0.5, iterations, max_side, _DEFAULT_KERNELS, sharpness, one_product)
    return out


def dense_crf_multi(
    image: np.ndarray,
    probs: np.ndarray,
    iterations: int = 5,
    max_side: int = 64,
    sxy_bilateral: float = SXY_BILATERAL,
    srgb: float = SRGB,
    w_bilateral: float = W_BILATERAL,
    sxy_gaussian: float = SXY_GAUSSIAN,
    w_gaussian: float = W_GAUSSIAN,
) -> np.ndarray:
    """Dense CRF for C labels: unary = -log(probs), the same kernels and mean field as ``dense_crf``.

    Args:
        image: (H, W, 3) uint8 frame.
        probs: (C, H, W) class probabilities.

    Returns:
        (C, H, W) float32 refined probabilities (summing to 1 per pixel; 0 wherever ``probs`` is 0).
    """
    c, h, w = probs.shape
    gh, gw = _grid(h, w, max_side)
    p = F.interpolate(torch.from_numpy(probs.astype(np.float32))[None], size=(gh, gw), mode="bilinear", align_corners=False)[0]
    q = _mean_field(image, p, iterations, sxy_bilateral, srgb, w_bilateral, sxy_gaussian, w_gaussian)
    out = F.interpolate(q.T.reshape(1, c, gh, gw), size=(h, w), mode="bilinear", align_corners=False)[0]
    # a label with probability 0 at a pixel has an infinite unary there (the clamp above only keeps the logs
    # finite): it stays at exactly 0, e.g. every class an audio gate silenced
    out = out * (torch.from_numpy(np.asarray(probs)) > 0)
    return (out / out.sum(dim=0, keepdim=True).clamp_min(1e-6)).numpy()
