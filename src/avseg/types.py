"""The one batch contract shared by every subset, split, method and stage.

Shape conventions used throughout avseg:

- ``B``: videos in the batch, ``T``: frames per video (5 for S4/MS3, 5 or 10 for AVSS; padded videos
  carry ``valid == False`` on the padding), ``H x W``: frame size after resizing.
- ``F x W_a``: a spectrogram (frequency bins x time steps) of one frame's audio window; ``S``: samples of
  one frame's waveform window.
- ``K``: number of classes of the video-level label vector (S4: categories; MS3: classes or the single
  ``sounding`` class; AVSS: foreground classes, i.e. ``label2idx`` minus background).

Frames are float32, ImageNet-normalised. Masks are int64: binary subsets hold 0/1, AVSS holds class ids
0..C-1 with 0 = background. Frames without ground truth hold zeros and ``has_mask == False``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Negative-audio training: what a training clip may hear instead of its own sound (AVSBenchDataset, TrainSettings).
NEGATIVE_KINDS = ("silence", "noise", "other")
NEGATIVE_MODES = ("replace", "add")  # negative-audio training: negatives replace videos, or are added to them


def negative_audio_problem(fraction: float, kinds: tuple[str, ...], mode: str) -> str | None:
    """What is wrong with these negative-audio settings (None: nothing); TrainSettings and the dataset both
    check them. "replace" keeps a fraction < 1 (1 would leave no positive); "add" may reach 1."""
    if mode not in NEGATIVE_MODES:
        return f"negative_mode must be one of {', '.join(NEGATIVE_MODES)} (got {mode!r})"
    if not (0.0 <= fraction <= 1.0 if mode == "add" else 0.0 <= fraction < 1.0):
        return f"negative_audio must be in [0, 1{']' if mode == 'add' else ')'} with negative_mode {mode} (got {fraction})"
    if not kinds or any(k not in NEGATIVE_KINDS for k in kinds):
        return f"negative_kinds must be a non-empty subset of {', '.join(NEGATIVE_KINDS)} (got {kinds})"
    return None


@dataclass
class AVBatch:
    """A batch of videos.

    Attributes:
        frames: (B, T, 3, H, W) float32, ImageNet-normalised RGB.
        audio: (B, T, 1, F, W_a) float32, per-frame audio features (the dataset's audio front-end), or
            None when the dataset was built without features.
        waveform: (B, T, S) float32 mono waveform window of each frame, or None.
        masks: (B, T, H, W) int64 ground truth (0/1 or class ids); zeros where ``has_mask`` is False.
        has_mask: (B, T) bool, frame has ground truth.
        valid: (B, T) bool, frame is real (False on AVSS padding).
        labels: (B, K) float32 multi-hot video-level labels (the only supervision of weak methods).
        video_ids: B strings, the dataset's video identifiers.
        frame_ids: B lists of T ints, frame numbers as on disk (1-based for S4/MS3, 0-based for AVSS;
            -1 for padding).
        pseudo_masks: (B, T, H, W) float32 in [0, 1] from a pseudo-mask stage, or None.
        has_pseudo: (B, T) bool, frame has a pseudo mask, or None.
    """

    frames: Tensor
    audio: Tensor | None
    waveform: Tensor | None
    masks: Tensor
    has_mask: Tensor
    valid: Tensor
    labels: Tensor
    video_ids: list[str]
    frame_ids: list[list[int]]
    pseudo_masks: Tensor | None = None
    has_pseudo: Tensor | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return int(self.frames.shape[0])

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[1])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "AVBatch":
        """Move every tensor to ``device``; strings and ids are kept."""
        kwargs = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                value = value.to(device, non_blocking=non_blocking)
            elif f.name == "extras":
                value = {k: v.to(device, non_blocking=non_blocking) for k, v in value.items()}
            kwargs[f.name] = value
        return AVBatch(**kwargs)

    def pin_memory(self) -> "AVBatch":
        """Called by DataLoader(pin_memory=True)."""
        kwargs = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                value = value.pin_memory()
            elif f.name == "extras":
                value = {k: v.pin_memory() for k, v in value.items()}
            kwargs[f.name] = value
        return AVBatch(**kwargs)
