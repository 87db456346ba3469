"""A compact on-disk cache of decoded frames and audio features, built once, read by ``CachedDataset``.

``AVSBenchDataset`` decodes every PNG and wav and computes the audio front-end for every item: tens of
milliseconds per video on one core, which no CPU keeps up with at GPU training rates. ``build_cache``
does that work once per split and stores the result as plain ``.npy`` arrays (read back as memory maps,
so DataLoader workers share the page cache and an item costs a slice copy):

    OUT/index.json              format, settings, class names, per split its videos and array files
    OUT/<split>.frames.npy      (N, H, W, 3) uint8 RGB frames resized to image_size (bilinear, as the dataset)
    OUT/<split>.masks.npy       (N, H, W) uint8 ground truth (0/1, or AVSS class ids); zeros where absent
    OUT/<split>.audio.npy       (N, 1, F, W_a) float16 per-frame audio features (absent without a front-end)

N counts the frames of every video of the split, in metadata order; ``index.json`` gives each video's
first row and frame count. Files are written under temporary names and renamed into place, and
``index.json`` is removed first and written last: a cache without ``index.json`` is incomplete and is
refused by ``CachedDataset``.

``CachedDataset`` returns the same ``VideoSample`` as ``AVSBenchDataset`` with the same arguments:
frames, masks and labels are equal exactly; audio features within float16 rounding (relative 2^-11).
With ``augment=True`` the crop is resampled from the cached ``image_size`` frame; that equals the
decoded dataset exactly when the source frames already are ``image_size`` square (AVSBench S4 and MS3
at 224 px; ``CachedDataset.exact_augment`` says so), and differs by one extra bilinear resampling
otherwise (AVSS at full resolution). ``frames="uint8"`` returns unnormalised, un-augmented uint8 frames
plus the augmentation geometry, for augmentation on the GPU (``avseg.data.gpu_augment``).

Waveforms (``return_waveform``) are not cached.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from avseg.data import layout as L
from avseg.data.avsbench import AVSBenchDataset, VideoSample, _pad, apply_geometry, augment_geometry, collate_videos, read_probability_png, sample_frame_indices
from avseg.data.errors import DataError
from avseg.data.index import VideoRecord
from avseg.fileio import file_sha256, write_text_atomic
from avseg.types import IMAGENET_MEAN, IMAGENET_STD, AVBatch

__all__ = [
    "CACHE_FORMAT",
    "CACHE_VERSION",
    "build_cache",
    "CachedDataset",
    "CachedVideoSample",
    "collate_cached",
]

CACHE_FORMAT = "avseg-frame-cache"
CACHE_VERSION = 1
INDEX = "index.json"


# --- building ----------------------------------------------------------------------------------------
class _DecodedVideos(Dataset):
    """Per video: uint8 frames and masks at image_size, float16 audio, labels; decoded exactly as the
    non-augmented ``AVSBenchDataset`` does (its readers, its resize, its audio and label code)."""

    def __init__(self, dataset: AVSBenchDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        ds = self.dataset
        record = ds.records[index]
        size = ds.image_size
        frames_raw, masks_raw = ds.decode_raw(index)  # the dataset's readers and checks
        for mask_path, m in zip(record.mask_paths, masks_raw):
            if m is not None and mask_path is not None and m.size and int(m.max()) > 255:  # m is None where the path is
                raise DataError(mask_path, f"class id {int(m.max())} does not fit the cache's uint8 masks")
        plain = augment_geometry(0, 0, index, size, augment=False)  # the un-augmented resize
        frames = np.stack([apply_geometry(f, plain, size, nearest=False) for f in frames_raw])  # (T, H, W, 3) uint8
        masks = np.zeros((len(frames_raw), size, size), np.uint8)
        for i, m in enumerate(masks_raw):
            if m is not None:
                masks[i] = apply_geometry(m.astype(np.uint8), plain, size, nearest=True)
        audio, _ = ds.audio_features(record, len(frames_raw))
        return {
            "frames": frames,
            "masks": masks,
            "has_mask": [m is not None for m in masks_raw],
            "audio": None if audio is None else audio.numpy().astype(np.float16),
            "labels": ds.video_labels(record, masks_raw).tolist(),
            "source_size": list(frames_raw[0].shape[:2]),
        }


def _as_is(item: Any) -> Any:
    return item  # keep numpy arrays (the default would turn them into tensors)


def _record_to_json(record: VideoRecord) -> dict[str, Any]:
    def opt(p: Path | None) -> str | None:
        return None if p is None else str(p)

    return {
        "video_id": record.video_id, "split": record.split, "category": record.category,
        "frame_paths": [str(p) for p in record.frame_paths], "frame_numbers": list(record.frame_numbers),
        "mask_paths": [opt(p) for p in record.mask_paths], "audio_path": str(record.audio_path),
        "pkl_path": opt(record.pkl_path), "label_names": None if record.label_names is None else list(record.label_names),
        "rgb_paths": [opt(p) for p in record.rgb_paths],
    }  # fmt: skip


def _record_from_json(d: dict[str, Any]) -> VideoRecord:
    def opt(p: str | None) -> Path | None:
        return None if p is None else Path(p)

    return VideoRecord(
        video_id=d["video_id"], split=d["split"], category=d["category"],
        frame_paths=tuple(Path(p) for p in d["frame_paths"]), frame_numbers=tuple(d["frame_numbers"]),
        mask_paths=tuple(opt(p) for p in d["mask_paths"]), audio_path=Path(d["audio_path"]),
        pkl_path=opt(d["pkl_path"]), label_names=None if d["label_names"] is None else tuple(d["label_names"]),
        rgb_paths=tuple(opt(p) for p in d["rgb_paths"]),
    )  # fmt: skip


def _tmp_name(out: Path, name: str) -> Path:
    return out / f".{name}.{os.getpid()}.tmp"


def build_cache(
    root: Path,
    layout: str,
    out: Path,
    image_size: int = 224,
    audio_frontend: str | None = "wsavs-logmel",
    audio_window: str = "centred",
    splits: tuple[str, ...] = ("train", "val", "test"),
    workers: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Decode every video of ``splits`` once into ``out`` (see the module doc); returns the index.

    Args:
        root, layout: the subset, as for ``AVSBenchDataset``.
        out: cache folder (created; an earlier cache there is replaced).
        image_size, audio_frontend, audio_window: as the ``AVSBenchDataset`` the cache stands in for
            (``audio_frontend`` None stores no audio).
        splits: splits to cache; a split without videos is an error.
        workers: decoding processes (DataLoader workers); 0 decodes in this process.
        progress: show a progress bar per split.
    """
    from tqdm import tqdm

    root, out = Path(root), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / INDEX).unlink(missing_ok=True)  # the old cache is invalid from here on
    started = time.perf_counter()
    index: dict[str, Any] = {
        "format": CACHE_FORMAT, "version": CACHE_VERSION, "layout": layout, "image_size": image_size,
        "audio_frontend": audio_frontend, "audio_window": audio_window, "source_root": str(root.resolve()),
        "metadata_sha256": file_sha256(L.metadata_path(root, layout)), "splits": {},
    }  # fmt: skip
    for split in splits:
        ds = AVSBenchDataset(root, layout, split, image_size=image_size, audio_frontend=audio_frontend, audio_window=audio_window)
        index["classes"] = list(ds.classes)
        index["num_semantic_classes"] = ds.num_semantic_classes
        counts = [len(r.frame_paths) for r in ds.records]
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int).tolist()
        n = int(sum(counts))
        files = {"frames": f"{split}.frames.npy", "masks": f"{split}.masks.npy"}
        if audio_frontend is not None:
            files["audio"] = f"{split}.audio.npy"
        arrays: dict[str, np.memmap] = {
            "frames": np.lib.format.open_memmap(_tmp_name(out, files["frames"]), "w+", np.uint8, (n, image_size, image_size, 3)),
            "masks": np.lib.format.open_memmap(_tmp_name(out, files["masks"]), "w+", np.uint8, (n, image_size, image_size)),
        }
        videos: list[dict[str, Any]] = []
        source_sizes: set[tuple[int, int]] = set()
        audio_shape: tuple[int, ...] | None = None
        loader = DataLoader(_DecodedVideos(ds), batch_size=None, shuffle=False, num_workers=workers, collate_fn=_as_is)
        try:
            bar = tqdm(total=len(ds), desc=f"cache {split}", unit="video", disable=not progress, leave=False)
            for i, item in enumerate(loader):
                record, s, t = ds.records[i], starts[i], counts[i]
                arrays["frames"][s : s + t] = item["frames"]
                arrays["masks"][s : s + t] = item["masks"]
                if audio_frontend is not None:
                    a = item["audio"]
                    if audio_shape is None:
                        audio_shape = tuple(a.shape[1:])
                        arrays["audio"] = np.lib.format.open_memmap(_tmp_name(out, files["audio"]), "w+", np.float16, (n, *audio_shape))
                    if tuple(a.shape[1:]) != audio_shape:
                        raise DataError(record.audio_path, f"audio features of video {record.video_id} are {tuple(a.shape[1:])}, "
                                        f"the split's first video gave {audio_shape}: the cache stores one shape per split")
                    if not np.isfinite(a).all():
                        raise DataError(record.audio_path, f"audio features of video {record.video_id} overflow float16")
                    arrays["audio"][s : s + t] = a
                source_sizes.add(tuple(item["source_size"]))
                videos.append({**_record_to_json(record), "start": s, "frames": t, "has_mask": item["has_mask"], "labels": item["labels"]})
                bar.update(1)
            bar.close()
            for arr in arrays.values():
                arr.flush()
            arrays.clear()  # drop the memory maps before renaming their files
            for key, name in files.items():
                os.replace(_tmp_name(out, name), out / name)
        finally:
            arrays.clear()
            for name in files.values():
                _tmp_name(out, name).unlink(missing_ok=True)
        index["splits"][split] = {
            "frames": n, "videos": videos, "files": files, "audio_shape": list(audio_shape) if audio_shape else None,
            "source_sizes": sorted(list(s) for s in source_sizes),
        }  # fmt: skip
    index["seconds"] = round(time.perf_counter() - started, 3)

    write_text_atomic(out / INDEX, json.dumps(index))
    return index


def read_index(cache_dir: Path) -> dict[str, Any]:
    """The cache's index; DataError when it is missing (incomplete build), foreign or of another version."""
    path = Path(cache_dir) / INDEX
    if not path.is_file():
        raise DataError(path, "cache index not found: the cache was never built or its build did not finish (run `avseg data cache`)")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(path, f"unreadable cache index ({exc})") from exc
    if index.get("format") != CACHE_FORMAT or index.get("version") != CACHE_VERSION:
        raise DataError(path, f"not an {CACHE_FORMAT} v{CACHE_VERSION} index (format {index.get('format')!r}, version {index.get('version')!r}): rebuild it")
    return index


# --- reading -----------------------------------------------------------------------------------------
@dataclass
class CachedVideoSample(VideoSample):
    """A ``VideoSample``; with ``frames="uint8"`` also the augmentation geometry to apply on the device.

    geometry: (3,) int64 ``(y0, x0, flip)`` of the crop from the ``round(size * 246 / 224)`` resize, or
        None (normalised frames, already augmented on the CPU).
    """

    geometry: torch.Tensor | None = None


class CachedDataset(Dataset):
    """``AVSBenchDataset`` read from a cache built by ``build_cache``: one item per video.

    Args:
        cache_dir: the cache folder.
        split: a split the cache holds.
        augment, pseudo_dir, seed, sample_frames, max_videos, pad_to: as ``AVSBenchDataset`` (the same
            random streams, so the same crops, flips and frame choices).
        frames: "float": (T, 3, H, W) float32 ImageNet-normalised, augmented here (the batch contract).
            "uint8": (T, H, W, 3) uint8 RGB at image_size, never augmented here; with ``augment`` the
            sample's ``geometry`` holds the crop and flip for ``avseg.data.gpu_augment``. Masks and
            pseudo masks are then un-augmented too.
    """

    def __init__(
        self,
        cache_dir: Path,
        split: str,
        augment: bool = False,
        pseudo_dir: Path | None = None,
        seed: int = 0,
        sample_frames: int | None = None,
        max_videos: int | None = None,
        pad_to: int | None = None,
        frames: str = "float",
    ) -> None:
        if frames not in ("float", "uint8"):
            raise ValueError(f"frames must be 'float' or 'uint8', got {frames!r}")
        self.cache_dir = Path(cache_dir)
        index = read_index(self.cache_dir)
        if split not in index["splits"]:
            raise DataError(self.cache_dir / INDEX, f"split {split!r} is not cached (cached: {sorted(index['splits'])})")
        info = index["splits"][split]
        self.layout: str = index["layout"]
        self.split = split
        self.image_size: int = index["image_size"]
        self.audio_frontend: str | None = index["audio_frontend"]
        self.audio_window: str = index["audio_window"]
        self.classes: list[str] = list(index["classes"])
        self.num_semantic_classes: int = index["num_semantic_classes"]
        self.augment = augment
        self.pseudo_dir = Path(pseudo_dir) if pseudo_dir is not None else None
        self.seed = seed
        self.sample_frames = sample_frames
        self.frames_mode = frames
        self.return_waveform = False
        self.epoch = 0
        self._videos = info["videos"][:max_videos] if max_videos is not None else info["videos"]
        if not self._videos:
            raise DataError(self.cache_dir / INDEX, f"no videos in split {split!r}")
        self.records = [_record_from_json(v) for v in self._videos]
        self._files = {k: self.cache_dir / name for k, name in info["files"].items()}
        for key, path in self._files.items():
            if not path.is_file():
                raise DataError(path, f"cache array {key!r} missing (the index names it)")
        self._expected = {"frames": (info["frames"], self.image_size, self.image_size, 3), "masks": (info["frames"], self.image_size, self.image_size)}
        if info["audio_shape"] is not None:
            self._expected["audio"] = (info["frames"], *info["audio_shape"])
        self.exact_augment = info["source_sizes"] == [[self.image_size, self.image_size]]
        self.num_frames = max(v["frames"] for v in self._videos)
        self.pad_to = max(pad_to or 0, self.num_frames) if self.layout == "avss" else self.num_frames
        if sample_frames is not None:
            shortest = min(v["frames"] for v in self._videos)
            if not 1 <= sample_frames <= shortest:
                raise ValueError(f"sample_frames must be in 1..{shortest} (frames of the shortest video), got {sample_frames}")
            self.pad_to = sample_frames
        self._arrays: dict[str, np.ndarray] | None = None
        self._mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    # Memory maps are opened lazily in each process (a DataLoader worker gets the dataset pickled).
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_arrays"] = None
        return state

    def _open(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            arrays = {}
            for key, path in self._files.items():
                arr = np.load(path, mmap_mode="r")
                if arr.shape != self._expected[key]:
                    raise DataError(path, f"cache array is {arr.shape}, the index expects {self._expected[key]}: rebuild the cache")
                arrays[key] = arr
            self._arrays = arrays
        return self._arrays

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self._videos)

    def pseudo_path(self, record: VideoRecord, k: int) -> Path:
        assert self.pseudo_dir is not None
        return self.pseudo_dir / L.prediction_relpath(self.layout, record.split, record.category, record.video_id, k)

    def __getitem__(self, index: int) -> CachedVideoSample:
        arrays = self._open()
        video, record = self._videos[index], self.records[index]
        t, start, size = video["frames"], video["start"], self.image_size
        # The random streams of AVSBenchDataset: geometry from (seed, epoch, index), frame choice from
        # (seed, epoch, index, 1); only the kept frames are read.
        keep = list(range(t))
        if self.sample_frames is not None:
            keep = sample_frame_indices(self.seed, self.epoch, index, t, self.sample_frames)
        g = augment_geometry(self.seed, self.epoch, index, size, self.augment)
        plain = augment_geometry(self.seed, self.epoch, index, size, augment=False)  # resize only
        rows = [start + k for k in keep]
        frames_u8 = np.asarray(arrays["frames"][rows])  # (k, H, W, 3)
        masks_u8 = np.asarray(arrays["masks"][rows])  # (k, H, W)
        has_mask = torch.tensor([video["has_mask"][k] for k in keep], dtype=torch.bool)
        pseudo_u8 = None
        if self.pseudo_dir is not None:
            # as AVSBenchDataset: probability PNG -> float -> uint8 again; resized to image_size (a copy when it is)
            pseudo_u8 = [
                apply_geometry((read_probability_png(self.pseudo_path(record, record.frame_numbers[k])) * 255).astype(np.uint8), plain, size, nearest=False)
                for k in keep
            ]

        on_cpu = self.augment and self.frames_mode == "float"

        def geom(arr: np.ndarray, nearest: bool) -> np.ndarray:
            if not on_cpu:
                return arr
            return apply_geometry(arr, g, size, nearest)

        if self.frames_mode == "uint8":
            frames_t = torch.from_numpy(frames_u8)  # (k, H, W, 3) uint8
        else:
            frames_np = np.stack([geom(f, False) for f in frames_u8]) if on_cpu else frames_u8
            frames_t = torch.from_numpy(frames_np.copy()).permute(0, 3, 1, 2).float().div_(255.0)
            frames_t = (frames_t - self._mean) / self._std  # (k, 3, H, W)
        masks = torch.zeros(len(keep), size, size, dtype=torch.int64)
        for i in range(len(keep)):
            if has_mask[i]:
                masks[i] = torch.from_numpy(geom(masks_u8[i], True).astype(np.int64))
        pseudo = has_pseudo = None
        if pseudo_u8 is not None:
            pseudo = torch.from_numpy(np.stack([geom(p, False) for p in pseudo_u8]).astype(np.float32) / 255.0)
            has_pseudo = torch.ones(len(keep), dtype=torch.bool)
        audio = torch.from_numpy(np.asarray(arrays["audio"][rows])).float() if "audio" in arrays else None
        sample = VideoSample(
            frames=frames_t, audio=audio, waveform=None, masks=masks, has_mask=has_mask,
            valid=torch.ones(len(keep), dtype=torch.bool), labels=torch.tensor(video["labels"], dtype=torch.float32),
            video_id=record.video_id, frame_ids=[record.frame_numbers[k] for k in keep],
            pseudo_masks=pseudo, has_pseudo=has_pseudo,
        )  # fmt: skip
        sample = _pad(sample, self.pad_to)
        geometry = torch.tensor([g.y0, g.x0, int(g.flip)], dtype=torch.int64) if self.frames_mode == "uint8" and self.augment else None
        return CachedVideoSample(**{f: getattr(sample, f) for f in VideoSample.__dataclass_fields__}, geometry=geometry)


def collate_cached(samples: list[VideoSample]) -> AVBatch:
    """``collate_videos`` plus, for uint8 samples with a geometry, ``extras["geometry"]`` (B, 3)."""
    batch = collate_videos(samples)
    geometries = [getattr(s, "geometry", None) for s in samples]
    if all(g is not None for g in geometries):
        batch.extras["geometry"] = torch.stack(geometries)  # type: ignore[arg-type]
    return batch
