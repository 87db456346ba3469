"""Streaming video decoding for inference on your own files (PyAV: any container and codec FFmpeg reads).

Nothing here holds a whole video: frames are decoded one at a time and only the sampled ones are turned
into RGB arrays; audio is streamed through a ring buffer that keeps the samples around the current time.

Conventions:

- Times are seconds from the start of the video stream (its first timestamp is 0).
- A frame is *displayed* from its timestamp until the next frame's timestamp, so sampling at ``fps`` takes
  for each sample time ``(k + 0.5) / fps`` the frame on screen at that instant. With ``fps = 1`` these are
  the middles of the seconds 0.5, 1.5, ...: the frame of second ``k`` and, as in AVSBench training (frame
  ``t`` hears the window centred on ``t + 0.5`` s), an audio window centred on the middle of that second.
  Variable frame rates need nothing special because only timestamps are used.
- Frames are returned as they are meant to be *seen*: the display matrix (or an old-style ``rotate``
  tag) is applied, so a portrait phone video gives portrait frames.
- Audio windows are cut from the mono track at the front-end's sample rate, centred on the frame time;
  before the start and after the end they read silence, exactly like ``avseg.audio.frame_windows`` does
  for training clips (the first frame must not hear the end of the track); a track shorter than one
  window is looped instead, as in training.
"""

from __future__ import annotations

import logging
import math
import struct
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avseg.audio.decode import SOUNDFILE_SUFFIXES, AudioError, container_truncation, decode_audio_stream
from avseg.audio.frontends import window_start
from avseg.audio.resample import StreamingResampler

log = logging.getLogger("avseg")

__all__ = ["VideoError", "VideoInfo", "Orientation", "SampledFrame", "AudioTrack", "probe_video", "iter_frames"]


class VideoError(ValueError):
    """A video file cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class VideoInfo:
    """What ``probe_video`` learns from a file's header and first frame.

    Attributes:
        width, height: display size in pixels (after rotation).
        orientation: how stored pictures are turned into displayed ones (display matrix or rotate tag).
        duration: seconds, from the container (None when unknown).
        average_fps: the stream's average frame rate (None when unknown; VFR files still decode fine).
        frames: the container's frame count (0 or None when unknown).
        audio_rate, audio_channels: the first audio track's native rate and channels (None: no audio).
        audio_offset: seconds between the video start and the audio start (audio_start - video_start).
    """

    path: Path
    width: int
    height: int
    orientation: Orientation
    duration: float | None
    average_fps: float | None
    frames: int | None
    video_codec: str
    audio_codec: str | None
    audio_rate: int | None
    audio_channels: int | None
    audio_offset: float

    @property
    def rotation(self) -> int:
        """Counter-clockwise display rotation in degrees (0, 90, 180, 270)."""
        return self.orientation.rotation

    @property
    def has_audio(self) -> bool:
        return self.audio_rate is not None

    def expected_samples(self, fps: float) -> int | None:
        """Frames ``iter_frames(fps)`` is expected to yield (for progress bars), or None when unknown."""
        if fps == 0:
            if self.frames:
                return int(self.frames)
            if self.duration and self.average_fps:
                return max(1, round(self.duration * self.average_fps))
            return None
        if self.duration:
            return max(1, math.ceil(self.duration * fps - 0.5))
        return None


@dataclass
class SampledFrame:
    """One sampled frame: ``image`` (H, W, 3) uint8 RGB as displayed, ``time`` the sample time in seconds
    (where its audio window is centred), ``pts_time`` the timestamp of the decoded frame shown then,
    ``index`` its position among the sampled frames."""

    index: int
    time: float
    pts_time: float
    image: np.ndarray


# --- opening and orientation ---------------------------------------------------------------------------
def _open(path: Path):
    import av

    path = Path(path)
    if not path.exists():
        raise VideoError(f"video {path} does not exist")
    if not path.is_file():
        raise VideoError(f"video path {path} is not a file")
    if path.stat().st_size == 0:
        raise VideoError(f"video {path} is 0 bytes")
    try:
        container = av.open(str(path))
    except Exception as exc:  # FFmpeg's own message says what it could not parse
        raise VideoError(f"video {path} is unreadable or corrupt ({type(exc).__name__}: {exc})") from exc
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path} has no video track")
    return container


def _display_matrix(frame) -> tuple[float, float, float, float] | None:
    """(a, b, c, d) of the frame's DISPLAYMATRIX side data, or None.

    FFmpeg's matrix maps a source pixel (x, y) (y pointing down) to its display position:
    x' = a x + c y, y' = b x + d y (libavutil/display.h).
    """
    try:
        container = frame.side_data
        # PyAV <= 18.1.0 iterates SideData objects; 18.1.1 iterates its keys (side-data types) like a mapping
        entries = [item if hasattr(item, "type") else container[item] for item in list(container)]
    except Exception:
        return None
    for sd in entries:
        if "DISPLAYMATRIX" in str(getattr(sd, "type", "")).upper():
            raw = bytes(sd)
            if len(raw) < 36:
                return None
            m = struct.unpack("<9i", raw[:36])
            return m[0] / 65536.0, m[1] / 65536.0, m[3] / 65536.0, m[4] / 65536.0
    return None


@dataclass(frozen=True)
class Orientation:
    """How a stored picture is turned into the displayed one: transpose, then mirror columns / rows.

    With the 2x2 display matrix snapped to a signed permutation, the eight combinations are exactly the
    eight EXIF orientations (rotations by multiples of 90 degrees, with or without a mirror).
    """

    transpose: bool = False
    flip_x: bool = False  # reverse columns (left-right)
    flip_y: bool = False  # reverse rows (top-bottom)

    @classmethod
    def from_matrix(cls, a: float, b: float, c: float, d: float) -> "Orientation":
        if abs(b) + abs(c) > abs(a) + abs(d):  # x' depends on y: the picture is transposed
            return cls(True, flip_x=c < 0, flip_y=b < 0)
        return cls(False, flip_x=a < 0, flip_y=d < 0)

    @classmethod
    def from_rotation(cls, degrees_ccw: int) -> "Orientation":
        rad = math.radians(degrees_ccw)
        # av_display_rotation_set(matrix, -degrees_ccw): a = cos, b = -sin, c = sin, d = cos
        return cls.from_matrix(math.cos(rad), -math.sin(rad), math.sin(rad), math.cos(rad))

    @property
    def rotation(self) -> int:
        """Counter-clockwise degrees (0, 90, 180, 270) as av_display_rotation_get / ffprobe report them."""
        a, b = (0, -1 if self.flip_y else 1) if self.transpose else (-1 if self.flip_x else 1, 0)
        return int(round(-math.degrees(math.atan2(b, a)))) % 360

    @property
    def mirrored(self) -> bool:
        """True when the matrix has a negative determinant (a mirror on top of the rotation)."""
        if self.transpose:
            return self.flip_x == self.flip_y
        return self.flip_x != self.flip_y

    def apply(self, image: np.ndarray) -> np.ndarray:
        """(H, W, C) stored -> (H', W', C) displayed, contiguous."""
        if self.transpose:
            image = image.transpose(1, 0, *range(2, image.ndim))
        if self.flip_x:
            image = image[:, ::-1]
        if self.flip_y:
            image = image[::-1]
        return np.ascontiguousarray(image)


def _orientation(path: Path, frame, stream) -> Orientation:
    """The display orientation: the display matrix, else an old-style ``rotate`` tag (clockwise degrees).

    Matrices that are not a multiple of 90 degrees are snapped to the nearest one (logged): pictures
    are not resampled through arbitrary rotations.
    """
    matrix = _display_matrix(frame)
    if matrix is not None:
        a, b, c, d = matrix
        scale = math.hypot(a, b) or 1.0
        if min(abs(a), abs(b)) / scale > 0.02:
            log.warning("%s: display matrix rotates by %.1f degrees; snapped to a multiple of 90", path, -math.degrees(math.atan2(b, a)))
        return Orientation.from_matrix(a, b, c, d)
    tags = {str(k).lower(): v for k, v in (stream.metadata or {}).items()}  # Matroska writes ROTATE
    tag = tags.get("rotate")
    if tag is None:
        return Orientation()
    try:
        clockwise = float(tag)
    except ValueError:
        log.warning("%s: ignoring unreadable rotate tag %r", path, tag)
        return Orientation()
    rounded = int(round(clockwise / 90.0)) * 90
    if abs(rounded - clockwise) > 1.0:
        log.warning("%s: rotate tag %s degrees snapped to %d", path, tag, rounded)
    return Orientation.from_rotation(-rounded)


def _seconds(value, time_base) -> float | None:
    return None if value is None or time_base is None else float(value * time_base)


def probe_video(path: Path) -> VideoInfo:
    """Read a file's header and first video frame.

    Raises:
        VideoError: missing, 0-byte, unreadable or corrupt file, no video track, or no decodable frame;
            the message names the file.
    """
    path = Path(path)
    container = _open(path)

    truncated = container_truncation(path)  # decoders read a cut file to its end without complaint
    if truncated is not None:
        container.close()
        raise VideoError(f"{path} is truncated: {truncated}")
    try:
        stream = container.streams.video[0]
        first = None
        try:
            for frame in container.decode(stream):
                first = frame
                break
        except Exception as exc:
            raise VideoError(f"video track of {path} is corrupt ({type(exc).__name__}: {exc})") from exc
        if first is None:
            raise VideoError(f"video track of {path} holds no decodable frame")
        orientation = _orientation(path, first, stream)
        w, h = int(first.width), int(first.height)
        if orientation.transpose:
            w, h = h, w
        video_start = _seconds(stream.start_time, stream.time_base)
        if video_start is None:
            video_start = float(first.time or 0.0)
        duration = _seconds(stream.duration, stream.time_base)
        if duration is None and container.duration is not None:
            duration = container.duration / 1_000_000.0
        audio = container.streams.audio[0] if container.streams.audio else None
        audio_rate = audio_channels = audio_codec = None
        audio_offset = 0.0
        if audio is not None:
            audio_rate = int(audio.codec_context.sample_rate or audio.rate or 0) or None
            audio_channels = int(audio.codec_context.channels or 0) or None
            audio_codec = audio.codec_context.name
            audio_start = _seconds(audio.start_time, audio.time_base)
            audio_offset = (audio_start - video_start) if audio_start is not None else 0.0
        rate = stream.average_rate or stream.guessed_rate
        return VideoInfo(
            path=path, width=w, height=h, orientation=orientation, duration=duration,
            average_fps=float(rate) if rate else None, frames=int(stream.frames or 0) or None,
            video_codec=stream.codec_context.name, audio_codec=audio_codec, audio_rate=audio_rate,
            audio_channels=audio_channels, audio_offset=float(audio_offset),
        )  # fmt: skip
    finally:
        container.close()


# --- frames ---------------------------------------------------------------------------------------------
def iter_frames(path: Path, fps: float = 1.0, info: VideoInfo | None = None) -> Iterator[SampledFrame]:
    """Decode a video and yield the frames sampled at ``fps``, streaming.

    Args:
        path: any file FFmpeg reads.
        fps: samples per second (sample times ``(k + 0.5) / fps``); 0 yields every decoded frame at its
            own timestamp.
        info: ``probe_video(path)`` when already known (for the orientation).

    Yields:
        SampledFrame in time order. A clip shorter than half a sample interval still yields its last
        frame once. Memory: one decoded frame plus the current RGB image.

    Raises:
        VideoError: unreadable or corrupt file (also when corruption is reached mid-stream).
    """
    if fps < 0 or not math.isfinite(fps):
        raise ValueError(f"fps must be >= 0, got {fps}")
    path = Path(path)
    info = info or probe_video(path)
    container = _open(path)
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"  # frame threading: decoding is the cost of every frame, sampled or not
    origin = _seconds(stream.start_time, stream.time_base)
    default_step = 1.0 / info.average_fps if info.average_fps else 1.0 / 25.0

    def rgb(frame) -> np.ndarray:
        return info.orientation.apply(frame.to_ndarray(format="rgb24"))

    index = 0
    k = 0  # next sample number
    prev = None  # (frame, time) currently on screen
    last_time = None
    warned = False
    try:
        frames = container.decode(stream)
        while True:
            try:
                frame = next(frames)
            except StopIteration:
                break
            except Exception as exc:
                raise VideoError(f"video track of {path} is corrupt near {last_time or 0.0:.2f} s ({type(exc).__name__}: {exc})") from exc
            t = frame.time
            if t is None:  # no timestamp: assume the nominal frame rate
                t = (last_time + default_step) if last_time is not None else 0.0
                if origin is None:
                    origin = 0.0
            else:
                if origin is None:
                    origin = float(t)
                t = float(t) - origin
            if last_time is not None and t <= last_time:
                if not warned:
                    log.warning("%s: timestamps go backwards or repeat near %.3f s; those frames are dropped", path, t)
                    warned = True
                continue
            last_time = t
            if fps == 0:
                yield SampledFrame(index, t, t, rgb(frame))
                index += 1
                continue
            # Every pending sample time before this frame's timestamp shows the previous frame.
            if prev is not None:
                image = None
                while (k + 0.5) / fps < t:
                    image = rgb(prev[0]) if image is None else image
                    yield SampledFrame(index, (k + 0.5) / fps, prev[1], image)
                    index += 1
                    k += 1
            prev = (frame, t)
        if fps > 0 and prev is not None:
            frame, t = prev
            step = float(frame.duration * frame.time_base) if frame.duration and frame.time_base else default_step
            end = t + step
            image = None
            while (k + 0.5) / fps < end:
                image = rgb(frame) if image is None else image
                yield SampledFrame(index, (k + 0.5) / fps, t, image)
                index += 1
                k += 1
            if index == 0:  # shorter than half a sample interval: its last frame, at its own time
                yield SampledFrame(0, t, t, rgb(frame))
                index = 1
    finally:
        container.close()
    if index == 0:
        raise VideoError(f"video track of {path} holds no decodable frame")


# --- audio ----------------------------------------------------------------------------------------------
class AudioTrack:
    """Per-frame audio windows of a file's first audio track, streamed with bounded memory.

    The track is decoded to mono at ``sample_rate`` twice: a first pass counts its samples; the second
    pass feeds a ring buffer that holds only the samples from the current window on. Tracks shorter than
    three windows are simply kept whole.

    Args:
        path: the video (or audio) file.
        sample_rate: rate of the windows (the audio front-end's rate).
        window: S_w, samples per window.
        offset: seconds from the video start to the first audio sample.
        silent: no audio track: every window is zeros (``--allow-silent``).
        native_rate: the track's own rate when known (``VideoInfo.audio_rate``); read from the file otherwise.
        inside: a window that would reach past the track's start or end is moved to lie just inside it (a
            model trained on ``inside`` or ``clip`` windows); False: it reads silence there.

    Memory: O(window + decode chunk), whatever the length of the file.
    """

    CHUNK_SECONDS = 4.0

    def __init__(
        self,
        path: Path,
        sample_rate: int,
        window: int,
        offset: float = 0.0,
        silent: bool = False,
        native_rate: int | None = None,
        inside: bool = False,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1 sample, got {window}")
        self.path = Path(path)
        self.sample_rate = int(sample_rate)
        self.window = int(window)
        self.offset = float(offset)
        self.silent = silent
        self.inside = inside
        self._rate_hint = native_rate
        self.length = 0  # N, samples in the track
        self._whole: np.ndarray | None = None
        self._chunks: deque[tuple[int, np.ndarray]] = deque()  # (first sample index, samples)
        self._stream: Iterator[np.ndarray] | None = None
        self._end = 0  # index after the last sample pulled into the ring buffer
        self._last_start: int | None = None
        if not silent:
            self._first_pass()

    def _decode(self) -> Iterator[np.ndarray]:
        """Mono chunks at ``sample_rate``: the same samples as ``decode_audio_stream(path, sample_rate)``.

        Resampled here, on whole native-rate chunks: decode_audio_stream pushes every codec frame
        (1024 samples for AAC) into its resampler separately, about 12x slower for the same output.
        """

        native = self._native_rate()
        chunks = decode_audio_stream(self.path, None, chunk_seconds=self.CHUNK_SECONDS)
        if native == self.sample_rate:
            yield from chunks
            return
        resampler = StreamingResampler(native, self.sample_rate)
        for chunk in chunks:
            out = resampler.push(chunk)
            if out.size:
                yield np.clip(out, -1.0, 1.0)
        out = resampler.flush()
        if out.size:
            yield np.clip(out, -1.0, 1.0)

    def _native_rate(self) -> int:
        """The track's own rate, read the way ``decode_audio_stream`` opens the file (soundfile, else PyAV)."""
        if self._rate_hint:
            return self._rate_hint

        if self.path.suffix.lower() in SOUNDFILE_SUFFIXES:
            import soundfile as sf

            try:
                return int(sf.info(str(self.path)).samplerate)
            except Exception:
                pass  # decode_audio_stream falls back to PyAV too
        import av

        try:
            with av.open(str(self.path)) as container:
                stream = container.streams.audio[0]
                return int(stream.codec_context.sample_rate or stream.rate)
        except Exception as exc:
            raise AudioError(f"audio track of {self.path} is unreadable ({type(exc).__name__}: {exc})") from exc

    def _first_pass(self) -> None:
        keep = 3 * self.window
        head: list[np.ndarray] = []
        head_len = 0
        for chunk in self._decode():
            self.length += chunk.size
            if head_len < keep:
                head.append(chunk[: keep - head_len])
                head_len += head[-1].size
        if self.length <= keep:
            self._whole = np.concatenate(head).astype(np.float32, copy=False)

    @property
    def seconds(self) -> float:
        return self.length / self.sample_rate

    def window_start(self, time: float) -> int:
        """First sample index (may be negative) of the window centred on ``time`` (video seconds).

        Same arithmetic as training: centre c samples, start floor((2c - S_w) / 2); with ``inside`` (and a
        track at least one window long) clamped to [0, N - S_w].
        """
        return window_start(2 * round((time - self.offset) * self.sample_rate), self.window, self.length, self.inside)

    def window_at(self, time: float) -> np.ndarray:
        """(S_w,) float32 samples centred on ``time``; call with non-decreasing times."""
        if self.silent:
            return np.zeros(self.window, np.float32)
        start = self.window_start(time)
        idx = np.arange(start, start + self.window)
        inside = (idx >= 0) & (idx < self.length)
        if self._whole is not None:
            if self.length < self.window:  # shorter than one window: looped, as in training
                return self._whole[np.remainder(idx, self.length)]
            return np.where(inside, self._whole[np.clip(idx, 0, self.length - 1)], 0.0).astype(np.float32)
        if self._last_start is not None and start < self._last_start:
            raise ValueError(f"{self.path}: audio windows must be requested in time order")
        self._last_start = start
        out = np.zeros(self.window, np.float32)  # silence before the start and after the end
        if inside.any():
            lo, hi = int(idx[inside][0]), int(idx[inside][-1]) + 1
            out[inside] = self._range(lo, hi)
        return out

    def _range(self, lo: int, hi: int) -> np.ndarray:
        """Samples [lo, hi) from the ring buffer, pulling chunks up to ``hi`` and dropping those before ``lo``."""
        if self._stream is None:
            self._stream = iter(self._decode())
        while self._end < hi:
            chunk = next(self._stream, None)
            if chunk is None:  # the second pass is shorter than the first: the file changed under us
                raise ValueError(f"{self.path}: audio track ended at sample {self._end}, expected {self.length}")
            self._chunks.append((self._end, chunk))
            self._end += chunk.size
        while self._chunks and self._chunks[0][0] + self._chunks[0][1].size <= lo:
            self._chunks.popleft()
        parts = [c[max(0, lo - s) : max(0, hi - s)] for s, c in self._chunks if s < hi and s + c.size > lo]
        return np.concatenate(parts) if len(parts) > 1 else parts[0]
