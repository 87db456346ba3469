"""``avseg segment``: segment the sounding objects of your own videos.

For each input video, ``OUT/<video name>/`` receives:

- ``masks/000000.png ...``: one 8-bit grey PNG per sampled frame, sounding probability x 255, at the
  frame's displayed size (semantic models: ``classes/000000.png`` class-index PNGs with the VOC palette too);
- ``overlay.mp4``: the sampled frames with the mask blended in red, each shown for its sample interval,
  with the original audio re-encoded as AAC (H.264 / yuv420p; MPEG-4 Part 2 when libx264 is missing);
- ``preview.gif`` (small, at most ``GIF_FRAMES`` frames spread over the video) and ``contact_sheet.png``
  (frames, overlays and masks of up to ``SHEET_FRAMES`` frames);
- ``summary.json``: the video's properties, per frame its time, sounding area fraction (pixels with
  probability > 0.5; semantic models: pixels whose most likely class is not background) and mean
  probability (semantic models: the classes present with area and mean probability), files and timings.

``OUT/summary.json`` lists every video. A folder without ``summary.json`` is incomplete (its video failed).
Everything streams: memory is bounded by one batch of frames, the audio ring buffer and small thumbnails.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from PIL import Image

from avseg.data.imageio import save_png_atomic
from avseg.data.layout import voc_palette
from avseg.engine.evaluate import save_probability_png
from avseg.fileio import atomic_write_bytes, write_text_atomic
from avseg.inference.predictor import FramePrediction, Predictor
from avseg.inference.video import VideoError, VideoInfo, probe_video
from avseg.visualize import contact_sheet, mask_image, overlay, save_image_atomic

if TYPE_CHECKING:  # PyAV is imported where a video is written (it is slow to import)
    from av import AudioFrame, AudioResampler, AudioStream, VideoStream
    from av.container import InputContainer

log = logging.getLogger("avseg")

__all__ = ["SegmentError", "segment_video", "segment_videos", "OverlayWriter", "Thumbnails"]

GIF_FRAMES = 40  # at most this many frames in preview.gif
GIF_SIDE = 240  # longer side of a GIF frame, pixels
SHEET_FRAMES = 8  # frames in contact_sheet.png
SHEET_TILE = 160
OVERLAY_MAX_SIDE = 1280  # overlay.mp4 is downscaled to this longer side (the masks keep full size)
THRESHOLD = 0.5  # sounding area = fraction of pixels above this probability


class SegmentError(ValueError):
    """Some videos could not be segmented; the message names each file and its problem."""


# --- keeping a few evenly spread frames of a stream of unknown length -----------------------------------
class Thumbnails:
    """Keeps at most ``capacity`` items spread evenly over a stream, whatever its length.

    Items are kept every ``stride``-th; when the buffer overflows every other item is dropped and the
    stride doubles, so memory stays bounded and coverage stays uniform.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self.stride = 1
        self.items: list[tuple[int, Any]] = []

    def wants(self, index: int) -> bool:
        return index % self.stride == 0

    def add(self, index: int, item: Any) -> None:
        if not self.wants(index):
            return
        self.items.append((index, item))
        if len(self.items) > self.capacity:
            self.stride *= 2
            self.items = [(i, x) for i, x in self.items if i % self.stride == 0]


# --- overlay video --------------------------------------------------------------------------------------
def _video_codec() -> str:
    import av

    try:
        av.Codec("libx264", "w")
        return "libx264"
    except Exception:
        return "mpeg4"


class OverlayWriter:
    """An MP4 of overlay frames at explicit times, with a source file's audio re-encoded as AAC.

    Args:
        path: output .mp4, written to a temporary file and renamed on ``close`` (atomic).
        width, height: frame size; made even (yuv420p needs it) by dropping one pixel row/column.
        audio_source: file whose first audio track is muxed in (None: no audio).
        audio_offset: seconds from the video start to that track's first sample.

    Audio is decoded while video frames are written (``write`` pulls it up to the frame's time), so
    packets are interleaved and neither stream is buffered whole.
    """

    def __init__(self, path: Path, width: int, height: int, audio_source: Path | None = None, audio_offset: float = 0.0) -> None:
        import av

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Written beside the destination and renamed on close: readers never see a half-written MP4.
        self._tmp = self.path.with_name(f".{self.path.stem}.{os.getpid()}.tmp.mp4")
        self.width, self.height = max(2, width - width % 2), max(2, height - height % 2)
        self.codec = _video_codec()
        self._out = av.open(str(self._tmp), "w", format="mp4")
        self._video = cast("VideoStream", self._out.add_stream(self.codec, rate=30))  # _video_codec names a video codec
        self._video.width, self._video.height, self._video.pix_fmt = self.width, self.height, "yuv420p"
        self._video.time_base = Fraction(1, 1000)
        self._video.codec_context.time_base = Fraction(1, 1000)
        if self.codec == "libx264":
            self._video.options = {"preset": "veryfast", "crf": "23"}
        else:
            self._video.bit_rate = 2_000_000
        self._last_pts = -1
        self._held: tuple[np.ndarray, int] | None = None
        self._durations: dict[int, int] = {}
        self._audio_in: InputContainer | None = None
        self._audio_out: AudioStream | None = None
        self._resampler: AudioResampler | None = None
        self._frames: Iterator[AudioFrame] | None = None
        self._audio_samples = 0
        self._audio_done = True
        if audio_source is not None:
            self._open_audio(Path(audio_source), audio_offset)

    def _open_audio(self, source: Path, offset: float) -> None:
        import av

        self._audio_in = av.open(str(source))
        stream = self._audio_in.streams.audio[0]
        rate = int(stream.codec_context.sample_rate or 48000)
        rates = av.Codec("aac", "w").audio_rates or []
        if rates and rate not in rates:
            rate = 48000
        layout = "mono" if (stream.codec_context.channels or 1) == 1 else "stereo"  # more channels: downmix
        self._audio_out = self._out.add_stream("aac", rate=rate, layout=layout)
        self._audio_rate = rate
        self._resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate)
        self._frames = self._audio_in.decode(stream)
        self._audio_samples = max(0, round(offset * rate))  # a late audio start stays late
        self._audio_done = False

    def _pull_audio(self, until: float | None) -> None:
        """Encode source audio up to ``until`` seconds (all of it when None)."""
        while not self._audio_done and (until is None or self._audio_samples / self._audio_rate < until):
            # set together by _open_audio, which is what makes _audio_done False
            assert self._audio_in is not None and self._frames is not None
            assert self._resampler is not None and self._audio_out is not None
            try:
                frame = next(self._frames)
            except StopIteration:
                frame = None
            except Exception as exc:
                raise VideoError(f"audio track of {self._audio_in.name} is corrupt ({type(exc).__name__}: {exc})") from exc
            if frame is not None:
                frame.pts = None  # timestamps are rebuilt from the sample count: contiguous audio
            for out in self._resampler.resample(frame):
                out.pts = self._audio_samples
                out.time_base = Fraction(1, self._audio_rate)
                self._audio_samples += out.samples
                for packet in self._audio_out.encode(out):
                    self._out.mux(packet)
            if frame is None:
                for packet in self._audio_out.encode(None):
                    self._out.mux(packet)
                self._audio_done = True

    def write(self, image: np.ndarray, start: float) -> None:
        """Add (H, W, 3) uint8 ``image`` shown from ``start`` seconds until the next one (or ``close``'s end).

        A frame is encoded when the next arrives: only then is its display duration known (the MP4 keeps
        per-frame durations, so variable frame rates and 1-fps samples play at their true times).
        """
        if image.shape[1] != self.width or image.shape[0] != self.height:
            image = np.asarray(Image.fromarray(image).resize((self.width, self.height), Image.Resampling.BILINEAR))
        pts = max(round(start * 1000), self._last_pts + 1)
        if self._held is not None:
            self._encode(*self._held, duration=pts - self._held[1])
        self._held = (np.ascontiguousarray(image), pts)
        self._last_pts = pts
        self._pull_audio(start + 1.0)

    def _encode(self, image: np.ndarray | None, pts: int, duration: int) -> None:
        import av

        if image is not None:
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 1000)
            self._durations[pts] = max(1, duration)
        packets = self._video.encode(frame if image is not None else None)
        for packet in packets:
            if packet.pts is not None:
                packet.duration = self._durations.pop(packet.pts, 0)
            self._out.mux(packet)

    def close(self, end: float | None = None) -> Path:
        """Finish both streams and move the file into place; ``end``: when the last frame stops showing."""
        if self._held is not None:
            image, pts = self._held
            last = round(end * 1000) - pts if end is not None else 0
            self._encode(image, pts, duration=last if last > 0 else 40)
            self._held = None
        self._encode(None, 0, 0)
        self._pull_audio(None)
        self._out.close()
        if self._audio_in is not None:
            self._audio_in.close()
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        for c in (self._out, self._audio_in):
            try:
                if c is not None:
                    c.close()
            except Exception:
                pass
        self._tmp.unlink(missing_ok=True)


# --- one video ------------------------------------------------------------------------------------------
def _overlay_size(info: VideoInfo) -> tuple[int, int]:
    scale = min(1.0, OVERLAY_MAX_SIDE / max(info.width, info.height))
    return max(2, round(info.width * scale)), max(2, round(info.height * scale))


def _small(image: np.ndarray, side: int) -> np.ndarray:
    h, w = image.shape[:2]
    scale = side / max(h, w)
    if scale >= 1:
        return image
    return np.asarray(Image.fromarray(image).resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR))


def _frame_record(fp: FramePrediction, predictor: Predictor, mask_name: str) -> dict[str, Any]:
    sounding = fp.sounding
    record: dict[str, Any] = {
        "index": fp.index, "time": round(fp.time, 4), "pts_time": round(fp.pts_time, 4),
        "area": round(float((sounding > THRESHOLD).mean()), 5), "mean_prob": round(float(sounding.mean()), 5),
        "mask": mask_name,
    }  # fmt: skip
    if predictor.output == "semantic":
        classes = fp.probs.argmax(0)
        present = []
        for c in np.unique(classes):
            if c == 0:
                continue
            region = classes == c
            name = predictor.class_names[c] if predictor.class_names and c < len(predictor.class_names) else f"class {int(c)}"
            present.append({"class": int(c), "name": name, "area": round(float(region.mean()), 5), "score": round(float(fp.probs[c][region].mean()), 4)})
        record["classes"] = sorted(present, key=lambda r: -r["area"])
        record["area"] = round(float((classes != 0).mean()), 5)  # as the classes say: argmax is not background
    return record


def _overlay_image(fp: FramePrediction) -> np.ndarray:
    return overlay(fp.image, fp.sounding)


def segment_video(
    predictor: Predictor,
    path: Path,
    out_dir: Path,
    fps: float = 1.0,
    allow_silent: bool = False,
    progress: bool = True,
    write_overlay: bool = True,
) -> dict[str, Any]:
    """Segment one video into ``out_dir`` (see the module docstring); returns its summary.

    Raises:
        VideoError / AudioError: unusable input, naming the file. Nothing is written before the video
            and its audio track have been opened and checked.
    """
    from tqdm import tqdm

    start = time.perf_counter()
    path, out_dir = Path(path), Path(out_dir)
    info = probe_video(path)
    timings: dict[str, float] = {"decode": 0.0, "audio": 0.0, "model": 0.0, "write": 0.0}
    predictions = predictor.predict_video(path, fps=fps, allow_silent=allow_silent, info=info, timings=timings)
    first = next(predictions)  # opens and checks the audio track before anything is written
    silent = predictor.audio.frontend is not None and not info.has_audio
    writer = None
    if write_overlay:
        w, h = _overlay_size(info)
        writer = OverlayWriter(out_dir / "overlay.mp4", w, h, None if silent or not info.has_audio else path, info.audio_offset)
    gif, sheet = Thumbnails(GIF_FRAMES), Thumbnails(SHEET_FRAMES)
    records: list[dict[str, Any]] = []
    bar = tqdm(total=info.expected_samples(fps), desc=path.name, unit="frame", disable=not progress, leave=False)
    end_time = 0.0
    try:
        fp: FramePrediction | None = first
        while fp is not None:
            t0 = time.perf_counter()
            name = f"masks/{fp.index:06d}.png"
            save_probability_png(fp.sounding, out_dir / name)
            if predictor.output == "semantic":
                save_png_atomic(out_dir / "classes" / f"{fp.index:06d}.png", fp.probs.argmax(0).astype(np.uint8), palette=voc_palette(256))
            records.append(_frame_record(fp, predictor, name))
            shown = max(0.0, fp.time - 0.5 / fps) if fps > 0 else fp.time
            if fps > 0:
                end_time = fp.time + 0.5 / fps
            else:  # every frame: the last one shows until the stream ends (or one nominal frame long)
                step = 1.0 / info.average_fps if info.average_fps else 0.04
                end_time = info.duration if info.duration and info.duration > fp.time else fp.time + step
            over = _overlay_image(fp)
            if writer is not None:
                writer.write(over, shown)
            if gif.wants(fp.index):
                gif.add(fp.index, (_small(over, GIF_SIDE), fp.time))
            if sheet.wants(fp.index):
                tile = _small(fp.image, SHEET_TILE)
                small_mask = _small((fp.sounding * 255).astype(np.uint8), SHEET_TILE).astype(np.float32) / 255.0
                sheet.add(fp.index, (tile, _small(over, SHEET_TILE), mask_image(small_mask), fp.time))
            timings["write"] += time.perf_counter() - t0
            bar.update(1)
            fp = next(predictions, None)
        t0 = time.perf_counter()
        if writer is not None:
            writer.close(end_time)
        outputs = {"overlay": "overlay.mp4" if writer is not None else None}
        outputs["gif"] = _write_gif(out_dir / "preview.gif", gif.items, fps)
        rows = [[t[0] for _, t in sheet.items], [t[1] for _, t in sheet.items], [t[2] for _, t in sheet.items]]
        save_image_atomic(contact_sheet(rows, ["frame", "overlay", "mask"], [f"{t[3]:.1f} s" for _, t in sheet.items]), out_dir / "contact_sheet.png")
        outputs["contact_sheet"] = "contact_sheet.png"
        timings["write"] += time.perf_counter() - t0
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        bar.close()
    total = time.perf_counter() - start
    summary = {
        "video": str(path), "model": predictor.name, "output": predictor.output, "fps": fps,
        "width": info.width, "height": info.height, "rotation": info.rotation, "mirrored": info.orientation.mirrored,
        "duration": info.duration, "video_codec": info.video_codec,
        "audio": {"codec": info.audio_codec, "sample_rate": info.audio_rate, "channels": info.audio_channels, "silent": silent,
                  "frontend": predictor.audio.frontend, "window_seconds": predictor.audio.window_seconds},
        "threshold": THRESHOLD, "num_frames": len(records), "frames": records, **outputs,
        "seconds": {k: round(v, 3) for k, v in {**timings, "total": total}.items()},
    }  # fmt: skip
    write_text_atomic(out_dir / "summary.json", json.dumps(summary, indent=2))
    return summary


def _write_gif(path: Path, items: list[tuple[int, Any]], fps: float) -> str | None:
    """A small looping GIF of the kept overlay thumbnails (PIL, adaptive palette per frame)."""

    if not items:
        return None
    import io

    images = [Image.fromarray(img).convert("P", palette=Image.Palette.ADAPTIVE, colors=128) for _, (img, _) in items]
    times = [t for _, (_, t) in items]
    gaps = np.diff(times) if len(times) > 1 else np.array([1.0 / fps if fps > 0 else 0.2])
    # Play at least 2 frames per second and at most 20, whatever the sampling rate.
    ms = int(np.clip(1000 * float(np.median(gaps)), 50, 500))
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=ms, loop=0, optimize=True)
    atomic_write_bytes(path, buf.getvalue())
    return path.name


def _output_names(videos: list[Path]) -> list[str]:
    """One folder name per video: its stem, suffixed when two inputs share a stem."""
    names: list[str] = []
    for v in videos:
        base = v.stem or "video"
        name, n = base, 2
        while name in names:
            name, n = f"{base}_{n}", n + 1
        names.append(name)
    return names


def segment_videos(
    predictor: Predictor,
    videos: list[Path],
    out: Path,
    fps: float = 1.0,
    allow_silent: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Segment every video into ``out/<name>/`` and write ``out/summary.json``.

    A video that fails (missing, corrupt, no audio track without ``allow_silent``) does not stop the
    others; afterwards SegmentError lists every failure (exit status 2 on the command line).
    """

    if fps < 0 or not math.isfinite(fps):
        raise ValueError(f"--fps must be >= 0 (0 = every frame), got {fps}")
    out = Path(out)
    results: list[dict[str, Any]] = []
    failures: list[str] = []
    for video, name in zip(videos, _output_names(videos)):
        try:
            s = segment_video(predictor, video, out / name, fps=fps, allow_silent=allow_silent, progress=progress)
        except ValueError as exc:  # VideoError, AudioError: the message names the file
            log.error("%s", exc)
            failures.append(str(exc))
            results.append({"video": str(video), "folder": name, "error": str(exc)})
            continue
        log.info("%s: %d frames in %.1f s -> %s", video, s["num_frames"], s["seconds"]["total"], out / name)
        results.append({"video": str(video), "folder": name, "frames": s["num_frames"], "seconds": s["seconds"]["total"],
                        "mean_area": round(float(np.mean([f["area"] for f in s["frames"]])), 5)})  # fmt: skip
    index = {"model": predictor.name, "fps": fps, "videos": results}
    write_text_atomic(out / "summary.json", json.dumps(index, indent=2))
    if failures:
        raise SegmentError(f"{len(failures)} of {len(videos)} videos failed: " + "; ".join(failures))
    return index
