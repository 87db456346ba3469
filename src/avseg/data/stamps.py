"""Cut-out composite videos from real stamps (photo + alpha + the object's own sound), in the official
S4 / MS3 / AVSS layouts.

Source: the Debian package ``tuxpaint-stamps-default`` (GPL-2, files under /usr/share/tuxpaint/stamps;
``apt-get install tuxpaint-stamps-default``), or any folder laid out the same way: a stamp is
``NAME.png`` (RGBA; the alpha is the object mask) next to ``NAME.ogg`` (or ``.wav`` / ``.flac``), the
object's sound. ``NAME_desc*.ogg`` are spoken descriptions and ``NAME_<locale>.ogg`` spoken names: they
are never used as the object's sound. Nothing from the package is copied into this repository; datasets
are built from it at run time.

Each video pastes several cut-outs (scaled, flipped, placed, occluding one another in a depth order,
drifting and zooming a little from frame to frame) onto a background: a real photo from a folder
(``backgrounds``; a square crop that pans slightly) or, without one, a texture of the synthetic
generator. One or more objects sound (their real recording, looped with a short gap or cut to the clip,
at ``source_rms`` +- ``gain_jitter_db`` with a random time shift, over pink noise ``snr_db`` below),
the others are silent distractors; every object of a video has its own class. Frame ``t`` shows second
``t``; its ground truth is the visible (alpha >= 50 %, not covered by an object in front) pixels of the
objects sounding in second ``t``. MS3 / AVSS v1m / v2: the sounding set changes and may fall silent
from second to second, as in ``avseg.data.synthetic``.

Splits: every stamp (there is one recording per stamp) appears in every split, and the photos are
partitioned into disjoint train / val / test pools, so no test video shares a background with a
training video and no two splits share a composition. Classes are one per stamp
(``grouping="stamp"``) or the coarser groups of ``CURATED_STAMPS`` (``grouping="coarse"``, e.g. bull,
cow, cow_white and bison are all ``cattle``).

Stamps that cannot be used (no sound, no raster image, no usable alpha, an undecodable or silent file, a
recording shared with another stamp) are reported: logged, counted in the returned summary and listed
in ``stamps_info.json``, which also holds everything needed to re-render any video (seed, size, config,
stamp list with file hashes, per-video composition). ``ownership_maps`` and ``object_sound`` read it
back: which object owns each pixel of each frame, and an object's sound as it is (or would be) mixed.

Typical use::

    from avseg.data.stamps import generate
    counts = generate("ms3", Path("data/stamps/Multi-sources"), num_videos=300, seed=0,
                      backgrounds=Path("../shared/media/images"))
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from avseg.audio.decode import AudioError, load_audio
from avseg.audio.resample import resample
from avseg.data import layout as L
from avseg.data.errors import DataError
from avseg.data.synthetic import (  # shared with the synthetic generator, so both behave alike
    _HEADERS,
    _csv_text,
    _gate,
    _pink_noise,
    _render_background,
    _sounding_schedule,
    assign_splits,
    split_counts,
    write_plan_files,
)
from avseg.fileio import file_sha256, write_text_atomic

__all__ = [
    "SAMPLE_RATE",
    "DEFAULT_STAMPS_DIR",
    "CURATED_STAMPS",
    "EXCLUDED_STAMPS",
    "CuratedStamp",
    "StampsConfig",
    "Stamp",
    "StampCatalogue",
    "StampInstance",
    "StampVideo",
    "scan_stamps",
    "scan_backgrounds",
    "plan_video",
    "render_video",
    "mix_audio",
    "generate",
    "read_stamps_info",
    "load_video_plan",
    "ownership_maps",
    "object_sound",
    "replay_video",
]

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
DEFAULT_STAMPS_DIR = Path("/usr/share/tuxpaint/stamps")
INFO_FILE = "stamps_info.json"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SOUND_SUFFIXES = (".ogg", ".wav", ".flac")
_LAYOUT_IDS = {"s4": 4, "ms3": 3, "avss": 7}
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
_FADE = SAMPLE_RATE // 200  # 5 ms fades at the ends of a trimmed recording: loops do not click


# --- the curated stamp table ---------------------------------------------------------------------------
@dataclass(frozen=True)
class CuratedStamp:
    """A stamp we use: its coarse group and why it suits (photo cut-out + its own sound)."""

    name: str
    group: str
    note: str


_C = CuratedStamp
# Chosen after looking at every stamp that has a sound (contact sheet) and at its spectrogram: photo
# cut-outs whose recording is the object's own call / sound. Groups merge stamps a listener or viewer
# may not tell apart (bull / cow / bison), never stamps of different kinds.
CURATED_STAMPS: tuple[CuratedStamp, ...] = (
    # birds
    _C("blackbird", "bird", "photo; song (7.9 s, with a 1.1 s pause: the time shift keeps every second audible)"),
    _C("crow", "bird", "photo; caws"),
    _C("cuckoo", "bird", "photo; cuckoo call"),
    _C("heron_greatblue_flying", "bird", "photo (flying); croaks"),
    _C("lark", "bird", "photo; song"),
    _C("nandou", "bird", "photo (rhea); its recording is digital silence in the package (reported)"),
    _C("owl", "bird", "photo; hoot"),
    _C("penguin", "bird", "photo; braying call"),
    _C("quetzal", "bird", "photo; call"),
    _C("seagull", "bird", "photo; cries"),
    _C("tucan", "bird", "photo; croaks"),
    _C("vulture", "bird", "photo; hisses"),
    _C("drake", "waterfowl", "photo; quacks"),
    _C("duck", "waterfowl", "photo; quacks"),
    _C("gander", "waterfowl", "photo; honks"),
    _C("hen", "poultry", "photo; clucks"),
    _C("rooster", "poultry", "photo; crows"),
    _C("turkey", "poultry", "photo; gobbles"),
    # other animals
    _C("frog", "amphibian", "photo; croaks"),
    _C("grasshopper", "insect", "photo; chirps"),
    _C("hornet", "insect", "photo; buzz"),
    _C("iguana", "reptile", "photo; its recording is digital silence in the package (reported)"),
    _C("chimp", "ape", "photo; calls"),
    _C("gorilla", "ape", "photo; grunts"),
    _C("dolphin", "marine_mammal", "photo; clicks and whistles"),
    _C("orca", "marine_mammal", "photo; calls"),
    _C("sea_lion", "marine_mammal", "photo; barks"),
    _C("whale", "marine_mammal", "photo (tinted); song"),
    _C("badger", "small_mammal", "photo; shares its recording with beaver (the first is kept, reported)"),
    _C("beaver", "small_mammal", "photo; shares its recording with badger (reported)"),
    _C("ferret", "small_mammal", "photo; chatters"),
    _C("mouse", "small_mammal", "photo; squeaks"),
    _C("rabbit", "small_mammal", "photo; squeals"),
    _C("squirrel", "small_mammal", "photo; chatters"),
    _C("bear", "bear", "photo; growls"),
    _C("bison", "cattle", "photo; grunts"),
    _C("bull", "cattle", "photo; bellows"),
    _C("cow", "cattle", "photo; moos"),
    _C("cow_white", "cattle", "photo; moos"),
    _C("goat", "sheep_goat", "photo; bleats"),
    _C("mountaingoat", "sheep_goat", "photo; bleats (same recording as ram: the first is kept, reported)"),
    _C("ram", "sheep_goat", "photo; same recording as mountaingoat (reported)"),
    _C("sheep", "sheep_goat", "photo; bleats"),
    _C("sheep_lamb", "sheep_goat", "photo; bleats"),
    _C("camel", "camel", "photo; groans"),
    _C("dromedary", "camel", "photo; groans"),
    _C("lion", "big_cat", "photo; roars"),
    _C("tiger", "big_cat", "photo; growls"),
    _C("caribou", "deer", "photo; grunts"),
    _C("deer", "deer", "photo; calls"),
    _C("doe", "deer", "photo; calls"),
    _C("dog", "canine", "photo (husky); barks"),
    _C("fox", "canine", "photo; barks"),
    _C("donkey", "equine", "photo; brays"),
    _C("horse", "equine", "photo; neighs"),
    _C("zebra", "equine", "photo; barks"),
    _C("elephant", "elephant", "photo; trumpets"),
    _C("giraffe", "giraffe", "photo; its recording is digital silence in the package (reported)"),
    _C("hippopotamus", "hippopotamus", "photo; grunts"),
    _C("pig", "pig", "photo; oinks"),
    _C("pig_golden", "pig", "photo; grunts"),
    _C("pig_golden2", "pig", "photo; grunts"),
    _C("koala", "marsupial", "photo (on a branch, which is part of its mask); bellows"),
    _C("wombat", "marsupial", "photo; its recording is digital silence in the package (reported)"),
    # instruments, tools, household objects, vehicles
    _C("cymbal_crash", "percussion", "photo; crash cymbal"),
    _C("drum_tomtom_floor", "percussion", "photo; floor tom hits"),
    _C("drumkit", "percussion", "photo; drum groove"),
    _C("cello", "string_instrument", "photo; bowed cello"),
    _C("violin", "string_instrument", "photo; bowed violin"),
    _C("bassoon", "wind_instrument", "photo; bassoon phrase"),
    _C("hammer", "tool", "photo; hammer blow (0.2 s, looped with a gap)"),
    _C("mallet_metal", "tool", "photo; metal blow (0.2 s, looped with a gap)"),
    _C("saw", "tool", "photo; sawing strokes"),
    _C("kettle", "household", "photo; quiet boiling hiss (normalised like every source)"),
    _C("toilet", "household", "photo; flush"),
    _C("camera_35mm", "camera", "photo; shutter click"),
    _C("rubberduck", "toy", "photo; squeak"),
    _C("firetruck", "vehicle", "photo; siren"),
)  # fmt: skip

# Stamps with a sound that we leave out on purpose (reported as "excluded" with this reason).
EXCLUDED_STAMPS: dict[str, str] = {
    "bee": "a black-and-white line drawing, not a photo",
    "xanthia": "a moth; its 0.6 s noise burst is no recognisable call",
    "apple_red": "a 46x50 px image, and the sound is someone biting it, not the apple",
    "scissors_small_closed": "a tiny thin image (73x25 px) whose mask is mostly anti-aliased edge",
    "scissors_small_open": "a tiny thin image (58x59 px) whose mask is mostly anti-aliased edge",
    "glass": "transparent glass: no pixel is fully opaque, so there is no exact object mask",
    "final-roll-call": "a memorial (boots, rifle, helmet) with a bugle call: not the object's sound",
    "lightningbolt": "a semi-transparent drawing: no exact object mask",
    "fireworks": "a semi-transparent glow: no exact object mask",
    "apollo_lander": "the recording is speech-like radio (5 kHz), not the object's sound",
    "bathyscape": "a cartoon drawing",
    "hard_candy": "tiny clip-art (35x16 px)",
    "santahat": "tiny clip-art (34x38 px)",
    "bat_left": "tiny clip-art (32x32 px)",
    "blackcat": "tiny clip-art silhouette (48x48 px)",
    "ghost": "tiny semi-transparent clip-art (48x64 px)",
    "spider": "tiny clip-art (32x32 px)",
    "dreydl-gimmel": "cartoon drawing; the four dreidels differ only by a letter",
    "dreydl-hay": "cartoon drawing; the four dreidels differ only by a letter",
    "dreydl-nun": "cartoon drawing; the four dreidels differ only by a letter",
    "dreydl-shin": "cartoon drawing; the four dreidels differ only by a letter",
    "excited": "a 32 px smiley symbol with a voice",
    "happy": "a 32 px smiley symbol with a voice",
    "mad": "a 32 px smiley symbol with a voice",
    "sad": "a 32 px smiley symbol with a voice",
    "checkeredflag": "a flag symbol",
    "no_uturn": "a road sign (opaque rectangle, no cut-out)",
    "xing_ped": "a road sign",
    "xing_school": "a road sign",
    # digits and letters whose "sound" is their spoken name
    **{str(d): "a digit symbol; the sound is its spoken name" for d in range(10)},
    **{f"{c}_with_umlaut_{style}": "a letter symbol; the sound is its spoken name"
       for c in "AOUaou" for style in ("filled", "outline")},  # fmt: skip
    "ss_eszett_filled": "a letter symbol; the sound is its spoken name",
    "ss_eszett_outline": "a letter symbol; the sound is its spoken name",
}
_CURATED_BY_NAME = {c.name: c for c in CURATED_STAMPS}


# --- config --------------------------------------------------------------------------------------------
@dataclass
class StampsConfig:
    """Knobs of the cut-out composite.

    Attributes:
        grouping: "stamp" (one class per stamp) or "coarse" (the groups of ``CURATED_STAMPS``; a stamp
            outside the table is its own group).
        distractors: (min, max) silent objects per video, of classes that do not sound in it (fewer
            when the stamp folder has too few classes).
        max_sources: most simultaneous sources in MS3 / AVSS v1m / v2 videos (S4, v1s: always 1).
        scale_range: (min, max) longest side of an object as a fraction of the frame side.
        min_visible: every object keeps at least this fraction of its pixels visible in every frame.
        drift: largest per-frame motion of an object, as a fraction of the frame side.
        switch_prob / silence_prob: sounding-set changes per second, as in ``SynthConfig``.
        source_rms: RMS of a source in the mix (0.1 = -20 dBFS), before ``gain_jitter_db``.
        gain_jitter_db: per-instance gain drawn uniformly in +-this many dB.
        snr_db: a source's nominal power over the pink background noise, in dB.
        max_gap_s: short recordings loop with a silent gap drawn in [0, min(max_gap_s, half their
            length)] seconds.
        split_fractions: train / val / test fractions of the videos, and of the background photos.
    """

    grouping: str = "stamp"
    distractors: tuple[int, int] = (1, 3)
    max_sources: int = 2
    scale_range: tuple[float, float] = (0.3, 0.5)
    min_visible: float = 0.35
    drift: float = 0.02
    switch_prob: float = 0.3
    silence_prob: float = 0.2
    source_rms: float = 0.1
    gain_jitter_db: float = 3.0
    snr_db: float = 15.0
    max_gap_s: float = 0.25
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)

    def __post_init__(self) -> None:
        self.distractors = tuple(int(v) for v in self.distractors)  # type: ignore[assignment]
        self.scale_range = tuple(float(v) for v in self.scale_range)  # type: ignore[assignment]
        self.split_fractions = tuple(float(v) for v in self.split_fractions)  # type: ignore[assignment]
        if self.grouping not in ("stamp", "coarse"):
            raise ValueError(f"grouping must be 'stamp' or 'coarse', got {self.grouping!r}")
        if len(self.distractors) != 2 or not 0 <= self.distractors[0] <= self.distractors[1]:
            raise ValueError(f"distractors must be (min, max) with 0 <= min <= max, got {self.distractors}")
        if self.max_sources < 1:
            raise ValueError(f"max_sources must be >= 1, got {self.max_sources}")
        if len(self.scale_range) != 2 or not 0.05 <= self.scale_range[0] <= self.scale_range[1] <= 0.9:
            raise ValueError(f"scale_range must be (min, max) with 0.05 <= min <= max <= 0.9, got {self.scale_range}")
        for name in ("min_visible", "switch_prob", "silence_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.drift <= 0.05:
            raise ValueError(f"drift must be in [0, 0.05] (fraction of the frame per frame), got {self.drift}")
        if not 0.0 < self.source_rms <= 0.3:
            raise ValueError(f"source_rms must be in (0, 0.3], got {self.source_rms}")
        if not 0.0 <= self.gain_jitter_db <= 12.0:
            raise ValueError(f"gain_jitter_db must be in [0, 12], got {self.gain_jitter_db}")
        if not math.isfinite(self.snr_db) or not -30.0 <= self.snr_db <= 60.0:
            raise ValueError(f"snr_db must be in [-30, 60], got {self.snr_db}")
        if not 0.0 <= self.max_gap_s <= 2.0:
            raise ValueError(f"max_gap_s must be in [0, 2], got {self.max_gap_s}")
        fr = self.split_fractions
        if len(fr) != 3 or min(fr) < 0 or abs(sum(fr) - 1.0) > 1e-6:
            raise ValueError(f"split_fractions must be 3 non-negative numbers summing to 1, got {fr}")


# --- reading stamps ------------------------------------------------------------------------------------
@dataclass
class Stamp:
    """One usable stamp.

    Attributes:
        name: the class name with ``grouping="stamp"`` (the file stem).
        group: its coarse group.
        image, sound: paths relative to the stamp folder.
        rgba: (h, w, 4) uint8, cropped to the alpha's bounding box.
        audio: (S,) float32 at ``SAMPLE_RATE``, leading / trailing silence trimmed, 5 ms fades.
        image_sha256, sound_sha256: hashes of the files, to check a later re-render uses the same ones.
        curated: whether the name is in ``CURATED_STAMPS`` (else used as found, group = parent folder).
    """

    name: str
    group: str
    image: str
    sound: str
    rgba: np.ndarray = field(repr=False)
    audio: np.ndarray = field(repr=False)
    image_sha256: str = ""
    sound_sha256: str = ""
    curated: bool = True

    def entry(self) -> dict:
        """The stamp's line in stamps_info.json."""
        return {
            "name": self.name,
            "group": self.group,
            "image": self.image,
            "sound": self.sound,
            "image_sha256": self.image_sha256,
            "sound_sha256": self.sound_sha256,
            "size": [int(self.rgba.shape[1]), int(self.rgba.shape[0])],
            "sound_seconds": round(self.audio.size / SAMPLE_RATE, 3),
            "curated": self.curated,
            "note": _CURATED_BY_NAME[self.name].note if self.name in _CURATED_BY_NAME else "not in the curated table",
        }


@dataclass
class StampCatalogue:
    """What a stamp folder offers.

    Attributes:
        root: the folder.
        stamps: usable stamps, sorted by name.
        problems: stamps that cannot be used: {"stamp", "file", "kind", "problem"}; kind is one of
            no_image, undecodable_image, no_alpha, undecodable_sound, silent_sound, duplicate_sound.
            (A stem found in two folders is not a problem: both get their folder's name in front.)
        excluded: curated exclusions found in the folder, name -> reason.
        no_sound: names of images that have no sound file (most tuxpaint stamps).
        missing_curated: names of ``CURATED_STAMPS`` not found in the folder at all.
        uncurated: stamps with a sound in neither table: used unless ``only_curated`` (see ``scan_stamps``).
    """

    root: Path
    stamps: list[Stamp]
    problems: list[dict]
    excluded: dict[str, str]
    no_sound: list[str]
    missing_curated: list[str]
    uncurated: list[str]

    def by_name(self) -> dict[str, Stamp]:
        return {s.name: s for s in self.stamps}

    def report(self) -> dict:
        return {
            "unusable": self.problems,
            "excluded": self.excluded,
            "images_without_sound": self.no_sound,
            "missing_curated": self.missing_curated,
            "uncurated": self.uncurated,
            "uncurated_used": [s.name for s in self.stamps if not s.curated],
        }


class _Unusable(Exception):
    def __init__(self, kind: str, problem: str) -> None:
        super().__init__(problem)
        self.kind, self.problem = kind, problem


def _decode_image(path: Path) -> np.ndarray:
    """(h, w, 4) uint8 RGBA cropped to the alpha's bounding box; raises _Unusable."""
    try:
        with Image.open(path) as img:
            img.load()
            has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
            mode = img.mode
            rgba = np.asarray(img.convert("RGBA"))
    except Exception as exc:
        raise _Unusable("undecodable_image", f"image is not readable ({type(exc).__name__}: {exc})") from None
    if not has_alpha:
        raise _Unusable("no_alpha", f"image has no alpha channel (mode {mode}): no object mask")
    alpha = rgba[..., 3]
    seen = alpha > 0
    if not seen.any():
        raise _Unusable("no_alpha", "alpha is zero everywhere: the image is empty")
    if (alpha == 255).all():
        raise _Unusable("no_alpha", "alpha is fully opaque: the image is a rectangle, not a cut-out")
    opaque = float((alpha == 255).sum()) / float(seen.sum())
    if opaque < 0.3:
        raise _Unusable("no_alpha", f"alpha is mostly semi-transparent (only {100 * opaque:.0f} % of the object's "
                                    "pixels fully opaque): no exact object mask")  # fmt: skip
    if int((alpha >= 128).sum()) < 64:
        raise _Unusable("no_alpha", f"only {int((alpha >= 128).sum())} pixels are at least half opaque: too small")
    ys, xs = np.nonzero(seen)
    return np.ascontiguousarray(rgba[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1])


def _decode_sound(path: Path) -> np.ndarray:
    """(S,) float32 at SAMPLE_RATE, silence at both ends trimmed, 5 ms fades; raises _Unusable."""
    import torch

    try:
        audio, rate = load_audio(path, warn_silent=False)
        # Resampled in float64: the float32 result then does not depend on how torch splits the
        # convolution over threads, so the written files stay byte-identical across machines.
        audio = resample(torch.from_numpy(audio.astype(np.float64)), rate, SAMPLE_RATE).numpy()
        audio = np.clip(audio, -1.0, 1.0).astype(np.float32)
    except AudioError as exc:
        raise _Unusable("undecodable_sound", exc.problem) from None
    except Exception as exc:  # a decoder failure the audio layer did not anticipate
        raise _Unusable("undecodable_sound", f"audio is not readable ({type(exc).__name__}: {exc})") from None
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    if peak < 1e-4:
        seconds = audio.size / SAMPLE_RATE
        raise _Unusable("silent_sound", f"recording is digital silence (peak {peak:.1e} over {seconds:.2f} s)")
    # Trim 10 ms blocks quieter than -40 dB under the loudest block at both ends.
    block = SAMPLE_RATE // 100
    n = -(-audio.size // block)  # blocks, the last one zero-padded
    blocks = np.pad(audio, (0, n * block - audio.size)).reshape(n, block)
    energy = np.sqrt(np.mean(blocks.astype(np.float64) ** 2, axis=1))
    loud = np.flatnonzero(energy >= energy.max() * 0.01)
    audio = audio[loud[0] * block : min((loud[-1] + 1) * block, audio.size)].astype(np.float32)
    if audio.size < SAMPLE_RATE // 20:
        raise _Unusable("silent_sound", f"recording holds only {audio.size / SAMPLE_RATE * 1000:.0f} ms of sound")
    fade = np.linspace(0.0, 1.0, _FADE, dtype=np.float32)
    audio[:_FADE] *= fade
    audio[-_FADE:] *= fade[::-1]
    return audio


@functools.lru_cache(maxsize=512)
def _decode_stamp(image: str, sound: str, mtimes: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, str, str]:
    """Decode one stamp (cached per process; ``mtimes`` invalidates the cache when a file changes)."""
    rgba = _decode_image(Path(image))
    audio = _decode_sound(Path(sound))
    rgba.setflags(write=False)
    audio.setflags(write=False)
    return rgba, audio, file_sha256(image), file_sha256(sound)


def _load_stamp(image: Path, sound: Path) -> tuple[np.ndarray, np.ndarray, str, str]:
    return _decode_stamp(str(image), str(sound), (image.stat().st_mtime_ns, sound.stat().st_mtime_ns))


def scan_stamps(root: Path | str = DEFAULT_STAMPS_DIR, only_curated: bool | None = None) -> StampCatalogue:
    """Read a stamp folder (recursively): every usable stamp, and why each other one cannot be used.

    A stamp is a ``NAME.png`` / ``NAME.svg`` / ``NAME.txt``; its sound is ``NAME.ogg`` (or .wav, .flac) in
    the same folder. Sound files named after a stamp plus a suffix (``NAME_desc_fr.ogg``, ``0_de.ogg``)
    are descriptions or spoken names and are ignored; any other sound without an image is reported.
    Stamps in ``EXCLUDED_STAMPS`` are not decoded (listed as excluded). Stamps in neither table are
    listed as ``uncurated``: with ``only_curated`` they are not used (the default when the folder holds
    any curated stamp, i.e. it is the tuxpaint package: a new package version cannot change the class
    list unnoticed); otherwise (a folder of one's own) they are used, their group being the parent
    folder's name.

    Raises:
        FileNotFoundError: the folder does not exist (the message says how to install the package).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"stamp folder {root} does not exist: install the Debian package tuxpaint-stamps-default "
            "(apt-get install tuxpaint-stamps-default) or pass another folder (--stamps DIR)"
        )
    files = sorted(p for p in root.rglob("*") if p.is_file())
    by_folder: dict[Path, dict[str, dict[str, Any]]] = {}  # stem -> {kind: Path, "sounds": [Path]}
    for p in files:
        suffix = p.suffix.lower()
        kind = "png" if suffix == ".png" else "svg" if suffix == ".svg" else "txt" if suffix == ".txt" else (
            "sound" if suffix in SOUND_SUFFIXES else None)  # fmt: skip
        if kind is None:
            continue
        entry = by_folder.setdefault(p.parent, {}).setdefault(p.stem, {})
        entry.setdefault(kind, p)  # .ogg before .wav before .flac: sorted order puts .flac first, fix below
        if kind == "sound":
            entry.setdefault("sounds", []).append(p)

    if only_curated is None:
        only_curated = any(stem in _CURATED_BY_NAME for stems in by_folder.values() for stem in stems)
    problems: list[dict] = []
    uncurated: list[str] = []
    excluded: dict[str, str] = {}
    no_sound: list[str] = []
    candidates: list[tuple[str, Path, Path]] = []  # (stem, image, sound)
    for folder, stems in sorted(by_folder.items()):
        stamp_stems = sorted(s for s, e in stems.items() if {"png", "svg", "txt"} & set(e))
        for stem in sorted(stems):
            e = stems[stem]
            sounds = sorted(e.get("sounds", []), key=lambda p: SOUND_SUFFIXES.index(p.suffix.lower()))
            sound = sounds[0] if sounds else None
            if stem not in stamp_stems:
                # A sound alone: a description / localised name of a stamp, or a stamp without its image.
                if sound is not None and "_desc" not in stem and not any(stem.startswith(s + "_") for s in stamp_stems):
                    problems.append({"stamp": stem, "file": str(sound), "kind": "no_image",
                                     "problem": "sound has no image (no NAME.png next to it)"})  # fmt: skip
                continue
            if sound is None:
                if "png" in e:
                    no_sound.append(stem)
                continue
            if stem in EXCLUDED_STAMPS:
                excluded[stem] = EXCLUDED_STAMPS[stem]
                continue
            if "png" not in e:
                what = "only an SVG image (no raster image with an alpha mask)" if "svg" in e else "no image"
                problems.append({"stamp": stem, "file": str(sound), "kind": "no_image", "problem": f"stamp has {what}"})
                continue
            if only_curated and stem not in _CURATED_BY_NAME:
                uncurated.append(stem)
                continue
            candidates.append((stem, e["png"], sound))  # type: ignore[arg-type]

    # Stems that occur in two folders get their folder's name in front, so class names stay unique.
    stem_counts: dict[str, int] = {}
    for stem, _, _ in candidates:
        stem_counts[stem] = stem_counts.get(stem, 0) + 1
    stamps: list[Stamp] = []
    seen_audio: dict[str, str] = {}
    for stem, image, sound in candidates:
        name = stem if stem_counts[stem] == 1 else f"{image.parent.name}-{stem}"
        try:
            rgba, audio, image_sha, sound_sha = _load_stamp(image, sound)
        except _Unusable as exc:
            problems.append({"stamp": name, "file": str(sound if "sound" in exc.kind else image),
                             "kind": exc.kind, "problem": exc.problem})  # fmt: skip
            continue
        # Two stamps with one recording cannot be told apart by sound: keep the first (path order).
        key = hashlib.sha256(np.round(audio.astype(np.float64), 3).tobytes()).hexdigest()
        if key in seen_audio:
            problems.append({"stamp": name, "file": str(sound), "kind": "duplicate_sound",
                             "problem": f"recording is the same as stamp {seen_audio[key]!r}'s (kept that one)"})  # fmt: skip
            continue
        seen_audio[key] = name
        curated = _CURATED_BY_NAME.get(name)
        stamps.append(Stamp(
            name=name, group=curated.group if curated else image.parent.name,
            image=str(image.relative_to(root)), sound=str(sound.relative_to(root)), rgba=rgba, audio=audio,
            image_sha256=image_sha, sound_sha256=sound_sha, curated=curated is not None,
        ))  # fmt: skip
    stamps.sort(key=lambda s: s.name)
    found = {s for stems in by_folder.values() for s in stems}
    missing = sorted(c.name for c in CURATED_STAMPS if c.name not in found)
    uncurated += [s.name for s in stamps if not s.curated]
    return StampCatalogue(root, stamps, problems, excluded, sorted(no_sound), missing, sorted(uncurated))


# --- backgrounds ---------------------------------------------------------------------------------------
def _open_background(path: Path, size: int) -> Image.Image:
    """The photo as RGB, decoded at a reduced scale when that still leaves >= 2x ``size`` pixels."""
    with Image.open(path) as img:
        img.draft("RGB", (2 * size, 2 * size))
        return img.convert("RGB")


def scan_backgrounds(folder: Path | str, size: int) -> tuple[list[str], list[dict]]:
    """Images of a folder (recursively, sorted): (usable relative paths, problems).

    Every image is decoded once here, so a broken one is reported up front (never skipped silently).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"background folder {folder} does not exist")
    usable, problems = [], []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
        rel = str(path.relative_to(folder))
        try:
            img = _open_background(path, size)
        except Exception as exc:
            problems.append({"file": str(path), "problem": f"image is not readable ({type(exc).__name__}: {exc})"})
            continue
        if min(img.size) < 16:
            problems.append({"file": str(path), "problem": f"image is only {img.size[0]}x{img.size[1]} pixels"})
            continue
        usable.append(rel)
    return usable, problems


def _background_pools(
    images: list[str], videos_per_split: dict[str, int], fractions: Sequence[float], seed: int
) -> dict[str, list[str]]:
    """Disjoint photo pools per split (a seeded shuffle cut by the split fractions), at least one photo
    for every split that has videos."""
    needed = [s for s in L.SPLITS if videos_per_split[s] > 0]
    if len(images) < len(needed):
        raise ValueError(
            f"{len(images)} usable background image(s) for {len(needed)} splits with videos ({', '.join(needed)}): "
            "each split needs its own photos so that no test video reuses a training background"
        )
    counts = list(split_counts(len(images), fractions))
    receiver = L.SPLITS.index(needed[0])  # photos of a split without videos go to the first split with some
    for i, split in enumerate(L.SPLITS):
        if videos_per_split[split] == 0 and i != receiver:
            counts[receiver] += counts[i]
            counts[i] = 0
    for i, split in enumerate(L.SPLITS):
        while videos_per_split[split] > 0 and counts[i] == 0:
            j = int(np.argmax(counts))  # the largest pool has >= 2 photos here, since photos >= splits
            counts[j] -= 1
            counts[i] += 1
    order = np.random.default_rng([seed, 11]).permutation(len(images))
    pools, start = {}, 0
    for split, n in zip(L.SPLITS, counts):
        pools[split] = sorted(images[int(i)] for i in order[start : start + n])
        start += n
    return pools


def _texture(seed: int) -> dict:
    """The synthetic generator's background description, drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    kind = str(rng.choice(["noise", "gradient", "stripes"]))
    base = rng.uniform(0.25, 0.75, 3)
    return {
        "kind": kind,
        "colours": np.clip(np.stack([base + rng.uniform(-0.2, 0.2, 3), base + rng.uniform(-0.2, 0.2, 3)]), 0, 1),
        "grid": rng.uniform(0.0, 1.0, (5, 5)),
        "angle": float(rng.uniform(0, math.pi)),
        "freq": float(rng.uniform(2.0, 8.0)),
        "fine": rng.uniform(0.0, 1.0, (12, 12)),
    }


# --- plans ---------------------------------------------------------------------------------------------
@dataclass
class StampInstance:
    """One pasted stamp: its class, motion, and how its recording is placed in the clip.

    Frame ``t``: centre = centre + t * velocity (pixels, x right, y down), longest side =
    extent * (1 + growth * t) pixels. Audio: the recording followed by ``gap`` samples of silence, looped,
    read from sample ``offset`` on, RMS-normalised to ``source_rms * 10 ** (gain_db / 20)``.
    """

    stamp: str
    cls: int  # index into the dataset's class list
    centre: tuple[float, float]
    velocity: tuple[float, float]
    extent: float
    growth: float
    flip: bool
    gain_db: float
    gap: int
    offset: int

    def centres(self, num_frames: int) -> np.ndarray:
        """(T, 2) float64 (x, y)."""
        return np.asarray(self.centre)[None, :] + np.asarray(self.velocity)[None, :] * np.arange(num_frames)[:, None]

    def extents(self, num_frames: int) -> np.ndarray:
        """(T,) float64."""
        return self.extent * (1.0 + self.growth * np.arange(num_frames))


@dataclass
class StampVideo:
    """Everything needed to render one video and its audio; ``objects`` in depth order, back first."""

    layout: str
    index: int
    name: str
    split: str
    label: str | None
    num_frames: int
    size: int
    objects: list[StampInstance]
    sounding: np.ndarray  # (T, num_objects) bool: object j sounds in second t
    background: dict  # {"kind": "photo", "image", "box", "pan"} or {"kind": "texture", "seed"}
    noise_seed: int

    @property
    def vid(self) -> str:
        return self.name.rsplit("_", 2)[0] if self.layout == "avss" else self.name

    def sounding_classes(self) -> list[int]:
        return sorted({self.objects[j].cls for j in np.flatnonzero(self.sounding.any(axis=0))})

    def to_json(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k not in ("objects", "sounding")}
        out["objects"] = [asdict(o) for o in self.objects]
        out["sounding"] = [[int(j) for j in np.flatnonzero(row)] for row in self.sounding]  # per second
        return out

    @staticmethod
    def from_json(d: dict) -> StampVideo:
        objects = [
            StampInstance(**{**o, "centre": tuple(o["centre"]), "velocity": tuple(o["velocity"])}) for o in d["objects"]
        ]
        sounding = np.zeros((d["num_frames"], len(objects)), bool)
        for t, row in enumerate(d["sounding"]):
            sounding[t, row] = True
        keys = ("layout", "index", "name", "split", "label", "num_frames", "size", "background", "noise_seed")
        fields = {k: d[k] for k in keys}
        return StampVideo(objects=objects, sounding=sounding, **fields)


def _video_name(layout: str, index: int) -> str:
    return f"stamps_avss_{index:05d}_0_0" if layout == "avss" else f"stamps_{layout}_{index:05d}"


def _sized(rgba: np.ndarray, extent: float, flip: bool) -> np.ndarray:
    """(h, w, 4) float32 premultiplied RGBA in [0, 1], longest side ``extent`` pixels (>= 1 px)."""
    h0, w0 = rgba.shape[:2]
    k = extent / max(h0, w0)
    w, h = max(1, int(round(w0 * k))), max(1, int(round(h0 * k)))
    img = Image.fromarray(rgba, "RGBA").convert("RGBa").resize((w, h), Image.Resampling.BILINEAR)
    if flip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(img, dtype=np.float32) / 255.0


def _layers(plan: StampVideo, rgbas: dict[str, np.ndarray], t: int) -> list[tuple[int, int, np.ndarray, int] | None]:
    """For frame t, each object's (y0, x0, premultiplied patch clipped to the frame) or None, back first."""
    out: list[tuple[int, int, np.ndarray, int] | None] = []
    for obj in plan.objects:
        cx, cy = obj.centres(plan.num_frames)[t]
        patch = _sized(rgbas[obj.stamp], float(obj.extents(plan.num_frames)[t]), obj.flip)
        h, w = patch.shape[:2]
        y0, x0 = int(round(cy - h / 2)), int(round(cx - w / 2))
        ya, xa = max(0, y0), max(0, x0)
        yb, xb = min(plan.size, y0 + h), min(plan.size, x0 + w)
        if ya >= yb or xa >= xb:
            out.append(None)
        else:  # the full object's half-opaque pixel count goes along, for visible fractions
            out.append((ya, xa, patch[ya - y0 : yb - y0, xa - x0 : xb - x0], int((patch[..., 3] >= 0.5).sum())))
    return out


def _owner(plan: StampVideo, rgbas: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """owner (T, H, W) int8 (front-most object with alpha >= 50 %, -1 background) and the visible
    fraction (T, num_objects) of each object's full (not only in-frame) half-opaque pixels."""
    owner = np.full((plan.num_frames, plan.size, plan.size), -1, np.int8)
    fractions = np.zeros((plan.num_frames, len(plan.objects)))
    for t in range(plan.num_frames):
        layers = _layers(plan, rgbas, t)
        for j, layer in enumerate(layers):
            if layer is not None:
                ya, xa, patch, _ = layer
                owner[t, ya : ya + patch.shape[0], xa : xa + patch.shape[1]][patch[..., 3] >= 0.5] = j
        visible = np.bincount(owner[t].ravel().astype(np.int64) + 1, minlength=len(layers) + 1)[1:]
        for j, layer in enumerate(layers):
            fractions[t, j] = visible[j] / layer[3] if layer is not None and layer[3] else 0.0
    return owner, fractions


def _track(audio: np.ndarray, obj: StampInstance, num_samples: int, source_rms: float) -> np.ndarray:
    """(num_samples,) float32: the object's recording looped over the clip at its level (not gated)."""
    loop = np.concatenate([audio, np.zeros(obj.gap, np.float32)]).astype(np.float64)
    track = loop[(np.arange(num_samples) + obj.offset) % loop.size]
    level = source_rms * 10 ** (obj.gain_db / 20)
    gain = min(level / (track.std() + 1e-12), 0.6 / (np.abs(track).max() + 1e-12))  # cap the peak, as synthetic
    return (gain * track).astype(np.float32)


def _audible_every_second(track: np.ndarray) -> float:
    """The quietest second's RMS over the whole track's RMS (a recording with a long pause can leave a
    second nearly silent)."""
    per_second = np.sqrt(np.mean(track.reshape(-1, SAMPLE_RATE).astype(np.float64) ** 2, axis=1))
    return float(per_second.min() / (np.sqrt(np.mean(track.astype(np.float64) ** 2)) + 1e-12))


def plan_video(
    layout: str, index: int, seed: int, size: int, config: StampsConfig, split: str, rank: int,
    label: str | None, catalogue: StampCatalogue, classes: list[str], pools: dict[str, list[str]] | None,
    backgrounds: Path | None,
) -> StampVideo:  # fmt: skip
    """Draw one video. Deterministic in its arguments; ``rank`` (the video's position within its split)
    cycles the first source through the classes (the same cycle in every split), so every split sees
    every class once it has as many videos as there are classes."""
    rng = np.random.default_rng([seed, _LAYOUT_IDS[layout], 1, index])
    cfg = config
    num_frames = L.FRAMES_PER_VIDEO[label if layout == "avss" else layout]  # type: ignore[index]
    single = layout == "s4" or label == "v1s"
    num_classes = len(classes)
    num_sources = 1 if single else min(int(rng.integers(min(2, cfg.max_sources), cfg.max_sources + 1)), num_classes)
    num_distractors = min(int(rng.integers(cfg.distractors[0], cfg.distractors[1] + 1)), num_classes - num_sources)
    # One shuffled class cycle for all splits (class order does not follow names): the first videos of
    # every split take the same classes, so even a small dataset has its val / test classes in train.
    cycle = np.random.default_rng([seed, _LAYOUT_IDS[layout], 2]).permutation(num_classes)
    first = int(cycle[rank % num_classes])
    others = [c for c in range(num_classes) if c != first]
    picked = [first] + [int(c) for c in rng.choice(others, num_sources + num_distractors - 1, replace=False)]
    members: dict[int, list[Stamp]] = {}
    for stamp in catalogue.stamps:
        key = stamp.name if cfg.grouping == "stamp" else stamp.group
        members.setdefault(classes.index(key), []).append(stamp)

    n = num_frames * SAMPLE_RATE
    objects: list[StampInstance] = []
    for c in picked:
        stamp = members[c][int(rng.integers(len(members[c])))]
        gap = int(rng.uniform(0.0, min(cfg.max_gap_s, 0.5 * stamp.audio.size / SAMPLE_RATE)) * SAMPLE_RATE)
        period = stamp.audio.size + gap
        gain_db = float(rng.uniform(-cfg.gain_jitter_db, cfg.gain_jitter_db))
        # A time shift that leaves no second (nearly) silent; the best of 20 draws otherwise.
        best, best_score = 0, -1.0
        for _ in range(20):
            offset = int(rng.integers(period))
            probe = StampInstance(stamp.name, c, (0.0, 0.0), (0.0, 0.0), 1.0, 0.0, False, gain_db, gap, offset)
            score = _audible_every_second(_track(stamp.audio, probe, n, cfg.source_rms))
            if score > best_score:
                best, best_score = offset, score
            if score >= 0.1:
                break
        objects.append(StampInstance(
            stamp=stamp.name, cls=c, centre=(0.0, 0.0), velocity=(0.0, 0.0),
            extent=float(size * rng.uniform(*cfg.scale_range)), growth=float(rng.uniform(-0.02, 0.02)),
            flip=bool(rng.random() < 0.5), gain_db=gain_db, gap=gap, offset=best,
        ))  # fmt: skip
    stamps = catalogue.by_name()
    rgbas = {o.stamp: stamps[o.stamp].rgba for o in objects}

    def place(obj: StampInstance) -> None:
        h0, w0 = stamps[obj.stamp].rgba.shape[:2]
        longest = float(obj.extents(num_frames).max())
        half = np.array([w0, h0]) / max(h0, w0) * longest / 2  # (x, y) half size at its largest
        speed, direction = rng.uniform(0.0, cfg.drift * size), rng.uniform(0.0, 2 * math.pi)
        velocity = speed * np.array([math.cos(direction), math.sin(direction)])
        travel = velocity * (num_frames - 1)
        lo = half - np.minimum(travel, 0.0)
        hi = size - half - np.maximum(travel, 0.0)
        start = np.where(hi >= lo, rng.uniform(lo, np.maximum(hi, lo)), (lo + hi) / 2)  # whole object in frame
        obj.centre = (float(start[0]), float(start[1]))
        obj.velocity = (float(velocity[0]), float(velocity[1]))

    for obj in objects:
        place(obj)
    order = [int(j) for j in rng.permutation(len(objects))]
    sounding = np.zeros((num_frames, len(objects)), bool)
    sounding[:, :num_sources] = (
        np.ones((num_frames, 1), bool) if single else _sounding_schedule(rng, num_sources, num_frames, cfg)
    )
    plan = StampVideo(layout, index, _video_name(layout, index), split, label, num_frames, size,
                      [objects[j] for j in order], sounding[:, order], {}, 0)  # fmt: skip
    # Re-draw positions (and, every 10 tries, shrink everything) until each object keeps min_visible of
    # itself in every frame, so no object (sounding or not) is hidden.
    for attempt in range(60):
        _, fractions = _owner(plan, rgbas)
        if fractions.min() >= cfg.min_visible:
            break
        if attempt % 10 == 9:
            for obj in objects:
                obj.extent *= 0.85
        for obj in objects:
            place(obj)
    else:
        raise ValueError(f"cannot place stamps {[o.stamp for o in objects]} with {cfg.min_visible:.0%} of each visible "
                         f"in a {size}px frame (video {index}); lower StampsConfig.min_visible or scale_range")

    if pools is None:
        plan.background = {"kind": "texture", "seed": int(rng.integers(0, 2**63 - 1))}
    else:
        pool = pools[split]
        start = int(np.random.default_rng([seed, _LAYOUT_IDS[layout], 3, _SPLIT_IDS[split]]).integers(len(pool)))
        image = pool[(start + rank) % len(pool)]
        with Image.open(backgrounds / image) as img:  # type: ignore[operator]
            width, height = img.size
        side = rng.uniform(0.7, 1.0) * min(width, height)  # square crop, in pixels of the photo
        pan = rng.uniform(-0.04, 0.04, 2) * side  # total drift of the crop over the clip
        lo = np.maximum(0.0, -pan)
        hi = np.array([width, height]) - side - np.maximum(0.0, pan)
        corner = rng.uniform(lo, np.maximum(hi, lo))
        plan.background = {
            "kind": "photo",
            "image": image,
            # the crop of frame 0 as (left, top, width, height) fractions of the photo; pan as fractions
            "box": [float(corner[0] / width), float(corner[1] / height), float(side / width), float(side / height)],
            "pan": [float(pan[0] / width), float(pan[1] / height)],
        }
    plan.noise_seed = int(rng.integers(0, 2**63 - 1))
    return plan


# --- rendering -----------------------------------------------------------------------------------------
def _background_frames(plan: StampVideo, backgrounds: Path | None) -> np.ndarray:
    """(T, H, W, 3) float32 in [0, 1]."""
    size, bg = plan.size, plan.background
    if bg["kind"] == "texture":
        tex = _render_background(_texture(bg["seed"]), size)
        return np.repeat(tex[None], plan.num_frames, axis=0)
    if backgrounds is None:
        raise ValueError(f"video {plan.name} uses background photo {bg['image']} but no background folder was given")
    path = Path(backgrounds) / bg["image"]
    try:
        img = _open_background(path, size)
    except Exception as exc:
        raise DataError(path, f"background image is not readable ({type(exc).__name__}: {exc})") from None
    width, height = img.size
    out = np.empty((plan.num_frames, size, size, 3), np.float32)
    for t in range(plan.num_frames):
        f = t / max(plan.num_frames - 1, 1)
        box_w, box_h = min(bg["box"][2] * width, width), min(bg["box"][3] * height, height)
        # Clamped: the plan keeps the crop inside the photo, but rounding may step a hair outside it.
        left = min(max((bg["box"][0] + f * bg["pan"][0]) * width, 0.0), width - box_w)
        top = min(max((bg["box"][1] + f * bg["pan"][1]) * height, 0.0), height - box_h)
        box = (left, top, left + box_w, top + box_h)
        out[t] = np.asarray(img.resize((size, size), Image.Resampling.BILINEAR, box=box), np.float32) / 255.0
    return out


def render_video(plan: StampVideo, rgbas: dict[str, np.ndarray], backgrounds: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """Render a plan.

    Returns:
        frames: (T, H, W, 3) uint8 RGB (alpha-composited, back to front).
        owner: (T, H, W) int8, index into ``plan.objects`` of the front-most object whose alpha is >= 50 %
            at each pixel, -1 for background. Ground truth of frame t = pixels whose owner sounds in second t.
    """
    canvas = _background_frames(plan, backgrounds)
    owner = np.full((plan.num_frames, plan.size, plan.size), -1, np.int8)
    for t in range(plan.num_frames):
        for j, layer in enumerate(_layers(plan, rgbas, t)):
            if layer is None:
                continue
            ya, xa, patch, _ = layer
            h, w = patch.shape[:2]
            region = canvas[t, ya : ya + h, xa : xa + w]
            region *= 1.0 - patch[..., 3:]
            region += patch[..., :3]  # premultiplied colour: the "over" operator
            owner[t, ya : ya + h, xa : xa + w][patch[..., 3] >= 0.5] = j
    frames = np.clip(canvas * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return frames, owner


def mix_audio(plan: StampVideo, audios: dict[str, np.ndarray], config: StampsConfig) -> np.ndarray:
    """(T * SAMPLE_RATE,) float32: each sounding object's track gated per second, over pink noise."""
    n = plan.num_frames * SAMPLE_RATE
    mix = _pink_noise(np.random.default_rng(plan.noise_seed), n) * config.source_rms * 10 ** (-config.snr_db / 20)
    for j, obj in enumerate(plan.objects):
        if plan.sounding[:, j].any():
            mix += _gate(plan.sounding[:, j]) * _track(audios[obj.stamp], obj, n, config.source_rms)
    return mix.astype(np.float32)


# --- writing -------------------------------------------------------------------------------------------
def _write_video(plan: StampVideo, catalogue: StampCatalogue, classes: list[str], cfg: StampsConfig,
                 backgrounds: Path | None, out: Path) -> dict:  # fmt: skip
    stamps = catalogue.by_name()
    rgbas = {o.stamp: stamps[o.stamp].rgba for o in plan.objects}
    frames, owner = render_video(plan, rgbas, backgrounds)
    audio = mix_audio(plan, {o.stamp: stamps[o.stamp].audio for o in plan.objects}, cfg)
    return write_plan_files(plan, frames, owner, audio, classes, out, SAMPLE_RATE)


def _class_names(catalogue: StampCatalogue, grouping: str) -> list[str]:
    return sorted({s.name if grouping == "stamp" else s.group for s in catalogue.stamps})


def generate(
    layout: str,
    out: Path,
    num_videos: int = 100,
    seed: int = 0,
    size: int = 224,
    stamps: Path | str = DEFAULT_STAMPS_DIR,
    backgrounds: Path | str | None = None,
    config: StampsConfig | None = None,
    *,
    overwrite: bool = False,
) -> dict:
    """Write a cut-out composite dataset in the official ``layout`` under ``out``.

    Args:
        layout: "s4", "ms3" or "avss"; ``out`` plays the role of ``Single-source/``, ``Multi-sources/``
            or ``AVSS/``.
        out: dataset root (created).
        num_videos: videos in total, split by ``config.split_fractions`` (any N >= 1).
        seed: same arguments (and the same stamp and photo files) -> byte-identical files.
        size: frame side in pixels (square frames).
        stamps: stamp folder (default: the tuxpaint-stamps-default install).
        backgrounds: folder of photos (jpg / png, searched recursively), split into disjoint per-split
            pools; None: the synthetic generator's textures.
        config: knobs, ``StampsConfig()`` by default (its ``grouping`` picks the class list).
        overwrite: allow writing over an existing dataset (its metadata file exists).

    Returns:
        counts: {"layout", "videos", "train", "val", "test", "frames", "masks", "empty_masks", "classes",
        "stamps_used", "stamps_unusable" ({stamp: "kind: problem"}), "stamps_excluded",
        "images_without_sound", "backgrounds" ({split: photos} or "texture"), "backgrounds_unusable"
        ({file: problem})}; AVSS also {"v1s", "v1m", "v2"}. Everything else is in stamps_info.json.
    """
    if layout not in L.LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {L.LAYOUTS}")
    if num_videos < 1:
        raise ValueError(f"num_videos must be >= 1, got {num_videos}")
    if size < 16:
        raise ValueError(f"size must be >= 16 pixels, got {size}")
    cfg = config if config is not None else StampsConfig()
    out = Path(out)
    meta_path = L.metadata_path(out, layout)
    if meta_path.exists() and not overwrite:
        raise FileExistsError(f"{meta_path} exists; pass overwrite=True or choose an empty folder")

    catalogue = scan_stamps(stamps)
    for p in catalogue.problems:
        log.warning("stamp %s cannot be used: %s: %s", p["stamp"], p["file"], p["problem"])
    log.info("stamps: %d used, %d excluded by the curated table, %d with a sound but not in it%s, %d images "
             "without a sound", len(catalogue.stamps), len(catalogue.excluded), len(catalogue.uncurated),
             " (used)" if any(not s.curated for s in catalogue.stamps) else " (not used)",
             len(catalogue.no_sound))  # fmt: skip
    classes = _class_names(catalogue, cfg.grouping)
    if len(classes) < 2:
        raise ValueError(
            f"stamp folder {catalogue.root} has {len(classes)} usable class(es) with grouping {cfg.grouping!r}; "
            f"at least 2 are needed (unusable: {[p['stamp'] for p in catalogue.problems]})"
        )

    splits = assign_splits(num_videos, cfg.split_fractions, np.random.default_rng([seed, _LAYOUT_IDS[layout], 0]))
    labels = [L.AVSS_LABELS[i % 3] if layout == "avss" else None for i in range(num_videos)]
    ranks, seen = [], {s: 0 for s in L.SPLITS}
    for split in splits:
        ranks.append(seen[split])
        seen[split] += 1
    bg_dir = Path(backgrounds) if backgrounds is not None else None
    bg_problems: list[dict] = []
    pools = None
    if bg_dir is not None:
        images, bg_problems = scan_backgrounds(bg_dir, size)
        for p in bg_problems:
            log.warning("background %s cannot be used: %s", p["file"], p["problem"])
        pools = _background_pools(images, seen, cfg.split_fractions, seed)

    plans = [
        plan_video(layout, i, seed, size, cfg, splits[i], ranks[i], labels[i], catalogue, classes, pools, bg_dir)
        for i in range(num_videos)
    ]
    results = [_write_video(plan, catalogue, classes, cfg, bg_dir, out) for plan in plans]

    counts: dict = {"layout": layout, "videos": num_videos}
    for split in L.SPLITS:
        counts[split] = seen[split]
    for key in ("frames", "masks", "empty_masks"):
        counts[key] = sum(r[key] for r in results)
    if layout == "avss":
        for label in L.AVSS_LABELS:
            counts[label] = labels.count(label)
        label2idx = {"background": 0, **{name: i + 1 for i, name in enumerate(classes)}}
        write_text_atomic(L.label2idx_path(out), json.dumps(label2idx, indent=2) + "\n")
    counts.update({
        "classes": len(classes),
        "stamps_used": len(catalogue.stamps),
        "stamps_unusable": {p["stamp"]: f"{p['kind']}: {p['problem']}" for p in catalogue.problems},
        "stamps_excluded": len(catalogue.excluded),
        "stamps_uncurated": len(catalogue.uncurated),
        "images_without_sound": len(catalogue.no_sound),
        "backgrounds": {s: len(v) for s, v in pools.items()} if pools is not None else "texture",
        "backgrounds_unusable": {p["file"]: p["problem"] for p in bg_problems},
    })  # fmt: skip
    info = {
        "generator": "avseg.data.stamps",
        "layout": layout,
        "seed": seed,
        "size": size,
        "num_videos": num_videos,
        "sample_rate": SAMPLE_RATE,
        "config": asdict(cfg),
        "stamps_dir": str(Path(stamps).resolve()),
        "backgrounds_dir": str(bg_dir.resolve()) if bg_dir is not None else None,
        "classes": classes,
        "groups": {s.name: s.group for s in catalogue.stamps},
        "stamps": [s.entry() for s in catalogue.stamps],
        "report": catalogue.report(),
        "background_pools": pools,
        "backgrounds_unusable": bg_problems,
        "counts": counts,
        "videos": [plan.to_json() for plan in plans],
    }
    write_text_atomic(out / INFO_FILE, json.dumps(info, indent=1) + "\n")
    # The metadata file goes last: an interrupted dataset has none and cannot pass for a complete one.
    write_text_atomic(meta_path, _csv_text(_HEADERS[layout], [r["row"] for r in results]))
    log.info("wrote %d stamp-composite %s videos (%d classes) to %s", num_videos, layout, len(classes), out)
    return counts


# --- reading a generated dataset back (listening evaluation) -------------------------------------------
def read_stamps_info(root: Path | str) -> dict:
    """The stamps_info.json of a dataset written by ``generate``."""
    path = Path(root) / INFO_FILE
    if not path.is_file():
        raise DataError(path, "not found: this folder was not written by avseg.data.stamps.generate")
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(path, f"is not readable JSON ({exc})") from None
    if info.get("generator") != "avseg.data.stamps" or "videos" not in info:
        raise DataError(path, "is not a stamps_info.json written by avseg.data.stamps")
    return info


def load_video_plan(root: Path | str, video: str, info: dict | None = None) -> StampVideo:
    """The plan of one video (by its S4 name, MS3 id, AVSS uid or AVSS vid)."""
    info = info if info is not None else read_stamps_info(root)
    for d in info["videos"]:
        if video in (d["name"], d["name"].rsplit("_", 2)[0] if d["layout"] == "avss" else d["name"]):
            return StampVideo.from_json(d)
    raise DataError(Path(root) / INFO_FILE, f"has no video {video!r}")


def _stamp_files(info: dict, root: Path, name: str, stamps_dir: Path | str | None) -> tuple[np.ndarray, np.ndarray]:
    """Decode one stamp of a dataset, checking the files are the ones it was built with."""
    entry = next((s for s in info["stamps"] if s["name"] == name), None)
    if entry is None:
        raise DataError(root / INFO_FILE, f"lists no stamp {name!r}")
    folder = Path(stamps_dir) if stamps_dir is not None else Path(info["stamps_dir"])
    image, sound = folder / entry["image"], folder / entry["sound"]
    for path in (image, sound):
        if not path.is_file():
            raise DataError(path, f"not found (stamp {name!r} of the dataset at {root}; stamps_dir= points elsewhere)")
    try:
        rgba, audio, image_sha, sound_sha = _load_stamp(image, sound)
    except _Unusable as exc:
        raise DataError(sound if "sound" in exc.kind else image, exc.problem) from None
    for path, got, want in ((image, image_sha, entry["image_sha256"]), (sound, sound_sha, entry["sound_sha256"])):
        if got != want:
            raise DataError(path, f"differs from the file the dataset at {root} was built with "
                                  f"(sha256 {got[:12]} != {want[:12]})")
    return rgba, audio


def ownership_maps(root: Path | str, video: str, stamps_dir: Path | str | None = None) -> tuple[np.ndarray, StampVideo]:
    """Which object owns each pixel of each frame of a generated video.

    Args:
        root: the dataset root (holds stamps_info.json).
        video: S4 name / MS3 id / AVSS uid.
        stamps_dir: where the stamps are now, if not where the dataset was built from.

    Returns:
        owner: (T, H, W) int8, index into ``plan.objects`` of the front-most object with alpha >= 50 %,
            -1 for background (the ground truth of frame t is ``np.isin(owner[t], sounding objects)``).
        plan: the video's plan: ``plan.objects[j].stamp`` / ``.cls`` (into info["classes"]) and
            ``plan.sounding`` (T, num_objects) bool.
    """
    root = Path(root)
    info = read_stamps_info(root)
    plan = load_video_plan(root, video, info)
    rgbas = {o.stamp: _stamp_files(info, root, o.stamp, stamps_dir)[0] for o in plan.objects}
    owner, _ = _owner(plan, rgbas)
    return owner, plan


def replay_video(
    root: Path | str, video: str, info: dict | None = None, stamps_dir: Path | str | None = None
) -> tuple[StampVideo, np.ndarray, Callable[[StampVideo], np.ndarray]]:
    """A generated video as the generator made it, for evaluations that change what it hears.

    Returns:
        plan: the video's plan (as ``load_video_plan``).
        owner: (T, size, size) int8, as ``ownership_maps``.
        soundtrack: maps a plan of this video (e.g. ``dataclasses.replace(plan, sounding=...)``) to its
            (T * sample_rate,) float32 mix, exactly as the generator mixes (same recordings, levels, time
            shifts and background noise): ``soundtrack(plan)`` is the video's own audio.
    """
    root = Path(root)
    info = info if info is not None else read_stamps_info(root)
    plan = load_video_plan(root, video, info)
    media = {o.stamp: _stamp_files(info, root, o.stamp, stamps_dir) for o in plan.objects}
    owner, _ = _owner(plan, {name: rgba for name, (rgba, _) in media.items()})
    audios = {name: audio for name, (_, audio) in media.items()}
    cfg = StampsConfig(**info["config"])

    def soundtrack(p: StampVideo) -> np.ndarray:
        if p.name != plan.name or len(p.objects) != len(plan.objects):
            raise ValueError(f"soundtrack of {plan.name} asked for a plan of {p.name} with {len(p.objects)} objects")
        return mix_audio(p, audios, cfg)

    return plan, owner, soundtrack


def object_sound(
    root: Path | str, video: str, obj: int, stamps_dir: Path | str | None = None, gated: bool = False
) -> np.ndarray:
    """The sound of object ``obj`` (index into ``plan.objects``) of a generated video, at the dataset's
    sample rate: its recording looped over the clip at its level and time shift exactly as it is mixed.

    With ``gated=False`` (default) the track is returned for every second, also for a silent distractor
    (what it would sound like); ``gated=True`` applies the video's sounding schedule (zeros for a
    distractor). Returns (T * sample_rate,) float32; the background noise is not included.
    """
    root = Path(root)
    info = read_stamps_info(root)
    plan = load_video_plan(root, video, info)
    if not 0 <= obj < len(plan.objects):
        raise IndexError(f"video {video} has {len(plan.objects)} objects; got object {obj}")
    cfg = StampsConfig(**info["config"])
    _, audio = _stamp_files(info, root, plan.objects[obj].stamp, stamps_dir)
    track = _track(audio, plan.objects[obj], plan.num_frames * SAMPLE_RATE, cfg.source_rms)
    if gated:
        track = (_gate(plan.sounding[:, obj]) * track).astype(np.float32)
    return track
