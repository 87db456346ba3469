"""Where every file of the official AVSBench layouts lives (S4, MS3, AVSS).

One module owns the path rules so that the loaders, the validator, the scorer and the synthetic writer
can never disagree. See docs/data.md and the official release:

```
S4:   s4_meta_data.csv; s4_data/{visual_frames,gt_masks}/{split}/{category}/{name}/{name}_{k}.png (k 1-based)
      s4_data/audio_wav/{split}/{category}/{name}.wav; s4_data/audio_log_mel/{split}/{category}/{name}.pkl
MS3:  ms3_meta_data.csv; ms3_data/visual_frames/{vid}/{vid}.mp4_{k}.png (no split level)
      ms3_data/gt_masks/{split}/{vid}/{vid}_{k}.png; ms3_data/audio_wav/{split}/{vid}.wav
AVSS: metadata.csv; label2idx.json; {label}/{uid}/frames/{i}.jpg (i 0-based); {label}/{uid}/audio.wav
      {label}/{uid}/labels_rgb/{i}.png; {label}/{uid}/labels_semantic/{i}.png
```
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

Layout = Literal["s4", "ms3", "avss"]
LAYOUTS: tuple[str, ...] = ("s4", "ms3", "avss")
SPLITS: tuple[str, ...] = ("train", "val", "test")
AVSS_LABELS: tuple[str, ...] = ("v1s", "v1m", "v2")

S4_CATEGORIES: tuple[str, ...] = (
    "baby_laughter", "female_singing", "male_speech", "dog_barking", "cat_meowing", "lions_roaring",
    "horse_clip-clop", "coyote_howling", "mynah_bird_singing", "playing_acoustic_guitar", "playing_tabla",
    "playing_violin", "playing_piano", "playing_ukulele", "playing_glockenspiel", "helicopter", "race_car",
    "driving_buses", "ambulance_siren", "typing_on_computer_keyboard", "chainsawing_trees",
    "cap_gun_shooting", "lawn_mowing",
)  # fmt: skip

AVSS_CLASSES: tuple[str, ...] = (
    "background", "accordion", "airplane", "axe", "baby", "bassoon", "bell", "bird", "boat", "boy", "bus",
    "car", "cat", "cello", "clarinet", "clipper", "clock", "dog", "donkey", "drum", "duck", "elephant",
    "emergency-car", "erhu", "flute", "frying-food", "girl", "goose", "guitar", "gun", "guzheng",
    "hair-dryer", "handpan", "harmonica", "harp", "helicopter", "hen", "horse", "keyboard", "leopard", "lion",
    "man", "marimba", "missile-rocket", "motorcycle", "mower", "parrot", "piano", "pig", "pipa", "saw",
    "saxophone", "sheep", "sitar", "sorna", "squirrel", "tabla", "tank", "tiger", "tractor", "train",
    "trombone", "truck", "trumpet", "tuba", "ukulele", "utv", "vacuum-cleaner", "violin", "wolf", "woman",
)  # fmt: skip

# Frames per video in the official release; S4/MS3 always 5, AVSS by label.
FRAMES_PER_VIDEO = {"s4": 5, "ms3": 5, "v1s": 5, "v1m": 5, "v2": 10}


def metadata_path(root: Path, layout: str) -> Path:
    return root / {"s4": "s4_meta_data.csv", "ms3": "ms3_meta_data.csv", "avss": "metadata.csv"}[layout]


def label2idx_path(root: Path) -> Path:
    return root / "label2idx.json"


# --- S4 -----------------------------------------------------------------------------------------------
def s4_frame(root: Path, split: str, category: str, name: str, k: int) -> Path:
    """k is 1-based."""
    return root / "s4_data" / "visual_frames" / split / category / name / f"{name}_{k}.png"


def s4_mask(root: Path, split: str, category: str, name: str, k: int) -> Path:
    return root / "s4_data" / "gt_masks" / split / category / name / f"{name}_{k}.png"


def s4_wav(root: Path, split: str, category: str, name: str) -> Path:
    return root / "s4_data" / "audio_wav" / split / category / f"{name}.wav"


def s4_pkl(root: Path, split: str, category: str, name: str) -> Path:
    return root / "s4_data" / "audio_log_mel" / split / category / f"{name}.pkl"


def s4_mask_frames(split: str) -> tuple[int, ...]:
    """Frames with ground truth: the train split of S4 is annotated on frame 1 only."""
    return (1,) if split == "train" else (1, 2, 3, 4, 5)


# --- MS3 ----------------------------------------------------------------------------------------------
def ms3_frame(root: Path, vid: str, k: int) -> Path:
    """No split level, and the official file names keep the '.mp4_' of the source video."""
    return root / "ms3_data" / "visual_frames" / vid / f"{vid}.mp4_{k}.png"


def ms3_mask(root: Path, split: str, vid: str, k: int) -> Path:
    return root / "ms3_data" / "gt_masks" / split / vid / f"{vid}_{k}.png"


def ms3_wav(root: Path, split: str, vid: str) -> Path:
    return root / "ms3_data" / "audio_wav" / split / f"{vid}.wav"


def ms3_pkl(root: Path, split: str, vid: str) -> Path:
    return root / "ms3_data" / "audio_log_mel" / split / f"{vid}.pkl"


# --- AVSS ---------------------------------------------------------------------------------------------
def avss_dir(root: Path, label: str, uid: str) -> Path:
    return root / label / uid


def avss_frame(root: Path, label: str, uid: str, i: int) -> Path:
    """i is 0-based."""
    return root / label / uid / "frames" / f"{i}.jpg"


def avss_wav(root: Path, label: str, uid: str) -> Path:
    return root / label / uid / "audio.wav"


def avss_semantic(root: Path, label: str, uid: str, i: int) -> Path:
    return root / label / uid / "labels_semantic" / f"{i}.png"


def avss_rgb(root: Path, label: str, uid: str, i: int) -> Path:
    return root / label / uid / "labels_rgb" / f"{i}.png"


def avss_mask_frames(label: str, split: str) -> tuple[int, ...]:
    """Frames with ground truth: v1s train videos are annotated on frame 0 only."""
    n = FRAMES_PER_VIDEO[label]
    if label == "v1s" and split == "train":
        return (0,)
    return tuple(range(n))


def voc_palette(num_classes: int = 256) -> list[tuple[int, int, int]]:
    """The PASCAL-VOC bit-interleaved colour map used by AVSS's labels_rgb."""
    palette = []
    for j in range(num_classes):
        r = g = b = 0
        c = j
        for i in range(8):
            r |= ((c >> 0) & 1) << (7 - i)
            g |= ((c >> 1) & 1) << (7 - i)
            b |= ((c >> 2) & 1) << (7 - i)
            c >>= 3
        palette.append((r, g, b))
    return palette


def prediction_relpath(layout: str, split: str, category: str, video: str, k: int) -> Path:
    """Where a prediction for frame k lives, relative to a prediction folder; mirrors the GT mask path
    relative to the subset's mask folder (S4: {category}/{name}/{name}_{k}.png; MS3: {vid}/{vid}_{k}.png;
    AVSS: {label}/{uid}/{i}.png, with ``category`` = the AVSS label v1s/v1m/v2)."""
    if layout == "s4":
        return Path(category) / video / f"{video}_{k}.png"
    if layout == "ms3":
        return Path(video) / f"{video}_{k}.png"
    if layout == "avss":
        return Path(category) / video / f"{k}.png"
    raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
