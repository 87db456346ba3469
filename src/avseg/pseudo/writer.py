"""Write pseudo masks as PNGs with a manifest, a contact sheet, and their quality against ground truth.

Every file is written atomically (temporary file + rename), so a file that exists is complete. That makes
an interrupted run resumable frame by frame: with ``resume=True`` frames whose outputs exist are not
recomputed or rewritten, and videos whose every frame is done skip the model entirely.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from avseg.data.avsbench import AVSBenchDataset, read_probability_png
from avseg.data.index import VideoRecord
from avseg.data.layout import prediction_relpath
from avseg.engine.evaluate import iterate_outputs, save_probability_png
from avseg.fileio import remove_stale_temporaries, write_text_atomic
from avseg.metrics.binary import BinaryAccumulator
from avseg.types import AVBatch
from avseg.visualize import colormap, contact_sheet, denormalize, mask_image, save_image_atomic

log = logging.getLogger(__name__)


def frame_relpaths(record: VideoRecord, layout: str) -> list[Path]:
    """Relative output path (prediction layout) of each frame of a video."""
    return [prediction_relpath(layout, record.split, record.category, record.video_id, k) for k in record.frame_numbers]


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

    def _done(self, rel: Path, with_saliency: bool) -> bool:
        return (self.folder / "masks" / rel).is_file() and (not with_saliency or (self.folder / "saliency" / rel).is_file())

    def run(
        self,
        combine: Callable[[AVBatch], Tensor],
        dataset: AVSBenchDataset,
        device: torch.device,
        *,
        resume: bool = False,
        with_saliency: bool = False,
    ) -> dict[str, Any]:
        """Write every training frame's outputs; returns the summary for the manifest.

        Args:
            resume: keep the outputs of frames already written (an interrupted earlier call): they are
                neither recomputed nor rewritten, and their quality is computed from the saved PNGs
                (exact for binary pseudo masks).
            with_saliency: ``combine`` produces saliency maps: each frame's is written (even an all-zero
                one) and a frame is done only when its saliency PNG exists too.

        Summary keys: "frames", "written" (frames with a file written by this call), "reused" (frames kept
        whole from an earlier call), "saliency", "quality", "contact_sheet".
        """

        outputs = [self.folder / "masks", self.folder / "saliency"]
        if resume and (removed := remove_stale_temporaries(*outputs, recursive=True)):
            log.info("pseudo masks: removed %d temporary files of an interrupted run", len(removed))
        records = {r.video_id: r for r in dataset.records}
        done_videos = set()
        if resume:
            done_videos = {v for v, r in records.items() if all(self._done(rel, with_saliency) for rel in frame_relpaths(r, self.layout))}
            if done_videos:
                log.info("pseudo masks: %d of %d videos were written by an earlier run and are kept", len(done_videos), len(records))

        def reuse_or_combine(batch: AVBatch) -> Tensor:
            if not all(v in done_videos for v in batch.video_ids):
                return combine(batch)
            # Every video of this batch is on disk: read its outputs back instead of running the model.
            b, t, h, w = batch.frames.shape[0], batch.frames.shape[1], batch.frames.shape[-2], batch.frames.shape[-1]
            out = torch.zeros(b, t, 3, h, w)
            if batch.pseudo_masks is not None:
                out[:, :, 0] = batch.pseudo_masks.float().cpu()
            for i, vid in enumerate(batch.video_ids):
                for j, rel in enumerate(frame_relpaths(records[vid], self.layout)):
                    out[i, j, 2] = torch.from_numpy(read_probability_png(self.folder / "masks" / rel))
                    if with_saliency:
                        out[i, j, 1] = torch.from_numpy(read_probability_png(self.folder / "saliency" / rel))
            return out.to(batch.frames.device)

        quality = BinaryAccumulator(protocol="clean")
        rows: list[list[np.ndarray]] = []
        labels: list[str] = []
        frames = gt_frames = written = reused = 0
        saw_saliency = False
        for fo in iterate_outputs(reuse_or_combine if resume else combine, dataset, device, batch_size=4, progress="pseudo masks"):
            amap, sal, pseudo = fo.output
            rel = fo.relpath(self.layout)
            if sal.any():
                saw_saliency = True
            if resume and self._done(rel, with_saliency):
                reused += 1
            else:
                # Each file on its own: one written before an interruption is complete and kept.
                mask_path, sal_path = self.folder / "masks" / rel, self.folder / "saliency" / rel
                if not (resume and mask_path.is_file()):
                    save_probability_png(pseudo, mask_path)
                if (with_saliency or sal.any()) and not (resume and sal_path.is_file()):
                    save_probability_png(sal, sal_path)
                written += 1
            frames += 1
            if fo.gt is not None:
                gt_frames += 1
                quality.update(pseudo[None], fo.gt[None])
                if len(rows) < self.sheet_rows:
                    rgb = denormalize(fo.frame)
                    rows.append([rgb, colormap(amap), colormap(sal), mask_image(pseudo), mask_image((fo.gt != 0).astype(np.float32))])
                    labels.append(f"{fo.record.video_id}#{fo.frame_number}")
        sheet_path = self.folder / "contact_sheet.png"
        if rows:
            save_image_atomic(contact_sheet(rows, row_labels=labels, col_labels=self.columns), sheet_path)
        q = quality.compute() if gt_frames else {"miou": None, "fscore": None, "frames": 0}
        return {
            "frames": frames, "written": written, "reused": reused, "saliency": saw_saliency,
            "quality": {"miou": q["miou"], "fscore": q["fscore"], "frames": q["frames"], "protocol": "clean"},
            "contact_sheet": str(sheet_path) if rows else None,
        }  # fmt: skip

    def write_manifest(self, summary: dict[str, Any]) -> None:
        write_text_atomic(self.folder / "manifest.json", json.dumps(summary, indent=2, default=str))
