"""A genuinely audio-visual synthetic dataset, written in the official S4 / MS3 / AVSS layouts.

Each video shows several textured shapes on a textured background. Every synthetic class has its own
look (shape family, colour, texture) and its own sound (a distinct spectral-temporal signature). Some
objects sound, others are silent distractors of classes that do not sound in that video, so only the
audio says which object to segment. Frame ``t`` shows second ``t`` of the audio, and the ground truth
of frame ``t`` is exactly the visible pixels (after occlusion) of the objects sounding in second ``t``.

- S4: one sounding object per video, sounding and visible in all 5 frames; its class is the category.
- MS3: up to ``max_sources`` sources; the sounding set may change from one second to the next
  (``switch_prob``) and may be empty (``silence_prob``), which gives all-black masks.
- AVSS: labels cycle v1s (one source, always sounding, 5 frames), v1m (like MS3, 5 frames) and
  v2 (like MS3, 10 frames); class-index maps and VOC-palette RGB maps.

Everything is derived from ``numpy.random.Generator`` objects seeded by ``(seed, layout, video index)``,
so the same arguments give byte-identical files, and any video can be re-planned on its own
(``plan_video``) to check what was written. Nothing is written at the dataset root besides the
official files and ``synth_info.json`` (config, seed, class list).

Typical use::

    from avseg.data.synthetic import SynthConfig, generate
    counts = generate("ms3", Path("data/synth/Multi-sources"), num_videos=200, seed=0)
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from avseg.data import layout as L
from avseg.data.imageio import save_jpg_atomic, save_png_atomic, write_wav_atomic
from avseg.fileio import write_text_atomic

__all__ = [
    "SAMPLE_RATE",
    "SYNTH_CLASSES",
    "CLASS_STYLES",
    "ClassStyle",
    "SynthConfig",
    "SynthObject",
    "VideoPlan",
    "generate",
    "plan_video",
    "render_video",
    "semantic_maps",
    "object_shape_mask",
    "synth_audio",
    "split_counts",
    "assign_splits",
]

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
# Ratio between a source's nominal RMS and full scale; two sources plus noise stay well below clipping.
SOURCE_RMS = 0.1
_LAYOUT_IDS = {"s4": 4, "ms3": 3, "avss": 7}
_RAMP = SAMPLE_RATE // 100  # 10 ms fades, placed inside the sounding second so silence stays silent


# --- classes -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClassStyle:
    """How one synthetic class looks and sounds."""

    name: str
    shape: str
    colour: tuple[float, float, float]  # RGB in [0, 1]
    texture: str
    sound: str  # one-line description of the sound signature


_S = ClassStyle
CLASS_STYLES: tuple[ClassStyle, ...] = (
    _S("synth_bell", "disc", (0.85, 0.15, 0.15), "radial", "struck inharmonic bell at ~880 Hz, 2 strikes/s"),
    _S("synth_drum", "square", (0.15, 0.30, 0.90), "stripes", "low pitch-dropping thumps, ~3/s"),
    _S("synth_whistle", "triangle", (0.95, 0.85, 0.10), "checker", "pure ~2.5 kHz tone with 6 Hz vibrato"),
    _S("synth_buzzer", "star", (0.10, 0.70, 0.20), "dots", "square-ish 220 Hz buzz (odd harmonics)"),
    _S("synth_siren", "ring", (1.00, 0.50, 0.00), "rings", "FM siren sweeping ~700-1200 Hz, ~1 s period"),
    _S("synth_clicker", "cross", (0.60, 0.20, 0.80), "gradient", "damped ~3 kHz clicks at ~10/s"),
    _S("synth_horn", "ellipse", (0.10, 0.80, 0.85), "waves", "sawtooth 330 Hz, 2 Hz amplitude modulation"),
    _S("synth_rattle", "hexagon", (0.95, 0.45, 0.70), "grid", "3-5 kHz noise bursts gated at ~12 Hz"),
    _S("synth_chime", "crescent", (0.92, 0.92, 0.92), "stripes", "rising 1.5-3 kHz chirps, 4/s"),
    _S("synth_engine", "semidisc", (0.45, 0.28, 0.12), "checker", "50 Hz hum + <400 Hz rumble, 25 Hz AM"),
)  # fmt: skip
SYNTH_CLASSES: tuple[str, ...] = tuple(style.name for style in CLASS_STYLES)


# --- config ------------------------------------------------------------------------------------------
@dataclass
class SynthConfig:
    """Difficulty knobs of the synthetic dataset.

    Attributes:
        num_classes: K, the first K entries of ``SYNTH_CLASSES`` are used (1..10).
        distractors: (min, max) silent objects per video, of classes that never sound in that video.
        snr_db: a source's nominal power over the background (pink) noise power, in dB.
        scale_range: (min, max) object diameter as a fraction of the frame size.
        occlusion: objects may overlap (masks are then the visible part only); False places them apart.
        min_visible: with occlusion, every object keeps at least this fraction of its in-frame area
            visible in every frame (layouts are re-drawn until it holds).
        max_sources: most simultaneous sources in MS3 / AVSS v1m / v2 videos (S4, v1s: always 1).
        switch_prob: probability that the sounding set changes from one second to the next (MS3, AVSS).
        silence_prob: when the sounding set changes, probability that nothing sounds (empty masks).
        drift: largest per-frame motion of an object, as a fraction of the frame size.
        split_fractions: train / val / test fractions; at least one video per split with a positive
            fraction once ``num_videos >= 3``.
    """

    num_classes: int = 6
    distractors: tuple[int, int] = (1, 2)
    snr_db: float = 10.0
    scale_range: tuple[float, float] = (0.2, 0.35)
    occlusion: bool = True
    min_visible: float = 0.3
    max_sources: int = 2
    switch_prob: float = 0.3
    silence_prob: float = 0.2
    drift: float = 0.02
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)

    def __post_init__(self) -> None:
        # Accept lists (from YAML / JSON) but store tuples so the config stays hashable and comparable.
        self.distractors = tuple(int(v) for v in self.distractors)  # type: ignore[assignment]
        self.scale_range = tuple(float(v) for v in self.scale_range)  # type: ignore[assignment]
        self.split_fractions = tuple(float(v) for v in self.split_fractions)  # type: ignore[assignment]
        if not 1 <= self.num_classes <= len(SYNTH_CLASSES):
            raise ValueError(f"num_classes must be in 1..{len(SYNTH_CLASSES)}, got {self.num_classes}")
        if len(self.distractors) != 2 or not 0 <= self.distractors[0] <= self.distractors[1]:
            raise ValueError(f"distractors must be (min, max) with 0 <= min <= max, got {self.distractors}")
        if self.max_sources < 1:
            raise ValueError(f"max_sources must be >= 1, got {self.max_sources}")
        if self.max_sources + self.distractors[1] > self.num_classes:
            raise ValueError(
                f"max_sources ({self.max_sources}) + max distractors ({self.distractors[1]}) exceeds "
                f"num_classes ({self.num_classes}): every object of a video has its own class"
            )
        if len(self.scale_range) != 2 or not 0.02 <= self.scale_range[0] <= self.scale_range[1] <= 0.8:
            raise ValueError(
                f"scale_range must be (min, max) with 0.02 <= min <= max <= 0.8, got {self.scale_range}"
            )
        if not math.isfinite(self.snr_db) or not -30.0 <= self.snr_db <= 60.0:
            raise ValueError(f"snr_db must be in [-30, 60], got {self.snr_db}")
        for name in ("min_visible", "switch_prob", "silence_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if not 0.0 <= self.drift <= 0.05:
            raise ValueError(f"drift must be in [0, 0.05] (fraction of the frame per frame), got {self.drift}")
        fr = self.split_fractions
        if len(fr) != 3 or min(fr) < 0 or abs(sum(fr) - 1.0) > 1e-6:
            raise ValueError(f"split_fractions must be 3 non-negative numbers summing to 1, got {fr}")


# --- splits ------------------------------------------------------------------------------------------
def split_counts(n: int, fractions: Sequence[float]) -> tuple[int, int, int]:
    """Videos per split (train, val, test): rounded fractions, at least one per split with a positive
    fraction once ``n >= 3``, train takes the remainder."""
    counts = [0, round(fractions[1] * n), round(fractions[2] * n)]
    if n >= 3:
        for i in (1, 2):
            if fractions[i] > 0:
                counts[i] = max(counts[i], 1)
    counts[0] = n - counts[1] - counts[2]
    # Rounding can overshoot when train's fraction is small; take back from the larger of val/test.
    while counts[0] < (1 if fractions[0] > 0 and n >= 3 else 0):
        j = 1 if counts[1] >= counts[2] else 2
        counts[j] -= 1
        counts[0] += 1
    return counts[0], counts[1], counts[2]


def assign_splits(n: int, fractions: Sequence[float], rng: np.random.Generator) -> list[str]:
    """A split name per video index: a seeded shuffle cut by ``split_counts``."""
    n_train, n_val, _ = split_counts(n, fractions)
    splits = [""] * n
    for rank, index in enumerate(rng.permutation(n)):
        splits[index] = "train" if rank < n_train else ("val" if rank < n_train + n_val else "test")
    return splits


# --- plans -------------------------------------------------------------------------------------------
@dataclass
class SynthObject:
    """One object instance and its trajectory over the T frames (pixel units, y down)."""

    cls: int  # index into SYNTH_CLASSES
    centres: np.ndarray  # (T, 2) float64, (x, y)
    radii: np.ndarray  # (T,) float64, radius of the shape's bounding circle
    angles: np.ndarray  # (T,) float64, rotation in radians
    colour: np.ndarray  # (3,) float64 RGB in [0, 1], the class colour with per-instance jitter
    texture_freq: float
    texture_phase: float


@dataclass
class VideoPlan:
    """Everything needed to render one video and its audio; ``objects`` are in depth order, back first."""

    layout: str
    index: int
    name: str  # S4 name / MS3 video id / AVSS uid
    split: str
    label: str | None  # AVSS v1s / v1m / v2, else None
    num_frames: int
    size: int
    objects: list[SynthObject]
    sounding: np.ndarray  # (T, num_objects) bool: object j sounds in second t
    background: dict
    audio_seed: int
    snr_db: float

    @property
    def vid(self) -> str:
        """AVSS ``vid`` column (the uid without its start fields); the name elsewhere."""
        return self.name.rsplit("_", 2)[0] if self.layout == "avss" else self.name

    def sounding_classes(self) -> list[int]:
        """Classes that sound in at least one second, in class order."""
        return sorted({self.objects[j].cls for j in np.flatnonzero(self.sounding.any(axis=0))})


def _video_name(layout: str, index: int) -> str:
    if layout == "avss":
        return f"synth_avss_{index:05d}_0_0"  # uid = {vid}_{s_min}_{s_sec}
    return f"synth_{layout}_{index:05d}"


def _sample_trajectory(rng: np.random.Generator, size: int, num_frames: int, drift: float) -> np.ndarray:
    """Centres (T, 2) that stay inside the central part of the frame for the whole video."""
    margin = 0.12 * size
    speed = rng.uniform(0.0, drift * size)
    direction = rng.uniform(0.0, 2 * math.pi)
    velocity = speed * np.array([math.cos(direction), math.sin(direction)])
    travel = velocity * (num_frames - 1)
    lo = margin - np.minimum(travel, 0.0)
    hi = size - margin - np.maximum(travel, 0.0)
    start = rng.uniform(lo, np.maximum(hi, lo))
    return start[None, :] + velocity[None, :] * np.arange(num_frames)[:, None]


def _sample_object(
    rng: np.random.Generator, cls: int, size: int, num_frames: int, cfg: SynthConfig
) -> SynthObject:
    radius0 = 0.5 * size * rng.uniform(*cfg.scale_range)
    growth = rng.uniform(-0.02, 0.02)  # per frame: objects approach / recede a little
    radii = radius0 * (1.0 + growth * np.arange(num_frames))
    angle0, spin = rng.uniform(0, 2 * math.pi), rng.uniform(-0.1, 0.1)
    colour = np.clip(np.array(CLASS_STYLES[cls].colour) + rng.normal(0.0, 0.04, 3), 0.05, 1.0)
    return SynthObject(
        cls=cls,
        centres=_sample_trajectory(rng, size, num_frames, cfg.drift),
        radii=radii,
        angles=angle0 + spin * np.arange(num_frames),
        colour=colour,
        texture_freq=float(rng.uniform(2.5, 4.0)),
        texture_phase=float(rng.uniform(0, 2 * math.pi)),
    )


def _place_apart(rng: np.random.Generator, objects: list[SynthObject], size: int, cfg: SynthConfig) -> None:
    """Re-draw trajectories until no two bounding circles meet in any frame; shrink when crowded."""
    num_frames = len(objects[0].radii)
    shrink = 1.0
    while True:
        for _ in range(50):
            for obj in objects:
                obj.centres = _sample_trajectory(rng, size, num_frames, cfg.drift)
            ok = True
            for a in range(len(objects)):
                for b in range(a + 1, len(objects)):
                    gap = np.linalg.norm(objects[a].centres - objects[b].centres, axis=1)
                    if np.any(gap < objects[a].radii + objects[b].radii + 1.0):
                        ok = False
            if ok:
                return
        shrink *= 0.85
        for obj in objects:
            obj.radii = np.maximum(obj.radii * 0.85, 1.0)
        if shrink < 1e-3:  # cannot happen for sane sizes; fail loudly rather than loop forever
            raise RuntimeError(f"cannot place {len(objects)} objects apart in a {size}px frame")


class _ScheduleSettings(Protocol):
    """What a sounding schedule reads from its config (SynthConfig here, StampsConfig in stamps.py)."""

    silence_prob: float
    switch_prob: float


def _sounding_schedule(
    rng: np.random.Generator, num_sources: int, num_frames: int, cfg: _ScheduleSettings
) -> np.ndarray:
    """(T, num_sources) bool. Starts with a random non-empty set; each second, with ``switch_prob``,
    moves to another subset (the empty set weighted by ``silence_prob``, the non-empty ones sharing the
    rest)."""
    subsets = [np.array([(m >> j) & 1 for j in range(num_sources)], bool) for m in range(1 << num_sources)]
    # Subset 0 is the empty set; the non-empty subsets share what silence does not take.
    weights_all = np.full(len(subsets), (1 - cfg.silence_prob) / max(len(subsets) - 1, 1))
    weights_all[0] = cfg.silence_prob
    current = int(rng.integers(1, len(subsets)))
    schedule = np.zeros((num_frames, num_sources), bool)
    for t in range(num_frames):
        if t > 0 and rng.random() < cfg.switch_prob:
            weights = weights_all.copy()
            weights[current] = 0.0
            if weights.sum() > 0:
                current = int(rng.choice(len(subsets), p=weights / weights.sum()))
        schedule[t] = subsets[current]
    return schedule


def plan_video(
    layout: str, index: int, seed: int, size: int, config: SynthConfig, split: str, label: str | None = None
) -> VideoPlan:
    """Draw one video (objects, trajectories, depth order, sounding schedule, background, audio seed).

    Deterministic in (layout, index, seed, size, config, label); ``split`` is only recorded.
    AVSS needs ``label`` (v1s / v1m / v2).
    """
    rng = np.random.default_rng([seed, _LAYOUT_IDS[layout], 1, index])
    cfg = config
    if layout == "avss":
        if label not in L.AVSS_LABELS:
            raise ValueError(f"AVSS videos need a label in {L.AVSS_LABELS}, got {label!r}")
        num_frames = L.FRAMES_PER_VIDEO[label]
    else:
        num_frames = L.FRAMES_PER_VIDEO[layout]
    single = layout == "s4" or label == "v1s"
    num_sources = 1 if single else int(rng.integers(min(2, cfg.max_sources), cfg.max_sources + 1))
    num_distractors = int(rng.integers(cfg.distractors[0], cfg.distractors[1] + 1))
    if layout == "s4":
        # Cycle the category so every class appears once num_videos >= K.
        category = index % cfg.num_classes
        others = [c for c in range(cfg.num_classes) if c != category]
        classes = [category] + [int(c) for c in rng.choice(others, num_distractors, replace=False)]
    else:
        classes = [int(c) for c in rng.choice(cfg.num_classes, num_sources + num_distractors, replace=False)]
    objects = [_sample_object(rng, c, size, num_frames, cfg) for c in classes]
    if single:
        schedule = np.ones((num_frames, 1), bool)
    else:
        schedule = _sounding_schedule(rng, num_sources, num_frames, cfg)
    sounding = np.zeros((num_frames, len(objects)), bool)
    sounding[:, :num_sources] = schedule

    order = rng.permutation(len(objects))
    if cfg.occlusion and len(objects) > 1:
        # Re-draw until every object keeps min_visible of itself in every frame, so a sounding object is
        # never (almost) hidden; fall back to a layout without overlaps.
        for _ in range(30):
            fractions = _visible_fractions([objects[j] for j in order], size)
            if fractions.min() >= cfg.min_visible and fractions.min() > 0:
                break
            for obj in objects:
                obj.centres = _sample_trajectory(rng, size, num_frames, cfg.drift)
            order = rng.permutation(len(objects))
        else:
            _place_apart(rng, objects, size, cfg)
    elif len(objects) > 1:
        _place_apart(rng, objects, size, cfg)
    objects = [objects[j] for j in order]
    sounding = sounding[:, order]

    kind = str(rng.choice(["noise", "gradient", "stripes"]))
    # Muted background colours so objects read as objects, but colour alone never gives the class away.
    base = rng.uniform(0.25, 0.75, 3)
    background = {
        "kind": kind,
        "colours": np.clip(np.stack([base + rng.uniform(-0.2, 0.2, 3), base + rng.uniform(-0.2, 0.2, 3)]), 0, 1),
        "grid": rng.uniform(0.0, 1.0, (5, 5)),
        "angle": float(rng.uniform(0, math.pi)),
        "freq": float(rng.uniform(2.0, 8.0)),
        "fine": rng.uniform(0.0, 1.0, (12, 12)),
        "flicker": 1.0 + rng.normal(0.0, 0.01, num_frames),
    }
    return VideoPlan(
        layout=layout,
        index=index,
        name=_video_name(layout, index),
        split=split,
        label=label,
        num_frames=num_frames,
        size=size,
        objects=objects,
        sounding=sounding,
        background=background,
        audio_seed=int(rng.integers(0, 2**63 - 1)),
        snr_db=cfg.snr_db,
    )


# --- rendering ---------------------------------------------------------------------------------------
def _regular_polygon(u: np.ndarray, v: np.ndarray, sides: int, offset: float) -> np.ndarray:
    """Inside a regular polygon with vertices on the unit circle (edge normals at offset + k*2pi/n)."""
    inside = np.ones(u.shape, bool)
    for k in range(sides):
        a = offset + 2 * math.pi * k / sides
        inside &= u * math.cos(a) + v * math.sin(a) <= math.cos(math.pi / sides)
    return inside


def _star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    r, theta = np.hypot(u, v), np.arctan2(v, u)
    return r <= 0.45 + 0.55 * ((np.cos(5 * theta) + 1) / 2) ** 2


# Every shape fits in the unit disc, so the bounding circle of radius R bounds the object.
SHAPES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "disc": lambda u, v: u * u + v * v <= 1.0,
    "square": lambda u, v: np.maximum(np.abs(u), np.abs(v)) <= 0.7,
    "triangle": lambda u, v: _regular_polygon(u, v, 3, -math.pi / 2),
    "star": _star,
    "ring": lambda u, v: (u * u + v * v <= 1.0) & (u * u + v * v >= 0.55**2),
    "cross": lambda u, v: ((np.abs(u) <= 0.3) & (np.abs(v) <= 0.95)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 0.95)),
    "ellipse": lambda u, v: u * u + (v / 0.55) ** 2 <= 1.0,
    "hexagon": lambda u, v: _regular_polygon(u, v, 6, 0.0),
    "crescent": lambda u, v: (u * u + v * v <= 1.0) & ((u - 0.45) ** 2 + v * v > 0.8**2),
    "semidisc": lambda u, v: (u * u + v * v <= 1.0) & (v <= 0.15),
}


def _texture(name: str, u: np.ndarray, v: np.ndarray, freq: float, phase: float) -> np.ndarray:
    """Texture value in [0, 1] in the object's own frame (so it moves and turns with the object)."""
    if name == "radial":
        return 1.0 - np.minimum(u * u + v * v, 1.0)
    if name == "stripes":
        return (np.sin(math.pi * freq * u + phase) > 0).astype(np.float64)
    if name == "checker":
        return ((np.floor(freq * u + phase) + np.floor(freq * v + phase)) % 2).astype(np.float64)
    if name == "dots":
        fu, fv = (freq * u + phase) % 1.0 - 0.5, (freq * v + phase) % 1.0 - 0.5
        return (fu * fu + fv * fv > 0.08).astype(np.float64)
    if name == "rings":
        return (np.sin(math.pi * freq * np.hypot(u, v) + phase) > 0).astype(np.float64)
    if name == "gradient":
        return (u + 1.0) / 2.0
    if name == "waves":
        return 0.5 + 0.5 * np.sin(math.pi * freq * (u + 0.3 * np.sin(math.pi * freq * v)) + phase)
    if name == "grid":
        return (((freq * u + phase) % 1.0 > 0.25) & ((freq * v + phase) % 1.0 > 0.25)).astype(np.float64)
    raise ValueError(f"unknown texture {name!r}")


def _object_patch(obj: SynthObject, t: int, size: int):
    """Rasterise object ``obj`` in frame ``t`` (pixel centres, no anti-aliasing so masks are exact).

    Returns (y0, x0, inside, u, v): the patch origin, a bool (h, w) shape mask and the object-frame
    coordinates of the patch, or None when the object is outside the frame."""
    cx, cy = obj.centres[t]
    radius = float(obj.radii[t])
    x0, x1 = max(0, int(math.floor(cx - radius))), min(size, int(math.ceil(cx + radius)) + 1)
    y0, y1 = max(0, int(math.floor(cy - radius))), min(size, int(math.ceil(cy + radius)) + 1)
    if x0 >= x1 or y0 >= y1:
        return None
    dx = (np.arange(x0, x1) + 0.5 - cx)[None, :] / radius  # (1, w)
    dy = (np.arange(y0, y1) + 0.5 - cy)[:, None] / radius  # (h, 1)
    c, s = math.cos(obj.angles[t]), math.sin(obj.angles[t])
    u = c * dx + s * dy  # (h, w), rotate the pixel grid by -angle into the object's frame
    v = -s * dx + c * dy
    inside = SHAPES[CLASS_STYLES[obj.cls].shape](u, v)
    return y0, x0, inside, u, v


def object_shape_mask(obj: SynthObject, t: int, size: int) -> np.ndarray:
    """(size, size) bool: the object's full shape in frame ``t``, ignoring occlusion."""
    mask = np.zeros((size, size), bool)
    patch = _object_patch(obj, t, size)
    if patch is not None:
        y0, x0, inside, _, _ = patch
        mask[y0 : y0 + inside.shape[0], x0 : x0 + inside.shape[1]] = inside
    return mask


def _owner_maps(objects: list[SynthObject], size: int) -> np.ndarray:
    """(T, size, size) int8: index of the front-most object at each pixel, -1 for background."""
    num_frames = len(objects[0].radii) if objects else 0
    owner = np.full((num_frames, size, size), -1, np.int8)
    for t in range(num_frames):
        for j, obj in enumerate(objects):  # back to front: later objects overwrite earlier ones
            patch = _object_patch(obj, t, size)
            if patch is not None:
                y0, x0, inside, _, _ = patch
                owner[t, y0 : y0 + inside.shape[0], x0 : x0 + inside.shape[1]][inside] = j
    return owner


def _visible_fractions(objects: list[SynthObject], size: int) -> np.ndarray:
    """(T, num_objects): visible pixels / in-frame shape pixels of each object in each frame."""
    owner = _owner_maps(objects, size)
    fractions = np.zeros((owner.shape[0], len(objects)))
    for t in range(owner.shape[0]):
        visible = np.bincount(owner[t].ravel().astype(np.int64) + 1, minlength=len(objects) + 1)[1:]
        for j, obj in enumerate(objects):
            area = object_shape_mask(obj, t, size).sum()
            fractions[t, j] = visible[j] / area if area else 0.0
    return fractions


def _smooth_upsample(grid: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of a (g, g) grid to (size, size) as two small matrix products."""
    g = grid.shape[0]
    pos = np.linspace(0, g - 1, size)
    lo = np.minimum(np.floor(pos).astype(int), g - 2)
    w = pos - lo
    interp = np.zeros((size, g))
    interp[np.arange(size), lo] = 1 - w
    interp[np.arange(size), lo + 1] = w
    return interp @ grid @ interp.T


def _render_background(background: dict, size: int) -> np.ndarray:
    """(size, size, 3) float32 in [0, 1]: two colours mixed by a smooth noise / gradient / stripe field."""
    ys, xs = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    a = background["angle"]
    proj = xs * math.cos(a) + ys * math.sin(a)
    kind = background["kind"]
    if kind == "noise":
        mix = _smooth_upsample(background["grid"], size)
    elif kind == "gradient":
        mix = (proj - proj.min()) / max(proj.max() - proj.min(), 1e-6)
    else:
        mix = 0.5 + 0.5 * np.sin(2 * math.pi * background["freq"] * proj)
    # A fainter, finer noise layer so even flat backgrounds have texture.
    mix = np.clip(0.85 * mix + 0.15 * _smooth_upsample(background["fine"], size), 0.0, 1.0)
    c0, c1 = background["colours"]
    return (c0[None, None, :] * (1 - mix[..., None]) + c1[None, None, :] * mix[..., None]).astype(np.float32)


def render_video(plan: VideoPlan) -> tuple[np.ndarray, np.ndarray]:
    """Render the frames of a plan.

    Returns:
        frames: (T, H, W, 3) uint8 RGB.
        owner: (T, H, W) int8, index into ``plan.objects`` of the visible object at each pixel, -1 for
            background. Ground truth of frame t = pixels whose owner sounds in second t.
    """
    size = plan.size
    background = _render_background(plan.background, size)
    frames = np.empty((plan.num_frames, size, size, 3), np.uint8)
    owner = np.full((plan.num_frames, size, size), -1, np.int8)
    for t in range(plan.num_frames):
        canvas = background * np.float32(plan.background["flicker"][t])
        for j, obj in enumerate(plan.objects):
            patch = _object_patch(obj, t, size)
            if patch is None:
                continue
            y0, x0, inside, u, v = patch
            h, w = inside.shape
            texture = _texture(
                CLASS_STYLES[obj.cls].texture, u[inside], v[inside], obj.texture_freq, obj.texture_phase
            )
            shade = 0.6 + 0.4 * texture  # (N,)
            canvas[y0 : y0 + h, x0 : x0 + w][inside] = shade[:, None] * obj.colour[None, :]
            owner[t, y0 : y0 + h, x0 : x0 + w][inside] = j
        frames[t] = np.clip(canvas * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return frames, owner


def semantic_maps(plan: Any, owner: np.ndarray) -> np.ndarray:
    """(T, H, W) uint8: class index + 1 on the visible pixels of sounding objects, 0 elsewhere (any plan with
    ``num_frames``, ``objects[].cls`` and ``sounding``: synthetic or stamps)."""
    lut = np.zeros((plan.num_frames, len(plan.objects) + 1), np.uint8)  # column 0 = background (-1)
    for j, obj in enumerate(plan.objects):
        lut[:, j + 1] = np.where(plan.sounding[:, j], obj.cls + 1, 0)
    flat = owner.reshape(plan.num_frames, -1).astype(np.int64) + 1  # (T, H*W), 0 = background
    return np.take_along_axis(lut, flat, axis=1).reshape(owner.shape)


# --- audio -------------------------------------------------------------------------------------------
def _phase(freq: np.ndarray) -> np.ndarray:
    """Instantaneous phase (radians) of a time-varying frequency track in Hz."""
    return 2 * math.pi * np.cumsum(freq) / SAMPLE_RATE


def _band_noise(rng: np.random.Generator, n: int, lo: float, hi: float) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
    spectrum[(freqs < lo) | (freqs > hi)] = 0.0
    return np.fft.irfft(spectrum, n)


def _sound_bell(rng, t):
    f0, period, offset = 880 * rng.uniform(0.95, 1.05), 0.5 * rng.uniform(0.85, 1.15), rng.uniform(0, 0.5)
    env = np.exp(-((t + offset) % period) / 0.15)
    return env * sum(a * np.sin(2 * math.pi * f0 * p * t) for p, a in ((1.0, 1.0), (2.76, 0.5), (5.4, 0.25)))


def _sound_drum(rng, t):
    period, offset, f_base = 1 / (3 * rng.uniform(0.85, 1.15)), rng.uniform(0, 0.3), 60 * rng.uniform(0.9, 1.1)
    tau = (t + offset) % period
    # Pitch falls from ~140 Hz to f_base within each hit: integrate f(tau) analytically per hit.
    phase = 2 * math.pi * (f_base * tau + 80 * 0.03 * (1 - np.exp(-tau / 0.03)))
    return np.sin(phase) * np.exp(-tau / 0.12) + 0.3 * rng.standard_normal(t.size) * np.exp(-tau / 0.02)


def _sound_whistle(rng, t):
    f0, rate = 2500 * rng.uniform(0.95, 1.05), 6 * rng.uniform(0.8, 1.2)
    return np.sin(_phase(f0 * (1 + 0.02 * np.sin(2 * math.pi * rate * t))))


def _sound_buzzer(rng, t):
    f0 = 220 * rng.uniform(0.95, 1.05)
    return np.tanh(4 * np.sin(2 * math.pi * f0 * t + rng.uniform(0, 2 * math.pi)))


def _sound_siren(rng, t):
    low, period, offset = 700 * rng.uniform(0.93, 1.07), rng.uniform(0.8, 1.2), rng.uniform(0, 1)
    tri = 2 * np.abs(((t + offset) / period) % 1.0 - 0.5)  # triangle wave in [0, 1]
    return np.sin(_phase(low + 500 * tri))


def _sound_clicker(rng, t):
    # Short damped ~3 kHz resonances ("knocks"): click-like, but with a crest factor low enough that the
    # peak cap below does not push the clicker under the noise floor.
    period, offset, f_res = 1 / (10 * rng.uniform(0.85, 1.15)), rng.uniform(0, 0.1), 3000 * rng.uniform(0.9, 1.1)
    tau = (t + offset) % period
    return np.sin(2 * math.pi * f_res * tau) * np.exp(-tau / 0.008)


def _sound_horn(rng, t):
    f0, am = 330 * rng.uniform(0.95, 1.05), 2 * rng.uniform(0.8, 1.2)
    saw = sum(np.sin(2 * math.pi * f0 * k * t) / k for k in range(1, 9))
    return saw * (0.6 + 0.4 * np.sin(2 * math.pi * am * t + rng.uniform(0, 2 * math.pi)))


def _sound_rattle(rng, t):
    rate, offset = 12 * rng.uniform(0.85, 1.15), rng.uniform(0, 1)
    gate = (((t + offset) * rate) % 1.0 < 0.5).astype(np.float64)
    return _band_noise(rng, t.size, 3000, 5000) * gate


def _sound_chime(rng, t):
    period, f_lo = 0.25 * rng.uniform(0.85, 1.15), 1500 * rng.uniform(0.95, 1.05)
    tau = (t + rng.uniform(0, period)) % period
    sweep = f_lo / period  # Hz per second: doubles the frequency over one chirp
    return np.sin(2 * math.pi * (f_lo * tau + 0.5 * sweep * tau * tau)) * np.sin(math.pi * tau / period)


def _sound_engine(rng, t):
    f0, am = 50 * rng.uniform(0.9, 1.1), 25 * rng.uniform(0.85, 1.15)
    hum = sum(np.sin(2 * math.pi * f0 * k * t) / k for k in range(1, 6))
    rumble = _band_noise(rng, t.size, 20, 400)
    rumble /= rumble.std() + 1e-12
    return (hum + 0.7 * rumble) * (0.7 + 0.3 * np.sin(2 * math.pi * am * t))


SOUNDS: dict[str, Callable[[np.random.Generator, np.ndarray], np.ndarray]] = {
    "synth_bell": _sound_bell,
    "synth_drum": _sound_drum,
    "synth_whistle": _sound_whistle,
    "synth_buzzer": _sound_buzzer,
    "synth_siren": _sound_siren,
    "synth_clicker": _sound_clicker,
    "synth_horn": _sound_horn,
    "synth_rattle": _sound_rattle,
    "synth_chime": _sound_chime,
    "synth_engine": _sound_engine,
}


def _pink_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """Unit-RMS noise with a 1/f power spectrum (a plausible room / street background)."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
    spectrum[0] = 0.0
    spectrum[1:] /= np.sqrt(np.maximum(freqs[1:], 20.0) / 20.0)
    noise = np.fft.irfft(spectrum, n)
    return noise / (noise.std() + 1e-12)


def _gate(on: np.ndarray) -> np.ndarray:
    """Per-second on/off -> per-sample envelope with 10 ms fades that lie inside the sounding seconds,
    so a silent second holds no trace of a source."""
    step = np.repeat(on.astype(np.float64), SAMPLE_RATE)
    padded = np.pad(step, _RAMP, mode="edge")
    csum = np.concatenate([[0.0], np.cumsum(padded)])
    box = (csum[2 * _RAMP :] - csum[: -2 * _RAMP]) / (2 * _RAMP)  # centred moving average, len n + 1
    return np.clip(2 * box[: step.size] - 1, 0.0, 1.0) * step


def synth_audio(plan: VideoPlan) -> np.ndarray:
    """(T * 16000,) float32 mono mix: each sounding object's class sound, gated per second, at
    ``SOURCE_RMS`` (+-3 dB per instance) over pink noise at ``plan.snr_db`` below a source."""
    rng = np.random.default_rng(plan.audio_seed)
    n = plan.num_frames * SAMPLE_RATE
    t = np.arange(n) / SAMPLE_RATE
    mix = _pink_noise(rng, n) * SOURCE_RMS * 10 ** (-plan.snr_db / 20)
    for j, obj in enumerate(plan.objects):
        if not plan.sounding[:, j].any():
            continue
        sound = SOUNDS[SYNTH_CLASSES[obj.cls]](rng, t)
        level = SOURCE_RMS * 10 ** (rng.uniform(-3, 3) / 20)
        # RMS-normalise, but cap the peak so impulsive classes (clicks) do not clip.
        gain = min(level / (sound.std() + 1e-12), 0.6 / (np.abs(sound).max() + 1e-12))
        mix += gain * _gate(plan.sounding[:, j]) * sound
    return mix.astype(np.float32)


# --- writing -----------------------------------------------------------------------------------------
def _write_video(job: tuple) -> dict:
    """Plan, render and write one video; returns its metadata row and counts (runs in workers too)."""
    layout, index, seed, size, cfg, split, label, out = job
    plan = plan_video(layout, index, seed, size, cfg, split, label)
    frames, owner = render_video(plan)
    return {"index": index, **write_plan_files(plan, frames, owner, synth_audio(plan), SYNTH_CLASSES, out)}


def write_plan_files(
    plan: Any, frames: np.ndarray, owner: np.ndarray, audio: np.ndarray, classes: Sequence[str], out: Path, sample_rate: int = SAMPLE_RATE
) -> dict:
    """Write one planned video in its official layout: frames, masks of the sounding objects, the wav.

    Shared by the synthetic and the stamps generators. ``plan`` has ``layout``, ``name``, ``vid``, ``split``,
    ``label``, ``num_frames``, ``objects`` (each with ``cls``, an index into ``classes``), ``sounding``
    (T, objects) and ``sounding_classes()``; ``owner`` (T, H, W) holds the object index of each pixel (-1:
    background).

    Returns:
        {"row": the metadata CSV row, "split", "frames", "masks", "empty_masks"}.
    """
    layout, split, label = plan.layout, plan.split, plan.label
    names = [classes[c] for c in plan.sounding_classes()]
    stats = {"frames": plan.num_frames, "masks": 0, "empty_masks": 0}
    sounding_ids = [np.flatnonzero(plan.sounding[t]) for t in range(plan.num_frames)]

    def binary(t: int) -> np.ndarray:
        mask = np.isin(owner[t], sounding_ids[t])
        stats["masks"] += 1
        stats["empty_masks"] += int(not mask.any())
        return mask

    if layout == "s4":
        category = classes[plan.objects[int(np.flatnonzero(plan.sounding[0])[0])].cls]
        for k in range(1, plan.num_frames + 1):
            save_png_atomic(L.s4_frame(out, split, category, plan.name, k), frames[k - 1], compress_level=1)
        for k in L.s4_mask_frames(split):
            save_png_atomic(L.s4_mask(out, split, category, plan.name, k), binary(k - 1), compress_level=1)
        write_wav_atomic(L.s4_wav(out, split, category, plan.name), audio, sample_rate)
        row = [plan.name, 0, category, split]
    elif layout == "ms3":
        for k in range(1, plan.num_frames + 1):
            save_png_atomic(L.ms3_frame(out, plan.name, k), frames[k - 1], compress_level=1)
            save_png_atomic(L.ms3_mask(out, split, plan.name, k), binary(k - 1), compress_level=1)
        write_wav_atomic(L.ms3_wav(out, split, plan.name), audio, sample_rate)
        row = [plan.name, split, ";".join(names)]
    else:
        semantic = semantic_maps(plan, owner)
        palette = np.array(L.voc_palette(256), np.uint8)
        for i in range(plan.num_frames):
            save_jpg_atomic(L.avss_frame(out, label, plan.name, i), frames[i], quality=90)
        for i in L.avss_mask_frames(label, split):
            stats["masks"] += 1
            stats["empty_masks"] += int(not semantic[i].any())
            save_png_atomic(L.avss_semantic(out, label, plan.name, i), semantic[i], mode="L", compress_level=1)
            rgb = palette[semantic[i]]  # (H, W, 3)
            save_png_atomic(L.avss_rgb(out, label, plan.name, i), rgb, mode="RGB", compress_level=1)
        write_wav_atomic(L.avss_wav(out, label, plan.name), audio, sample_rate)
        row = [plan.vid, plan.name, 0, 0, ";".join(names), split, label]
    return {"row": row, "split": split, **stats}


def _csv_text(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


_HEADERS = {
    "s4": ("name", "start", "category", "split"),
    "ms3": ("video_id", "split", "labels"),
    "avss": ("vid", "uid", "s_min", "s_sec", "a_obj", "split", "label"),
}


def generate(
    layout: str,
    out: Path,
    num_videos: int = 60,
    seed: int = 0,
    size: int = 224,
    config: SynthConfig | None = None,
    *,
    workers: int = 1,
    overwrite: bool = False,
) -> dict:
    """Write a synthetic dataset in the official ``layout`` ("s4", "ms3" or "avss") under ``out``.

    Args:
        layout: which official layout to write; ``out`` plays the role of ``Single-source/``,
            ``Multi-sources/`` or ``AVSS/``.
        out: dataset root (created).
        num_videos: videos in total, split by ``config.split_fractions``.
        seed: same seed and arguments -> byte-identical files.
        size: frame side in pixels (square frames, like the 224x224 official S4/MS3 frames).
        config: difficulty knobs; defaults to ``SynthConfig()``.
        workers: processes used to write videos (output does not depend on it).
        overwrite: allow writing over an existing dataset (its metadata file exists). Files of videos
            that the new dataset does not have are left in place.

    Returns:
        counts: {"layout", "videos", "train", "val", "test", "frames", "masks", "empty_masks"} and for
        AVSS also {"v1s", "v1m", "v2"}.
    """
    if layout not in L.LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {L.LAYOUTS}")
    if num_videos < 1:
        raise ValueError(f"num_videos must be >= 1, got {num_videos}")
    if size < 16:
        raise ValueError(f"size must be >= 16 pixels, got {size}")
    cfg = config if config is not None else SynthConfig()
    out = Path(out)
    meta_path = L.metadata_path(out, layout)
    if meta_path.exists() and not overwrite:
        raise FileExistsError(f"{meta_path} exists; pass overwrite=True or choose an empty folder")

    splits = assign_splits(num_videos, cfg.split_fractions, np.random.default_rng([seed, _LAYOUT_IDS[layout], 0]))
    labels = [L.AVSS_LABELS[i % 3] if layout == "avss" else None for i in range(num_videos)]
    jobs = [(layout, i, seed, size, cfg, splits[i], labels[i], out) for i in range(num_videos)]
    if workers > 1:
        # spawn, not fork: the caller may hold threads (torch, loggers) that a forked child would inherit
        # in a locked state.
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(pool.map(_write_video, jobs, chunksize=max(1, num_videos // (4 * workers))))
    else:
        results = [_write_video(job) for job in jobs]

    counts: dict = {"layout": layout, "videos": num_videos}
    for split in L.SPLITS:
        counts[split] = sum(r["split"] == split for r in results)
    for key in ("frames", "masks", "empty_masks"):
        counts[key] = sum(r[key] for r in results)
    if layout == "avss":
        for label in L.AVSS_LABELS:
            counts[label] = labels.count(label)
        label2idx = {"background": 0, **{name: i + 1 for i, name in enumerate(SYNTH_CLASSES[: cfg.num_classes])}}
        write_text_atomic(L.label2idx_path(out), json.dumps(label2idx, indent=2) + "\n")
    info = {
        "generator": "avseg.data.synthetic",
        "layout": layout,
        "seed": seed,
        "size": size,
        "num_videos": num_videos,
        "sample_rate": SAMPLE_RATE,
        "config": asdict(cfg),
        "classes": [asdict(style) for style in CLASS_STYLES[: cfg.num_classes]],
        "counts": counts,
    }
    write_text_atomic(out / "synth_info.json", json.dumps(info, indent=2) + "\n")
    # The metadata file goes last: a dataset whose writing was interrupted has none and cannot be mistaken
    # for a complete one.
    write_text_atomic(meta_path, _csv_text(_HEADERS[layout], [r["row"] for r in results]))
    log.info("wrote %d synthetic %s videos to %s", num_videos, layout, out)
    return counts
