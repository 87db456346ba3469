"""Run a trained model on your own frames and sound: the Python API behind ``avseg segment``.

    from avseg.inference.predictor import Predictor

    predictor = Predictor.from_run("runs/demo/ws-avs", device="cpu")
    # frames (T, H, W, 3) uint8 RGB, audio (S,) or (S, C) float at sample_rate, frame_times (T,) seconds
    probs = predictor.predict_frames(frames, audio, sample_rate=44100, frame_times=[0.5, 1.5, 2.5])
    # probs: (T, H, W) float32 in [0, 1], the probability that each pixel belongs to a sounding object

    for fp in predictor.predict_video("clip.mp4", fps=1):  # streams the file, bounded memory
        fp.time, fp.image, fp.probs  # seconds, (H, W, 3) uint8 as displayed, (H, W) probabilities

Every frame is processed the way the model's training data was: the whole frame resized (not cropped)
to the run's ``image_size`` square with bilinear filtering and ImageNet-normalised; its audio is the
front-end's window (``data.audio_frontend``, e.g. 3 s of 8 kHz log-mel) centred on the frame time, cut
from the track (silence past its ends, as in training). Outputs are resized back to each frame's own size.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, cast

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from avseg.audio.frontends import FRONTENDS, cut_windows, window_start
from avseg.audio.resample import resample
from avseg.config import from_dict, load_yaml
from avseg.data.index import avss_classes
from avseg.engine.trainer import resolve_device
from avseg.inference.video import AudioTrack, SampledFrame, VideoError, VideoInfo, iter_frames, probe_video
from avseg.methods import METHODS
from avseg.runner import RunError, load_run, recipe_path
from avseg.types import IMAGENET_MEAN, IMAGENET_STD, AVBatch

log = logging.getLogger("avseg")

__all__ = ["AudioSettings", "FramePrediction", "Predictor", "sounding_probability"]

# AVSBench videos are 5 s (S4, MS3) or 10 s (AVSS v2): the "clip" audio window of training.
_CLIP_SECONDS = {"s4": 5.0, "ms3": 5.0, "avss": 10.0}


@dataclass(frozen=True)
class AudioSettings:
    """How per-frame audio features are made, as in the model's training data.

    Attributes:
        frontend: a key of ``avseg.audio.FRONTENDS``, or None for a visual-only model.
        sample_rate: rate the windows are cut at (the front-end's rate).
        window_seconds: window length; the front-end's own window, as the dataset uses it, or in
            ``clip`` mode the length of a training clip (every training frame heard its whole clip).
        inside: windows that would reach past the track's start or end are moved to lie just inside it
            (``inside`` and ``clip`` training windows, see ``avseg.audio.frame_windows``); False: they
            read silence there (``centred``). On a clip as long as the training clips a ``clip`` model
            then hears its whole clip at every frame, exactly as in training.
    """

    frontend: str | None
    sample_rate: int = 16000
    window_seconds: float = 3.0
    inside: bool = False

    @classmethod
    def from_data_config(cls, frontend: str | None, audio_window: str = "centred", layout: str = "s4") -> "AudioSettings":
        """Settings matching ``AVSBenchDataset(audio_frontend=frontend, audio_window=audio_window)``.

        The official ``pkl`` features are VGGish examples: the ``vggish`` front-end computes the same.
        """

        if frontend is None:
            return cls(None)
        if frontend == "pkl":
            frontend = "vggish"
        if frontend not in FRONTENDS:
            raise ValueError(f"unknown audio front-end {frontend!r}; expected one of {sorted(FRONTENDS)}")
        spec = FRONTENDS[frontend]
        seconds = spec.window_seconds
        if audio_window == "clip" and spec.clip_fn is None:
            seconds = _CLIP_SECONDS.get(layout, 5.0)
        return cls(frontend, spec.sample_rate, seconds, inside=audio_window in ("inside", "clip"))

    @property
    def window_samples(self) -> int:
        return round(self.window_seconds * self.sample_rate)

    def features(self, windows: Tensor) -> Tensor | None:
        """(T, S_w) windows at ``sample_rate`` -> (T, 1, F, W_a) features (None for visual-only models)."""
        if self.frontend is None:
            return None

        return FRONTENDS[self.frontend].fn(windows.float())


@dataclass
class FramePrediction:
    """One frame's prediction.

    Attributes:
        index: position among the sampled frames.
        time: sample time in seconds from the video start (the audio window is centred here).
        pts_time: timestamp of the decoded frame shown at ``time``.
        image: (H, W, 3) uint8 RGB, as displayed (rotation applied).
        probs: binary models: (H, W) float32 sounding probabilities; semantic models: (C, H, W) float32
            class probabilities, class 0 = background.
    """

    index: int
    time: float
    pts_time: float
    image: np.ndarray
    probs: np.ndarray

    @property
    def sounding(self) -> np.ndarray:
        """(H, W) probability that a pixel belongs to any sounding object."""
        return sounding_probability(self.probs)


def sounding_probability(probs: np.ndarray) -> np.ndarray:
    """(H, W) binary probabilities as they are; (C, H, W) class probabilities -> 1 - P(background)."""
    return probs if probs.ndim == 2 else 1.0 - probs[0]


def _resolve_device(device: str | torch.device) -> torch.device:
    if isinstance(device, torch.device):
        return device

    return resolve_device(device)


def _class_probabilities(scores: Tensor) -> Tensor:
    """(N, C, H, W) semantic scores -> class probabilities.

    The predictor contract says "class scores": a model returning a distribution over classes is taken
    as is; anything else (logits) goes through a softmax over C. Decided per call, and documented here.
    """
    sums = scores.sum(1)
    if scores.min() >= 0 and torch.allclose(sums, torch.ones_like(sums), atol=1e-3):
        return scores
    return scores.softmax(1)


def resolve_run_dir(path: str | Path) -> Path:
    """The run folder meant by ``path``: ``path`` itself when it holds ``config.yaml``; in a folder of runs
    (subfolders holding ``config.yaml``, as ``avseg demo`` writes) the only run it holds.

    Raises:
        avseg.runner.RunError: ``path`` holds several runs (the message lists them and the ``--run`` to
            pass), or neither is a run nor holds one.
    """

    path = Path(path)
    if (path / "config.yaml").is_file():
        return path
    if not path.is_dir():
        raise RunError(f"{path}: run folder not found")
    runs = sorted(p for p in path.iterdir() if p.is_dir() and (p / "config.yaml").is_file())
    if len(runs) == 1:
        log.info("%s is a folder of runs holding one run: using %s", path, runs[0])
        return runs[0]
    if runs:
        choices = " or ".join(f"--run {p}" for p in runs)
        raise RunError(f"{path} holds the runs {', '.join(p.name for p in runs)}: pass {choices}")
    raise RunError(f"{path} is not a run folder (no config.yaml) and holds no run (no subfolder with config.yaml)")


class Predictor:
    """A trained model with the preprocessing of its training data.

    Args:
        model: ``predict(AVBatch) -> (B, T, H, W)`` probabilities, or (B, T, C, H, W) class scores when
            ``model.output == "semantic"`` (the ``avseg.methods.base.Predictor`` protocol).
        image_size: square side the model was trained at (``data.image_size``).
        audio: how per-frame audio features are made (``AudioSettings.from_data_config``).
        device: where the model runs ("cpu", "cuda", "auto" or a torch.device).
        batch_size: frames per forward pass (memory: batch_size x 3 x image_size^2 floats, plus activations).
        class_names: semantic models: names by class index (0 = background); default ``model.class_names``.
        name: shown in summaries (e.g. the run folder).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        image_size: int,
        audio: AudioSettings,
        device: str | torch.device = "cpu",
        batch_size: int = 8,
        class_names: Sequence[str] | None = None,
        name: str = "",
    ) -> None:
        if image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {image_size}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = _resolve_device(device)
        self.model = model.to(self.device).eval()
        self.output = str(getattr(model, "output", "binary"))
        if self.output not in ("binary", "semantic"):
            raise ValueError(f"model.output must be 'binary' or 'semantic', got {self.output!r}")
        self.image_size = int(image_size)
        self.audio = audio
        self.batch_size = int(batch_size)
        names = class_names if class_names is not None else getattr(model, "class_names", None)
        self.class_names = list(names) if names is not None else None
        self.name = name
        self._mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)

    # --- construction --------------------------------------------------------------------------------
    @classmethod
    def from_run(cls, run_dir: str | Path, device: str | torch.device = "cpu", batch_size: int = 8) -> "Predictor":
        """The final model of a trained run folder (its ``config.yaml`` and final checkpoint).

        A folder of runs (e.g. ``runs/demo``, holding ``ws-avs/`` and ``supervised/``) is accepted when it
        holds exactly one run; see :func:`resolve_run_dir`.
        """

        run_dir = resolve_run_dir(run_dir)
        spec, cfg = load_run(run_dir)
        dev = _resolve_device(device)
        model = spec.load_predictor(cfg, run_dir, dev)
        return cls._from_config(model, cfg, dev, batch_size, name=str(run_dir))

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | Path,
        config: str | Path | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 8,
    ) -> "Predictor":
        """A model from a weights file (``.safetensors``) and the config it was trained with.

        Args:
            checkpoint: the final model's weights, e.g. ``RUN/segmenter/best.safetensors``.
            config: a run's ``config.yaml`` or a recipe (file or shipped name such as ``ws-avs/demo``)
                with a ``method:`` key; None looks for ``config.yaml`` in the checkpoint's run folder.
        """

        checkpoint = Path(checkpoint)
        if not checkpoint.is_file():
            raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
        if config is None:
            found = [p / "config.yaml" for p in checkpoint.resolve().parents[:2] if (p / "config.yaml").is_file()]
            if not found:
                raise RunError(f"no config.yaml beside {checkpoint}: pass --config (the run's config.yaml or a recipe)")
            config_path = found[0]
        else:
            config_path = recipe_path(str(config))
        raw = load_yaml(config_path)
        method = raw.pop("method", None)
        if method not in METHODS:
            raise RunError(f"{config_path}: needs a 'method:' key naming one of {sorted(METHODS)}, got {method!r}")
        spec = METHODS[method]
        raw.setdefault("data", {}).setdefault("root", ".")  # inference reads no dataset
        cfg: Any = from_dict(spec.config_cls, raw, source=str(config_path))  # the method's own config class
        dev = _resolve_device(device)
        model = _load_weights_file(spec, cfg, checkpoint, dev)
        return cls._from_config(model, cfg, dev, batch_size, name=str(checkpoint))

    @classmethod
    def _from_config(cls, model: nn.Module, cfg: Any, device: torch.device, batch_size: int, name: str) -> "Predictor":
        data = cfg.data
        audio = AudioSettings.from_data_config(data.audio_frontend, data.audio_window, data.layout)
        names = getattr(model, "class_names", None)
        if names is None and getattr(model, "output", "binary") == "semantic":
            # The run's recorded vocabulary (class id c = classes[c - 1]); runs from before it was recorded
            # read the training data's label2idx.json when it is still there.
            classes = getattr(data, "classes", None)
            names = ["background", *classes] if classes else _dataset_class_names(Path(data.root), data.layout)
        return cls(model, image_size=data.image_size, audio=audio, device=device, batch_size=batch_size, class_names=names, name=name)

    # --- frames and audio ----------------------------------------------------------------------------
    def _prepare(self, image: np.ndarray) -> Tensor:
        """(H, W, 3) uint8 -> (3, S, S) float32 normalised, resized as the dataset resizes frames."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"frames must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
        resized = np.asarray(Image.fromarray(image).resize((self.image_size, self.image_size), Image.Resampling.BILINEAR))
        x = torch.from_numpy(resized.copy()).permute(2, 0, 1).float().div_(255.0)
        return (x - self._mean) / self._std

    def audio_windows(self, audio: np.ndarray | None, sample_rate: int, frame_times: Sequence[float]) -> Tensor:
        """(T, S_w) windows at the front-end's rate, centred on ``frame_times``; silence outside the track, or
        moved inside it when ``audio.inside`` (as in training).

        Args:
            audio: (S,) mono or (S, C) multi-channel float waveform (channels averaged), or None for silence.
            sample_rate: rate of ``audio``.
            frame_times: T times in seconds from the first audio sample.
        """

        n = self.audio.window_samples
        times = [float(t) for t in frame_times]
        if audio is None:
            return torch.zeros(len(times), n)
        wave = np.asarray(audio, dtype=np.float32)
        if wave.ndim == 2:
            wave = wave.mean(axis=1)
        if wave.ndim != 1 or wave.size == 0:
            raise ValueError(f"audio must be a non-empty (S,) or (S, C) array, got shape {np.shape(audio)}")
        if not np.isfinite(wave).all():
            raise ValueError("audio holds NaN or Inf samples")
        wave_t = resample(torch.from_numpy(wave), int(sample_rate), self.audio.sample_rate).clamp(-1.0, 1.0)
        rate = self.audio.sample_rate
        starts = torch.tensor([window_start(2 * round(t * rate), n, wave_t.shape[0], self.audio.inside) for t in times], dtype=torch.int64)
        idx = starts[:, None] + torch.arange(n)[None, :]  # (T, S_w)
        return cut_windows(wave_t, idx)  # silence outside the track (centred), as in training

    # --- inference -----------------------------------------------------------------------------------
    @torch.no_grad()
    def _forward(self, images: list[np.ndarray], windows: Tensor | None) -> list[np.ndarray]:
        """Frames (each (H, W, 3) uint8) + their (T, S_w) windows -> per frame (H, W) or (C, H, W) float32."""
        frames = torch.stack([self._prepare(im) for im in images])[None]  # (1, T, 3, S, S)
        t = frames.shape[1]
        feats = self.audio.features(windows) if windows is not None else None  # (T, 1, F, W_a)
        batch = AVBatch(
            frames=frames, audio=None if feats is None else feats[None].float(), waveform=None,
            masks=torch.zeros(1, t, self.image_size, self.image_size, dtype=torch.int64),
            has_mask=torch.zeros(1, t, dtype=torch.bool), valid=torch.ones(1, t, dtype=torch.bool),
            labels=torch.zeros(1, 0), video_ids=["input"], frame_ids=[list(range(t))],
        )  # fmt: skip
        predict = cast("Callable[[AVBatch], Tensor]", self.model.predict)  # every final model has predict(batch)
        out = predict(batch.to(self.device)).float()[0]  # (T, S, S) or (T, C, S, S)
        if self.output == "semantic":
            out = _class_probabilities(out)
        else:
            out = out[:, None]
        results = []
        for i, image in enumerate(images):
            up = F.interpolate(out[i : i + 1], size=image.shape[:2], mode="bilinear", align_corners=False)[0]
            probs = up.clamp_(0.0, 1.0).cpu().numpy()
            results.append(probs[0] if self.output == "binary" else probs)
        return results

    def predict_frames(
        self,
        frames: np.ndarray,
        audio: np.ndarray | None,
        sample_rate: int,
        frame_times: Sequence[float] | None = None,
    ) -> np.ndarray:
        """Segment the sounding objects of frames given their sound.

        Args:
            frames: (T, H, W, 3) uint8 RGB.
            audio: (S,) or (S, C) float waveform in [-1, 1] at ``sample_rate`` (channels are averaged),
                or None for silence.
            sample_rate: Hz of ``audio``, any rate (resampled to the front-end's).
            frame_times: T times in seconds from the first audio sample, where each frame's audio window
                is centred; default ``t + 0.5`` (one frame per second, the AVSBench convention).

        Returns:
            binary models: (T, H, W) float32 probabilities in [0, 1]; semantic models: (T, C, H, W)
            class probabilities (class 0 = background).
        """
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be a (T, H, W, 3) uint8 array, got {frames.shape} {frames.dtype}")
        t = frames.shape[0]
        times = [k + 0.5 for k in range(t)] if frame_times is None else list(frame_times)
        if len(times) != t:
            raise ValueError(f"{len(times)} frame_times for {t} frames")
        windows = self.audio_windows(audio, sample_rate, times) if self.audio.frontend is not None else None
        outputs: list[np.ndarray] = []
        for lo in range(0, t, self.batch_size):
            hi = min(t, lo + self.batch_size)
            outputs += self._forward(list(frames[lo:hi]), None if windows is None else windows[lo:hi])
        return np.stack(outputs)

    def open_audio(self, path: Path, info: VideoInfo, allow_silent: bool = False) -> AudioTrack | None:
        """The streamed audio track of a video for this model (None: the model does not hear)."""
        if self.audio.frontend is None:
            return None
        if not info.has_audio:
            if not allow_silent:
                raise VideoError(f"{path} has no audio track; pass --allow-silent (allow_silent=True) to segment it with silence")
            log.warning("%s has no audio track: segmenting with silence", path)
            return AudioTrack(path, self.audio.sample_rate, self.audio.window_samples, silent=True)
        return AudioTrack(path, self.audio.sample_rate, self.audio.window_samples, offset=info.audio_offset, native_rate=info.audio_rate, inside=self.audio.inside)

    def predict_video(
        self,
        path: str | Path,
        fps: float = 1.0,
        allow_silent: bool = False,
        info: VideoInfo | None = None,
        timings: dict[str, float] | None = None,
    ) -> Iterator[FramePrediction]:
        """Stream a video file: decode, sample at ``fps``, cut audio windows, predict in batches.

        Args:
            path: any file FFmpeg reads.
            fps: samples per second at times (k + 0.5) / fps; 0 = every decoded frame.
            allow_silent: a file without audio is segmented with silence instead of raising.
            info: ``probe_video(path)`` when already known.
            timings: when given, seconds spent are added under "decode", "audio" and "model".

        Yields:
            FramePrediction per sampled frame, in time order. Memory: one batch of frames plus the
            audio ring buffer, whatever the video's length.

        Raises:
            VideoError / AudioError: the file is missing, corrupt, has no video track, or has no audio
                track (unless ``allow_silent``); the message names the file.
        """
        path = Path(path)
        info = info or probe_video(path)
        spent = timings if timings is not None else {}
        for key in ("decode", "audio", "model"):
            spent.setdefault(key, 0.0)
        t0 = time.perf_counter()
        track = self.open_audio(path, info, allow_silent)
        spent["audio"] += time.perf_counter() - t0
        pending: list[tuple[SampledFrame, np.ndarray | None]] = []

        def flush() -> Iterator[FramePrediction]:
            t1 = time.perf_counter()
            windows = None
            if track is not None:
                # an audio track gives every pending frame its window
                windows = torch.from_numpy(np.stack([cast(np.ndarray, w) for _, w in pending]))
            t2 = time.perf_counter()
            outs = self._forward([sf.image for sf, _ in pending], windows)
            spent["model"] += time.perf_counter() - t2
            spent["audio"] += t2 - t1
            for (sf, _), probs in zip(pending, outs):
                yield FramePrediction(sf.index, sf.time, sf.pts_time, sf.image, probs)

        frames = iter_frames(path, fps, info)
        while True:
            t1 = time.perf_counter()
            sf = next(frames, None)
            spent["decode"] += time.perf_counter() - t1
            if sf is None:
                break
            t1 = time.perf_counter()
            window = track.window_at(sf.time) if track is not None else None
            spent["audio"] += time.perf_counter() - t1
            pending.append((sf, window))
            if len(pending) == self.batch_size:
                yield from flush()
                pending = []
        if pending:
            yield from flush()


def _dataset_class_names(root: Path, layout: str) -> list[str] | None:
    """AVSS class names (index 0 = background) from the training data, when it is still there."""
    if layout != "avss":
        return None
    try:
        return avss_classes(root)
    except Exception as exc:  # names are cosmetic: fall back to class numbers, but say so
        log.warning("class names unavailable (%s); classes are reported by index", exc)
        return None


def _load_weights_file(spec: Any, cfg: Any, checkpoint: Path, device: torch.device) -> nn.Module:
    """The method's final model with the weights of ``checkpoint``: ``spec.load_predictor(cfg, None, device,
    weights=checkpoint)``, no run folder. Methods whose final model needs more than one file or a stage marker
    (e.g. ``c2am``'s polarity) cannot be loaded from a bare checkpoint: use ``--run``.
    """
    try:
        return spec.load_predictor(cfg, None, device, weights=checkpoint)
    except (RuntimeError, FileNotFoundError, ValueError) as exc:
        raise ValueError(f"{checkpoint} cannot be loaded as method {spec.name}'s final model with this config ({exc}); pass --run RUN instead") from exc
