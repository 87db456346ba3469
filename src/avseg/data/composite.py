"""Composite audio-visual benchmark from real media, written in the official S4 layout.

Input is a media folder (see ``/work/shared/media/README.md``)::

    classes.txt                 class names, one per line; line index = class id in labels/*.txt
    images/<id>.jpg             real photos
    labels/<id>.txt             YOLO-segmentation polygons, "cls x1 y1 x2 y2 ..." normalised to [0, 1]
    sounds/<class>/<name>.wav   16 kHz recordings of sounding classes (<class> spelled as in classes.txt)
    sounds.csv                  path,class,source,licence,duration_s (provenance; checked when present)

For every (image, sound class) pair where the class has sounds and occurs in the image, one 5-frame
video: the photo resized to ``size`` x ``size`` (aspect not kept, as AVSBench) with a small per-frame
jitter (zoom 1-3 %, translation within the zoom margin so no border appears), a real recording of the
class looped to 5 s, and as ground truth the union of the class's polygons rasterised at the photo's
size and moved exactly like the frame (resize and jitter composed into one nearest-neighbour lookup).
``negatives`` adds that fraction of extra videos pairing a photo with a sound class absent from it;
their masks are empty. Splits are by image,
so one photo never feeds two splits. Besides the S4 files, ``composite_info.json`` at the root records
which image and recording each video uses (the recordings carry their own licences, see sounds.csv).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from avseg.data import layout as L
from avseg.data.imageio import save_png_atomic, write_wav_atomic
from avseg.data.synthetic import split_counts
from avseg.fileio import write_text_atomic

__all__ = ["MediaFolder", "read_media", "parse_label_file", "build_composite"]

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
NUM_FRAMES = 5
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_COORD_TOLERANCE = 0.01  # YOLO exports sometimes hold 1.0004; anything further out is a broken file


@dataclass
class MediaFolder:
    """A parsed media folder.

    Attributes:
        root: the folder.
        classes: class names; index = class id in the label files.
        images: image id -> image path, sorted by id.
        objects: image id -> list of (class id, (P, 2) float64 polygon in normalised x, y).
        sounds: class name -> sorted recording paths, only for classes that have a sounds/ folder.
    """

    root: Path
    classes: list[str]
    images: dict[str, Path]
    objects: dict[str, list[tuple[int, np.ndarray]]]
    sounds: dict[str, list[Path]]


def parse_label_file(path: Path, num_classes: int) -> list[tuple[int, np.ndarray]]:
    """Read one YOLO-seg label file; raises ValueError naming the file and line on any malformed line."""
    objects = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue  # blank lines (e.g. a trailing one) carry no object
        where = f"{path}, line {lineno}"
        try:
            cls = int(tokens[0])
        except ValueError:
            raise ValueError(f"{where}: class id {tokens[0]!r} is not an integer") from None
        if not 0 <= cls < num_classes:
            raise ValueError(f"{where}: class id {cls} outside 0..{num_classes - 1} (classes.txt)")
        coords = tokens[1:]
        if len(coords) < 6 or len(coords) % 2:
            raise ValueError(
                f"{where}: expected 'cls x1 y1 x2 y2 ...' with >= 3 points, got {len(coords)} numbers"
            )
        try:
            values = np.array([float(v) for v in coords], np.float64)
        except ValueError:
            raise ValueError(f"{where}: coordinates must be numbers") from None
        tol = _COORD_TOLERANCE
        if not np.all(np.isfinite(values)) or values.min() < -tol or values.max() > 1 + tol:
            raise ValueError(f"{where}: coordinates must be normalised to [0, 1]")
        objects.append((cls, np.clip(values, 0.0, 1.0).reshape(-1, 2)))
    return objects


def read_media(media: Path) -> MediaFolder:
    """Parse and check a media folder; every problem is a ValueError naming the file."""
    media = Path(media)
    classes_path = media / "classes.txt"
    if not classes_path.is_file():
        raise ValueError(f"{classes_path} is missing (expected one class name per line)")
    classes = [line.strip() for line in classes_path.read_text().splitlines()]
    while classes and not classes[-1]:
        classes.pop()
    if not classes or any(not c for c in classes):
        raise ValueError(f"{classes_path}: expected one non-empty class name per line")

    image_dir, label_dir, sound_dir = media / "images", media / "labels", media / "sounds"
    for folder in (image_dir, label_dir, sound_dir):
        if not folder.is_dir():
            raise ValueError(f"{folder} is missing")
    images = {p.stem: p for p in sorted(image_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    if not images:
        raise ValueError(f"{image_dir} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    objects = {}
    for image_id in images:
        label_path = label_dir / f"{image_id}.txt"
        if not label_path.is_file():
            raise ValueError(f"{label_path} is missing (label file of {images[image_id]})")
        objects[image_id] = parse_label_file(label_path, len(classes))
    orphans = sorted(p.name for p in label_dir.glob("*.txt") if p.stem not in images)
    if orphans:
        log.warning(
            "%s: %d label files without an image are not used (e.g. %s)", label_dir, len(orphans), orphans[0]
        )

    sounds: dict[str, list[Path]] = {}
    for folder in sorted(p for p in sound_dir.iterdir() if p.is_dir()):
        if folder.name not in classes:
            raise ValueError(f"{folder}: sound folder name is not a class of {classes_path}")
        wavs = sorted(folder.glob("*.wav"))
        if not wavs:
            raise ValueError(f"{folder} holds no .wav recordings")
        sounds[folder.name] = wavs
    sounds_csv = media / "sounds.csv"
    if sounds_csv.is_file():
        with open(sounds_csv, newline="") as f:
            for lineno, row in enumerate(csv.DictReader(f), start=2):
                name, path = row.get("class", ""), row.get("path", "")
                if not (sound_dir / name).is_dir():
                    raise ValueError(f"{sounds_csv}, line {lineno}: sound folder {sound_dir / name} is missing")
                if not (media / path).is_file() or (media / path).parent.name != name:
                    raise ValueError(
                        f"{sounds_csv}, line {lineno}: {media / path} is missing or not in sounds/{name}/"
                    )
    if not sounds:
        raise ValueError(f"{sound_dir} holds no class folders (expected sounds/<class>/<name>.wav)")
    # Order sound classes as in classes.txt so that the video list does not depend on folder listing.
    sounds = {c: sounds[c] for c in classes if c in sounds}
    return MediaFolder(root=media, classes=classes, images=images, objects=objects, sounds=sounds)


def _load_sound(path: Path, seconds: int) -> np.ndarray:
    """Mono float32 at 16 kHz, looped (not padded with silence) to ``seconds``."""
    import soundfile as sf

    try:
        wave, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except RuntimeError as err:
        raise ValueError(f"{path}: cannot decode audio ({err})") from None
    if sr != SAMPLE_RATE:
        raise ValueError(f"{path}: expected {SAMPLE_RATE} Hz audio, got {sr} Hz")
    wave = wave.mean(axis=1)
    if wave.size == 0:
        raise ValueError(f"{path} holds no samples")
    return np.resize(wave, seconds * SAMPLE_RATE)  # np.resize repeats the array cyclically


def _class_mask(image_size: tuple[int, int], polygons: Sequence[np.ndarray]) -> Image.Image:
    """Union of polygons rasterised at the image's own size: mode L, 255 inside."""
    width, height = image_size
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    for polygon in polygons:
        draw.polygon([(float(x) * width, float(y) * height) for x, y in polygon], fill=255)
    return mask


def _jitter(rng: np.random.Generator, size: int) -> tuple[float, ...]:
    """PIL affine coefficients (output -> input) of a 1-3 % zoom about the centre plus a translation
    that stays inside the zoom margin, so no pixel outside the photo is ever sampled."""
    scale = rng.uniform(1.01, 1.03)
    margin = (scale - 1.0) * size / 2
    tx, ty = rng.uniform(-margin, margin, 2)
    centre = size / 2
    return (1 / scale, 0.0, centre - (centre + tx) / scale, 0.0, 1 / scale, centre - (centre + ty) / scale)


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    fr = tuple(float(v) for v in fractions)
    if len(fr) != 3 or min(fr) < 0 or not math.isclose(sum(fr), 1.0, abs_tol=1e-6):
        raise ValueError(f"split_fractions must be 3 non-negative numbers summing to 1, got {fractions}")
    return fr  # type: ignore[return-value]


def build_composite(
    media: Path,
    out: Path,
    seed: int = 0,
    negatives: float = 0.2,
    size: int = 224,
    split_fractions: Sequence[float] = (0.6, 0.2, 0.2),
    *,
    overwrite: bool = False,
) -> dict:
    """Build the composite benchmark from ``media`` into ``out`` in the S4 layout.

    Args:
        media: a media folder (format in the module docstring).
        out: dataset root, the equivalent of ``Single-source/``.
        seed: drives recording choice, negatives, jitter and splits; same seed -> same files.
        negatives: extra videos with an absent sound class, as a fraction of the positive videos.
        size: frame side in pixels.
        split_fractions: train / val / test fractions of the images (splits are by image).
        overwrite: allow writing over an existing dataset (its s4_meta_data.csv exists).

    Returns:
        counts: {"videos", "positives", "negatives", "train", "val", "test" (videos per split),
        "images": {split: images}, "empty_positive_masks" (positives whose frame-1 mask vanished at
        this size because every polygon is smaller than a pixel)}.
    """
    fractions = _check_fractions(split_fractions)
    if negatives < 0 or not math.isfinite(negatives):
        raise ValueError(f"negatives must be a non-negative fraction, got {negatives}")
    if size < 16:
        raise ValueError(f"size must be >= 16 pixels, got {size}")
    out = Path(out)
    meta_path = L.metadata_path(out, "s4")
    if meta_path.exists() and not overwrite:
        raise FileExistsError(f"{meta_path} exists; pass overwrite=True or choose an empty folder")
    folder = read_media(media)

    # (image id, class id, positive) for every video, in a fixed order.
    videos: list[tuple[str, int, bool]] = []
    absent: list[tuple[str, int]] = []
    for image_id in folder.images:
        present = {cls for cls, _ in folder.objects[image_id]}
        for name in folder.sounds:
            cls = folder.classes.index(name)
            if cls in present:
                videos.append((image_id, cls, True))
            else:
                absent.append((image_id, cls))
    num_positive = len(videos)
    if num_positive == 0:
        raise ValueError(f"{media}: no image contains a class that has sounds ({', '.join(folder.sounds)})")
    num_negative = round(negatives * num_positive)
    if num_negative > len(absent):
        log.warning(
            "only %d (image, absent class) pairs exist; making %d negatives, not %d",
            len(absent), len(absent), num_negative,
        )
        num_negative = len(absent)
    picked = np.random.default_rng([seed, 0]).choice(len(absent), num_negative, replace=False)
    videos += [(absent[i][0], absent[i][1], False) for i in sorted(picked)]

    # Split by image: every video of a photo lands in the photo's split.
    image_ids = sorted({image_id for image_id, _, _ in videos})
    n_train, n_val, _ = split_counts(len(image_ids), fractions)
    image_split = {}
    for rank, i in enumerate(np.random.default_rng([seed, 1]).permutation(len(image_ids))):
        image_split[image_ids[i]] = "train" if rank < n_train else ("val" if rank < n_train + n_val else "test")

    rows, records = [], []
    empty_positive = 0
    for image_id, cls, positive in videos:
        class_name = folder.classes[cls]
        category = class_name.replace(" ", "_")
        name = f"{image_id}_{category}"
        split = image_split[image_id]
        # Per-video generator keyed by its name: adding media does not reshuffle existing videos.
        rng = np.random.default_rng([seed, 2, zlib.crc32(name.encode())])
        sound_path = folder.sounds[class_name][int(rng.integers(len(folder.sounds[class_name])))]
        audio = _load_sound(sound_path, NUM_FRAMES)

        with Image.open(folder.images[image_id]) as img:
            photo = img.convert("RGB")
        polygons = [poly for c, poly in folder.objects[image_id] if c == cls]
        mask = _class_mask(photo.size, polygons)
        frame = photo.resize((size, size), Image.Resampling.BILINEAR)  # PIL's resize low-passes: no aliasing
        sx, sy = photo.size[0] / size, photo.size[1] / size
        mask_frames = L.s4_mask_frames(split)
        for k in range(1, NUM_FRAMES + 1):
            coeffs = _jitter(rng, size)
            save_png_atomic(
                L.s4_frame(out, split, category, name, k),
                frame.transform((size, size), Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR),
                compress_level=1,
            )
            if k in mask_frames:
                # Resize and jitter composed into one nearest-neighbour lookup into the full-size mask,
                # so thin parts are not lost to two successive resamplings.
                a, b, c, d, e, f = coeffs
                full = (a * sx, b * sx, c * sx, d * sy, e * sy, f * sy)
                moved = mask.transform((size, size), Image.Transform.AFFINE, full, resample=Image.Resampling.NEAREST)
                if k == 1 and positive and not moved.getbbox():
                    empty_positive += 1
                save_png_atomic(L.s4_mask(out, split, category, name, k), moved, mode="L", compress_level=1)
        write_wav_atomic(L.s4_wav(out, split, category, name), audio, SAMPLE_RATE)
        rows.append([name, 0, category, split])
        records.append(
            {
                "name": name,
                "image": folder.images[image_id].relative_to(folder.root).as_posix(),
                "class": class_name,
                "positive": positive,
                "sound": sound_path.relative_to(folder.root).as_posix(),
                "split": split,
            }
        )
    if empty_positive:
        log.warning(
            "%d positive videos have an empty frame-1 mask at %d px (objects below one pixel)", empty_positive, size
        )

    counts: dict = {"videos": len(videos), "positives": num_positive, "negatives": num_negative}
    for split in L.SPLITS:
        counts[split] = sum(r[3] == split for r in rows)
    counts["images"] = {split: sum(s == split for s in image_split.values()) for split in L.SPLITS}
    counts["empty_positive_masks"] = empty_positive
    info = {
        "generator": "avseg.data.composite",
        "media": str(Path(media).resolve()),
        "seed": seed,
        "negatives": negatives,
        "size": size,
        "split_fractions": list(fractions),
        "counts": counts,
        "videos": records,
    }
    write_text_atomic(out / "composite_info.json", json.dumps(info, indent=2) + "\n")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["name", "start", "category", "split"])
    writer.writerows(rows)
    # Written last: an interrupted build leaves no metadata and cannot pass for a complete dataset.
    write_text_atomic(meta_path, buf.getvalue())
    return counts
