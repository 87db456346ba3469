"""Read AVSBench S4, MS3 and AVSS videos (indexed by :mod:`avseg.data.index`) into the one batch contract.

``AVSBenchDataset`` reads one video per item into a ``VideoSample`` and ``collate_videos`` stacks samples
into ``avseg.types.AVBatch``; the file readers (frames, masks, probability PNGs) name the file they refuse.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from avseg.audio import FRONTENDS, compute_features, fit_length, frame_windows, load_audio, rms
from avseg.data import layout as L
from avseg.data.errors import DataError
from avseg.data.index import VideoRecord, class_names, index_videos
from avseg.data.safe_pickle import load_tensor_pickle
from avseg.types import IMAGENET_MEAN, IMAGENET_STD, NEGATIVE_KINDS, AVBatch, negative_audio_problem


# --- file readers ------------------------------------------------------------------------------------
def _open_image(path: Path, what: str) -> Image.Image:
    if not path.is_file():
        raise DataError(path, f"{what} not found")
    if path.stat().st_size == 0:
        raise DataError(path, f"{what} is 0 bytes")
    try:
        img = Image.open(path)
        img.load()  # decode now: truncated files fail here, not later inside a transform
    except Exception as exc:
        raise DataError(path, f"{what} is not a readable image ({type(exc).__name__}: {exc})") from exc
    return img


def _converted(img: Image.Image, mode: str, path: Path, what: str) -> np.ndarray:
    try:
        return np.asarray(img.convert(mode))
    except Exception as exc:  # a mode PIL cannot convert: still a problem of this file
        raise DataError(path, f"{what} in image mode {img.mode} cannot be read as {mode} ({exc})") from exc


def read_frame(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB. Decoded by content: a JPEG named .png is read (``avseg data validate`` warns)."""
    path = Path(path)
    return _converted(_open_image(path, "frame"), "RGB", path, "frame")


def read_mask(path: Path, layout: str, num_classes: int | None = None) -> np.ndarray:
    """Ground-truth mask as (H, W) int64: binary 0/1 for s4/ms3 (``!= 0``, grey or palette files),
    class ids for avss (raw palette indices or grey values, checked against ``num_classes``)."""
    path = Path(path)
    img = _open_image(path, "mask")
    if layout == "avss":
        if img.mode not in ("L", "P", "I", "I;16"):
            raise DataError(path, f"semantic map must be a single-channel class-index PNG, found mode {img.mode}")
        arr = np.asarray(img).astype(np.int64)
        if arr.ndim != 2:
            raise DataError(path, f"semantic map must be a single-channel class-index PNG, found shape {arr.shape}")
        if arr.size and int(arr.min()) < 0:
            raise DataError(path, f"class index {int(arr.min())} is negative")
        if num_classes is not None and arr.size and int(arr.max()) >= num_classes:
            raise DataError(path, f"class index {int(arr.max())} out of range (label2idx has {num_classes} classes)")
        return arr
    if img.mode in ("L", "P", "1", "I", "I;16", "F"):
        arr = np.asarray(img)
    else:  # RGB(A) masks: any non-black pixel is foreground
        arr = _converted(img, "RGB", path, "mask").max(axis=2)
    if arr.ndim != 2:
        raise DataError(path, f"mask must be a single image plane, found shape {arr.shape}")
    return (arr != 0).astype(np.int64)


def read_probability_png(path: Path) -> np.ndarray:
    """(H, W) float32 in [0, 1] from an 8-bit grey PNG holding probability x 255."""
    path = Path(path)
    return _converted(_open_image(path, "probability map"), "L", path, "probability map").astype(np.float32) / 255.0


# --- dataset -----------------------------------------------------------------------------------------

@dataclass
class VideoSample:
    """One video, before batching; shapes as AVBatch without the leading B."""

    frames: torch.Tensor  # (T, 3, H, W)
    audio: torch.Tensor | None  # (T, 1, F, W_a)
    waveform: torch.Tensor | None  # (T, S)
    masks: torch.Tensor  # (T, H, W) int64
    has_mask: torch.Tensor  # (T,) bool
    valid: torch.Tensor  # (T,) bool
    labels: torch.Tensor  # (K,) float32
    video_id: str
    frame_ids: list[int]
    pseudo_masks: torch.Tensor | None = None  # (T, H, W) float32
    has_pseudo: torch.Tensor | None = None  # (T,) bool
    negative: str = ""  # negative-audio training: "silence", "noise" or "other" (targets emptied); "" = own sound


def _resize(arr: np.ndarray, size: int, nearest: bool) -> np.ndarray:
    img = Image.fromarray(arr)
    return np.asarray(img.resize((size, size), Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR))


def crop_size(size: int) -> int:
    """The side frames are resized to before the random training crop: 246 / 224 of ``size``."""
    return int(round(size * 246 / 224))


@dataclass(frozen=True)
class Geometry:
    """One video's training geometry: resize to ``big`` square, crop ``size`` at (y0, x0), then maybe flip."""

    big: int
    y0: int
    x0: int
    flip: bool


def augment_geometry(seed: int, epoch: int, index: int, size: int, augment: bool) -> Geometry:
    """The geometry of video ``index`` in ``epoch``: drawn from the (seed, epoch, index) stream when
    ``augment``, else the plain resize. Every reader of the data (dataset, cache) uses this one rule."""
    if not augment:
        return Geometry(size, 0, 0, False)
    rng = np.random.default_rng([seed, epoch, index])
    big = crop_size(size)
    y0, x0 = (int(v) for v in rng.integers(0, big - size + 1, size=2))
    return Geometry(big, y0, x0, bool(rng.random() < 0.5))


def apply_geometry(arr: np.ndarray, g: Geometry, size: int, nearest: bool) -> np.ndarray:
    """(H, W[, C]) uint8 -> (size, size[, C]) under geometry ``g`` (PIL bilinear or nearest resize)."""
    out = _resize(arr, g.big, nearest)[g.y0 : g.y0 + size, g.x0 : g.x0 + size]
    return out[:, ::-1] if g.flip else out


def sample_frame_indices(seed: int, epoch: int, index: int, num_frames: int, keep: int) -> list[int]:
    """``keep`` of a video's ``num_frames`` frames, ascending, from the (seed, epoch, index, 1) stream."""
    rng = np.random.default_rng([seed, epoch, index, 1])
    return np.sort(rng.choice(num_frames, size=keep, replace=False)).tolist()


class AVSBenchDataset(Dataset):
    """One item per video of an AVSBench-layout subset and split.

    Args:
        root: the subset folder (the one holding the metadata CSV).
        layout: "s4", "ms3" or "avss".
        split: "train", "val" or "test".
        image_size: frames and masks are resized to image_size x image_size (AVSBench frames are
            224x224 already; AVSS frames are full resolution).
        audio_frontend: a name of ``avseg.audio.FRONTENDS`` computing per-frame features from the wav, or
            "pkl" to read the official VGGish features through the tensor-only unpickler, or None.
        audio_window: "centred" (each frame gets the window centred on its second, silence where it leaves
            the clip, looped if the clip is short), "inside" (the same window moved to lie inside the clip)
            or "clip" (every frame gets the whole clip, as the official WS-AVS code); see ``frame_windows``.
        return_waveform: also return each frame's waveform window at ``waveform_rate``.
        pad_to: pad videos with fewer frames to this many (AVSS 5 -> 10); padding has valid=False.
        augment: training augmentation: resize to image_size*246/224, random crop, horizontal flip,
            applied identically to frames, masks and pseudo masks of a video (the official WS-AVS code
            crops frames but not pseudo masks; we keep them aligned).
        pseudo_dir: folder of pseudo masks (grey PNG = probability x 255) at ``layout.prediction_relpath``.
        pseudo_labels: the pseudo PNGs hold class ids (PCAS; 255 = ignore) instead of probabilities: they are
            resized with nearest neighbour (bilinear would blend ids) and returned as ``id / 255``.
        seed: augmentation randomness derives from (seed, epoch, index), so it is reproducible with any
            number of workers and after a resume.
        sample_frames: when set, each item keeps this many of the video's frames, drawn at random (from
            the same (seed, epoch, index) stream) in ascending order: the per-frame sampling of the
            official training code, with T = sample_frames in the batch.
        masked_frames: each item keeps only the frames that have a ground-truth mask (S4 train: frame 1),
            padded (valid=False) to the most any video has. For models that see each frame on its own and
            learn only from masks (the supervised reference): the frames without masks cost a forward and
            backward pass and teach nothing but BatchNorm statistics. A video without any mask is an error.
        max_videos: keep only the first videos of the split (quick runs, previews).
        negative_audio: fraction of the videos (drawn per epoch from the (seed, epoch, index, 2) stream)
            whose soundtrack is replaced by a negative one and whose targets are emptied: nothing they show
            makes the sound they carry (AVSBench-Robust's balanced training). Needs a wav front-end.
            Masks, pseudo masks and labels become zeros; ``has_mask`` / ``has_pseudo`` are kept, so a
            frame is trained on an empty target only where it would have been trained anyway.
        negative_mode: "replace" (default): the negatives are drawn among the videos, which lose their own
            sound and target that epoch; "add": every video keeps its own sound and target, and
            ``round(negative_audio x videos)`` negative items follow them (indices ``len(records)`` and
            up), each a video drawn per epoch from the (seed, epoch, index, 3) stream with a negative
            soundtrack. "add" takes no positive target away (S4 trains on one mask per video), at the
            cost of longer epochs; its fraction may reach 1 (as many negatives as videos).
        negative_kinds: which negatives, drawn uniformly: "silence" (zeros), "noise" (white noise at the
            clip's RMS), "other" (the soundtrack of another video of the split that shares no label).
        audio_transform: ``(record, wave, sample_rate) -> wave`` applied to every decoded waveform (S,)
            before features or waveform windows are computed (the listening evaluation replaces the
            soundtrack this way, through the model's usual pre-processing); not applied to "pkl" features.

    Features of front-ends marked ``memoise`` (``aisfx-embed``: a frozen pretrained network) are computed
    once per clip and what it hears, and kept in memory for later epochs (``_memo_key`` says when not).
    """

    def __init__(
        self,
        root: Path,
        layout: str,
        split: str,
        image_size: int = 224,
        audio_frontend: str | None = "wsavs-logmel",
        audio_window: str = "centred",
        return_waveform: bool = False,
        waveform_rate: int = 16000,
        pad_to: int | None = None,
        augment: bool = False,
        pseudo_dir: Path | None = None,
        seed: int = 0,
        sample_frames: int | None = None,
        max_videos: int | None = None,
        pseudo_labels: bool = False,
        masked_frames: bool = False,
        audio_transform: Callable[[VideoRecord, np.ndarray, int], np.ndarray] | None = None,
        negative_audio: float = 0.0,
        negative_kinds: tuple[str, ...] = NEGATIVE_KINDS,
        negative_mode: str = "replace",
    ) -> None:
        if audio_window not in ("centred", "inside", "clip"):
            raise ValueError(f"audio_window must be 'centred', 'inside' or 'clip', got {audio_window!r}")
        if image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {image_size}")
        self.root = Path(root)
        self.layout = layout
        self.split = split
        self.image_size = image_size
        self.audio_frontend = audio_frontend
        self.audio_window = audio_window
        self.return_waveform = return_waveform
        self.waveform_rate = waveform_rate
        self.augment = augment
        self.pseudo_dir = Path(pseudo_dir) if pseudo_dir is not None else None
        self.pseudo_labels = pseudo_labels
        self.audio_transform = audio_transform
        self._audio_memo: dict[tuple, torch.Tensor] = {}  # see _memo_key
        self.seed = seed
        self.sample_frames = sample_frames
        self.masked_frames = masked_frames
        self.epoch = 0
        self.records = index_videos(self.root, layout, split)
        if max_videos is not None:
            self.records = self.records[:max_videos]
        self.set_negative_audio(negative_audio, negative_kinds, negative_mode)
        if not self.records:
            raise DataError(L.metadata_path(self.root, layout), f"no videos in split {split!r}")
        self.classes = class_names(self.root, layout)
        self._class_index = {c: i for i, c in enumerate(self.classes)}
        self.num_semantic_classes = len(self.classes) + 1 if layout == "avss" else 2
        self.num_frames = max(len(r.frame_paths) for r in self.records)
        self.pad_to = max(pad_to or 0, self.num_frames) if layout == "avss" else self.num_frames
        if sample_frames is not None:
            shortest = min(len(r.frame_paths) for r in self.records)
            if not 1 <= sample_frames <= shortest:
                raise ValueError(f"sample_frames must be in 1..{shortest} (frames of the shortest video), got {sample_frames}")
            self.pad_to = sample_frames
        if masked_frames:
            if sample_frames is not None:
                raise ValueError("masked_frames and sample_frames exclude each other (both choose the frames of an item)")
            for r in self.records:
                if all(m is None for m in r.mask_paths):
                    raise DataError(r.frame_paths[0].parent, f"video {r.video_id} of split {split!r} has no ground-truth mask (masked_frames keeps only frames with one)")
            self.pad_to = max(sum(m is not None for m in r.mask_paths) for r in self.records)
        if audio_frontend not in (None, "pkl"):
            if audio_frontend not in FRONTENDS:
                raise ValueError(f"unknown audio front-end {audio_frontend!r}; expected one of {sorted(FRONTENDS)} or 'pkl'")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records) + self.negative_extra

    def base_index(self, index: int) -> int:
        """The video item ``index`` shows: itself, or for an added negative item ("add" mode) a video drawn
        per epoch."""
        n = len(self.records)
        if not 0 <= index < n + self.negative_extra:
            raise IndexError(f"index {index} out of range for {n + self.negative_extra} items")
        if index < n:
            return index
        return int(np.random.default_rng([self.seed, self.epoch, index, 3]).integers(n))

    def pseudo_path(self, record: VideoRecord, k: int) -> Path:
        assert self.pseudo_dir is not None
        return self.pseudo_dir / L.prediction_relpath(self.layout, record.split, record.category, record.video_id, k)

    def video_labels(self, record: VideoRecord, masks: list[np.ndarray | None]) -> torch.Tensor:
        """(K,) float32 video-level labels: the metadata's label names, or (AVSS) the union of the masks' classes."""
        labels = torch.zeros(self.num_classes, dtype=torch.float32)
        if record.label_names is not None:
            for name in record.label_names:
                if name not in self._class_index:
                    raise DataError(L.metadata_path(self.root, self.layout), f"video {record.video_id}: unknown class {name!r}")
                labels[self._class_index[name]] = 1.0
        else:  # AVSS: union of the semantic maps' foreground classes
            for m in masks:
                if m is not None:
                    for c in np.unique(m):
                        if c > 0:
                            labels[int(c) - 1] = 1.0
        return labels

    def audio_features(self, record: VideoRecord, t: int, negative: tuple[str, int] = ("", -1)) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(features (T, 1, F, W) or None, waveform windows (T, S) or None) of a video with ``t`` frames."""
        audio: torch.Tensor | None
        if self.audio_frontend is None and not self.return_waveform:
            return None, None
        if self.audio_frontend == "pkl":
            if record.pkl_path is None:
                raise DataError(record.audio_path, "this layout ships no .pkl features; use a wav front-end")

            feats = load_tensor_pickle(record.pkl_path)
            # Shape first, then only the T rows used are converted: a crafted file with zero strides can
            # describe a huge tensor over a tiny storage, and .float() of all of it would exhaust memory.
            if feats.dim() != 4 or tuple(feats.shape[1:]) != (1, 96, 64) or feats.shape[0] < 1:
                raise DataError(record.pkl_path, f"expected a [T, 1, 96, 64] tensor, found {list(feats.shape)}")
            audio = feats[:t].float().contiguous()
            if not torch.isfinite(audio).all():
                raise DataError(record.pkl_path, "features hold NaN or Inf")
            if audio.shape[0] < t:
                audio = torch.cat([audio, audio[-1:].expand(t - audio.shape[0], -1, -1, -1)])
            waveform = None
            if self.return_waveform:
                waveform = self._waveforms(record, t)
            return audio, waveform

        audio = None
        if self.audio_frontend is not None:
            key = self._memo_key(record, t, negative)
            if key is not None and key in self._audio_memo:
                audio = self._audio_memo[key].clone()
            else:
                spec = FRONTENDS[self.audio_frontend]
                wave, sr = self._decode_audio(record, spec.sample_rate)
                if negative[0]:
                    wave = self._negative_wave(negative[0], negative[1], wave, sr)
                audio = compute_features(self.audio_frontend, wave, sr, t, mode=self.audio_window)
                if key is not None:
                    self._audio_memo[key] = audio.clone()
        waveform = self._waveforms(record, t, negative) if self.return_waveform else None
        return audio, waveform

    def _memo_key(self, record: VideoRecord, t: int, negative: tuple[str, int]) -> tuple | None:
        """Key of a clip's features in the in-memory memo, or None where they must be computed afresh.

        Only front-ends marked ``memoise`` (frozen pretrained embeddings: costly, small) are kept. The key
        holds the clip (its audio file, which identifies the record) and what it hears: its own sound,
        silence, or another video's sound (that video's index). Never memoised: any ``audio_transform``
        (it may change between calls) and "noise" negatives (a fresh noise seed every epoch: caching them
        would only grow memory). DataLoader workers each keep their own memo, lost when they exit: with
        ``workers > 0`` use ``avseg data cache`` for features computed once.
        """

        assert self.audio_frontend is not None  # only called for datasets that compute features
        if self.audio_transform is not None or not FRONTENDS[self.audio_frontend].memoise or negative[0] == "noise":
            return None
        helper = negative[1] if negative[0] == "other" else -1
        return (str(record.audio_path), t, self.audio_frontend, self.audio_window, negative[0], helper)

    def _decode_audio(self, record: VideoRecord, sample_rate: int) -> tuple[np.ndarray, int]:
        """The video's waveform (S,) at ``sample_rate``, through ``audio_transform`` when one is set."""

        wave, sr = load_audio(record.audio_path, sample_rate)
        if self.audio_transform is not None:
            wave = np.asarray(self.audio_transform(record, wave, sr), dtype=np.float32)
        return wave, sr

    def set_negative_audio(self, fraction: float, kinds: tuple[str, ...] | list[str] = NEGATIVE_KINDS, mode: str = "replace") -> None:
        """Turn negative-audio training on (``fraction`` > 0) or off; see the class docstring."""
        kinds = tuple(kinds)
        if problem := negative_audio_problem(fraction, kinds, mode):
            raise ValueError(problem)
        if fraction > 0 and self.audio_frontend in (None, "pkl"):
            raise ValueError("negative_audio replaces the soundtrack before the audio front-end: it needs a wav front-end (not None or 'pkl')")
        self.negative_audio = float(fraction)
        self.negative_kinds = kinds
        self.negative_mode = mode
        self.negative_extra = round(fraction * len(self.records)) if mode == "add" else 0

    def negative_plan(self, index: int) -> tuple[str, int]:
        """(kind, helper) of video ``index`` this epoch: kind "" = its own sound; helper = the noise seed or
        the index of the video whose soundtrack it gets."""
        if self.negative_audio <= 0:
            return "", -1
        rng = np.random.default_rng([self.seed, self.epoch, index, 2])
        if self.negative_mode == "add":
            if index < len(self.records):
                return "", -1
        elif rng.random() >= self.negative_audio:
            return "", -1
        kind = self.negative_kinds[int(rng.integers(len(self.negative_kinds)))]
        if kind == "other":
            base = self.base_index(index)
            own = set(self.records[base].label_names or ())
            # S4/MS3 label names, AVSS: no metadata labels -> any other video (stated in the docs)
            choices = [i for i, r in enumerate(self.records) if i != base and not (own & set(r.label_names or ()))]
            if not choices:
                kind = "silence"
            else:
                return kind, int(choices[int(rng.integers(len(choices)))])
        return kind, int(rng.integers(2**31))

    def _negative_wave(self, kind: str, helper: int, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        """The negative soundtrack replacing ``wave`` (S,), same length."""
        if kind == "silence":
            return np.zeros_like(wave)

        if kind == "noise":
            rng = np.random.default_rng(helper)
            return (rng.standard_normal(int(wave.shape[0])) * max(rms(wave), 1e-4)).astype(np.float32)
        other, _ = self._decode_audio(self.records[helper], sample_rate)
        return fit_length(other, wave.shape[0])  # looped or cut to this clip's length

    def _waveforms(self, record: VideoRecord, t: int, negative: tuple[str, int] = ("", -1)) -> torch.Tensor:
        wave, sr = self._decode_audio(record, self.waveform_rate)
        if negative[0]:
            wave = self._negative_wave(negative[0], negative[1], wave, sr)
        return frame_windows(torch.from_numpy(wave), sr, t, mode=self.audio_window)

    def decode_raw(self, index: int) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
        """Video ``index`` as read from disk: its frames (H, W, 3) uint8 and masks (H, W) (None where a frame has
        none), at the source size, checked to share one size."""
        record = self.records[index]
        num_sem = self.num_semantic_classes if self.layout == "avss" else None
        frames = [read_frame(p) for p in record.frame_paths]
        for p, f in zip(record.frame_paths, frames):
            if f.shape[:2] != frames[0].shape[:2]:
                (h, w), (h0, w0) = f.shape[:2], frames[0].shape[:2]
                raise DataError(p, f"frame is {w}x{h}, the first frame of video {record.video_id} is {w0}x{h0} (frames of a video must have one size)")
        masks_raw = [read_mask(p, self.layout, num_sem) if p is not None else None for p in record.mask_paths]
        for mask_path, m in zip(record.mask_paths, masks_raw):
            if m is not None and mask_path is not None and m.shape != frames[0].shape[:2]:  # m is None where the path is
                raise DataError(mask_path, f"mask is {m.shape[1]}x{m.shape[0]} but its frame is {frames[0].shape[1]}x{frames[0].shape[0]}")
        return frames, masks_raw

    def __getitem__(self, index: int) -> VideoSample:
        base = self.base_index(index)  # index itself, unless an added negative item ("add" mode)
        record = self.records[base]
        t = len(record.frame_paths)
        size = self.image_size
        frames, masks_raw = self.decode_raw(base)
        pseudo_raw: list[np.ndarray] | None = None
        if self.pseudo_dir is not None:
            pseudo_raw = [read_probability_png(self.pseudo_path(record, k)) for k in record.frame_numbers]
        labels = self.video_labels(record, masks_raw)
        negative = self.negative_plan(index)  # ("", -1) unless negative-audio training is on (training sets only)
        audio, waveform = self.audio_features(record, t, negative)

        # Resize (and augment) frames, masks and pseudo masks with one geometry per video.
        g = augment_geometry(self.seed, self.epoch, index, size, self.augment)

        def geom(arr: np.ndarray, nearest: bool) -> np.ndarray:
            return apply_geometry(arr, g, size, nearest)

        frames_t = torch.from_numpy(np.stack([geom(f, False) for f in frames]).copy()).permute(0, 3, 1, 2)
        frames_t = frames_t.float().div_(255.0)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        frames_t = (frames_t - mean) / std  # (T, 3, H, W)
        masks = torch.zeros(t, size, size, dtype=torch.int64)
        has_mask = torch.zeros(t, dtype=torch.bool)
        for i, m in enumerate(masks_raw):
            if m is not None:
                masks[i] = torch.from_numpy(geom(m.astype(np.uint8), True).astype(np.int64))
                has_mask[i] = True
        pseudo = has_pseudo = None
        if pseudo_raw is not None:
            pseudo = torch.from_numpy(np.stack([geom((p * 255).astype(np.uint8), self.pseudo_labels) for p in pseudo_raw]).astype(np.float32) / 255.0)
            has_pseudo = torch.ones(t, dtype=torch.bool)
        if negative[0]:  # nothing in view makes the sound it carries: empty targets, no sounding class
            masks.zero_()
            labels = torch.zeros_like(labels)
            if pseudo is not None:
                pseudo.zero_()
        sample = VideoSample(
            frames=frames_t, audio=audio, waveform=waveform, masks=masks, has_mask=has_mask,
            valid=torch.ones(t, dtype=torch.bool), labels=labels, video_id=record.video_id,
            frame_ids=list(record.frame_numbers), pseudo_masks=pseudo, has_pseudo=has_pseudo, negative=negative[0],
        )  # fmt: skip
        if self.sample_frames is not None:
            sample = _select(sample, sample_frame_indices(self.seed, self.epoch, index, t, self.sample_frames))
        elif self.masked_frames:
            sample = _select(sample, [i for i in range(t) if bool(has_mask[i])])
        return _pad(sample, self.pad_to)


def _select(sample: VideoSample, keep: list[int]) -> VideoSample:
    """Keep the frames at positions ``keep``."""

    def sel(x: torch.Tensor) -> torch.Tensor:
        return x[keep]

    def sel_optional(x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None else sel(x)

    return VideoSample(
        frames=sel(sample.frames), audio=sel_optional(sample.audio), waveform=sel_optional(sample.waveform), masks=sel(sample.masks),
        has_mask=sel(sample.has_mask), valid=sel(sample.valid), labels=sample.labels, video_id=sample.video_id,
        frame_ids=[sample.frame_ids[i] for i in keep], pseudo_masks=sel_optional(sample.pseudo_masks), has_pseudo=sel_optional(sample.has_pseudo),
        negative=sample.negative,
    )  # fmt: skip


def _pad(sample: VideoSample, t_out: int) -> VideoSample:
    """Pad a video to t_out frames with zero frames flagged valid=False, has_mask=False."""
    t = sample.frames.shape[0]
    if t >= t_out:
        return sample
    n = t_out - t

    def pad(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x.new_zeros((n, *x.shape[1:]))])

    def pad_optional(x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None else pad(x)

    return VideoSample(
        frames=pad(sample.frames), audio=pad_optional(sample.audio), waveform=pad_optional(sample.waveform), masks=pad(sample.masks),
        has_mask=pad(sample.has_mask), valid=pad(sample.valid), labels=sample.labels, video_id=sample.video_id,
        frame_ids=sample.frame_ids + [-1] * n, pseudo_masks=pad_optional(sample.pseudo_masks), has_pseudo=pad_optional(sample.has_pseudo),
        negative=sample.negative,
    )  # fmt: skip


def collate_videos(samples: list[VideoSample]) -> AVBatch:
    """Stack VideoSamples into an AVBatch (all videos of a batch must have the same T; AVSS pads)."""
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    ts = {s.frames.shape[0] for s in samples}
    if len(ts) > 1:
        raise ValueError(f"videos in one batch have different frame counts {sorted(ts)}; set pad_to")

    def stack(name: str) -> torch.Tensor:
        return torch.stack([getattr(s, name) for s in samples])

    def stack_optional(name: str) -> torch.Tensor | None:
        values = [getattr(s, name) for s in samples]
        if any(v is None for v in values):
            return None
        return torch.stack(values)

    return AVBatch(
        frames=stack("frames"), audio=stack_optional("audio"), waveform=stack_optional("waveform"), masks=stack("masks"),
        has_mask=stack("has_mask"), valid=stack("valid"), labels=stack("labels"),
        video_ids=[s.video_id for s in samples], frame_ids=[s.frame_ids for s in samples],
        pseudo_masks=stack_optional("pseudo_masks"), has_pseudo=stack_optional("has_pseudo"),
        extras={"negative_audio": torch.tensor([bool(s.negative) for s in samples])},
    )  # fmt: skip
