"""Band-limited resampling (windowed sinc, Kaiser window), whole signals and streams, pure torch / numpy."""

from __future__ import annotations

import logging
import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["resample", "StreamingResampler"]

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# Resampling
# ----------------------------------------------------------------------------------------------

# Defaults chosen for a clean pass band up to ~0.9 of the lower Nyquist and > 80 dB stop band:
# 16 zero crossings of the sinc on each side, Kaiser beta 8.6 (about -90 dB side lobes).
_LOWPASS_WIDTH = 16
_ROLLOFF = 0.945
_KAISER_BETA = 8.6


@lru_cache(maxsize=32)
def _sinc_kernel(
    orig_sr: int, new_sr: int, lowpass_filter_width: int, rolloff: float, beta: float
) -> tuple[Tensor, int]:
    """Polyphase Kaiser-windowed-sinc kernel, as torchaudio's ``sinc_interp_kaiser``.

    ``orig_sr`` and ``new_sr`` are already divided by their gcd. Returns ``(kernel, width)``: kernel
    (new_sr, 1, 2*width + orig_sr) float64, one row per output phase, and the padding ``width``.
    """
    base = min(orig_sr, new_sr) * rolloff  # cut-off, in the same units as the reduced rates
    width = math.ceil(lowpass_filter_width * orig_sr / base)
    idx = torch.arange(-width, width + orig_sr, dtype=torch.float64) / orig_sr
    # t: time (in input samples / orig_sr) of each tap relative to each output phase
    t = torch.arange(0, -new_sr, -1, dtype=torch.float64)[:, None] / new_sr + idx[None, :]
    t = (t * base).clamp(-lowpass_filter_width, lowpass_filter_width)  # in zero crossings
    window = torch.special.i0(beta * torch.sqrt(1 - (t / lowpass_filter_width) ** 2)) / torch.special.i0(
        torch.tensor(beta, dtype=torch.float64)
    )
    t = t * math.pi
    sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / torch.where(t == 0, 1.0, t))
    kernel = sinc * window * (base / orig_sr)  # scale keeps unit DC gain
    return kernel[:, None, :], width


# The polyphase kernel has (new / gcd) rows of about (orig / gcd) taps: rates whose gcd is tiny (32001 Hz ->
# 16 kHz: 16000 x 32069 float64, 4 GB) would exhaust memory. Above this size the input rate is rounded to
# a nearby one that shares a large divisor with the output rate (see ``_reduced``).
_MAX_KERNEL_BYTES = 64 * 2**20
_MAX_RATE_ERROR = 0.005  # relative timing error allowed by that rounding (0.5 %)


def _kernel_bytes(orig: int, new: int) -> int:
    width = math.ceil(_LOWPASS_WIDTH * orig / (min(orig, new) * _ROLLOFF))
    return 8 * new * (2 * width + orig)


@lru_cache(maxsize=64)
def _reduced(orig_sr: int, new_sr: int) -> tuple[int, int]:
    """The resampling ratio as (orig, new) divided by their gcd.

    When that ratio needs a kernel above ``_MAX_KERNEL_BYTES``, the input rate is rounded to the nearest
    multiple of 10, 100 or 1000 Hz whose kernel fits and whose relative error is at most 0.5 % (a warning
    says so, once per rate pair): the audio then plays that much faster or slower, which no front-end can
    hear. Rates that fit neither way raise ValueError.
    """
    if int(orig_sr) != orig_sr or int(new_sr) != new_sr or orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"sample rates must be positive integers, got {orig_sr} -> {new_sr}")
    orig_sr, new_sr = int(orig_sr), int(new_sr)
    g = math.gcd(orig_sr, new_sr)
    if _kernel_bytes(orig_sr // g, new_sr // g) <= _MAX_KERNEL_BYTES:
        return orig_sr // g, new_sr // g
    for step in (10, 100, 1000):
        rate = round(orig_sr / step) * step
        if rate <= 0 or abs(rate - orig_sr) / orig_sr > _MAX_RATE_ERROR:
            break
        g = math.gcd(rate, new_sr)
        if _kernel_bytes(rate // g, new_sr // g) <= _MAX_KERNEL_BYTES:
            log.warning("resampling %d Hz -> %d Hz as if the input were %d Hz (the exact ratio needs a %d MB filter); "
                        "timing error %.3f %%", orig_sr, new_sr, rate, _kernel_bytes(orig_sr, new_sr) // 2**20,
                        100 * abs(rate - orig_sr) / orig_sr)  # fmt: skip
            return rate // g, new_sr // g
    raise ValueError(f"cannot resample {orig_sr} Hz -> {new_sr} Hz: the exact filter is too large and no rate within "
                     f"{100 * _MAX_RATE_ERROR:g} % has a usable ratio")


def resample(
    wave: Tensor,
    orig_sr: int,
    new_sr: int,
    lowpass_filter_width: int = _LOWPASS_WIDTH,
    rolloff: float = _ROLLOFF,
    beta: float = _KAISER_BETA,
) -> Tensor:
    """Band-limited polyphase resampling with a Kaiser-windowed sinc (torchaudio's algorithm).

    The rate ratio is reduced by the gcd, so e.g. 44100 -> 16000 uses 160 phases of a 441-step
    polyphase filter; the cut-off is ``rolloff`` times the lower Nyquist frequency.

    Args:
        wave: (..., S) float waveform.
        orig_sr, new_sr: integer sample rates.
        lowpass_filter_width: zero crossings of the sinc on each side (sharper with more).
        rolloff: cut-off as a fraction of the lower Nyquist frequency.
        beta: Kaiser window shape (higher: lower side lobes, wider transition).

    Returns:
        (..., ceil(S * new_sr / orig_sr)) in the input's dtype (float32 for integer input).
    """
    if orig_sr == new_sr:
        return wave
    orig, new = _reduced(orig_sr, new_sr)
    if not wave.is_floating_point():
        wave = wave.float()
    shape = wave.shape
    length = shape[-1]
    kernel, width = _sinc_kernel(orig, new, lowpass_filter_width, float(rolloff), float(beta))
    x = wave.reshape(-1, 1, length)  # (N, 1, S)
    x = F.pad(x, (width, width + orig))
    y = F.conv1d(x, kernel.to(device=wave.device, dtype=wave.dtype), stride=orig)  # (N, new, groups)
    y = y.transpose(1, 2).reshape(x.shape[0], -1)  # (N, groups * new): phases interleaved in time
    target = math.ceil(new * length / orig)
    return y[:, :target].reshape(*shape[:-1], target)


class StreamingResampler:
    """Chunked ``resample`` of a 1-D stream: same kernel, context carried across ``push`` calls."""

    def __init__(self, orig_sr: int, new_sr: int) -> None:
        self.orig, self.new = _reduced(orig_sr, new_sr)
        kernel, self.width = _sinc_kernel(self.orig, self.new, _LOWPASS_WIDTH, _ROLLOFF, _KAISER_BETA)
        self.kernel = kernel.float()
        self.taps = kernel.shape[-1]  # 2*width + orig
        self.buffer = np.zeros(self.width, dtype=np.float32)  # left zero padding, as in resample()
        self.consumed = 0  # input samples pushed so far
        self.emitted = 0  # output samples returned so far

    def _run(self) -> np.ndarray:
        # Output group i reads padded[i*orig : i*orig + taps]; run all complete groups in the buffer.
        groups = (self.buffer.size - self.taps) // self.orig + 1 if self.buffer.size >= self.taps else 0
        if groups <= 0:
            return np.zeros(0, dtype=np.float32)
        used = (groups - 1) * self.orig + self.taps
        x = torch.from_numpy(np.ascontiguousarray(self.buffer[:used]))[None, None]
        y = F.conv1d(x, self.kernel, stride=self.orig)[0].T.reshape(-1).numpy()
        self.buffer = self.buffer[groups * self.orig :]
        return y

    def push(self, block: np.ndarray) -> np.ndarray:
        self.buffer = np.concatenate([self.buffer, block.astype(np.float32, copy=False)])
        self.consumed += block.size
        out = self._run()
        self.emitted += out.size
        return out

    def flush(self) -> np.ndarray:
        self.buffer = np.concatenate([self.buffer, np.zeros(self.width + self.orig, dtype=np.float32)])
        out = self._run()
        target = math.ceil(self.new * self.consumed / self.orig)
        out = out[: max(0, target - self.emitted)]
        self.emitted += out.size
        return out
