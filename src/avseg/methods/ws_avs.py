"""WS-AVS (Mo & Raj, NeurIPS 2023): M2ICL audio-visual fusion + pseudo-mask refinement by C2AM.

Stages (each writes named artifacts in the run folder):
1. ``c2am``: train a class-agnostic activation map model on the training frames (image only).
2. ``activation-maps``: C2AM map A per training frame (polarity fixed from the border statistics),
   thresholded (+ optional dense CRF) into initial masks: ``pseudo/maps``, ``pseudo/initial``.
3. ``saliency``: train a saliency detector on the initial masks (skipped by the official shortcut).
4. ``pseudo-masks``: paper Eq. 6, pseudo mask = A > 1 - saliency (or the initial masks directly with
   ``refinement: c2am``), written to ``pseudo/masks`` with a manifest, a contact sheet and their mIoU
   against the ground truth of the training frames that have it.
5. ``segmenter``: train the segmenter with L = L_avf (M2ICL) + BCE(M, pseudo mask), frames and pseudo
   masks cropped and flipped together.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avseg.config import DataConfig, TrainSettings
from avseg.engine.checkpoint import load_model_weights
from avseg.engine.evaluate import iterate_outputs, save_probability_png
from avseg.fileio import file_sha256, remove_stale_temporaries, write_text_atomic
from avseg.losses.c2am import c2am_losses
from avseg.losses.contrastive import m2icl_per_second
from avseg.losses.segmentation import bce_loss, iou_loss
from avseg.methods.base import MethodSpec, Stage, StageContext, final_weights
from avseg.methods.common import binary_validator, heard_videos, make_dataset, real_inputs, scatter_rows, train_stage, without_pretrained_weights
from avseg.models.decoders import PanopticFPNDecoder
from avseg.models.heads import C2AMHead
from avseg.models.segmenter import AVSegmenter
from avseg.models.visual import encoder_channels
from avseg.models.zoo import AUDIO_ENCODERS, VISUAL_ENCODERS, check_audio_frontend
from avseg.pseudo.crf import dense_crf, dense_crf_multi
from avseg.pseudo.writer import PseudoMaskWriter, frame_relpaths
from avseg.types import AVBatch
from avseg.visualize import denormalize

log = logging.getLogger("avseg")


def _default_train(epochs: int, lr: float = 1e-4, batch_size: int = 64) -> TrainSettings:
    return TrainSettings(epochs=epochs, lr=lr, batch_size=batch_size, optimizer="adam", schedule="constant")


@dataclass
class WSAVSConfig:
    """WS-AVS settings. Defaults follow the paper (R50 x2, 224 px, Adam 1e-4, batch 64, 20 epochs)."""

    data: DataConfig
    visual: str = "resnet50"
    visual_weights: str = "imagenet"
    audio: str = "resnet50"
    audio_weights: str = "imagenet"
    embed_dim: int = 512
    visual_dropout: float = 0.9  # official code
    audio_norm: Literal["batch", "none"] = "batch"  # BatchNorm1d on the audio encoder output (keeps clips apart; "none": off)
    tau: float = 0.03
    m2icl_scale_by_tau: bool = True  # the official code multiplies the loss by tau
    m2icl_weight: float = 1.0
    fusion_stages: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    decoder_channels: int = 128
    train_frames: int | None = 1  # frames sampled per video and step (the official code samples one)
    # Pseudo-mask refinement
    refinement: str = "saliency"  # "saliency": paper Eq. 6; "c2am": the official shortcut (C2AM masks)
    c2am_visual: str = "resnet50"
    c2am_weights: str = "imagenet"
    c2am_threshold: float = 0.3
    # Eq. 6 keeps A > 1 - S; when the saliency map saturates (S ~ 1 everywhere, seen on synthetic MS3) that is
    # A > 0, the whole frame. A floor keeps only pixels whose activation also exceeds it (0 = the paper's rule).
    eq6_floor: float = 0.0
    c2am_level: int = 3  # pyramid level the C2AM head reads (3 = stride 32; 2 = stride 16 for small frames)
    # Rings of outermost C2AM feature cells replaced by the frame's median before the map is upsampled (0 = the
    # paper's map). Those cells see mostly zero padding, and a trained head can light them whatever the image.
    c2am_border: int = 0
    crf: bool = False  # dense CRF on the training frames' initial masks
    crf_inference: bool = False  # dense CRF on the final model's predictions (inference only: ``crf_foreground``)
    saliency_visual: str = "resnet50"
    saliency_weights: str = "imagenet"
    c2am_train: TrainSettings = field(default_factory=lambda: _default_train(10, lr=1e-4, batch_size=64))
    saliency_train: TrainSettings = field(default_factory=lambda: _default_train(10, lr=1e-4, batch_size=16))
    segmenter_train: TrainSettings = field(default_factory=lambda: _default_train(20))
    select_best: bool = True  # keep the checkpoint with the best validation mIoU (uses val masks)

    def __post_init__(self) -> None:
        if self.refinement not in ("saliency", "c2am"):
            raise ValueError(f"refinement must be 'saliency' or 'c2am', got {self.refinement!r}")
        if not 0.0 <= self.eq6_floor < 1.0:
            raise ValueError(f"eq6_floor must be in [0, 1), got {self.eq6_floor}")
        if not 0.0 < self.c2am_threshold < 1.0:
            raise ValueError(f"c2am_threshold must be in (0, 1), got {self.c2am_threshold}")
        check_border("c2am_border", self.c2am_border)
        if self.tau <= 0:
            raise ValueError(f"tau must be > 0, got {self.tau}")
        for name, table in (("visual", VISUAL_ENCODERS), ("c2am_visual", VISUAL_ENCODERS), ("saliency_visual", VISUAL_ENCODERS), ("audio", AUDIO_ENCODERS)):
            if getattr(self, name) not in table:
                raise ValueError(f"{name} {getattr(self, name)!r} is not one of {sorted(table)}")
        check_audio_frontend("audio", self.audio, self.data.audio_frontend)

    def train_settings(self) -> dict[str, TrainSettings]:
        return {"c2am_train": self.c2am_train, "saliency_train": self.saliency_train, "segmenter_train": self.segmenter_train}


# --- models -------------------------------------------------------------------------------------------
def check_border(name: str, rings: int) -> None:
    if isinstance(rings, bool) or not isinstance(rings, int) or rings < 0:
        raise ValueError(f"{name} must be a whole number of feature-cell rings >= 0, got {rings!r}")


class C2AMNet(nn.Module):
    """Visual encoder + C2AM head on the last stage; trained with the C2AM contrastive losses.

    ``border``: rings of outermost feature cells that ``activation`` replaces by the frame's median
    (:func:`mask_border_cells`); training does not use it.
    """

    def __init__(self, encoder: nn.Module, level: int = 3, border: int = 0) -> None:
        super().__init__()
        channels = encoder_channels(encoder)
        if not 0 <= level < len(channels):
            raise ValueError(f"c2am_level must be within 0..{len(channels) - 1}, got {level}")
        check_border("c2am_border", border)
        self.encoder = encoder
        self.level = level
        self.border = border
        self.head = C2AMHead(channels[level])

    def foreground(self, frames: Tensor) -> tuple[Tensor, Tensor]:
        """frames (N, 3, H, W) -> (features (N, C, h, w), P (N, 1, h, w) in [0, 1])."""
        features = self.encoder(frames)[self.level]
        return features, self.head(features)

    def forward(self, batch: AVBatch) -> dict[str, Tensor]:
        frames = batch.frames.flatten(0, 1)[batch.valid.flatten()]
        features, fg = self.foreground(frames)
        losses = c2am_losses(features, fg)
        return losses

    @torch.no_grad()
    def activation(self, frames: Tensor, flip: bool) -> Tensor:
        """(N, 3, H, W) -> (N, H, W) activation map A in [0, 1], min-max normalised per frame."""
        _, fg = self.foreground(frames)
        fg = mask_border_cells(fg, self.border)
        return activation_map(1.0 - fg if flip else fg, frames.shape[-2:])


def mask_border_cells(fg: Tensor, rings: int) -> Tensor:
    """C2AM foreground probability (N, 1, h, w) with its ``rings`` outermost rings of cells replaced by
    each frame's median (unchanged for 0, and when no cell would be left inside the rings).

    A padded CNN's outermost cells see mostly zero padding; on the synthetic benches C2AM's trained head
    lit them whatever the image (0.92 on a blank frame), and min-max normalisation then turns the frame's
    edge into "object". The median is the frame's typical level, so masked cells are neither object nor
    its absence, and normalisation sees only the cells that saw the image.
    """
    h, w = fg.shape[-2:]
    if rings <= 0 or h <= 2 * rings or w <= 2 * rings:
        return fg
    median = fg.flatten(1).median(1).values.view(-1, *([1] * (fg.dim() - 1))).expand_as(fg)
    border = torch.ones_like(fg, dtype=torch.bool)
    border[..., rings:-rings, rings:-rings] = False
    return torch.where(border, median, fg)


def activation_map(fg: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    """C2AM foreground probability (N, 1, h, w) -> (N, H, W) activation map A: bilinearly upsampled to
    ``size``, min-max normalised per frame."""
    a = F.interpolate(fg, size=size, mode="bilinear", align_corners=False)[:, 0]
    lo = a.flatten(1).min(1).values[:, None, None]
    hi = a.flatten(1).max(1).values[:, None, None]
    return (a - lo) / (hi - lo).clamp_min(1e-6)


class SaliencyNet(nn.Module):
    """A light FPN saliency detector: visual encoder + Panoptic-FPN head with one output."""

    def __init__(self, encoder: nn.Module, channels: int = 64) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = PanopticFPNDecoder(encoder_channels(encoder), channels=channels, num_classes=1)

    def logits(self, frames: Tensor) -> Tensor:
        return self.decoder(self.encoder(frames), out_size=frames.shape[-2:])[:, 0]  # (N, H, W)

    def forward(self, batch: AVBatch) -> dict[str, Tensor]:
        assert batch.pseudo_masks is not None and batch.has_pseudo is not None  # its dataset reads a pseudo-mask folder
        frames = batch.frames.flatten(0, 1)
        target = batch.pseudo_masks.flatten(0, 1)
        keep = (batch.valid & batch.has_pseudo).flatten()
        loss = bce_loss(self.logits(frames[keep]), target[keep])
        return {"loss": loss}

    @torch.no_grad()
    def predict(self, batch: AVBatch) -> Tensor:
        b, t = batch.frames.shape[:2]
        return torch.sigmoid(self.logits(batch.frames.flatten(0, 1))).view(b, t, *batch.frames.shape[-2:])


class WSAVSNet(nn.Module):
    """The final WS-AVS model: AVSegmenter + M2ICL + BCE against pseudo masks.

    ``mask_source`` selects the pixel supervision: "pseudo" (WS-AVS) or "gt" (the fully supervised
    reference, BCE + IoU on ground truth).
    """

    output = "binary"

    def __init__(
        self, segmenter: AVSegmenter, tau: float, scale_by_tau: bool, m2icl_weight: float, mask_source: str = "pseudo", crf_inference: bool = False,
    ) -> None:  # fmt: skip
        super().__init__()
        self.segmenter = segmenter
        self.tau = tau
        self.scale_by_tau = scale_by_tau
        self.m2icl_weight = m2icl_weight
        self.mask_source = mask_source
        self.crf_inference = crf_inference  # predict: each frame's probabilities refined by a dense CRF (``crf_foreground``)

    def forward(self, batch: AVBatch) -> dict[str, Tensor]:
        b, t = batch.frames.shape[:2]
        frames, audio, rows = real_inputs(batch)  # AVSS padding never goes through the network
        out = self.segmenter(frames, audio)
        logits = scatter_rows(out.logits[:, 0], rows)  # (B*T, H, W)
        losses: dict[str, Tensor] = {}
        if self.mask_source == "pseudo":
            losses["bce"] = self.pseudo_mask_loss(logits, batch)
            total = losses["bce"]
        else:
            keep = (batch.valid & batch.has_mask).flatten()
            target = (batch.masks.flatten(0, 1)[keep] != 0).float()  # AVSS class ids: the union of the sounding objects
            losses["bce"] = bce_loss(logits[keep], target) if keep.any() else logits.sum() * 0
            losses["iou"] = iou_loss(logits[keep], target) if keep.any() else logits.sum() * 0
            total = losses["bce"] + losses["iou"]
        if self.m2icl_weight > 0 and out.visual_embeds:
            visual = [scatter_rows(v, rows) for v in out.visual_embeds]
            losses["m2icl"] = m2icl_per_second(scatter_rows(out.audio_embed, rows), visual, b, t, self.tau, self.scale_by_tau, heard=heard_videos(batch), valid=batch.valid)
            total = total + self.m2icl_weight * losses["m2icl"]
        losses["loss"] = total
        return losses

    def pseudo_mask_loss(self, logits: Tensor, batch: AVBatch) -> Tensor:
        """BCE of ``logits`` (B*T, H, W) against the pseudo masks of the valid frames that have one."""
        assert batch.pseudo_masks is not None and batch.has_pseudo is not None  # its dataset reads a pseudo-mask folder
        keep = (batch.valid & batch.has_pseudo).flatten()
        return bce_loss(logits[keep], batch.pseudo_masks.flatten(0, 1)[keep])

    @torch.no_grad()
    def predict(self, batch: AVBatch) -> Tensor:
        """(B, T, H, W) sounding-object probabilities."""
        b, t = batch.frames.shape[:2]
        out = self.segmenter(batch.frames.flatten(0, 1), batch.audio.flatten(0, 1) if batch.audio is not None else None)
        probs = torch.sigmoid(out.logits[:, 0]).view(b, t, *batch.frames.shape[-2:])
        return crf_foreground(batch.frames, probs, batch.valid) if self.crf_inference else probs


def crf_foreground(frames: Tensor, probs: Tensor, valid: Tensor) -> Tensor:
    """``crf_inference``: the foreground probabilities (B, T, H, W) of the valid frames (``valid`` (B, T)) refined by
    a dense CRF on their frames (``frames`` (B, T, 3, H, W), normalised): unary -log p / -log(1 - p), the
    appearance and smoothness kernels of ``pseudo.crf`` (PCAS's ``crf: true`` on two labels). Returns the CRF's
    foreground marginals; padding frames unchanged. The CRF pulls a blob to the edges of the object under it."""
    out = probs.clone()
    for i, j in valid.nonzero().tolist():
        p = probs[i, j].float().cpu().numpy()
        refined = dense_crf_multi(denormalize(frames[i, j].cpu().numpy()), np.stack([1.0 - p, p]))[1]
        out[i, j] = torch.from_numpy(refined).to(out)
    return out


def build_segmenter(cfg: Any, use_audio: bool = True) -> AVSegmenter:
    visual = VISUAL_ENCODERS[cfg.visual](weights=cfg.visual_weights)
    audio = AUDIO_ENCODERS[cfg.audio](weights=cfg.audio_weights) if use_audio else None
    return AVSegmenter(
        visual, audio, fusion_stages=tuple(cfg.fusion_stages), embed_dim=cfg.embed_dim,
        visual_dropout=cfg.visual_dropout, decoder_channels=cfg.decoder_channels, audio_norm=cfg.audio_norm,
    )  # fmt: skip


# --- stages -------------------------------------------------------------------------------------------
def stage_c2am(ctx: StageContext) -> dict[str, Any]:
    cfg: WSAVSConfig = ctx.config
    s = cfg.c2am_train
    model = C2AMNet(VISUAL_ENCODERS[cfg.c2am_visual](weights=cfg.c2am_weights), level=cfg.c2am_level, border=cfg.c2am_border)
    train = make_dataset(cfg.data, "train", augment=True, audio=False, seed=s.seed)
    return train_stage(model, train, s, ctx.path("c2am"), resume=ctx.resume, desc="c2am")


def load_c2am(cfg: WSAVSConfig, run_dir: Path, device: torch.device) -> C2AMNet:
    """The run's trained C2AM (``run_dir/c2am/last.safetensors``), in eval mode on ``device``."""
    model = C2AMNet(VISUAL_ENCODERS[cfg.c2am_visual](weights="none"), level=cfg.c2am_level, border=cfg.c2am_border)
    load_model_weights(model, run_dir / "c2am" / "last.safetensors")
    return model.to(device).eval()


def _border_excess(amap: np.ndarray, skip: int = 0, width: int | None = None) -> float:
    """Mean of a map on a band near the image border minus its mean on the region the band encloses.

    Positive when the border band is more "foreground" than the middle of the frame. A relative test:
    objects in real photos often touch the border, so "the border is mostly above 0.5" (an absolute test)
    flips maps that merely have a bright background level. The comparison is with the enclosed region,
    not the whole frame: when the objects are small the frame mean is the background level, and the
    difference says nothing.

    The band starts ``skip`` pixels inside the edge: the outermost feature cell of a padded CNN (its
    stride in pixels) sees mostly zero padding, and its activation there is an artifact that can carry
    either polarity (EfficientNet-Lite0's stride-8 level at 128 px lights or darkens its outer ring
    whatever the image). ``width`` defaults to an eighth of the shorter side (at least 2 px); ``skip``
    shrinks when the frame is too small to hold band and core.
    """
    h, w = amap.shape[-2:]
    width = max(2, min(h, w) // 8) if width is None else width
    skip = max(0, min(skip, min(h, w) // 2 - width - 1))
    inner = amap[skip : h - skip, skip : w - skip]
    if min(inner.shape) <= 2 * width:
        return 0.0  # no core left: undecided
    band = np.ones(inner.shape, dtype=bool)
    band[width:-width, width:-width] = False
    return float(inner[band].mean() - inner[~band].mean())


POLARITY_FILE = "polarity.json"  # in pseudo/maps, so a forced rerun that removes the maps removes it too


def stage_activation_maps(ctx: StageContext) -> dict[str, Any]:
    """C2AM maps of every training frame -> pseudo/maps (A x 255) and pseudo/initial (A > threshold).

    Resumable: the polarity decision is stored (``pseudo/maps/polarity.json``, with the C2AM checkpoint's
    hash) before any map is written, and on resume every PNG that exists is kept (files are written
    atomically, so an existing file is complete); only batches with a missing file are recomputed.
    """
    import json
    import shutil

    cfg: WSAVSConfig = ctx.config
    layout = cfg.data.layout
    checkpoint = ctx.path("c2am", "last.safetensors")
    model = load_c2am(cfg, ctx.run_dir, ctx.device)
    train = make_dataset(cfg.data, "train", audio=False)
    maps_dir, init_dir = ctx.path("pseudo", "maps"), ctx.path("pseudo", "initial")
    polarity_path = maps_dir / POLARITY_FILE
    digest = file_sha256(checkpoint)

    def raw(batch: AVBatch) -> Tensor:
        b, t = batch.frames.shape[:2]
        return model.activation(batch.frames.flatten(0, 1), flip=False).view(b, t, *batch.frames.shape[-2:])

    frames = sum(len(r.frame_paths) for r in train.records)
    polarity = None
    if ctx.resume and polarity_path.is_file():
        try:
            polarity = json.loads(polarity_path.read_text())
        except ValueError:
            polarity = {}
        stale = polarity.get("c2am_sha256") != digest or polarity.get("frames") != frames or polarity.get("c2am_border", 0) != cfg.c2am_border
        if stale or "flip" not in polarity:
            log.warning("activation-maps: %s belongs to another C2AM checkpoint, dataset or c2am_border; recomputing every map", polarity_path)
            polarity = None
    if polarity is None:
        for folder in (maps_dir, init_dir):  # anything here came from another checkpoint or decision
            if folder.exists():
                shutil.rmtree(folder)
        # Polarity (C2AM): the loss is symmetric in P and 1 - P, so which side is foreground is decided
        # after training: if the image border is on average more "foreground" than the frame, the map is
        # flipped. A first pass keeps one number per frame (not the maps: S4 train at 224 px would hold
        # gigabytes).
        cell = 4 * 2**cfg.c2am_level  # every encoder's pyramid has strides 4, 8, 16, 32
        excess = [_border_excess(o.output, skip=cell) for o in iterate_outputs(raw, train, ctx.device, batch_size=4, progress="c2am polarity")]
        border = float(np.mean(excess))
        polarity = {"flip": bool(border > 0.0), "border_excess": border, "border_skip_px": cell, "frames": len(excess), "c2am_sha256": digest,
                    "c2am_border": cfg.c2am_border}  # fmt: skip
        write_text_atomic(polarity_path, json.dumps(polarity, indent=2))
    flip = bool(polarity["flip"])

    if remove_stale_temporaries(maps_dir, init_dir, recursive=True):
        log.info("activation-maps: removed temporary files of an interrupted run")

    def done(rel: Path) -> bool:
        return (maps_dir / rel).is_file() and (init_dir / rel).is_file()

    # Skip whole batches that are done, keeping the others exactly as an uninterrupted run batches them
    # (kept groups are full batches of 4 except the dataset's last), so resumed maps are bit-identical.
    batch = 4
    all_records = list(train.records)
    groups = [all_records[i : i + batch] for i in range(0, len(all_records), batch)]
    train.records = [r for g in groups if not all(done(rel) for r in g for rel in frame_relpaths(r, layout)) for r in g]
    written = 0
    if train.records:
        for o in iterate_outputs(raw, train, ctx.device, batch_size=batch, progress="c2am maps"):
            rel = o.relpath(layout)
            if done(rel):
                continue  # written before the interruption, in a batch that still had missing frames
            a = 1.0 - o.output if flip else o.output
            if not (init_dir / rel).is_file():
                mask = (a > cfg.c2am_threshold).astype(np.float32)
                if cfg.crf:
                    mask = dense_crf(denormalize(o.frame), a, cfg.c2am_threshold)
                save_probability_png(mask, init_dir / rel)
            if not (maps_dir / rel).is_file():
                save_probability_png(a, maps_dir / rel)
            written += 1
    if written < frames:
        log.info("activation-maps: kept %d frames written by an earlier run, wrote %d", frames - written, written)
    return {"frames": frames, "written": written, "reused": frames - written, "polarity_flipped": flip,
            "border_excess": polarity["border_excess"], "threshold": cfg.c2am_threshold, "crf": cfg.crf, "c2am_border": cfg.c2am_border}


def stage_saliency(ctx: StageContext) -> dict[str, Any]:
    cfg: WSAVSConfig = ctx.config
    s = cfg.saliency_train
    model = SaliencyNet(VISUAL_ENCODERS[cfg.saliency_visual](weights=cfg.saliency_weights))
    train = make_dataset(cfg.data, "train", augment=True, audio=False, pseudo_dir=ctx.path("pseudo", "initial"), seed=s.seed)
    return train_stage(model, train, s, ctx.path("saliency"), resume=ctx.resume, desc="saliency")


def eq6_mask(activation: Tensor, saliency: Tensor, floor: float = 0.0) -> Tensor:
    """Paper Eq. 6, argmax over [B; A] with the background cue B = 1 - saliency: A > 1 - S (bool, any shape).

    ``floor`` > 0 also asks A > floor: with a saturated saliency map (S = 1 everywhere) Eq. 6 alone is
    A > 0, the whole frame.
    """
    return (activation > 1.0 - saliency) & (activation > floor)


def stage_pseudo_masks(ctx: StageContext) -> dict[str, Any]:
    """Paper Eq. 6 (or the official shortcut) -> pseudo/masks + manifest + contact sheet + quality."""

    cfg: WSAVSConfig = ctx.config
    data = cfg.data
    train = make_dataset(data, "train", audio=False, pseudo_dir=ctx.path("pseudo", "maps"))
    saliency = None
    if cfg.refinement == "saliency":
        saliency = SaliencyNet(VISUAL_ENCODERS[cfg.saliency_visual](weights="none"))
        load_model_weights(saliency, ctx.path("saliency", "last.safetensors"))
        saliency = saliency.to(ctx.device).eval()
    writer = PseudoMaskWriter(ctx.path("pseudo"), data.layout, columns=["frame", "C2AM map", "saliency", "pseudo mask", "ground truth"])

    def combine(batch: AVBatch) -> Tensor:
        a = batch.pseudo_masks  # (B, T, H, W) C2AM map A
        assert a is not None  # the writer's dataset reads the C2AM maps as its pseudo masks
        if saliency is None:
            return torch.stack([a, torch.zeros_like(a), (a > cfg.c2am_threshold).float()], dim=2)
        sal = saliency.predict(batch)
        pseudo = eq6_mask(a, sal, cfg.eq6_floor).float()
        return torch.stack([a, sal, pseudo], dim=2)  # (B, T, 3, H, W)

    # Resumable: frames whose PNGs an interrupted earlier run wrote are kept (see PseudoMaskWriter.run).
    summary = writer.run(combine, train, ctx.device, resume=ctx.resume, with_saliency=saliency is not None)
    summary.update({
        "stage": "pseudo-masks", "refinement": cfg.refinement, "threshold": cfg.c2am_threshold,
        "c2am_checkpoint": str(ctx.path("c2am", "last.safetensors")),
        "saliency_checkpoint": str(ctx.path("saliency", "last.safetensors")) if saliency is not None else None,
    })  # fmt: skip
    writer.write_manifest(summary)
    ctx.summary["pseudo_masks"] = summary
    return summary


def train_segmenter(ctx: StageContext, masks: Path, out_dir: Path, desc: str = "segmenter") -> dict[str, Any]:
    """WS-AVS's final training (M2ICL + the BCE on the pseudo masks in ``masks``) into ``out_dir``; with
    ``select_best`` the checkpoint with the best validation mIoU is kept."""
    cfg: WSAVSConfig = ctx.config
    s = cfg.segmenter_train
    model = WSAVSNet(build_segmenter(cfg), tau=cfg.tau, scale_by_tau=cfg.m2icl_scale_by_tau, m2icl_weight=cfg.m2icl_weight)
    train = make_dataset(cfg.data, "train", augment=True, pseudo_dir=masks, sample_frames=cfg.train_frames, seed=s.seed)
    evaluate = binary_validator(cfg.data, ctx.device, audio=True) if cfg.select_best else None
    return train_stage(model, train, s, out_dir, resume=ctx.resume, desc=desc, evaluate=evaluate, best_key="val_miou" if evaluate else None)


def stage_segmenter(ctx: StageContext) -> dict[str, Any]:
    return train_segmenter(ctx, ctx.path("pseudo", "masks"), ctx.path("segmenter"))


def stages(cfg: WSAVSConfig) -> list[Stage]:
    out = [
        Stage("c2am", stage_c2am, "train C2AM on the training frames", all_ranks=True, outputs=("c2am",)),
        Stage("activation-maps", stage_activation_maps, "C2AM activation maps and initial masks", outputs=("pseudo/maps", "pseudo/initial")),
    ]
    if cfg.refinement == "saliency":
        out.append(Stage("saliency", stage_saliency, "train the saliency detector on the initial masks", all_ranks=True, outputs=("saliency",)))
    out += [
        Stage(
            "pseudo-masks", stage_pseudo_masks, "pseudo masks (Eq. 6), manifest, contact sheet, quality",
            outputs=("pseudo/masks", "pseudo/saliency", "pseudo/manifest.json", "pseudo/contact_sheet.png"),
        ),  # fmt: skip
        Stage("segmenter", stage_segmenter, "train the segmenter on pseudo masks with M2ICL", all_ranks=True, outputs=("segmenter",)),
    ]
    return out


def load_predictor(cfg: WSAVSConfig, run_dir: Path | None, device: torch.device, weights: Path | None = None) -> nn.Module:
    net = WSAVSNet(build_segmenter(without_pretrained_weights(cfg)), tau=cfg.tau, scale_by_tau=cfg.m2icl_scale_by_tau, m2icl_weight=cfg.m2icl_weight,
                   crf_inference=cfg.crf_inference)  # fmt: skip
    load_model_weights(net, final_weights(run_dir, weights))
    return net.to(device).eval()


SPEC = MethodSpec(
    name="ws-avs", config_cls=WSAVSConfig, stages=stages, final_stage="segmenter", load_predictor=load_predictor, output="binary",
    supervision="video labels", description="WS-AVS: M2ICL fusion + C2AM/saliency pseudo-mask refinement (NeurIPS 2023)",
    display="WS-AVS", paper={"s4": (34.13, 51.76), "ms3": (30.85, 46.87)}, tiny=("visual=tiny", "visual_weights=none", "data.audio_frontend=wsavs-logmel", "audio=tiny", "audio_weights=none", "embed_dim=16", "decoder_channels=8", "c2am_visual=tiny", "c2am_weights=none", "c2am_level=2", "saliency_visual=tiny", "saliency_weights=none"),
)  # fmt: skip
