"""Pictures for people: overlays, heat maps, spectrogram images and contact sheets (numpy + PIL only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from avseg.data.layout import voc_palette
from avseg.fileio import atomic_write_bytes
from avseg.types import IMAGENET_MEAN, IMAGENET_STD

# A compact perceptual colour ramp (dark blue -> green -> yellow), enough for heat maps and spectrograms.
_RAMP = np.array(
    [[48, 18, 59], [70, 107, 227], [40, 187, 236], [50, 241, 152], [164, 252, 59], [237, 208, 58], [251, 128, 34], [196, 37, 3]],
    dtype=np.float32,
)


def colormap(values: np.ndarray) -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W, 3) uint8 colours."""
    v = np.clip(np.nan_to_num(values.astype(np.float32)), 0.0, 1.0) * (len(_RAMP) - 1)
    lo = np.floor(v).astype(np.int64)
    hi = np.minimum(lo + 1, len(_RAMP) - 1)
    w = (v - lo)[..., None]
    return (_RAMP[lo] * (1 - w) + _RAMP[hi] * w).astype(np.uint8)


def denormalize(frame: np.ndarray) -> np.ndarray:
    """(3, H, W) ImageNet-normalised float -> (H, W, 3) uint8."""
    mean = np.asarray(IMAGENET_MEAN, np.float32)[:, None, None]
    std = np.asarray(IMAGENET_STD, np.float32)[:, None, None]
    rgb = np.clip((frame * std + mean) * 255.0, 0, 255).astype(np.uint8)
    return rgb.transpose(1, 2, 0)


def overlay(frame: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = (255, 40, 40), alpha: float = 0.5) -> np.ndarray:
    """Blend a binary or soft (H, W) mask in [0, 1] over an (H, W, 3) uint8 frame, with a contour."""
    m = np.clip(mask.astype(np.float32), 0, 1)[..., None]
    out = frame.astype(np.float32) * (1 - alpha * m) + np.asarray(color, np.float32) * alpha * m
    hard = mask > 0.5
    edge = hard ^ _erode(hard)
    out[edge] = color
    return out.astype(np.uint8)


def _erode(m: np.ndarray) -> np.ndarray:
    p = np.pad(m, 1, mode="edge")
    return p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]


def mask_image(mask: np.ndarray) -> np.ndarray:
    """(H, W) mask in [0, 1] -> (H, W, 3) grey uint8."""
    g = (np.clip(mask.astype(np.float32), 0, 1) * 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=2)


def semantic_image(classes: np.ndarray) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) colours from the VOC palette (AVSS labels_rgb colours)."""

    pal = np.asarray(voc_palette(256), np.uint8)
    return pal[np.clip(classes, 0, 255).astype(np.int64)]


def spectrogram_image(spec: np.ndarray, height: int, width: int) -> np.ndarray:
    """(F, W_a) spectrogram (any scale) -> (height, width, 3) colour image, low frequencies at the bottom."""
    s = spec.astype(np.float32)
    lo, hi = np.percentile(s, 2), np.percentile(s, 98)
    s = (s - lo) / (hi - lo + 1e-8)
    img = Image.fromarray(colormap(s[::-1]))
    return np.asarray(img.resize((width, height), Image.Resampling.BILINEAR))


def contact_sheet(rows: list[list[np.ndarray]], row_labels: list[str] | None = None, col_labels: list[str] | None = None, pad: int = 4, tile: int | None = None) -> Image.Image:
    """Grid of (H, W, 3) uint8 tiles (resized to ``tile`` px when given) with optional labels."""
    if not rows or not rows[0]:
        raise ValueError("contact_sheet needs at least one tile")
    if tile is not None:
        rows = [[np.asarray(Image.fromarray(t).resize((tile, tile), Image.Resampling.NEAREST)) for t in r] for r in rows]
    th = max(t.shape[0] for r in rows for t in r)
    tw = max(t.shape[1] for r in rows for t in r)
    ncol = max(len(r) for r in rows)
    left = 110 if row_labels else 0
    top = 16 if col_labels else 0
    sheet = Image.new("RGB", (left + ncol * (tw + pad) + pad, top + len(rows) * (th + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    if col_labels:
        for j, text in enumerate(col_labels):
            draw.text((left + pad + j * (tw + pad), 2), text[: max(4, tw // 6)], fill=(0, 0, 0))
    for i, r in enumerate(rows):
        y = top + pad + i * (th + pad)
        if row_labels:
            draw.text((2, y + th // 2 - 5), row_labels[i][:18], fill=(0, 0, 0))
        for j, t in enumerate(r):
            sheet.paste(Image.fromarray(t), (left + pad + j * (tw + pad), y))
    return sheet


def save_image_atomic(image: Image.Image, path: Path) -> None:
    """Write a PIL image atomically (encoded in memory, temp file + rename), creating the folder."""
    import io
    buf = io.BytesIO()
    image.save(buf, format=(Path(path).suffix.lstrip(".") or "png").upper().replace("JPG", "JPEG"))
    atomic_write_bytes(path, buf.getvalue())
