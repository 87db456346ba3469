"""Run a model over a dataset in canonical order and evaluate or save what it predicts.

Canonical order = metadata rows of the split in file order, frames ascending. Every stage that maps
frames to per-frame outputs (activation maps, saliency, final predictions) goes through
``iterate_outputs``, and every evaluation through ``evaluate_outputs``, so the avsbench protocol's
batches are always cut from the same frame sequence as ``avseg score``.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm import tqdm

from avseg.data.avsbench import AVSBenchDataset, collate_videos
from avseg.data.imageio import save_png_atomic
from avseg.data.index import VideoRecord
from avseg.data.layout import prediction_relpath
from avseg.metrics.binary import BinaryAccumulator
from avseg.metrics.listening import foreground_probs
from avseg.metrics.semantic import SemanticAccumulator
from avseg.types import AVBatch


@dataclass
class FrameOutput:
    record: VideoRecord
    t: int  # position in the video
    frame_number: int  # as on disk
    output: np.ndarray  # (H, W) probabilities / map, or (C, H, W) class scores
    gt: np.ndarray | None  # (H, W) int64 ground truth, None where the frame has none
    frame: np.ndarray  # (3, H, W) normalised frame, for pictures

    def relpath(self, layout: str) -> Path:
        r = self.record
        return prediction_relpath(layout, r.split, r.category, r.video_id, self.frame_number)


@torch.no_grad()
def iterate_outputs(
    fn: Callable[[AVBatch], Tensor],
    dataset: AVSBenchDataset,
    device: torch.device,
    batch_size: int = 4,
    workers: int = 0,
    progress: str | None = None,
) -> Iterator[FrameOutput]:
    """Yield one FrameOutput per real frame, in canonical order.

    ``fn`` maps an AVBatch on ``device`` to (B, T, H, W) or (B, T, C, H, W) outputs.
    """
    if dataset.augment or dataset.sample_frames is not None:
        raise ValueError("iterate_outputs needs a dataset without augmentation or frame sampling")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate_videos)
    index = 0
    bar = tqdm(total=len(dataset), desc=progress, unit="video", disable=progress is None or not sys.stderr.isatty(), leave=False)
    for batch in loader:
        out = fn(batch.to(device)).float().cpu()
        for b in range(batch.batch_size):
            record = dataset.records[index]
            index += 1
            for t in range(len(record.frame_paths)):
                yield FrameOutput(
                    record=record, t=t, frame_number=record.frame_numbers[t], output=out[b, t].numpy(),
                    gt=batch.masks[b, t].numpy() if bool(batch.has_mask[b, t]) else None,
                    frame=batch.frames[b, t].numpy(),
                )  # fmt: skip
        bar.update(batch.batch_size)
    bar.close()


def save_probability_png(prob: np.ndarray, path: Path) -> None:
    """(H, W) in [0, 1] -> 8-bit grey PNG (probability x 255), written atomically."""

    save_png_atomic(path, (np.clip(prob, 0, 1) * 255.0 + 0.5).astype(np.uint8), mode="L")


def save_class_png(classes: np.ndarray, path: Path) -> None:
    """(H, W) class ids -> 8-bit class-index PNG, written atomically."""

    save_png_atomic(path, classes.astype(np.uint8), mode="L")


def evaluate_outputs(
    outputs: Iterator[FrameOutput],
    layout: str,
    protocol: str,
    batch_frames: int = 20,
    num_classes: int | None = None,
    save_dir: Path | None = None,
    keep: Callable[[FrameOutput], None] | None = None,
    semantic: bool = False,
) -> dict:
    """Score outputs against ground truth with one protocol; frames without ground truth are skipped.

    ``semantic`` (AVSS only): outputs are (C, H, W) class scores (argmax is taken), scored against the
    class maps; needs ``num_classes``. Otherwise the scoring is binary: outputs are (H, W) probabilities
    ((C, H, W) class probabilities count as their foreground probability 1 - P(background)), and the ground
    truth is binarised (non-zero = sounding; on AVSS the union of the sounding objects). ``save_dir`` writes
    every frame's prediction PNG (all frames, GT or not) in the layout ``avseg score`` reads (class-index
    PNGs when semantic, else probability PNGs). ``keep`` sees every FrameOutput (e.g. to collect pictures),
    with the foreground probability as its output where class probabilities were scored as binary.
    """

    if semantic and layout != "avss":
        raise ValueError(f"semantic evaluation needs the avss layout (got {layout!r})")
    if semantic:
        if num_classes is None:
            raise ValueError("semantic evaluation needs num_classes")
        acc: SemanticAccumulator | BinaryAccumulator = SemanticAccumulator(num_classes=num_classes, protocol=protocol)
    else:
        acc = BinaryAccumulator(protocol=protocol, batch_frames=batch_frames)
    for fo in outputs:
        pred = fo.output
        if semantic and pred.ndim == 3:
            pred = pred.argmax(0)
        elif not semantic and pred.ndim == 3:
            pred = foreground_probs(pred[None])[0]
            fo = dataclasses.replace(fo, output=pred)  # ``keep`` sees what is scored
        if save_dir is not None:
            path = save_dir / fo.relpath(layout)
            save_class_png(pred, path) if semantic else save_probability_png(pred, path)
        if keep is not None:
            keep(fo)
        if fo.gt is None:
            continue
        acc.update(pred[None], fo.gt[None])
    return acc.compute()


def binary_miou_by(outputs: Iterator[FrameOutput], group: Callable[[FrameOutput], str]) -> dict[str, tuple[float, int]]:
    """Clean binary mIoU of the frames with ground truth, per ``group(frame)``: {group: (mIoU, frames)}, in the
    order the groups first appear. Class probabilities (C, H, W) count as their foreground probability, as in
    binary ``evaluate_outputs``; a frame's IoU does not depend on the others, so the groups' mIoUs weighted by
    their frames give the whole split's."""
    acc: dict[str, BinaryAccumulator] = {}
    for fo in outputs:
        if fo.gt is not None:
            acc.setdefault(group(fo), BinaryAccumulator("clean")).update(foreground_probs(fo.output[None]), fo.gt[None])
    return {k: (a.compute()["miou"], a.frames) for k, a in acc.items()}
