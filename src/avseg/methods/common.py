"""Helpers every method shares: building datasets from the data config, weights of a stage, validation."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Callable, cast

import torch
from torch import Tensor, nn

from avseg.config import DataConfig, TrainSettings
from avseg.data.avsbench import AVSBenchDataset, collate_videos
from avseg.data.index import class_names
from avseg.engine.evaluate import evaluate_outputs, iterate_outputs
from avseg.engine.trainer import fit
from avseg.fileio import unwrap_model
from avseg.types import AVBatch

log = logging.getLogger("avseg")


def num_classes_of(data: DataConfig) -> int:
    """K, the number of video-level classes: the run's recorded vocabulary, else the dataset's."""
    if data.classes is not None:
        return len(data.classes)

    return len(class_names(Path(data.root), data.layout))


def make_dataset(
    data: DataConfig,
    split: str,
    *,
    augment: bool = False,
    audio: bool = True,
    pseudo_dir: Path | None = None,
    sample_frames: int | None = None,
    seed: int = 0,
    max_videos: int | None = None,
    pseudo_labels: bool = False,
    masked_frames: bool = False,
) -> AVSBenchDataset:
    """The dataset of one split as the data config describes it (``audio=False`` skips audio decoding;
    ``pseudo_labels``: the pseudo PNGs are class ids, see ``AVSBenchDataset``)."""
    return AVSBenchDataset(
        Path(data.root), data.layout, split, image_size=data.image_size,
        audio_frontend=data.audio_frontend if audio else None, audio_window=data.audio_window,
        pad_to=10 if data.layout == "avss" else None, augment=augment, pseudo_dir=pseudo_dir,
        seed=seed, sample_frames=sample_frames, max_videos=max_videos if max_videos is not None else data.max_videos,
        pseudo_labels=pseudo_labels, masked_frames=masked_frames,
    )  # fmt: skip


def train_stage(
    model: nn.Module,
    dataset: AVSBenchDataset,
    settings: "TrainSettings",
    out_dir: Path,
    *,
    resume: bool,
    desc: str,
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
    best_key: str | None = None,
    find_unused_parameters: bool = False,
) -> dict:
    """Train one stage with the engine on AVBatches; returns a JSON-able summary for the stage marker.

    A last, smaller batch is dropped only when the split holds at least one full batch, so tiny datasets
    (tests, demos) still train.
    """

    result = fit(
        model, dataset, settings, out_dir, collate_fn=collate_videos, evaluate=evaluate, best_key=best_key,
        resume=resume, desc=desc, drop_last=len(dataset) >= settings.batch_size,
        find_unused_parameters=find_unused_parameters,
    )  # fmt: skip
    return {
        "seconds": result.seconds, "steps": result.steps, "train_loss": result.train_loss, "metrics": result.metrics,
        "best": result.best, "best_step": result.best_step,
        "checkpoint": str(result.best_checkpoint or result.last_checkpoint),
    }  # fmt: skip


def binary_validator(data: DataConfig, device: torch.device, audio: bool, split: str = "val", batch_size: int = 4) -> Callable[[nn.Module], dict[str, float]]:
    """A callable scoring ``model.predict`` on a split with the clean protocol: {"val_miou", "val_fscore"}."""

    dataset = make_dataset(data, split, audio=audio)

    def evaluate(model: nn.Module) -> dict[str, float]:
        inner = unwrap_model(model)
        was_training = inner.training
        inner.eval()
        try:
            predict = cast("Callable[[AVBatch], Tensor]", inner.predict)  # every final model has predict(batch)
            result = evaluate_outputs(iterate_outputs(predict, dataset, device, batch_size=batch_size), data.layout, "clean")
        finally:
            inner.train(was_training)
        return {f"{split}_miou": float(result["miou"]), f"{split}_fscore": float(result["fscore"])}

    return evaluate


def valid_frames(batch: AVBatch) -> Tensor:
    """(B*T,) bool: real frames (not AVSS padding)."""
    return batch.valid.flatten()


def heard_videos(batch: AVBatch) -> Tensor:
    """(B,) bool: videos that hear their own soundtrack (False for negative-audio training clips).

    The audio-visual contrast (M2ICL, EZ-VSL) runs on these only: a negative clip's sound belongs to nothing
    in its frames, so it is no positive pair.
    """
    negative = batch.extras.get("negative_audio")
    if negative is None:
        return torch.ones(batch.batch_size, dtype=torch.bool, device=batch.frames.device)
    return ~negative.to(device=batch.frames.device, dtype=torch.bool)


def without_pretrained_weights(cfg: Any) -> Any:
    """A copy of the config whose encoders start from random init (the checkpoint overwrites them)."""
    c = copy.copy(cfg)
    for name in ("visual_weights", "audio_weights"):
        if hasattr(c, name):
            object.__setattr__(c, name, "none")
    return c
