"""Helpers every method shares: building datasets from the data config, weights of a stage, validation."""

from __future__ import annotations

import copy
import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, cast

import numpy as np
import torch
from torch import Tensor, nn

from avseg.audio import load_audio, quiet_seconds
from avseg.config import DataConfig, TrainSettings
from avseg.data.avsbench import AVSBenchDataset, collate_videos
from avseg.data.index import class_names
from avseg.engine.evaluate import evaluate_outputs, iterate_outputs
from avseg.engine.trainer import fit
from avseg.fileio import unwrap_model
from avseg.methods.base import Stage, StageContext, read_marker
from avseg.metrics.binary import frame_iou_clean
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


# --- binarisation threshold chosen on validation (heat-map methods) --------------------------------------
THRESHOLD_SOURCES = ("config", "val")
THRESHOLD_GRID: tuple[float, ...] = tuple(round(0.05 * k, 2) for k in range(1, 20))  # 0.05, 0.10, ..., 0.95


def check_threshold_source(value: str) -> None:
    if value not in THRESHOLD_SOURCES:
        raise ValueError(f"threshold_from must be one of {', '.join(THRESHOLD_SOURCES)}, got {value!r}")


def threshold_iou_sums(maps: Tensor, gts: Tensor, grid: Sequence[float] = THRESHOLD_GRID, chunk: int = 64) -> dict[float, float]:
    """Sum over frames of the clean-protocol IoU of the masks ``maps > t``, for every ``t`` of ``grid``.

    maps: (N, H, W) heat maps in [0, 1] (any float dtype); gts: (N, H, W) binary ground truth. A frame with an
    empty ground truth scores 1 when its mask is empty, else 0 (docs/metrics.md, clean protocol).
    """
    if maps.shape != gts.shape or maps.ndim != 3 or maps.shape[0] == 0:
        raise ValueError(f"sweep_thresholds needs (N, H, W) maps and ground truth of one shape with N > 0, got {tuple(maps.shape)} and {tuple(gts.shape)}")
    sums = {float(t): 0.0 for t in grid}
    for start in range(0, maps.shape[0], chunk):
        m = maps[start : start + chunk].float()
        g = gts[start : start + chunk]
        for t in sums:
            sums[t] += float(frame_iou_clean((m > t).float(), g).sum())
    return sums


def sweep_thresholds(maps: Tensor, gts: Tensor, grid: Sequence[float] = THRESHOLD_GRID, chunk: int = 64) -> dict[float, float]:
    """Clean-protocol mIoU of the masks ``maps > t`` for every ``t`` of ``grid`` (``threshold_iou_sums`` / N)."""
    return {t: v / maps.shape[0] for t, v in threshold_iou_sums(maps, gts, grid, chunk).items()}


def best_threshold(sweep: dict[float, float]) -> float:
    """The threshold of a ``sweep_thresholds`` result with the best mIoU; ties go to the value nearest 0.5."""
    return max(sweep, key=lambda t: (sweep[t], -abs(t - 0.5)))


def best_on_split(
    outputs: Iterable[Any], iou_sums: Callable[[Tensor, Tensor], dict[float, float]], grid: Sequence[float], *, split: str, where: str,
    setting: str, chunk: int,
) -> dict[str, Any]:  # fmt: skip
    """The value of ``grid`` that scores the best clean mIoU over the frames of ``outputs`` (FrameOutputs of
    ``split``) that have a ground-truth mask; ties: the value nearest 0.5. ``iou_sums(stacked outputs (n, ...),
    ground truth (n, H, W) bool)`` gives, per grid value, the sum of the n frames' IoU; frames are passed
    ``chunk`` at a time, so memory stays bounded on any split. Returns a stage marker's summary (the whole
    sweep included); ``where`` (the dataset root) and ``setting`` name the split and the option in the error
    raised when no frame has a mask."""
    return best_on_split_each(outputs, lambda stacked, gts: [iou_sums(stacked, gts)], grid, 1, split=split, where=where, setting=setting, chunk=chunk)[0]


def best_on_split_each(
    outputs: Iterable[Any], iou_sums: Callable[[Tensor, Tensor], list[dict[float, float]]], grid: Sequence[float], count: int, *, split: str,
    where: str, setting: str, chunk: int,
) -> list[dict[str, Any]]:  # fmt: skip
    """``best_on_split`` for ``count`` candidates scored in one pass over the split: ``iou_sums`` gives one
    per-grid-value sum for each candidate; returns one summary per candidate (each its own best value)."""
    sums = [{float(t): 0.0 for t in grid} for _ in range(count)]
    frames = 0
    pending: list[tuple[np.ndarray, np.ndarray]] = []

    def flush() -> None:
        if pending:
            stacked = torch.from_numpy(np.stack([o for o, _ in pending]))
            gts = torch.from_numpy(np.stack([g for _, g in pending]) != 0)
            per_candidate = iou_sums(stacked, gts)
            if len(per_candidate) != count:
                raise ValueError(f"iou_sums gave {len(per_candidate)} candidates, expected {count}")
            for total, part in zip(sums, per_candidate):
                for t, v in part.items():
                    total[t] += v
            pending.clear()

    for fo in outputs:
        if fo.gt is not None:
            pending.append((fo.output, fo.gt))
            frames += 1
            if len(pending) >= chunk:
                flush()
    flush()
    if not frames:
        raise ValueError(f"the {split} split of {where} has no frame with a ground-truth mask: {setting}: val cannot choose a threshold there")
    out = []
    for total in sums:
        sweep = {t: v / frames for t, v in total.items()}
        best = best_threshold(sweep)
        out.append({"threshold": best, "split": split, "frames": frames, "miou": sweep[best], "sweep": {f"{t:.2f}": round(v, 5) for t, v in sweep.items()}})
    return out


def choose_threshold(
    heatmap: Callable[[AVBatch], Tensor], data: DataConfig, device: torch.device, *, audio: bool, split: str = "val",
    grid: Sequence[float] = THRESHOLD_GRID, chunk: int = 64,
) -> dict[str, Any]:  # fmt: skip
    """The threshold of ``grid`` whose masks ``heatmap > t`` score the best clean mIoU on ``split``'s frames
    with a ground-truth mask (ties: the value nearest 0.5); returns the stage marker's summary (the whole sweep
    included). Frames are scored ``chunk`` at a time, so memory stays bounded on any split."""
    outputs = iterate_outputs(heatmap, make_dataset(data, split, audio=audio), device)
    return best_on_split(outputs, lambda maps, gts: threshold_iou_sums(maps, gts, grid), grid, split=split, where=str(data.root),
                         setting="threshold_from", chunk=chunk)  # fmt: skip


def threshold_stage(load: Callable[[Any, Path, torch.device], nn.Module], *, audio: bool, after: str) -> Stage:
    """The stage ``threshold`` of a heat-map method whose config says ``threshold_from: val``: it loads the
    final model (``load(config, run_dir, device)``, which must not itself read this stage's choice) and
    keeps the threshold of ``THRESHOLD_GRID`` that scores best on the validation split."""

    def run(ctx: StageContext) -> dict[str, Any]:
        net = load(dataclasses.replace(ctx.config, threshold_from="config"), ctx.run_dir, ctx.device)
        result = choose_threshold(cast("Callable[[AVBatch], Tensor]", net.heatmap), ctx.config.data, ctx.device, audio=audio)
        log.info("threshold: %.2f (validation mIoU %.1f over %d frames; %.1f at the configured %.2f)", result["threshold"], 100 * result["miou"],
                 result["frames"], 100 * result["sweep"].get(f"{ctx.config.threshold:.2f}", float("nan")), ctx.config.threshold)  # fmt: skip
        return result

    return Stage("threshold", run, "choose the heat map's binarisation threshold on the validation split", reads=(after,))


def chosen_threshold(source: str, fixed: float, run_dir: Path | None) -> float:
    """The binarisation threshold a predictor uses: ``fixed`` (``threshold_from: config``), else the one the run's
    ``threshold`` stage chose on validation."""
    if source == "config":
        return fixed
    if run_dir is None:
        raise ValueError("threshold_from: val needs the run folder: the threshold chosen on validation is in its stages/threshold.json")
    marker = read_marker("threshold", Path(run_dir))
    if marker is None:
        raise FileNotFoundError(
            f"{run_dir}/stages/threshold.json is missing: with threshold_from: val the threshold stage chooses the "
            f"binarisation threshold; finish the run first (avseg train --resume --out {run_dir})"
        )
    return float(marker["threshold"])


def valid_frames(batch: AVBatch) -> Tensor:
    """(B*T,) bool: real frames (not AVSS padding)."""
    return batch.valid.flatten()


def real_inputs(batch: AVBatch) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """(frames (N, 3, H, W), audio (N, 1, F, W_a) or None, rows) of the real frames of ``batch``, N <= B*T.

    AVSS pads 5-second videos to 10 with black frames and silence; the networks never see them (they would
    take part in BatchNorm's batch statistics). ``rows`` is the (B*T,) bool mask of the real frames, or None
    when every frame is real (then the inputs are the batch's own, unindexed). ``scatter_rows`` puts the
    outputs back in place."""
    frames = batch.frames.flatten(0, 1)
    audio = batch.audio.flatten(0, 1) if batch.audio is not None else None
    rows = valid_frames(batch)
    if bool(rows.all()):
        return frames, audio, None
    return frames[rows], audio[rows] if audio is not None else None, rows


def scatter_rows(x: Tensor, rows: Tensor | None) -> Tensor:
    """Outputs of the real frames (N, ...) -> (B*T, ...) with zeros on the padding (``real_inputs``' rows);
    ``x`` itself when every frame is real. Gradients flow to ``x``."""
    if rows is None:
        return x
    out = x.new_zeros((rows.numel(), *x.shape[1:]))
    out[rows] = x
    return out


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


class SilenceGate:
    """Which frames of a batch show a second in which nothing sounds, judged from the level of
    the sound alone (``avseg.audio.quiet_seconds``: more than ``db`` dB below the clip's loudest second). Frame
    t of a video is second t of its clip (one frame per second; AVSS padding frames are quiet). Each clip is
    decoded once. WS-AVS-AV's ``av_silence_db`` empties those frames' pseudo masks."""

    def __init__(self, records: Sequence[Any], db: float) -> None:
        self.paths = {r.video_id: Path(r.audio_path) for r in records}
        self.db = db
        self.quiet: dict[str, np.ndarray] = {}

    def seconds(self, video_id: str, count: int) -> np.ndarray:
        if video_id not in self.quiet or len(self.quiet[video_id]) < count:
            wave, rate = load_audio(self.paths[video_id], warn_silent=False)
            self.quiet[video_id] = quiet_seconds(wave, rate, count, self.db)
        return self.quiet[video_id][:count]

    def __call__(self, batch: AVBatch) -> Tensor:
        """(B, T) bool on the batch's device: the frame's second is quiet."""
        t = batch.num_frames
        quiet = np.stack([self.seconds(v, t) for v in batch.video_ids])
        return torch.from_numpy(quiet).to(batch.frames.device) | ~batch.valid.bool()


def silenced(mask: Tensor, quiet: Tensor | None) -> Tensor:
    """(B, T, H, W) bool mask emptied on the quiet frames ((B, T) bool; None: unchanged)."""
    return mask if quiet is None else mask & ~quiet[:, :, None, None]
