"""Write pseudo masks as PNGs with a manifest, a contact sheet, and their quality against ground truth."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from avseg.data.avsbench import AVSBenchDataset
from avseg.types import AVBatch


class PseudoMaskWriter:
    """Runs ``combine`` over the training frames and writes its outputs.

    ``combine`` maps an AVBatch to (B, T, 3, H, W): [activation map, saliency (or zeros), pseudo mask].
    Files: ``<folder>/masks/<relpath>.png`` (the pseudo masks the segmenter trains on),
    ``<folder>/saliency/<relpath>.png``, ``<folder>/manifest.json``, ``<folder>/contact_sheet.png``.
    Quality: clean-protocol mIoU / F of the pseudo masks on training frames that have ground truth
    (S4: frame 1 of each video; MS3: all frames). It bounds what the final model can learn.
    """

    def __init__(self, folder: Path, layout: str, columns: list[str], sheet_rows: int = 8) -> None:
        self.folder = Path(folder)
        self.layout = layout
        self.columns = columns
        self.sheet_rows = sheet_rows

    def run(self, combine: Callable[[AVBatch], Tensor], dataset: AVSBenchDataset, device: torch.device) -> dict[str, Any]:
        from avseg.inference.predict import iterate_outputs, save_probability_png
        from avseg.inference.visualize import colormap, contact_sheet, denormalize, mask_image, save_image_atomic
        from avseg.metrics.binary import BinaryAccumulator

        quality = BinaryAccumulator(protocol="clean")
        rows: list[list[np.ndarray]] = []
        labels: list[str] = []
        frames = gt_frames = 0
        with_saliency = False
        for fo in iterate_outputs(combine, dataset, device, batch_size=4, progress="pseudo masks"):
            amap, sal, pseudo = fo.output
            rel = fo.relpath(self.layout)
            save_probability_png(pseudo, self.folder / "masks" / rel)
            if sal.any():
                with_saliency = True
                save_probability_png(sal, self.folder / "saliency" / rel)
            frames += 1
            if fo.gt is not None:
                gt_frames += 1
                quality.update(pseudo[None], fo.gt[None])
                if len(rows) < self.sheet_rows:
                    rgb = denormalize(fo.frame)
                    rows.append([rgb, colormap(amap), colormap(sal), mask_image(pseudo), mask_image(fo.gt.astype(np.float32))])
                    labels.append(f"{fo.record.video_id}#{fo.frame_number}")
        sheet_path = self.folder / "contact_sheet.png"
        if rows:
            save_image_atomic(contact_sheet(rows, row_labels=labels, col_labels=self.columns), sheet_path)
        q = quality.compute() if gt_frames else {"miou": None, "fscore": None, "frames": 0}
        return {
            "frames": frames, "saliency": with_saliency,
            "quality": {"miou": q["miou"], "fscore": q["fscore"], "frames": q["frames"], "protocol": "clean"},
            "contact_sheet": str(sheet_path) if rows else None,
        }  # fmt: skip

    def write_manifest(self, summary: dict[str, Any]) -> None:
        from avseg.data.imageio import write_text_atomic

        write_text_atomic(self.folder / "manifest.json", json.dumps(summary, indent=2, default=str))

