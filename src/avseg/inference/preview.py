"""A contact sheet of a dataset: frames with ground-truth overlays, masks and each frame's spectrogram."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from avseg.data.avsbench import AVSBenchDataset
from avseg.visualize import (
    contact_sheet,
    denormalize,
    mask_image,
    overlay,
    save_image_atomic,
    semantic_image,
    spectrogram_image,
)


def preview_sheet(root: Path, layout: str, split: str, out: Path, videos: int = 4, tile: int = 112, audio_frontend: str = "wsavs-logmel") -> Path:
    """Write a PNG with, per video, three rows: frames with GT overlay, GT masks, spectrograms."""

    ds = AVSBenchDataset(root, layout, split, image_size=tile, audio_frontend=audio_frontend, max_videos=videos)
    rows: list[list[np.ndarray]] = []
    labels: list[str] = []
    for i in range(len(ds)):
        s = ds[i]
        names = [ds.classes[j] for j in torch.nonzero(s.labels).flatten().tolist()]
        frames_row, masks_row, spec_row = [], [], []
        for t in range(int(s.valid.sum())):
            rgb = denormalize(s.frames[t].numpy())
            m = s.masks[t].numpy()
            if layout == "avss":
                masks_row.append(semantic_image(m) if s.has_mask[t] else np.full_like(rgb, 128))
                frames_row.append(overlay(rgb, (m > 0).astype(np.float32)) if s.has_mask[t] else rgb)
            else:
                masks_row.append(mask_image(m) if s.has_mask[t] else np.full_like(rgb, 128))
                frames_row.append(overlay(rgb, m.astype(np.float32)) if s.has_mask[t] else rgb)
            if s.audio is not None:
                spec_row.append(spectrogram_image(s.audio[t, 0].numpy(), tile, tile))
        rows += [frames_row, masks_row] + ([spec_row] if spec_row else [])
        labels += [f"{s.video_id}", ",".join(names)[:18], "audio" if spec_row else ""][: 2 + bool(spec_row)]
    cols = [f"frame {k}" for k in ds.records[0].frame_numbers]
    sheet = contact_sheet(rows, row_labels=labels, col_labels=cols)
    save_image_atomic(sheet, out)
    return out
