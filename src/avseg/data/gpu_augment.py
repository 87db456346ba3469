"""Training augmentation of a whole batch on the device: resize, crop, flip and normalise.

The CPU path (``AVSBenchDataset`` / ``CachedDataset`` with ``augment=True``) resizes each frame to
``round(size * 246 / 224)`` with PIL's bilinear filter, crops ``size x size`` at a random offset and flips
at random, with one geometry per video for frames, masks and pseudo masks, then ImageNet-normalises.
Here the loader ships the cached uint8 frames unchanged (``CachedDataset(frames="uint8")``: a quarter of
the bytes of float32 and no per-pixel work in the workers) with each video's ``(y0, x0, flip)`` in
``batch.extras["geometry"]``, and ``augment_batch`` does the rest in a few batched gathers.

The result equals the CPU path exactly: the resize reproduces Pillow's uint8 arithmetic (its bilinear
coefficients in 22-bit fixed point, a horizontal then a vertical pass, each rounded and clipped to 0..255;
its nearest-neighbour positions accumulated in float64 and truncated), and only the cropped output
pixels are computed (the crop and flip are folded into the resampling tables).
"""

from __future__ import annotations

import dataclasses
import math
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from avseg.data.avsbench import crop_size  # the datasets' rule, re-exported
from avseg.types import IMAGENET_MEAN, IMAGENET_STD, AVBatch

__all__ = ["augment_batch", "crop_size"]

_PRECISION_BITS = 32 - 8 - 2  # Pillow's Resample.c, 8 bits per channel




@lru_cache(maxsize=32)
def _bilinear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's ``precompute_coeffs`` + ``normalize_coeffs_8bpc`` for BILINEAR: per output pixel the source
    indices (out, K) and int32 weights (out, K) (unused taps: index 0, weight 0)."""
    scale = float(in_size) / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    index = np.zeros((out_size, ksize), np.int64)
    weight = np.zeros((out_size, ksize), np.int64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(0, math.trunc(center - support + 0.5))
        xmax = min(in_size, math.trunc(center + support + 0.5)) - xmin
        w = [max(0.0, 1.0 - abs((x + xmin - center + 0.5) / filterscale)) for x in range(xmax)]
        total = sum(w)
        for x in range(xmax):
            k = w[x] / total if total != 0.0 else w[x]
            index[xx, x] = xmin + x
            weight[xx, x] = math.trunc(0.5 + k * (1 << _PRECISION_BITS))
    return index, weight


@lru_cache(maxsize=32)
def _nearest_index(in_size: int, out_size: int) -> np.ndarray:
    """Pillow's ``ImagingScaleAffine``: source index of each output pixel (positions summed in float64)."""
    step = float(in_size) / out_size
    positions = np.cumsum(np.concatenate([[step * 0.5], np.full(out_size - 1, step)]))  # sequential, as the C loop
    return np.minimum(positions.astype(np.int64), in_size - 1)


def _window(table: np.ndarray, start: Tensor, flip: Tensor | None, size: int) -> Tensor:
    """Rows start..start+size of a per-output-pixel table, reversed where ``flip``: (N, size, ...)."""
    t = torch.from_numpy(table).to(start.device)
    pos = start[:, None] + torch.arange(size, device=start.device)  # (N, size)
    if flip is not None:
        pos = torch.where(flip[:, None], pos.flip(-1), pos)
    return t[pos]


def _resample_axis(x: Tensor, index: Tensor, weight: Tensor, dim: int) -> Tensor:
    """One rounded uint8 bilinear pass along ``dim`` (2 = rows, 3 = columns) of x (N, C, H, W) int32.

    index / weight: (N, out, K) per sample; returns int32 values in 0..255.
    """
    n, c, h, w = x.shape
    out = index.shape[1]
    acc = torch.full((), 1 << (_PRECISION_BITS - 1), dtype=torch.int32, device=x.device)
    for k in range(index.shape[2]):
        if dim == 3:
            idx = index[:, None, None, :, k].expand(n, c, h, out)
            wk = weight[:, None, None, :, k]
        else:
            idx = index[:, None, :, None, k].expand(n, c, out, w)
            wk = weight[:, None, :, None, k]
        acc = acc + x.gather(dim, idx) * wk
    return (acc >> _PRECISION_BITS).clamp_(0, 255)  # Pillow's clip8 (its sums are never negative here)


def _bilinear_crop(x: Tensor, y0: Tensor, x0: Tensor, flip: Tensor, size: int) -> Tensor:
    """x (N, C, H, W) integer 0..255 -> the (size x size) crop at (y0, x0) of its resize to crop_size(H),
    flipped where ``flip``, as Pillow computes it; (N, C, size, size) int32."""
    big = crop_size(x.shape[-1])
    index, weight = _bilinear_taps(x.shape[-1], big)
    cols_i, cols_w = _window(index, x0, flip, size), _window(weight, x0, flip, size).to(torch.int32)
    rows_i, rows_w = _window(index, y0, None, size), _window(weight, y0, None, size).to(torch.int32)
    x = _resample_axis(x.to(torch.int32), cols_i, cols_w, dim=3)  # Pillow: horizontal pass first
    return _resample_axis(x, rows_i, rows_w, dim=2)


def _nearest_crop(x: Tensor, y0: Tensor, x0: Tensor, flip: Tensor, size: int) -> Tensor:
    """x (N, H, W) -> (N, size, size) crop of its nearest-neighbour resize to crop_size(H), flipped where ``flip``."""
    table = _nearest_index(x.shape[-1], crop_size(x.shape[-1]))
    rows, cols = _window(table, y0, None, size), _window(table, x0, flip, size)  # (N, size)
    n = torch.arange(x.shape[0], device=x.device)[:, None, None]
    return x[n, rows[:, :, None], cols[:, None, :]]


def augment_batch(batch: AVBatch) -> AVBatch:
    """uint8 frames (B, T, H, W, 3) [+ extras["geometry"] (B, 3) = (y0, x0, flip)] -> the batch contract.

    Returns an AVBatch with frames (B, T, 3, H, W) float32 ImageNet-normalised; with a geometry, frames,
    masks and pseudo masks are resized to ``crop_size(H)``, cropped at (y0, x0) and flipped where flip is 1
    (one geometry per video), on the batch's device. A batch whose frames are float is returned unchanged.
    """
    frames = batch.frames
    if frames.is_floating_point():
        return batch
    if frames.dtype != torch.uint8 or frames.dim() != 5 or frames.shape[-1] != 3:
        raise ValueError(f"augment_batch expects uint8 frames (B, T, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
    b, t, h, w, _ = frames.shape
    if h != w:
        raise ValueError(f"augment_batch expects square frames, got {h}x{w}")
    x = frames.permute(0, 1, 4, 2, 3).reshape(b * t, 3, h, w)  # (N, 3, H, W) uint8
    masks, pseudo = batch.masks, batch.pseudo_masks
    geometry = batch.extras.get("geometry")
    if geometry is not None:
        g = geometry.to(frames.device).repeat_interleave(t, dim=0)  # one geometry per video -> per frame
        y0, x0, flip = g[:, 0], g[:, 1], g[:, 2].bool()
        x = _bilinear_crop(x, y0, x0, flip, h)
        masks = _nearest_crop(masks.reshape(b * t, h, w), y0, x0, flip, h).reshape(b, t, h, w)
        if pseudo is not None:
            # as the CPU path: probability -> uint8 (truncating) -> bilinear uint8 resize -> / 255
            p = (pseudo.reshape(b * t, 1, h, w) * 255).to(torch.uint8)
            pseudo = _bilinear_crop(p, y0, x0, flip, h).reshape(b, t, h, w).float() / 255.0
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    x = (x.float().div_(255.0) - mean) / std
    extras = {k: v for k, v in batch.extras.items() if k != "geometry"}
    return dataclasses.replace(batch, frames=x.reshape(b, t, 3, h, w), masks=masks, pseudo_masks=pseudo, extras=extras)
