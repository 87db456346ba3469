"""Audio decoding: any file soundfile or FFmpeg (PyAV) reads -> mono float32, checked block by block.

Errors (:class:`AudioError`) name the file and the problem: missing, empty, truncated, undecodable,
non-finite samples, an implausible sample rate.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from avseg.audio.resample import StreamingResampler, resample

__all__ = ["AudioError", "SOUNDFILE_SUFFIXES", "container_truncation", "decode_audio_stream", "load_audio"]

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
SOUNDFILE_SUFFIXES = frozenset({".wav", ".wave", ".flac", ".ogg", ".oga", ".aif", ".aiff"})

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
    if path.suffix.lower() in SOUNDFILE_SUFFIXES:
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
    resampler = None if out_rate == rate else StreamingResampler(rate, out_rate)
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
