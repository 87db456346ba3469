"""Audio decoding and pure, batched torch audio front-ends.

Shape conventions: ``S`` samples of a mono waveform, ``T`` frames of a video (one per second in
AVSBench), ``S_w`` samples of one frame's audio window, ``F x W`` a spectrogram (frequency bins x
time steps). Every front-end returns a 1-channel "image" ``(..., 1, F, W)`` so that audio encoders
can treat it like a grey-scale picture.

Nothing here needs torchaudio, librosa or scipy: decoding goes through soundfile (wav/flac/ogg) or
PyAV (any container FFmpeg reads), the maths is plain torch, and each front-end reproduces the
reference implementation named in its docstring (pinned by ``tests/test_audio.py``).

One front-end, ``aisfx-embed``, runs a frozen pretrained network: aisfx's CNN, defined beside the
front-ends in :mod:`avseg.audio.aisfx` (``avseg.models`` imports it from there for its encoder registry).
"""

from __future__ import annotations

import logging
import math
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from avseg.audio.aisfx import AISFX_EMBED_DIM, frozen_aisfx

__all__ = [
    "AudioError",
    "FRONTENDS",
    "container_truncation",
    "FrontendSpec",
    "compute_features",
    "cut_windows",
    "decode_audio_stream",
    "feature_shape",
    "fit_length",
    "frame_windows",
    "load_audio",
    "aisfx_embeddings",
    "aisfx_log_mel",
    "log_mel",
    "log_stft",
    "resample",
    "rms",
    "vggish_examples",
]


log = logging.getLogger(__name__)


class AudioError(ValueError):
    """An audio file cannot be used; the message names the file and the problem.

    ``path`` and ``problem`` (the message without the file name) are set when the error is about one file,
    so a report that lists files (``avseg data validate``) does not repeat the path.
    """

    def __init__(self, message: str, *, path: Path | str | None = None, problem: str | None = None) -> None:
        super().__init__(message)
        self.path = str(path) if path is not None else None
        self.problem = problem if problem is not None else message


def _error(path: Path, problem: str) -> AudioError:
    """``audio file PATH <problem>``, e.g. problem = "is truncated (...)"."""
    return AudioError(f"audio file {path} {problem}", path=path, problem=f"audio {problem}")


# ----------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------

# Containers libsndfile reads natively; everything else (mp4, mkv, webm, m4a, mp3, ...) goes
# through FFmpeg via PyAV. soundfile is tried first for these because it is exact and fast.
_SOUNDFILE_SUFFIXES = frozenset({".wav", ".wave", ".flac", ".ogg", ".oga", ".aif", ".aiff"})

# Samples per block read from soundfile when streaming (about 4 s at 16 kHz; memory stays bounded).
_SF_BLOCK = 65536


def _check_file(path: Path) -> None:
    if not path.exists():
        raise _error(path, "does not exist")
    if not path.is_file():
        raise AudioError(f"audio path {path} is not a file", path=path, problem="audio path is not a file")
    if path.stat().st_size == 0:
        raise _error(path, "is 0 bytes")
    problem = container_truncation(path)
    if problem is not None:
        raise _error(path, f"is truncated: {problem}")


# The largest chunk size a RIFF header can give; writers that stream to a pipe put it (or 0) for "unknown".
_RIFF_UNKNOWN = (0, 0xFFFFFFFF)
_ISO_BMFF_TYPES = frozenset({b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"moof", b"styp", b"sidx", b"uuid"})


def container_truncation(path: Path) -> str | None:
    """Why a WAV (RIFF) or MP4/MOV/M4A (ISO-BMFF) file is cut short, or None.

    Decoders read such files up to where the bytes end without complaint, so a copy that stopped half-way
    would silently give shorter audio; the chunk / box sizes in the file say how long it should be.
    Other formats, RF64 and sizes marked unknown are not checked (None).
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) == 12 and head[:4] == b"RIFF" and head[8:12] == b"WAVE":
            offset = 12
            while offset + 8 <= size:
                f.seek(offset)
                chunk_id, chunk_size = struct.unpack("<4sI", f.read(8))
                if chunk_size in _RIFF_UNKNOWN and chunk_id == b"data":
                    return None  # streamed WAV of unknown length: the data runs to the end of the file
                end = offset + 8 + chunk_size
                if end > size:
                    name = chunk_id.decode("latin-1")
                    return f"its '{name.strip()}' chunk declares {chunk_size} bytes but only {size - offset - 8} follow"
                if chunk_id == b"data":
                    return None
                offset = end + (chunk_size & 1)  # chunks are padded to even sizes
            return None
        if len(head) >= 8 and head[4:8] in _ISO_BMFF_TYPES:
            offset = 0
            while offset + 8 <= size:
                f.seek(offset)
                box_size, box_type = struct.unpack(">I4s", f.read(8))
                header = 8
                if box_size == 1:  # 64-bit size follows the type
                    raw = f.read(8)
                    if len(raw) < 8:
                        return f"box '{box_type.decode('latin-1')}' at byte {offset} is cut off"
                    box_size, header = struct.unpack(">Q", raw)[0], 16
                elif box_size == 0:  # the last box runs to the end of the file
                    return None
                if box_size < header:
                    return None  # not a box structure we understand; let the decoder judge
                if offset + box_size > size:
                    name = box_type.decode("latin-1")
                    return f"its '{name}' box at byte {offset} declares {box_size} bytes but the file ends after {size - offset}"
                offset += box_size
            return None
    return None


def _soundfile_blocks(path: Path) -> tuple[int, Iterator[np.ndarray]] | None:
    """(native rate, iterator of mono float32 blocks) through libsndfile, or None if it cannot read."""
    import soundfile as sf

    try:
        handle = sf.SoundFile(str(path))
    except Exception:  # libsndfile cannot parse it: let PyAV try (or report it as corrupt)
        return None
    try:
        _check_rate(path, int(handle.samplerate))
    except AudioError:
        handle.close()
        raise

    def blocks() -> Iterator[np.ndarray]:
        with handle:
            while True:
                try:
                    block = handle.read(_SF_BLOCK, dtype="float32", always_2d=True)  # (n, C)
                except Exception as e:
                    raise _error(path, f"is corrupt or truncated: {e}") from e
                if block.shape[0] == 0:
                    return
                yield block.mean(axis=1, dtype=np.float32)  # channels averaged -> (n,)

    return int(handle.samplerate), blocks()


def _frame_to_mono(frame: object) -> np.ndarray:
    """A decoded PyAV AudioFrame -> (n,) float32 mono (channels averaged)."""
    arr = frame.to_ndarray()  # type: ignore[attr-defined]
    fmt = frame.format  # type: ignore[attr-defined]
    channels = len(frame.layout.channels)  # type: ignore[attr-defined]
    if fmt.is_planar:  # (C, n)
        arr = arr.reshape(channels, -1)
    else:  # packed: (1, n*C) interleaved
        arr = arr.reshape(-1, channels).T
    # Integer PCM to [-1, 1] the way FFmpeg's own s16->flt conversion does (divide by 2^(bits-1)).
    kind = arr.dtype.kind
    if kind == "u":  # u8 is offset binary
        arr = (arr.astype(np.float32) - 128.0) / 128.0
    elif kind == "i":
        arr = arr.astype(np.float32) / float(2 ** (8 * arr.dtype.itemsize - 1))
    return arr.astype(np.float32, copy=False).mean(axis=0, dtype=np.float32)


def _pyav_blocks(path: Path) -> tuple[int, Iterator[np.ndarray]]:
    """(native rate, iterator of mono float32 blocks) through PyAV's first audio stream."""
    import av

    try:
        container = av.open(str(path))
    except Exception as e:
        raise _error(path, f"is unreadable or corrupt: {e}") from e
    streams = list(container.streams.audio)
    if not streams:
        what = f" (FFmpeg reads it as '{getattr(container.format, 'name', '?')}': {len(container.streams)} stream(s), none of them audio)"
        container.close()
        raise AudioError(f"{path} has no audio track{what}", path=path, problem=f"file has no audio track{what}")
    stream = streams[0]
    try:
        rate = int(stream.codec_context.sample_rate or stream.rate or 0)
    except Exception:  # no decoder for the track (e.g. a WAV with an unknown format tag)
        rate = 0
    if rate <= 0:
        container.close()
        raise AudioError(f"audio track of {path} has no valid sample rate", path=path, problem="audio track has no valid sample rate")
    try:
        _check_rate(path, rate)
    except AudioError:
        container.close()
        raise

    def blocks() -> Iterator[np.ndarray]:
        try:
            for frame in container.decode(stream):
                if frame.sample_rate and int(frame.sample_rate) != rate:
                    problem = f"changes sample rate mid-stream ({rate} -> {frame.sample_rate} Hz)"
                    raise AudioError(f"audio track of {path} {problem}", path=path, problem=f"audio track {problem}")
                yield _frame_to_mono(frame)
        except AudioError:
            raise
        except Exception as e:
            raise AudioError(f"audio track of {path} is corrupt: {e}", path=path, problem=f"audio track is corrupt: {e}") from e
        finally:
            container.close()

    return rate, blocks()


def _native_blocks(path: Path) -> tuple[int, Iterator[np.ndarray]]:
    """Open ``path`` and return its native sample rate and an iterator of mono float32 blocks."""
    path = Path(path)
    _check_file(path)
    if path.suffix.lower() in _SOUNDFILE_SUFFIXES:
        opened = _soundfile_blocks(path)
        if opened is not None:
            return opened
    return _pyav_blocks(path)


# Native rates a real recording can have; anything else is a corrupt header (and would make the resampler
# build an absurd filter).
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1000, 768_000


def _check_rate(path: Path, rate: int) -> None:
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise _error(path, f"declares a sample rate of {rate} Hz (expected {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz; a corrupt header?)")


def _check_block(path: Path, block: np.ndarray, offset: int, rate: int) -> None:
    if not np.isfinite(block).all():
        bad = offset + int(np.flatnonzero(~np.isfinite(block))[0])
        raise _error(path, f"holds NaN/Inf samples (first at {bad / rate:.3f} s)")


# Files already warned about as silent (one warning per file and process, not one per epoch).
_WARNED_SILENT: set[str] = set()
_MAX_WARNED = 100_000


def _warn_silent(path: Path) -> None:
    """All-zero audio is accepted (a silent clip is a valid input) but logged once per file."""
    key = str(path)
    if key in _WARNED_SILENT:
        return
    if len(_WARNED_SILENT) < _MAX_WARNED:
        _WARNED_SILENT.add(key)
    log.warning("audio file %s is all zeros (silent): its features are those of silence", path)


def load_audio(path: Path, sample_rate: int | None = None, warn_silent: bool = True) -> tuple[np.ndarray, int]:
    """Decode a whole audio file, or the first audio track of a video, to mono float32.

    Args:
        path: wav/flac/ogg (libsndfile) or any container FFmpeg reads (mp4, mkv, webm, m4a, ...).
        sample_rate: resample to this rate (``resample``); None keeps the native rate.
        warn_silent: log a warning (once per file) when the audio is all zeros.

    Returns:
        ``(audio, rate)``: audio (S,) float32 in [-1, 1] (channels averaged, clipped after
        resampling), and its sample rate.

    Raises:
        AudioError: missing, 0-byte, truncated (``container_truncation``), unreadable or corrupt file, no
            audio track, zero samples, or NaN/Inf samples; the message names the file. All-zero audio is
            accepted with a warning logged once per file.
    """
    path = Path(path)
    rate, blocks = _native_blocks(path)
    parts: list[np.ndarray] = []
    offset = 0
    for block in blocks:
        _check_block(path, block, offset, rate)
        parts.append(block)
        offset += block.shape[0]
    if offset == 0:
        raise _error(path, "has zero samples")
    audio = np.concatenate(parts) if len(parts) > 1 else parts[0]
    if warn_silent and not audio.any():
        _warn_silent(path)
    if sample_rate is not None and sample_rate != rate:
        audio = resample(torch.from_numpy(audio), rate, sample_rate).numpy()
        rate = int(sample_rate)
    return np.clip(audio, -1.0, 1.0).astype(np.float32, copy=False), rate


def decode_audio_stream(
    path: Path, sample_rate: int | None = None, chunk_seconds: float = 10.0
) -> Iterator[np.ndarray]:
    """Stream a long file as mono float32 chunks with bounded memory.

    The concatenated chunks equal ``load_audio(path, sample_rate)[0]`` (up to float rounding):
    resampling is done with the same kernel, carrying its context across chunk boundaries.

    Args:
        path: as for ``load_audio``.
        sample_rate: output rate; None keeps the native rate.
        chunk_seconds: length of each yielded chunk; the last one may be shorter.

    Yields:
        (n,) float32 chunks in [-1, 1], n = round(chunk_seconds * rate) except for the last.

    Raises:
        AudioError: as ``load_audio`` (NaN/Inf and corruption are raised when reached; zero samples
            at the end).
    """
    if chunk_seconds <= 0:
        raise ValueError(f"chunk_seconds must be > 0, got {chunk_seconds}")
    path = Path(path)
    rate, blocks = _native_blocks(path)
    out_rate = rate if sample_rate is None else int(sample_rate)
    chunk = max(1, round(chunk_seconds * out_rate))
    resampler = None if out_rate == rate else _StreamingResampler(rate, out_rate)
    pending: list[np.ndarray] = []
    pending_len = 0
    offset = 0
    audible = False

    def emit(final: bool) -> Iterator[np.ndarray]:
        nonlocal pending, pending_len
        if pending_len == 0 or (pending_len < chunk and not final):
            return
        buf = np.concatenate(pending)
        n_full = pending_len // chunk
        for i in range(n_full):
            yield np.clip(buf[i * chunk : (i + 1) * chunk], -1.0, 1.0)
        rest = buf[n_full * chunk :]
        if final and rest.size:
            yield np.clip(rest, -1.0, 1.0)
            rest = rest[:0]
        pending, pending_len = ([rest] if rest.size else []), int(rest.size)

    # Decoded packets are small (1024 samples for AAC): the resampler gets about a second at a time, as
    # one convolution per packet costs ~10x more. Its output does not depend on how the input is cut.
    raw: list[np.ndarray] = []
    raw_len = 0

    def push(final: bool) -> None:
        nonlocal raw, raw_len, pending_len
        if not raw or (raw_len < rate and not final):
            return
        block = np.concatenate(raw) if len(raw) > 1 else raw[0]
        raw, raw_len = [], 0
        out = block if resampler is None else resampler.push(block)
        if out.size:
            pending.append(out.astype(np.float32, copy=False))
            pending_len += out.size

    for block in blocks:
        _check_block(path, block, offset, rate)
        offset += block.shape[0]
        audible = audible or bool(block.any())
        raw.append(block)
        raw_len += block.shape[0]
        push(final=False)
        yield from emit(final=False)
    if offset == 0:
        raise _error(path, "has zero samples")
    if not audible:
        _warn_silent(path)
    push(final=True)
    if resampler is not None:
        out = resampler.flush()
        if out.size:
            pending.append(out.astype(np.float32, copy=False))
            pending_len += out.size
    yield from emit(final=True)


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


class _StreamingResampler:
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


# ----------------------------------------------------------------------------------------------
# Spectral front-ends
# ----------------------------------------------------------------------------------------------


def _as_float(wave: Tensor | np.ndarray) -> Tensor:
    if isinstance(wave, np.ndarray):
        wave = torch.from_numpy(np.ascontiguousarray(wave))
    if not wave.is_floating_point():
        wave = wave.float()
    return wave


def _frames(wave: Tensor, window_length: int, hop: int) -> Tensor:
    """(..., S) -> (..., frames, window_length) without padding: frames = 1 + (S - window) // hop."""
    if wave.shape[-1] < window_length:
        raise ValueError(f"need at least {window_length} samples, got {wave.shape[-1]}")
    return wave.unfold(-1, window_length, hop)


def _periodic_hann(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.hann_window(n, periodic=True, dtype=dtype, device=device)


# --- VGGish ------------------------------------------------------------------------------------

VGGISH_SAMPLE_RATE = 16000
_VGGISH_WINDOW = 400  # 25 ms at 16 kHz
_VGGISH_HOP = 160  # 10 ms
_VGGISH_FFT = 512  # next power of two above the window
_VGGISH_MELS = 64
_VGGISH_EXAMPLE = 96  # frames per example (0.96 s)
# Samples giving exactly one example: 1 + (S - 400) // 160 = 96 STFT frames.
VGGISH_EXAMPLE_SAMPLES = _VGGISH_WINDOW + (_VGGISH_EXAMPLE - 1) * _VGGISH_HOP  # 15600 = 0.975 s


@lru_cache(maxsize=8)
def _vggish_mel_matrix(
    num_spectrogram_bins: int = _VGGISH_FFT // 2 + 1,
    sample_rate: int = VGGISH_SAMPLE_RATE,
    num_mel_bins: int = _VGGISH_MELS,
    lower_edge_hertz: float = 125.0,
    upper_edge_hertz: float = 7500.0,
) -> Tensor:
    """VGGish ``mel_features.spectrogram_to_mel_matrix``: (bins, mels) float64.

    Triangles are linear in HTK mel (1127 ln(1 + f/700)), unlike torchaudio whose triangles are linear
    in Hz; the DC bin is zeroed.
    """

    def hz_to_mel(f: Tensor) -> Tensor:
        return 1127.0 * torch.log(1.0 + f / 700.0)

    bins_mel = hz_to_mel(torch.linspace(0.0, sample_rate / 2.0, num_spectrogram_bins, dtype=torch.float64))
    edges = torch.linspace(
        float(hz_to_mel(torch.tensor(lower_edge_hertz, dtype=torch.float64))),
        float(hz_to_mel(torch.tensor(upper_edge_hertz, dtype=torch.float64))),
        num_mel_bins + 2,
        dtype=torch.float64,
    )
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]  # (mels,)
    lower_slope = (bins_mel[:, None] - lower) / (center - lower)
    upper_slope = (upper - bins_mel[:, None]) / (upper - center)
    weights = torch.clamp(torch.minimum(lower_slope, upper_slope), min=0.0)
    weights[0, :] = 0.0
    return weights


def _vggish_log_mel(wave16k: Tensor) -> Tensor:
    """(..., S) at 16 kHz -> (..., frames, 64) VGGish log-mel, frames = 1 + (S - 400) // 160."""
    frames = _frames(wave16k, _VGGISH_WINDOW, _VGGISH_HOP)  # (..., frames, 400)
    frames = frames * _periodic_hann(_VGGISH_WINDOW, wave16k.dtype, wave16k.device)
    magnitude = torch.fft.rfft(frames, n=_VGGISH_FFT).abs()  # (..., frames, 257), zero-padded at the end
    mel = magnitude @ _vggish_mel_matrix().to(device=wave16k.device, dtype=wave16k.dtype)  # (..., frames, 64)
    return torch.log(mel + 0.01)


def vggish_examples(wave: Tensor, sample_rate: int, num_examples: int | None = None) -> Tensor:
    """VGGish input examples (``vggish_input.waveform_to_examples``), in torch.

    16 kHz; 25 ms periodic-Hann STFT frames every 10 ms without centre padding; FFT length 512;
    magnitude; 64 HTK-mel bands over 125-7500 Hz; log(mel + 0.01); non-overlapping 96-frame
    (0.96 s) examples, a trailing partial example dropped.

    Args:
        wave: (S,) mono waveform (VGGish averages channels before this).
        sample_rate: rate of ``wave``; resampled to 16 kHz with ``resample``.
        num_examples: if given, return exactly this many: extra ones are cut, missing ones are copies
            of the last (the official AVSBench preprocessing).

    Returns:
        (n, 1, 96, 64); n = num_examples if given, else the number of whole examples. A clip shorter
        than one example (15600 samples at 16 kHz) is zero-padded to one.
    """
    wave = _as_float(wave)
    if wave.dim() != 1:
        raise ValueError(f"vggish_examples expects a mono (S,) waveform, got shape {tuple(wave.shape)}")
    if num_examples is not None and num_examples < 1:
        raise ValueError(f"num_examples must be >= 1, got {num_examples}")
    wave = resample(wave, sample_rate, VGGISH_SAMPLE_RATE)
    if wave.shape[-1] < VGGISH_EXAMPLE_SAMPLES:
        wave = F.pad(wave, (0, VGGISH_EXAMPLE_SAMPLES - wave.shape[-1]))
    log_mel_frames = _vggish_log_mel(wave)  # (frames, 64)
    n = log_mel_frames.shape[0] // _VGGISH_EXAMPLE
    examples = log_mel_frames[: n * _VGGISH_EXAMPLE].reshape(n, 1, _VGGISH_EXAMPLE, _VGGISH_MELS)
    if num_examples is not None:
        if n >= num_examples:
            examples = examples[:num_examples]
        else:
            examples = torch.cat([examples, examples[-1:].expand(num_examples - n, -1, -1, -1)])
    return examples


def _vggish_windows(windows: Tensor) -> Tensor:
    """(T, S_w) 16 kHz windows -> (T, 1, 96, 64): the first VGGish example of each window."""
    if windows.shape[-1] < VGGISH_EXAMPLE_SAMPLES:
        windows = F.pad(windows, (0, VGGISH_EXAMPLE_SAMPLES - windows.shape[-1]))
    return _vggish_log_mel(windows)[..., None, :_VGGISH_EXAMPLE, :]


def _vggish_clip(wave: Tensor, num_frames: int) -> Tensor:
    """Whole 16 kHz clip (S,) -> (T, 1, 96, 64): example t for frame t, as the official AVSBench .pkl."""
    return vggish_examples(wave, VGGISH_SAMPLE_RATE, num_examples=num_frames)


# --- WS-AVS log-mel ------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _htk_mel_fbank(n_freqs: int, sample_rate: int, n_mels: int, f_min: float, f_max: float) -> Tensor:
    """torchaudio ``melscale_fbanks(..., norm=None, mel_scale="htk")``: (n_freqs, n_mels) float64.

    Band edges are equally spaced in HTK mel (2595 log10(1 + f/700)); triangles are linear in Hz.
    """
    all_freqs = torch.linspace(0, sample_rate // 2, n_freqs, dtype=torch.float64)  # torchaudio uses sr // 2

    def hz_to_mel(f: float) -> float:
        return 2595.0 * math.log10(1.0 + f / 700.0)

    m_pts = torch.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2, dtype=torch.float64)
    f_pts = 700.0 * (10.0 ** (m_pts / 2595.0) - 1.0)  # (n_mels + 2,)
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts[None, :] - all_freqs[:, None]  # (n_freqs, n_mels + 2)
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    return torch.clamp(torch.minimum(down, up), min=0.0)


def log_mel(
    wave: Tensor,
    sample_rate: int = 8000,
    n_fft: int = 512,
    hop_length: int = 187,
    n_mels: int = 128,
    f_min: float = 0.0,
    f_max: float | None = None,
    eps: float = 1e-6,
) -> Tensor:
    """WS-AVS log-mel: log(torchaudio ``MelSpectrogram`` + eps), in torch.

    Centred frames (reflect padding of n_fft // 2 on each side), periodic Hann window of n_fft, power
    spectrum, HTK mel filterbank without normalisation.

    Args:
        wave: (..., S) waveform at ``sample_rate``; S > n_fft // 2 (reflect padding needs it).
        f_max: upper band edge, default sample_rate / 2.

    Returns:
        (..., 1, n_mels, 1 + S // hop_length); 3 s at 8 kHz gives (..., 1, 128, 129).
    """
    wave = _as_float(wave)
    pad = n_fft // 2
    if wave.shape[-1] <= pad:
        raise ValueError(f"log_mel needs more than {pad} samples (reflect padding), got {wave.shape[-1]}")
    lead = wave.shape[:-1]
    x = F.pad(wave.reshape(-1, 1, wave.shape[-1]), (pad, pad), mode="reflect")[:, 0]  # (N, S + n_fft)
    frames = _frames(x, n_fft, hop_length) * _periodic_hann(n_fft, x.dtype, x.device)  # (N, W, n_fft)
    power = torch.fft.rfft(frames).abs().pow(2)  # (N, W, n_fft // 2 + 1)
    fbank = _htk_mel_fbank(n_fft // 2 + 1, int(sample_rate), n_mels, float(f_min), float(f_max or sample_rate / 2))
    mel = power @ fbank.to(device=x.device, dtype=x.dtype)  # (N, W, n_mels)
    out = torch.log(mel + eps).transpose(1, 2)  # (N, n_mels, W)
    return out.reshape(*lead, 1, n_mels, out.shape[-1])


# --- aisfx log-mel (the pretrained audio encoder's input) ------------------------------------------

AISFX_SAMPLE_RATE = 44100
AISFX_N_FFT = 2048  # 46 ms
AISFX_HOP = 1024  # 23 ms
AISFX_N_MELS = 96
AISFX_LOG_MAX = 9.457798957824707  # aisfx divides log10(1 + 1e4 * mel) by this ("original" normalisation)
AISFX_BLOCK_FRAMES = 100  # spectrogram frames per aisfx embedding block (~2.3 s)
# 99 hops = 2.2988 s: Essentia's FrameCutter then yields exactly the 100 frames of one aisfx block (frames
# centred on samples 0, 1024, ..., 101376; the last one's centre reaches the end of the window).
AISFX_WINDOW_SECONDS = (AISFX_BLOCK_FRAMES - 1) * AISFX_HOP / AISFX_SAMPLE_RATE


def _htk_mel(f: Tensor) -> Tensor:
    return 2595.0 * torch.log10(1.0 + f / 700.0)


@lru_cache(maxsize=4)
def _essentia_mel_fbank(n_freqs: int, sample_rate: int, n_mels: int, f_min: float, f_max: float) -> Tensor:
    """Essentia ``MelBands(warpingFormula='htkMel', weighting='warping', normalize='unit_sum')``: (n_freqs, n_mels) float64.

    Essentia 2.1 (melbands.cpp, triangularbands.cpp): band edges f_0..f_{n+1} equally spaced in HTK mel;
    band i weights bin j (frequency j * (sr/2) / (n_freqs - 1)) by a triangle that is linear in *mel*
    (weighting 'warping', not linear in Hz as librosa / torchaudio), over the bins
    ``int(f_i / df + 0.5) <= j < int(f_{i+2} / df + 0.5)`` only; then each band's weights sum to 1.
    """
    df = (sample_rate / 2.0) / (n_freqs - 1)
    m_min, m_max = (2595.0 * math.log10(1.0 + f / 700.0) for f in (f_min, f_max))
    mel_edges = torch.linspace(m_min, m_max, n_mels + 2, dtype=torch.float64)
    edges = 700.0 * (10.0 ** (mel_edges / 2595.0) - 1.0)  # (n_mels + 2,) Hz
    bins = torch.arange(n_freqs, dtype=torch.float64)
    freqs = bins * df
    mel = _htk_mel(freqs)[:, None]  # (n_freqs, 1)
    lo, mid, hi = edges[None, :-2], edges[None, 1:-1], edges[None, 2:]  # (1, n_mels) each
    m_lo, m_mid, m_hi = mel_edges[None, :-2], mel_edges[None, 1:-1], mel_edges[None, 2:]
    up = (mel - m_lo) / (m_mid - m_lo)
    down = (m_hi - mel) / (m_hi - m_mid)
    f = freqs[:, None]
    weights = torch.where((f >= lo) & (f < mid), up, torch.where((f >= mid) & (f < hi), down, torch.zeros_like(up)))
    first = torch.floor(lo / df + 0.5)  # Essentia's int(x + 0.5) on positive x
    last = torch.floor(hi / df + 0.5)  # exclusive
    weights = weights * ((bins[:, None] >= first) & (bins[:, None] < last))
    total = weights.sum(0, keepdim=True)
    return weights / torch.where(total > 0, total, torch.ones_like(total))


def _symmetric_hann(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Essentia's 'hann': 0.5 - 0.5 cos(2 pi i / (n - 1)), i.e. the symmetric window (not normalised)."""
    return torch.hann_window(n, periodic=False, dtype=dtype, device=device)


def aisfx_log_mel(wave: Tensor) -> Tensor:
    """The spectrogram the aisfx encoder was trained on (aisfx 0.1.2's Essentia front-end), in torch.

    Reproduces ``aisfx/spectrogram/spectrogram_essentia.py`` with aisfx's settings (checked line by line
    against Essentia's FrameCutter, Windowing, Spectrum and MelBands sources, and pinned by
    ``tests/test_audio.py``):

    - frames of 2048 samples every 1024, the first centred on sample 0 (Essentia's ``FrameCutter`` with
      ``startFromZero=False`` starts at -1024 and zero-pads);
    - symmetric Hann window, not normalised (Essentia's ``hann`` divides by n - 1);
    - power spectrum (``Spectrum`` magnitude, squared by ``MelBands(type='power')``);
    - 96 HTK mel bands over 0-22050 Hz, triangles linear in mel, unit-sum (``_essentia_mel_fbank``);
    - ``log10(1 + 10000 * mel) / 9.4578`` (``shift_scale_log`` then aisfx's "original" min-max scaling).

    aisfx's librosa alternative differs (periodic Hann, triangles linear in Hz, peak-normalised audio,
    and its (mel, time) output is blocked along the wrong axis); the weights were trained on Essentia's.
    Not reproduced: Essentia's resampler (the caller resamples) and its -100 dB dither of all-zero frames
    (log10(1 + 1e4 * 1e-10) is 0 to 6 digits).

    Args:
        wave: (..., S) waveform at 44.1 kHz.

    Returns:
        (..., 1, 96, 1 + S // 1024), the first 1 + S // 1024 of Essentia's frames (Essentia adds one more
        when S is not a multiple of 1024); a window of ``AISFX_WINDOW_SECONDS`` gives (..., 1, 96, 100).
    """
    wave = _as_float(wave)
    lead = wave.shape[:-1]
    pad = AISFX_N_FFT // 2
    x = F.pad(wave.reshape(-1, wave.shape[-1]), (pad, pad))  # (N, S + n_fft), zeros
    frames = _frames(x, AISFX_N_FFT, AISFX_HOP) * _symmetric_hann(AISFX_N_FFT, x.dtype, x.device)  # (N, W, n_fft)
    power = torch.fft.rfft(frames).abs().pow(2)  # (N, W, n_fft // 2 + 1)
    fbank = _essentia_mel_fbank(AISFX_N_FFT // 2 + 1, AISFX_SAMPLE_RATE, AISFX_N_MELS, 0.0, AISFX_SAMPLE_RATE / 2)
    mel = power @ fbank.to(device=x.device, dtype=x.dtype)  # (N, W, 96)
    out = (torch.log10(1.0 + 1e4 * mel) / AISFX_LOG_MAX).transpose(1, 2)  # (N, 96, W)
    return out.reshape(*lead, 1, AISFX_N_MELS, out.shape[-1])



# --- frozen aisfx embeddings (pretrained features computed once, like AVSBench's VGGish .pkl) -------

def aisfx_embeddings(wave: Tensor) -> Tensor:
    """Frozen pretrained aisfx embeddings of 44.1 kHz windows: ``aisfx_log_mel`` then aisfx's CNN.

    About 1.9 GFLOPs per 2.3 s window (~0.1 s on one CPU thread), so datasets memoise this front-end
    (``FrontendSpec.memoise``) and ``avseg data cache`` can store it: training then pays for it once per
    clip, not once per epoch. Needs the ``aisfx`` wheel (``pip install --no-deps aisfx==0.1.2``) for the
    weights; computed on the CPU in float32, deterministic.

    Args:
        wave: (..., S) waveform at 44.1 kHz, S >= 7 * 1024 (the CNN pools time by 8).

    Returns:
        (..., 1, 512, 1): a 1-channel "spectrogram" of height 512 and width 1, so the batch contract and
        the collate code stay those of the spectrogram front-ends; ``AUDIO_ENCODERS["embed-mlp"]`` reads it.
    """
    spec = aisfx_log_mel(wave)  # (..., 1, 96, W)
    lead = spec.shape[:-3]
    flat = spec.reshape(-1, 1, AISFX_N_MELS, spec.shape[-1]).float().cpu()  # (N, 1, 96, W)
    with torch.no_grad():
        emb = frozen_aisfx()(flat)  # (N, 512)
    return emb.reshape(*lead, 1, AISFX_EMBED_DIM, 1).to(wave.device if isinstance(wave, Tensor) else "cpu")

# --- EZ-VSL log-STFT -----------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _tukey_periodic(n: int, alpha: float = 0.25) -> Tensor:
    """scipy ``get_window(('tukey', alpha), n)``: the symmetric Tukey of n + 1 points, last dropped."""
    m = n + 1
    k = torch.arange(m, dtype=torch.float64)
    width = int(math.floor(alpha * (m - 1) / 2.0))
    w = torch.ones(m, dtype=torch.float64)
    head = k[: width + 1]
    tail = k[m - width - 1 :]
    w[: width + 1] = 0.5 * (1 + torch.cos(math.pi * (-1 + 2.0 * head / alpha / (m - 1))))
    w[m - width - 1 :] = 0.5 * (1 + torch.cos(math.pi * (-2.0 / alpha + 1 + 2.0 * tail / alpha / (m - 1))))
    return w[:n]


def log_stft(
    wave: Tensor, sample_rate: int = 16000, nperseg: int = 512, hop_length: int = 238, eps: float = 1e-7
) -> Tensor:
    """EZ-VSL spectrogram: log(scipy.signal.spectrogram(x, fs, nperseg, noverlap=nperseg-hop) + eps).

    scipy's defaults: periodic Tukey(0.25) window, per-segment mean removed ('constant' detrend), no
    padding, PSD 'density' scaling |X|^2 / (fs * sum(w^2)), one-sided with every bin except DC and
    Nyquist doubled.

    Args:
        wave: (..., S) waveform at ``sample_rate``, S >= nperseg.

    Returns:
        (..., 1, nperseg // 2 + 1, 1 + (S - nperseg) // hop_length); 3 s at 16 kHz gives
        (..., 1, 257, 200).
    """
    wave = _as_float(wave)
    frames = _frames(wave, nperseg, hop_length)  # (..., W, nperseg)
    frames = frames - frames.mean(dim=-1, keepdim=True)
    window = _tukey_periodic(nperseg).to(device=wave.device, dtype=wave.dtype)
    psd = torch.fft.rfft(frames * window).abs().pow(2) / (sample_rate * window.pow(2).sum())
    scale = torch.full((psd.shape[-1],), 2.0, dtype=psd.dtype, device=psd.device)
    scale[0] = 1.0
    if nperseg % 2 == 0:  # even FFT: the last bin is Nyquist, not doubled
        scale[-1] = 1.0
    out = torch.log(psd * scale + eps).transpose(-1, -2)  # (..., F, W)
    return out.unsqueeze(-3)


def fit_length(wave: np.ndarray, n: int) -> np.ndarray:
    """(S,) -> (n,) float32: ``wave`` cut, or looped from its start, to n samples; zeros when it is empty.

    How a replacement soundtrack (another video's, in negative-audio training and the listening evaluation)
    takes the length of the clip it replaces.
    """
    return np.resize(wave, n).astype(np.float32) if len(wave) else np.zeros(n, np.float32)


def rms(wave: np.ndarray) -> float:
    """Root mean square of a waveform (0 for an empty one), accumulated in float64."""
    return float(np.sqrt(np.mean(np.square(wave, dtype=np.float64)))) if len(wave) else 0.0


# ----------------------------------------------------------------------------------------------
# Per-frame windows
# ----------------------------------------------------------------------------------------------


def frame_windows(
    wave: Tensor | np.ndarray,
    sample_rate: int,
    num_frames: int,
    window_seconds: float = 3.0,
    mode: str = "centred",
    clip_seconds: float | None = None,
) -> Tensor:
    """Cut one audio window per video frame (AVSBench: one frame per second).

    mode "centred": frame t (0-based) gets S_w = round(window_seconds * sample_rate) samples centred
        on t + 0.5 s, i.e. starting at floor(((2t + 1) * sample_rate - S_w) / 2). Where the window
        reaches past the clip's start or end it reads silence (zeros): the first frame must not hear the
        last second (looping did that, and on multi-source clips it put another second's source into the
        first frame's window). A clip shorter than one window is looped instead (spec: "looped if
        short"), as there is no clip to centre on.
    mode "clip": the official WS-AVS behaviour, every frame gets the whole clip: the clip looped or
        cut to S_w = round(clip_seconds * sample_rate) from its start (clip_seconds defaults to
        num_frames, one second per frame); ``window_seconds`` is not used.

    Args:
        wave: (S,) mono waveform, S >= 1.

    Returns:
        (T, S_w) with T = num_frames.
    """
    wave = _as_float(wave)
    if wave.dim() != 1:
        raise ValueError(f"frame_windows expects a mono (S,) waveform, got shape {tuple(wave.shape)}")
    length = wave.shape[0]
    if length == 0:
        raise ValueError("frame_windows got an empty waveform")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if mode == "centred":
        size = round(window_seconds * sample_rate)
        starts = torch.div(
            (2 * torch.arange(num_frames) + 1) * sample_rate - size, 2, rounding_mode="floor"
        )  # (T,)
        idx = starts[:, None] + torch.arange(size)[None, :]  # (T, S_w)
    elif mode == "clip":
        size = round((num_frames if clip_seconds is None else clip_seconds) * sample_rate)
        idx = torch.arange(size)[None, :].expand(num_frames, size)
    else:
        raise ValueError(f"unknown frame_windows mode {mode!r}; expected 'centred' or 'clip'")
    if size < 1:
        raise ValueError(f"audio window of {size} samples; window/clip seconds must be positive")
    if mode == "clip":
        return wave[torch.remainder(idx, length).to(wave.device)]
    return cut_windows(wave, idx)


def cut_windows(wave: Tensor, idx: Tensor) -> Tensor:
    """Samples ``wave[idx]`` of a (S,) track for (T, S_w) sample indices that may fall outside it: silence
    there, or, for a track shorter than one window, the track looped. The one rule for training windows
    (``frame_windows``) and for the predictor's windows at arbitrary frame times."""
    length = wave.shape[0]
    if length < idx.shape[-1]:
        return wave[torch.remainder(idx, length).to(wave.device)]
    inside = (idx >= 0) & (idx < length)  # (T, S_w)
    out = wave[idx.clamp(0, length - 1).to(wave.device)]
    return out * inside.to(device=wave.device, dtype=out.dtype)


# ----------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FrontendSpec:
    """A named audio front-end.

    Attributes:
        name: registry key.
        sample_rate: rate the windows must have.
        window_seconds: per-frame window length in "centred" mode.
        fn: (T, S_w) windows -> (T, 1, F, W) features.
        clip_fn: how "clip" mode treats the whole clip, (S,) and T -> (T, 1, F, W); None: ``fn`` on
            the clip repeated for every frame.
        memoise: the features are costly to compute and small to keep (frozen pretrained embeddings):
            ``AVSBenchDataset`` keeps them in memory per clip and reuses them across epochs.
    """

    name: str
    sample_rate: int
    window_seconds: float
    fn: Callable[[Tensor], Tensor]
    clip_fn: Callable[[Tensor, int], Tensor] | None = None
    memoise: bool = False

    @property
    def window_samples(self) -> int:
        return round(self.window_seconds * self.sample_rate)


FRONTENDS: dict[str, FrontendSpec] = {
    # One VGGish example per frame. 0.975 s (15600 samples) is the shortest window giving its 96
    # STFT frames without padding (0.96 s alone gives 94). In "clip" mode, example t of the whole
    # clip goes to frame t, exactly like the official AVSBench .pkl features.
    "vggish": FrontendSpec(
        "vggish", VGGISH_SAMPLE_RATE, VGGISH_EXAMPLE_SAMPLES / VGGISH_SAMPLE_RATE, _vggish_windows, _vggish_clip
    ),
    "wsavs-logmel": FrontendSpec("wsavs-logmel", 8000, 3.0, log_mel),
    "ezvsl-stft": FrontendSpec("ezvsl-stft", 16000, 3.0, log_stft),
    # The input of the pretrained aisfx audio encoder (``audio: aisfx``, ``audio_weights: aisfx``).
    "aisfx-logmel": FrontendSpec("aisfx-logmel", AISFX_SAMPLE_RATE, AISFX_WINDOW_SECONDS, aisfx_log_mel),
    # Frozen pretrained aisfx embeddings (T, 1, 512, 1) of the same windows, for ``audio: embed-mlp``:
    # computed once per clip (memoised), as the official AVSBench recipes use frozen VGGish features.
    "aisfx-embed": FrontendSpec(
        "aisfx-embed", AISFX_SAMPLE_RATE, AISFX_WINDOW_SECONDS, aisfx_embeddings, memoise=True
    ),
}


def _spec(name: str) -> FrontendSpec:
    try:
        return FRONTENDS[name]
    except KeyError:
        raise ValueError(f"unknown audio front-end {name!r}; choose one of {sorted(FRONTENDS)}") from None


def feature_shape(name: str) -> tuple[int, int]:
    """(F, W) of one frame's features from front-end ``name`` in "centred" mode."""
    spec = _spec(name)
    with torch.no_grad():
        out = spec.fn(torch.zeros(1, spec.window_samples))
    return int(out.shape[-2]), int(out.shape[-1])


def compute_features(
    name: str,
    wave: np.ndarray | Tensor,
    sample_rate: int,
    num_frames: int,
    mode: str = "centred",
    clip_seconds: float | None = None,
) -> Tensor:
    """Resample a clip, cut per-frame windows and apply front-end ``name``.

    Args:
        name: a key of ``FRONTENDS``.
        wave: (S,) mono waveform at ``sample_rate``.
        num_frames: T, frames of the video (one per second).
        mode: "centred" (a ``window_seconds`` window centred on each frame's second) or "clip" (every
            frame sees the whole clip, see ``frame_windows``; for "vggish", frame t gets example t).
        clip_seconds: clip length in "clip" mode (default num_frames seconds).

    Returns:
        (T, 1, F, W) float; (F, W) = ``feature_shape(name)`` in "centred" mode. In "clip" mode W grows
        with the clip for the spectrogram front-ends.
    """
    spec = _spec(name)
    wave = _as_float(wave)
    if wave.dim() != 1:
        raise ValueError(f"compute_features expects a mono (S,) waveform, got shape {tuple(wave.shape)}")
    wave = resample(wave, sample_rate, spec.sample_rate)
    if mode == "clip" and spec.clip_fn is not None:
        whole = frame_windows(wave, spec.sample_rate, 1, mode="clip", clip_seconds=clip_seconds or num_frames)[0]
        return spec.clip_fn(whole, num_frames)
    windows = frame_windows(wave, spec.sample_rate, num_frames, spec.window_seconds, mode, clip_seconds)
    return spec.fn(windows)
