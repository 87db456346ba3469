"""PCAS's stages (look-listen, pseudo-labels, segment), its predictor and its registry entry."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from avseg.audio.frontends import FRONTENDS
from avseg.config import TrainSettings
from avseg.data.avsbench import collate_videos
from avseg.engine import distributed as dist
from avseg.engine.checkpoint import load_model_weights
from avseg.engine.evaluate import evaluate_outputs, iterate_outputs, save_class_png
from avseg.engine.trainer import fit
from avseg.fileio import unwrap_model, write_text_atomic
from avseg.methods.base import MethodSpec, Stage, StageContext, final_weights
from avseg.methods.common import make_dataset, num_classes_of
from avseg.methods.pcas.config import IGNORE, PCASConfig
from avseg.methods.pcas.model import LOOK_LISTEN_MODULES, CNNVisual, PCASNet, ViTVisual
from avseg.metrics.binary import BinaryAccumulator
from avseg.metrics.classification import classification_scores
from avseg.metrics.semantic import SemanticAccumulator
from avseg.models.ast import build_ast
from avseg.models.zoo import VISUAL_ENCODERS
from avseg.visualize import colormap, contact_sheet, denormalize, save_image_atomic, semantic_image

log = logging.getLogger("avseg")


# --- helpers for the stages ----------------------------------------------------------------------------
def num_classes(cfg: PCASConfig) -> int:
    """K: foreground classes of the label vocabulary (the run's record of it, else the data's)."""
    return num_classes_of(cfg.data)


def param_groups(cfg: PCASConfig):
    """Two optimizer groups, the paper's two modules: Looking-before-Listening (encoders, TVP, classification
    heads) at ``settings.lr`` and Listening-before-Segmentation (projections, segmentation head) at
    ``settings.lr * segment_lr_scale``. Frozen parameters are left out; empty groups are dropped."""

    def groups(model: nn.Module) -> list[dict[str, Any]]:
        look: list[nn.Parameter] = []
        seg: list[nn.Parameter] = []
        for name, p in unwrap_model(model).named_parameters():
            if p.requires_grad:
                (look if name.split(".")[0] in LOOK_LISTEN_MODULES else seg).append(p)
        out: list[dict[str, Any]] = []
        if look:
            out.append({"params": look})
        if seg:
            out.append({"params": seg, "lr_scale": cfg.segment_lr_scale})
        return out

    return groups


def _fit(model: nn.Module, dataset: Any, settings: TrainSettings, out_dir: Path, cfg: PCASConfig, resume: bool, desc: str, evaluate=None, best_key=None) -> dict:
    """``methods.common.train_stage`` plus the two parameter groups (train_stage has no param_groups)."""

    result = fit(
        model, dataset, settings, out_dir, collate_fn=collate_videos, evaluate=evaluate, best_key=best_key, resume=resume,
        param_groups=param_groups(cfg), desc=desc, drop_last=len(dataset) >= settings.batch_size, find_unused_parameters=True,
    )  # fmt: skip
    return {
        "seconds": result.seconds, "steps": result.steps, "train_loss": result.train_loss, "metrics": result.metrics,
        "best": result.best, "best_step": result.best_step, "checkpoint": str(result.best_checkpoint or result.last_checkpoint),
    }  # fmt: skip


def validator(cfg: PCASConfig, device: torch.device, split: str = "val"):
    """A callable scoring ``model.predict`` on a split (clean protocol): {"val_miou", "val_fscore"}."""

    dataset = make_dataset(cfg.data, split)

    def evaluate(model: nn.Module) -> dict[str, float]:
        inner = cast(PCASNet, unwrap_model(model))  # the validator of PCAS's own stages
        was_training, mode = inner.training, inner.mode
        inner.eval()
        try:
            result = evaluate_outputs(iterate_outputs(inner.predict, dataset, device, batch_size=4), cfg.data.layout, "clean", num_classes=dataset.num_semantic_classes)
        finally:
            inner.train(was_training)
            inner.mode = mode
        return {f"{split}_miou": float(result["miou"]), f"{split}_fscore": float(result["fscore"])}

    return evaluate


@torch.no_grad()
def audio_classification_report(model: PCASNet, cfg: PCASConfig, split: str, device: torch.device) -> dict[str, Any]:
    """The paper's Table 3 shape: how well the audio head classifies each frame's sound.

    ``video``: per-frame predictions against the video labels (all real frames). ``frame``: against the
    classes sounding in that frame, from its ground-truth mask (AVSS: the mask's class ids; S4 / MS3: the
    video labels when the mask is non-empty, none when it is empty); frames with ground truth only.
    """
    from torch.utils.data import DataLoader

    dataset = make_dataset(cfg.data, split)
    loader = DataLoader(dataset, batch_size=4, shuffle=False, collate_fn=collate_videos)
    model.eval()
    video_p, video_y, frame_p, frame_y = [], [], [], []
    k = model.num_classes
    for batch in loader:
        batch = batch.to(device)
        enc = model.encode(batch)
        probs = model.audio_probs(enc).cpu().numpy()
        video_p.append(probs)
        video_y.append(enc.labels.cpu().numpy())
        masks = batch.masks.flatten(0, 1)[enc.valid].cpu()
        has = batch.has_mask.flatten()[enc.valid].cpu()
        if model.semantic:
            present = F.one_hot(masks.flatten(1), k + 1).amax(dim=1)[:, 1:].float()  # (N, K)
        else:
            present = enc.labels.cpu() * (masks.flatten(1).amax(dim=1) > 0).float()[:, None]
        frame_p.append(probs[has.numpy()])
        frame_y.append(present[has].numpy())
    thr = cfg.audio_threshold
    out = {
        "split": split, "tvp": cfg.tvp, "threshold": thr,
        "video": classification_scores(np.concatenate(video_p), np.concatenate(video_y), thr),
        "frame": classification_scores(np.concatenate(frame_p), np.concatenate(frame_y), thr),
    }  # fmt: skip
    return out


def build_model(cfg: PCASConfig, num_classes: int, visual_weights: bool = True) -> PCASNet:
    """The PCAS network of ``cfg``; ``visual_weights=False`` skips the pretrained encoder weights (a checkpoint
    is loaded next). Visual encoder, then audio encoder, then (inside PCASNet) the heads: the order the
    parameters were always initialised in, so a fixed seed gives the same model as before."""
    visual: ViTVisual | CNNVisual
    if cfg.is_vit:
        path = cfg.visual_weights_path if visual_weights and cfg.visual_weights == "file" else None
        visual = ViTVisual(cfg.visual, path, cfg.visual_input_norm, cfg.drop_path)
    else:
        weights = cfg.visual_weights if visual_weights else "none"
        encoder = VISUAL_ENCODERS[cfg.visual](weights=weights, weights_path=Path(cfg.visual_weights_path) if cfg.visual_weights_path and weights != "none" else None)
        visual = CNNVisual(encoder, cfg.visual_level)
    audio_path = cfg.audio_weights_path if visual_weights else None  # checkpoints overwrite them anyway
    audio = build_ast(cfg.audio, prompt_dim=visual.embed_dim, weights_path=audio_path, weights_format=cfg.audio_weights_format, spec_norm=cfg.spec_norm, drop_path_rate=cfg.drop_path)
    assert cfg.data.audio_frontend is not None  # PCASConfig requires a wav front-end
    return PCASNet(
        visual, audio, num_classes,
        semantic=cfg.data.layout == "avss", window_seconds=FRONTENDS[cfg.data.audio_frontend].window_seconds,
        audio_segment=cfg.audio_segment, segment_seconds=cfg.segment_seconds, tvp=cfg.tvp, tvp_detach=cfg.tvp_detach,
        audio_cls_weight=cfg.audio_cls_weight, visual_cls_weight=cfg.visual_cls_weight, visual_sem_weight=cfg.visual_sem_weight,
        embed_dim=cfg.embed_dim, cmc=cfg.cmc, cmc_weight=cfg.cmc_weight, cmc_tau=cfg.cmc_tau,
        cmpc=cfg.cmpc, cmpc_weight=cfg.cmpc_weight, cmpc_high=cfg.cmpc_high, cmpc_low=cfg.cmpc_low,
        cmpc_detach_audio=cfg.cmpc_detach_audio, cmpc_sounding_only=cfg.cmpc_sounding_only,
        cmcc=cfg.cmcc, cmcc_weight=cfg.cmcc_weight, cmcc_tau=cfg.cmcc_tau, cmcc_crops=cfg.cmcc_crops,
        cmcc_crop_fraction=cfg.cmcc_crop_fraction, cmcc_crop_px=cfg.cmcc_crop_px, cmcc_fg_fraction=cfg.cmcc_fg_fraction,
        cmcc_bg_fraction=cfg.cmcc_bg_fraction, cmcc_batch_negatives=cfg.cmcc_batch_negatives, fine_losses_after=cfg.fine_losses_after,
        audio_threshold=cfg.audio_threshold, empty_audio=cfg.empty_audio, cam_source=cfg.cam_source, cam_high=cfg.cam_high,
        cam_low=cfg.cam_low, cam_flip=cfg.cam_flip, cam_norm=cfg.cam_norm,
        use_fpn=cfg.seg_head == "fpn" or (cfg.seg_head == "auto" and not cfg.is_vit), seg_channels=cfg.seg_channels,
        seg_weight=cfg.seg_weight, segment_joint=cfg.segment_joint, segment_audio=cfg.segment_audio, flip_augment=cfg.flip_augment,
        audio_gate=cfg.audio_gate, crf=cfg.crf, crf_iterations=cfg.crf_iterations,
    )  # fmt: skip


def _load(cfg: PCASConfig, path: Path, device: torch.device) -> PCASNet:
    model = build_model(cfg, num_classes(cfg), visual_weights=False)
    load_model_weights(model, path)
    return model.to(device).eval()


# --- stages --------------------------------------------------------------------------------------------
def stage_look_listen(ctx: StageContext) -> dict[str, Any]:
    cfg: PCASConfig = ctx.config
    s = cfg.look_listen_train
    model = build_model(cfg, num_classes(cfg))
    model.mode = "look-listen"
    train = make_dataset(cfg.data, "train", augment=True, sample_frames=cfg.train_frames, seed=s.seed)
    summary = _fit(model, train, s, ctx.path("look-listen"), cfg, ctx.resume, "look-listen")

    if cfg.audio_report_split and dist.is_main():  # the stage runs on every torchrun process; report once

        trained = _load(cfg, ctx.path("look-listen", "last.safetensors"), ctx.device)
        report = audio_classification_report(trained, cfg, cfg.audio_report_split, ctx.device)
        write_text_atomic(ctx.path("look-listen", "audio_classification.json"), json.dumps(report, indent=2))
        summary["audio_classification"] = report
        ctx.summary["audio_classification"] = report
    return summary


def stage_pseudo_labels(ctx: StageContext) -> dict[str, Any]:
    """CAM pseudo labels of every training frame -> pseudo/labels (class-index PNGs), quality, contact sheet."""

    cfg: PCASConfig = ctx.config
    model = _load(cfg, ctx.path("look-listen", "last.safetensors"), ctx.device)
    train = make_dataset(cfg.data, "train")
    folder = ctx.path("pseudo")
    semantic = cfg.data.layout == "avss"
    quality_sem = SemanticAccumulator(train.num_semantic_classes, "clean") if semantic else None
    quality_bin = BinaryAccumulator("clean")
    frames = gt_frames = ignored = labelled_right = labelled = 0
    total_pixels = 0
    rows: list[list[np.ndarray]] = []
    names: list[str] = []
    for fo in iterate_outputs(model.pseudo_labels, train, ctx.device, batch_size=4, progress="pseudo labels"):
        label = fo.output[0].round().astype(np.int64)
        save_class_png(label, folder / "labels" / fo.relpath(cfg.data.layout))
        frames += 1
        total_pixels += label.size
        ignored += int((label == IGNORE).sum())
        if fo.gt is None:
            continue
        gt_frames += 1
        hard = np.where(label == IGNORE, 0, label)  # ignored pixels count as background in the quality
        if semantic:
            assert quality_sem is not None  # built for semantic layouts
            quality_sem.update(hard[None], fo.gt[None])
        quality_bin.update((hard > 0).astype(np.float32)[None], (fo.gt > 0).astype(np.int64)[None])
        keep = label != IGNORE
        labelled += int(keep.sum())
        if semantic:
            labelled_right += int((label[keep] == fo.gt[keep]).sum())
        else:
            labelled_right += int(((label[keep] > 0) == (fo.gt[keep] > 0)).sum())
        if len(rows) < 8:
            shown = np.where(label == IGNORE, 0, label)
            gt_img = semantic_image(fo.gt) if semantic else semantic_image((fo.gt > 0).astype(np.int64))
            rows.append([denormalize(fo.frame), colormap(fo.output[1]), semantic_image(shown), gt_img])
            names.append(f"{fo.record.video_id}#{fo.frame_number}")
    if rows:
        save_image_atomic(contact_sheet(rows, row_labels=names, col_labels=["frame", "CAM (sounding)", "pseudo label", "ground truth"]), folder / "contact_sheet.png")
    quality: dict[str, Any] = {"protocol": "clean", "gt_frames": gt_frames, "ignored_fraction": ignored / max(1, total_pixels),
                               "labelled_pixel_accuracy": labelled_right / max(1, labelled)}  # fmt: skip
    if gt_frames:
        b = quality_bin.compute()
        quality.update(binary_miou=b["miou"], binary_fscore=b["fscore"])
        if semantic:
            assert quality_sem is not None  # built for semantic layouts
            q = quality_sem.compute()
            quality.update(miou=q["miou"], fscore=q["fscore"], per_class_iou=q["per_class_iou"])
        else:
            quality.update(miou=b["miou"], fscore=b["fscore"])
    summary = {"frames": frames, "quality": quality, "cam_high": cfg.cam_high, "cam_low": cfg.cam_low, "audio_threshold": cfg.audio_threshold,
               "empty_audio": cfg.empty_audio, "contact_sheet": str(folder / "contact_sheet.png") if rows else None}  # fmt: skip
    write_text_atomic(folder / "manifest.json", json.dumps(summary, indent=2, default=str))
    ctx.summary["pseudo_labels"] = summary
    return summary


def stage_segment(ctx: StageContext) -> dict[str, Any]:
    cfg: PCASConfig = ctx.config
    s = cfg.segment_train
    model = build_model(cfg, num_classes(cfg), visual_weights=False)
    load_model_weights(model, ctx.path("look-listen", "last.safetensors"))
    model.mode = "segment"
    if not cfg.segment_joint:  # only the segmentation head learns; the encoders' BatchNorm stays as trained
        model.freeze(keep_training=("seg_head",))
    # The model flips frames and labels itself (flip_augment); `segment_crop_augment` adds the dataset's crop
    # augmentation, with the pseudo labels resized by nearest neighbour (`pseudo_labels=True`).
    train = make_dataset(cfg.data, "train", augment=cfg.segment_crop_augment, pseudo_dir=ctx.path("pseudo", "labels"), pseudo_labels=True,
                         sample_frames=cfg.train_frames, seed=s.seed)  # fmt: skip
    evaluate = validator(cfg, ctx.device) if cfg.select_best else None
    return _fit(model, train, s, ctx.path("segment"), cfg, ctx.resume, "segment", evaluate=evaluate, best_key="val_miou" if evaluate else None)


def stages(cfg: PCASConfig) -> list[Stage]:
    return [
        Stage("look-listen", stage_look_listen, "encoders + TVP + classification + CMC/CMPC/CMCC", all_ranks=True, outputs=("look-listen",)),
        Stage("pseudo-labels", stage_pseudo_labels, "audio-restricted CAM pseudo labels, quality, contact sheet", outputs=("pseudo",)),
        Stage("segment", stage_segment, "segmentation head on the pseudo labels (CE, ignore index)", all_ranks=True, outputs=("segment",)),
    ]


def load_predictor(cfg: PCASConfig, run_dir: Path | None, device: torch.device, weights: Path | None = None) -> nn.Module:
    model = _load(cfg, final_weights(run_dir, weights, "segment"), device)
    model.mode = "segment"
    return model


SPEC = MethodSpec(
    name="pcas", config_cls=PCASConfig, stages=stages, final_stage="segment", load_predictor=load_predictor, output="semantic",
    supervision="video labels", description="PCAS: looking-before-listening (TVP) + progressive contrast (CMC/CMPC/CMCC) + CAM pseudo labels (ICASSP 2026)",
    display="PCAS",
    tiny=("visual=vit_cpu", "visual_weights=none", "audio=ast_cpu", "embed_dim=16", "seg_channels=16", "cmcc_crops=2"),
)  # fmt: skip
