"""Atomic file writers for frames, masks and audio.

Every writer encodes in memory and writes through :func:`avseg.fileio.atomic_write_bytes` (temporary file
in the destination folder, then ``os.replace``): readers never see a truncated PNG.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from avseg.fileio import atomic_write_bytes

__all__ = [
    "save_png_atomic",
    "save_jpg_atomic",
    "write_wav_atomic",
]


def _to_image(image: np.ndarray | Image.Image, mode: str | None) -> Image.Image:
    """Array or PIL image -> PIL image in ``mode``. Arrays: (H, W) grey or index map, (H, W, 3) RGB,
    uint8; a bool array is written as 0/255 so masks open as black/white in any viewer. Mode "P" takes a
    2-D array as palette indices."""
    if isinstance(image, Image.Image):
        if mode is None or image.mode == mode:
            return image
        if mode == "P" and image.mode == "L":
            return Image.frombytes("P", image.size, image.tobytes())  # keep values as indices
        return image.convert(mode)
    array = np.asarray(image)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.dtype != np.uint8:
        raise ValueError(f"expected a uint8 or bool array, got {array.dtype}")
    if array.ndim == 2:
        img = Image.fromarray(array)  # mode L
        if mode == "P":
            return Image.frombytes("P", img.size, img.tobytes())
    elif array.ndim == 3 and array.shape[2] == 3:
        img = Image.fromarray(array)  # mode RGB
    else:
        raise ValueError(f"expected an (H, W) or (H, W, 3) array, got shape {array.shape}")
    return img if mode is None or img.mode == mode else img.convert(mode)


def save_png_atomic(
    path: Path | str,
    image: np.ndarray | Image.Image,
    mode: str | None = None,
    palette: Sequence[tuple[int, int, int]] | Sequence[int] | None = None,
    compress_level: int = 6,
) -> None:
    """Save a PNG atomically.

    Args:
        path: destination.
        image: PIL image, or uint8 array (H, W) / (H, W, 3), or bool (H, W) mask (written 0/255).
        mode: PIL mode to write ("L", "RGB", "P"); inferred when None ("P" when a palette is given).
        palette: for mode "P": (r, g, b) tuples or a flat list of ints.
        compress_level: zlib level 0-9; lower is faster, and the output is deterministic at any level.
    """
    if palette is not None and mode is None:
        mode = "P"
    img = _to_image(image, mode)
    if palette is not None:
        if img.mode != "P":
            raise ValueError(f"a palette needs mode 'P', got {img.mode!r} for {path}")
        flat = [int(v) for entry in palette for v in (entry if isinstance(entry, (tuple, list)) else (entry,))]
        img.putpalette(flat)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=compress_level)
    atomic_write_bytes(path, buf.getvalue())


def save_jpg_atomic(path: Path | str, image: np.ndarray | Image.Image, quality: int = 90) -> None:
    """Save an RGB JPEG atomically (``image``: PIL image or uint8 (H, W, 3) array)."""
    img = _to_image(image, "RGB")
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    atomic_write_bytes(path, buf.getvalue())


def write_wav_atomic(path: Path | str, wave: np.ndarray, sr: int) -> None:
    """Write a mono (S,) or multi-channel (S, C) float waveform in [-1, 1] as 16-bit PCM WAV."""
    import soundfile as sf  # imported here so that image-only users do not need libsndfile

    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim not in (1, 2):
        raise ValueError(f"expected a (S,) or (S, C) waveform, got shape {wave.shape}")
    if not np.all(np.isfinite(wave)):
        raise ValueError(f"waveform for {path} holds NaN or inf")
    buf = io.BytesIO()
    # Clip explicitly: libsndfile would otherwise wrap out-of-range floats.
    sf.write(buf, np.clip(wave, -1.0, 1.0), sr, format="WAV", subtype="PCM_16")
    atomic_write_bytes(path, buf.getvalue())
