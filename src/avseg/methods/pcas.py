"""PCAS (Li, Huang, Jian, Zhou, ICASSP 2026): weakly supervised audio-visual *semantic* segmentation.

Video-level labels in, per-frame semantic masks of the sounding objects out (binary S4/MS3 masks = the
union of the foreground classes). Stages (each writes named artifacts in the run folder):

1. ``look-listen``: Looking-before-Listening + the contrastive half of Listening-before-Segmentation.
   Visual encoder (timm ViT, or a CNN with an attention-pooling class token) gives per frame v_cls, v_sem
   (mean of patch tokens) and v_th (patch tokens); the AST-style audio encoder reads the clip with temporal
   visual prompts (TVP) and gives a_sem_t. Losses: multi-label BCE of heads on a_sem_t, v_cls_t, v_sem_t
   against the video labels; CMC, CMPC and CMCC (each switchable). Also writes the audio classification
   score on the test split (the paper's Table 3 shape): ``look-listen/audio_classification.json``.
2. ``pseudo-labels``: class activation maps (classifier weights on patch tokens) restricted to the classes
   the audio head says sound in frame t (within the video labels), background / ignore thresholds ->
   class-index PNGs in ``pseudo/labels`` (255 = ignore), a contact sheet and their quality against the
   ground truth of the training frames that have it.
3. ``segment``: the segmentation head trained with CE (ignore index) on the pseudo labels, jointly with
   the look-listen losses by default (ToCo-style weights: patch 0.2, class token 0.5, segmentation 0.1).

Inference: segmentation head -> softmax over C = K + 1 classes, gated by the audio head's per-frame
class probabilities (a class that does not sound in frame t goes to background), optional dense CRF.
Where the paper is silent the choice is ours, documented in docs/pcas.md and exposed in ``PCASConfig``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avseg.audio.frontends import FRONTENDS
from avseg.config import DataConfig, TrainSettings
from avseg.data.avsbench import collate_videos
from avseg.engine import distributed as dist
from avseg.engine.checkpoint import load_model_weights
from avseg.engine.evaluate import evaluate_outputs, iterate_outputs, save_class_png
from avseg.engine.trainer import fit
from avseg.fileio import unwrap_model, write_text_atomic
from avseg.losses.pcas import cmc_loss, cmcc_loss, cmpc_loss
from avseg.losses.segmentation import ce_loss
from avseg.methods.base import MethodSpec, Stage, StageContext
from avseg.methods.common import make_dataset, num_classes_of
from avseg.metrics.binary import BinaryAccumulator
from avseg.metrics.classification import classification_scores
from avseg.metrics.semantic import SemanticAccumulator
from avseg.models.ast import AST_CONFIGS, build_ast, frame_segments
from avseg.models.decoders import PanopticFPNDecoder
from avseg.models.heads import AttentionPool, ProjectionHead
from avseg.models.visual import group_norm
from avseg.models.vit import VIT_CONFIGS, build_vit
from avseg.models.zoo import VISUAL_ENCODERS, VISUAL_WEIGHT_CHOICES
from avseg.pseudo.crf import dense_crf_multi  # re-exported: PCAS inference and its tests use it from here
from avseg.types import AVBatch
from avseg.visualize import colormap, contact_sheet, denormalize, save_image_atomic, semantic_image

log = logging.getLogger("avseg")

IGNORE = 255  # pseudo-label value of uncertain pixels (and the CE ignore index)


def _paper_train(epochs: int = 9) -> TrainSettings:
    # Paper: Adam, 9 epochs (2 of them warm-up), lr 1.2e-3 (the second module: 6e-4 via segment_lr_scale).
    return TrainSettings(epochs=epochs, lr=1.2e-3, batch_size=16, optimizer="adam", schedule="constant")


@dataclass
class PCASConfig:
    """PCAS settings. Defaults follow the paper where it says something (ViT-B, AST, TVP, 0.7 / 0.25 patch
    thresholds, InfoNCE tau 0.5, Adam 1.2e-3 / 6e-4, 9 epochs) and ToCo's defaults for the loss weights;
    the rest is ours (docs/pcas.md)."""

    data: DataConfig
    # --- visual encoder ---
    visual: str = "vit_b16"  # a VIT_CONFIGS name (timm ViT) or a VISUAL_ENCODERS name (CNN + attention pool)
    visual_weights: str = "none"  # ViT: "none" | "file" (visual_weights_path); CNN: its VISUAL_WEIGHT_CHOICES
    visual_weights_path: str | None = None
    visual_input_norm: Literal["imagenet", "half"] = "imagenet"  # ViT: "half" for weights trained on (x - 0.5) / 0.5
    visual_level: int = 3  # CNN: pyramid level whose positions are the patch tokens (2 = stride 16)
    drop_path: float = 0.0
    # --- audio encoder (AST) ---
    audio: str = "ast_base"
    audio_weights_path: str | None = None
    audio_weights_format: Literal["vit", "ast"] = "vit"  # "vit": a timm ViT checkpoint (AST's ImageNet start); "ast": our own
    audio_segment: Literal["centre", "window"] = "centre"  # "centre": frame t's own second of its window; "window": the whole window
    segment_seconds: float = 1.0
    spec_norm: Literal["clip", "none"] = "clip"
    tvp: bool = True  # temporal visual prompts; False = plain AST (the ablation)
    tvp_detach: bool = False  # True: prompts carry no gradient into the visual encoder
    # --- Looking-before-Listening: classification ---
    audio_cls_weight: float = 1.0
    visual_cls_weight: float = 1.0
    visual_sem_weight: float = 1.0
    # --- Listening-before-Segmentation: progressive contrast ---
    embed_dim: int = 256  # shared contrastive space
    cmc: bool = True
    cmc_weight: float = 0.5
    cmc_tau: float = 0.1
    cmpc: bool = True
    cmpc_weight: float = 0.2  # ToCo patch-contrast weight
    cmpc_high: float = 0.7
    cmpc_low: float = 0.25
    cmpc_detach_audio: bool = True  # the audio token is the anchor: only patch tokens move
    cmpc_sounding_only: bool = True  # only frames whose audio head says a labelled class sounds
    cmcc: bool = True
    cmcc_weight: float = 0.5  # ToCo class-token-contrast weight
    cmcc_tau: float = 0.5
    cmcc_crops: int = 4  # local crops per frame
    cmcc_crop_fraction: float = 0.25  # crop side / frame side (ToCo: 96 px crops of 448 px images)
    cmcc_crop_px: int | None = None  # side the crops are resized to before the encoder (None: their own side)
    cmcc_fg_fraction: float = 0.5  # positive: at least this fraction of the crop is confident foreground
    cmcc_bg_fraction: float = 0.9  # negative: at least this fraction of the crop is confident background
    cmcc_batch_negatives: bool = True
    fine_losses_after: int = 0  # optimizer steps before CMPC / CMCC start (their targets need trained CAMs)
    # --- pseudo labels ---
    audio_threshold: float = 0.5  # a class sounds in frame t when sigmoid(audio head) > this
    empty_audio: Literal["background", "top1"] = "background"  # frame where no labelled class sounds: "background" or "top1"
    cam_source: Literal["sem", "cls"] = "sem"  # CAM from the v_sem head ("sem") or the v_cls head ("cls") weights
    cam_high: float = 0.7  # normalised CAM >= high -> that class
    cam_low: float = 0.25  # < low -> background; in between -> ignored (255)
    cam_flip: bool = True  # average the CAM of the frame and its mirror image
    cam_norm: Literal["max", "minmax"] = "max"  # "max": ReLU / max (ToCo); "minmax": (cam - min) / (max - min)
    # --- segmentation ---
    seg_head: Literal["auto", "fpn", "conv"] = "auto"  # "fpn" (CNN pyramid), "conv" (on the patch map), "auto": fpn for CNNs, conv for ViTs
    seg_channels: int = 128
    seg_weight: float = 0.1  # ToCo segmentation weight
    segment_joint: bool = True  # keep training encoders with the look-listen losses; False: only the head
    # The segmentation head hears the audio: "bias" adds log P(class c sounds in frame t) (the audio head,
    # detached) to class c's logits, in training and at inference. The pseudo labels mark a class only where
    # it sounds, and a silent distractor of the same class looks the same: without the audio the target
    # cannot be read from the image and the head learns a blur of both. "none": the image-only head.
    segment_audio: Literal["bias", "none"] = "bias"
    flip_augment: bool = True  # horizontal flips of frames + pseudo labels inside the model (exact for ids)
    # The segment stage's data augmentation (resize to 246/224, random crop, flip; pseudo labels resized with
    # nearest neighbour so class ids are not blended). Off in the session-2 benchmark recipes; see
    # docs/results/pcas/README.md for what it changes.
    segment_crop_augment: bool = False
    # --- inference ---
    audio_gate: Literal["soft", "hard", "none"] = "soft"  # "soft" | "hard" | "none": classes the audio says are silent go to background
    crf: bool = False
    crf_iterations: int = 5
    # --- optimisation ---
    train_frames: int | None = None  # frames sampled per video and step (None = all; the AST then sees only their segments)
    segment_lr_scale: float = 0.5  # Listening-before-Segmentation module lr = 0.5 x 1.2e-3 = 6e-4
    look_listen_train: TrainSettings = field(default_factory=_paper_train)
    segment_train: TrainSettings = field(default_factory=_paper_train)
    select_best: bool = True  # keep the segment checkpoint with the best val mIoU (uses val masks, as WS-AVS)
    audio_report_split: str = "test"  # split of the audio classification report ("" = none)

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(message)

        cnn = self.visual in VISUAL_ENCODERS
        need(self.visual in VIT_CONFIGS or cnn, f"visual {self.visual!r} is not one of {sorted(VIT_CONFIGS) + sorted(VISUAL_ENCODERS)}")
        if cnn:
            need(self.visual_weights in VISUAL_WEIGHT_CHOICES[self.visual], f"visual_weights for {self.visual} must be one of {VISUAL_WEIGHT_CHOICES[self.visual]}")
            need(0 <= self.visual_level <= 3, f"visual_level must be 0..3, got {self.visual_level}")
        else:
            need(self.visual_weights in ("none", "file"), f"visual_weights for a ViT must be 'none' or 'file', got {self.visual_weights!r}")
            need(self.visual_input_norm in ("imagenet", "half"), f"visual_input_norm must be imagenet or half, got {self.visual_input_norm!r}")
            patch = VIT_CONFIGS[self.visual].patch_size
            need(self.data.image_size % patch == 0, f"image_size {self.data.image_size} must be a multiple of the ViT patch size {patch}")
        need((self.visual_weights == "file") == (self.visual_weights_path is not None) or cnn, "visual_weights: file needs visual_weights_path (and the path needs 'file')")
        need(self.audio in AST_CONFIGS, f"audio {self.audio!r} is not one of {sorted(AST_CONFIGS)}")
        need(self.audio_weights_format in ("vit", "ast"), f"audio_weights_format must be vit or ast, got {self.audio_weights_format!r}")
        need(self.audio_segment in ("centre", "window"), f"audio_segment must be centre or window, got {self.audio_segment!r}")
        need(self.data.audio_frontend not in (None, "pkl"), "PCAS computes its clip spectrogram from a wav front-end (data.audio_frontend)")
        need(self.data.audio_window == "centred", "PCAS builds the clip from the centred per-frame windows: set data.audio_window: centred")
        need(self.segment_seconds > 0, f"segment_seconds must be > 0, got {self.segment_seconds}")
        need(self.spec_norm in ("clip", "none"), f"spec_norm must be clip or none, got {self.spec_norm!r}")
        need(0 <= self.cmpc_low < self.cmpc_high <= 1, f"need 0 <= cmpc_low < cmpc_high <= 1, got {self.cmpc_low}, {self.cmpc_high}")
        need(0 <= self.cam_low <= self.cam_high <= 1, f"need 0 <= cam_low <= cam_high <= 1, got {self.cam_low}, {self.cam_high}")
        need(0 < self.audio_threshold < 1, f"audio_threshold must be in (0, 1), got {self.audio_threshold}")
        need(self.empty_audio in ("background", "top1"), f"empty_audio must be background or top1, got {self.empty_audio!r}")
        need(self.cam_norm in ("max", "minmax"), f"cam_norm must be max or minmax, got {self.cam_norm!r}")
        need(self.cam_source in ("sem", "cls"), f"cam_source must be sem or cls, got {self.cam_source!r}")
        need(self.seg_head in ("auto", "fpn", "conv"), f"seg_head must be auto, fpn or conv, got {self.seg_head!r}")
        need(not (self.seg_head == "fpn" and not cnn), "seg_head fpn needs a CNN visual encoder (a ViT has one scale)")
        need(self.audio_gate in ("soft", "hard", "none"), f"audio_gate must be soft, hard or none, got {self.audio_gate!r}")
        need(self.segment_audio in ("bias", "none"), f"segment_audio must be bias or none, got {self.segment_audio!r}")
        need(self.cmcc_crops >= 1 and 0 < self.cmcc_crop_fraction < 1, "cmcc_crops must be >= 1 and cmcc_crop_fraction in (0, 1)")
        need(self.cmcc_crop_px is None or self.cmcc_crop_px >= 8, f"cmcc_crop_px must be >= 8 or None, got {self.cmcc_crop_px}")
        need(self.cmc_tau > 0 and self.cmcc_tau > 0, "temperatures must be > 0")
        need(self.segment_lr_scale > 0, f"segment_lr_scale must be > 0, got {self.segment_lr_scale}")
        need(self.train_frames is None or self.train_frames >= 1, f"train_frames must be >= 1 or None, got {self.train_frames}")
        need(self.fine_losses_after >= 0, f"fine_losses_after must be >= 0, got {self.fine_losses_after}")
        need(self.audio_report_split in ("", "train", "val", "test"), f"audio_report_split must be '', train, val or test, got {self.audio_report_split!r}")
        for name in ("audio_cls_weight", "visual_cls_weight", "visual_sem_weight", "cmc_weight", "cmpc_weight", "cmcc_weight", "seg_weight"):
            need(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def is_vit(self) -> bool:
        return self.visual in VIT_CONFIGS

    def train_settings(self) -> dict[str, TrainSettings]:
        return {"look_listen_train": self.look_listen_train, "segment_train": self.segment_train}


# --- visual side ---------------------------------------------------------------------------------------
class VisualTokens(NamedTuple):
    cls: Tensor  # (N, D) v_cls
    patches: Tensor  # (N, D, h, w) v_th
    pyramid: list[Tensor] | None  # CNN feature pyramid (for the FPN segmentation head), None for ViTs


class ViTVisual(nn.Module):
    """timm ViT: class token and patch tokens."""

    def __init__(self, name: str, weights_path: str | None, input_norm: str, drop_path: float) -> None:
        super().__init__()
        self.encoder = build_vit(name, weights_path=weights_path, input_norm=input_norm, drop_path_rate=drop_path)
        self.embed_dim = self.encoder.embed_dim
        self.patch_size = self.encoder.patch_size

    def forward(self, images: Tensor) -> VisualTokens:
        out = self.encoder(images)
        return VisualTokens(out.cls, out.patches, None)


class CNNVisual(nn.Module):
    """A CNN pyramid; patch tokens = positions of level ``level``, class token = attention pooling over them."""

    def __init__(self, encoder: nn.Module, level: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.level = level
        self.embed_dim = int(encoder.channels[level])
        heads = next(h for h in (8, 4, 2, 1) if self.embed_dim % h == 0)
        self.pool = AttentionPool(self.embed_dim, num_heads=heads)
        self.patch_size = 4 * 2**level

    def forward(self, images: Tensor) -> VisualTokens:
        pyramid = self.encoder(images)
        patches = pyramid[self.level]  # (N, C, h, w)
        return VisualTokens(self.pool(patches), patches, pyramid)


class ConvSegHead(nn.Module):
    """Segmentation head on a patch map: 2 x (conv3x3-GN-ReLU), 1x1 to C logits, bilinear to the frame size."""

    def __init__(self, in_channels: int, channels: int, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1, bias=False), group_norm(channels), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), group_norm(channels), nn.ReLU(inplace=True),
        )  # fmt: skip
        self.predictor = nn.Conv2d(channels, num_classes, 1)

    def forward(self, patches: Tensor, out_size: tuple[int, int]) -> Tensor:
        """patches (N, D, h, w) -> logits (N, C, H, W)."""
        return F.interpolate(self.predictor(self.body(patches)), size=out_size, mode="bilinear", align_corners=False)


class Encoded(NamedTuple):
    """Everything one forward pass computes for the real (valid) frames of a batch, N = their number."""

    v_cls: Tensor  # (N, Dv)
    v_sem: Tensor  # (N, Dv)
    patches: Tensor  # (N, Dv, h, w)
    pyramid: list[Tensor] | None
    a_sem: Tensor  # (N, Da)
    frames: Tensor  # (N, 3, H, W)
    labels: Tensor  # (N, K) the video labels of each frame
    valid: Tensor  # (B*T,) bool, which frames of the batch these are


# --- the model -----------------------------------------------------------------------------------------
LOOK_LISTEN_MODULES = ("visual", "audio", "audio_head", "cls_head", "sem_head")  # lr = settings.lr


class PCASNet(nn.Module):
    """Visual encoder + AST with TVP + classification heads + contrastive projections + segmentation head.

    ``mode`` ("look-listen" or "segment") selects the training objective; ``predict`` is the inference.
    """

    def __init__(self, cfg: PCASConfig, num_classes: int, visual_weights: bool = True) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes  # K foreground classes; the segmentation head predicts K + 1
        self.semantic = cfg.data.layout == "avss"
        self.output = "semantic" if self.semantic else "binary"  # what predict returns on this layout
        self.mode = "look-listen"
        if cfg.is_vit:
            path = cfg.visual_weights_path if visual_weights and cfg.visual_weights == "file" else None
            self.visual: nn.Module = ViTVisual(cfg.visual, path, cfg.visual_input_norm, cfg.drop_path)
        else:
            weights = cfg.visual_weights if visual_weights else "none"
            encoder = VISUAL_ENCODERS[cfg.visual](weights=weights, weights_path=Path(cfg.visual_weights_path) if cfg.visual_weights_path and weights != "none" else None)
            self.visual = CNNVisual(encoder, cfg.visual_level)
        dv = self.visual.embed_dim
        audio_path = cfg.audio_weights_path if visual_weights else None  # checkpoints overwrite them anyway
        self.audio = build_ast(cfg.audio, prompt_dim=dv, weights_path=audio_path, weights_format=cfg.audio_weights_format, spec_norm=cfg.spec_norm, drop_path_rate=cfg.drop_path)
        da = self.audio.embed_dim
        k = num_classes
        self.audio_head = nn.Linear(da, k)
        self.cls_head = nn.Linear(dv, k)
        self.sem_head = nn.Linear(dv, k)  # on v_sem = mean of patches; on each patch it is the CAM
        e = cfg.embed_dim
        # LayerNorm -> Linear (WS-AVS's projection without dropout): the LayerNorm takes away each vector's
        # common offset (ReLU features of a CNN are all positive and nearly parallel).
        self.proj_audio = ProjectionHead(da, e, dropout=0.0)
        self.proj_visual = ProjectionHead(dv, e, dropout=0.0)  # v_sem and every patch token (N, Dv, h, w)
        self.proj_cls = ProjectionHead(dv, e, dropout=0.0)  # v_cls of frames and of local crops
        use_fpn = cfg.seg_head == "fpn" or (cfg.seg_head == "auto" and not cfg.is_vit)
        if use_fpn:
            self.seg_head: nn.Module = PanopticFPNDecoder(tuple(self.visual.encoder.channels), channels=cfg.seg_channels, num_classes=k + 1)
        else:
            self.seg_head = ConvSegHead(dv, cfg.seg_channels, k + 1)
        self.use_fpn = use_fpn
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))  # training steps seen (persisted)
        self.frozen: tuple[str, ...] = ()  # submodules kept frozen and in eval mode (BatchNorm statistics)

    def freeze(self, keep_training: tuple[str, ...]) -> None:
        """Freeze every top-level submodule except ``keep_training`` (e.g. ("seg_head",))."""
        self.frozen = tuple(name for name, _ in self.named_children() if name not in keep_training)
        for name in self.frozen:
            getattr(self, name).requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> "PCASNet":
        super().train(mode)
        for name in self.frozen:
            getattr(self, name).eval()
        return self

    # -- encoding --
    def encode(self, batch: AVBatch, frames: Tensor | None = None) -> Encoded:
        """Run both encoders on the valid frames of ``batch`` (``frames`` replaces ``batch.frames``, e.g. flipped)."""
        if batch.audio is None:
            raise ValueError("PCAS needs audio features: build the dataset with an audio front-end")
        b, t = batch.frames.shape[:2]
        valid = batch.valid.flatten()  # (B*T,)
        x = (batch.frames if frames is None else frames).flatten(0, 1)[valid]  # (N, 3, H, W)
        vis = self.visual(x)
        v_sem = vis.patches.mean(dim=(2, 3))  # (N, Dv)
        prompts = None
        if self.cfg.tvp:
            full = v_sem.new_zeros(b * t, v_sem.shape[1])
            full[valid] = v_sem.detach() if self.cfg.tvp_detach else v_sem
            prompts = full.view(b, t, -1)  # (B, T, Dv): prompt t = frame t's v_sem
        segments = frame_segments(batch.audio, self.cfg.audio_segment, self._window_seconds(), self.cfg.segment_seconds)
        a = self.audio(segments, batch.valid, prompts).sem  # (B, T, Da)
        labels = batch.labels[:, None].expand(b, t, -1).flatten(0, 1)[valid]  # (N, K)
        return Encoded(vis.cls, v_sem, vis.patches, vis.pyramid, a.flatten(0, 1)[valid], x, labels, valid)

    def _window_seconds(self) -> float:
        return FRONTENDS[self.cfg.data.audio_frontend].window_seconds

    def audio_probs(self, enc: Encoded) -> Tensor:
        """(N, K) per-frame probability that each class sounds."""
        return torch.sigmoid(self.audio_head(enc.a_sem))

    def sounding(self, enc: Encoded, probs: Tensor | None = None) -> Tensor:
        """(N, K) bool: classes of the video labels that the audio head says sound in the frame."""
        probs = self.audio_probs(enc).detach() if probs is None else probs
        labelled = enc.labels > 0.5
        on = labelled & (probs > self.cfg.audio_threshold)
        if self.cfg.empty_audio == "top1":
            none = ~on.any(dim=1) & labelled.any(dim=1)
            top = probs.masked_fill(~labelled, -1.0).argmax(dim=1)
            on = on | (F.one_hot(top, probs.shape[1]).bool() & none[:, None])
        return on

    def cams(self, patches: Tensor) -> Tensor:
        """(N, Dv, h, w) patch tokens -> (N, K, h, w) class activation maps: the classifier weights on each
        patch, without the bias (Zhou et al. 2016; the bias only shifts a map and would push every map of a
        rare class below zero)."""
        head = self.sem_head if self.cfg.cam_source == "sem" else self.cls_head
        return torch.einsum("kd,ndhw->nkhw", head.weight, patches)

    def normalise_cams(self, cams: Tensor) -> Tensor:
        """(N, K, h, w) -> [0, 1] per class map: ``cam_norm`` "max" = ReLU then divided by the maximum (ToCo);
        "minmax" = rescaled between its minimum and maximum (every map then has a peak, which suits classes the
        audio says are sounding)."""
        if self.cfg.cam_norm == "minmax":
            flat = cams.flatten(2)
            lo, hi = flat.amin(dim=2)[:, :, None, None], flat.amax(dim=2)[:, :, None, None]
            return (cams - lo) / (hi - lo).clamp_min(1e-5)
        cams = F.relu(cams)
        return cams / cams.flatten(2).amax(dim=2)[:, :, None, None].clamp_min(1e-5)

    def foreground(self, cams: Tensor, sounding: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised CAMs (N, K, h, w) of the sounding classes -> (score (N, h, w) in [0, 1], class id (N, h, w))."""
        masked = cams * sounding[:, :, None, None].to(cams.dtype)
        score, index = masked.max(dim=1)
        return score, index + 1

    # -- training --
    def forward(self, batch: AVBatch) -> dict[str, Tensor]:
        cfg = self.cfg
        if self.training:
            self.steps += 1
        frames, targets = batch.frames, None
        if self.mode == "segment":
            if batch.pseudo_masks is None:
                raise ValueError("the segment stage needs pseudo labels (dataset pseudo_dir)")
            targets = (batch.pseudo_masks * 255.0).round().long()  # class-index PNG read as value / 255
            targets = targets.masked_fill(~(batch.has_pseudo & batch.valid)[:, :, None, None], IGNORE)
        if self.training and cfg.flip_augment:
            flip = torch.rand(frames.shape[0], device=frames.device) < 0.5  # one flip per video
            frames = torch.where(flip[:, None, None, None, None], frames.flip(-1), frames)
            if targets is not None:
                targets = torch.where(flip[:, None, None, None], targets.flip(-1), targets)
        enc = self.encode(batch, frames)
        losses: dict[str, Tensor] = {}
        total = enc.a_sem.new_zeros(())
        train_look_listen = self.mode == "look-listen" or cfg.segment_joint
        if train_look_listen:
            total = total + self._look_listen_losses(enc, losses)
        if self.mode == "segment":
            assert targets is not None
            logits = self.segment_logits(enc)  # (N, C, H, W)
            losses["seg"] = ce_loss(logits, targets.flatten(0, 1)[enc.valid], ignore_index=IGNORE)
            total = total + cfg.seg_weight * losses["seg"]
        losses["loss"] = total
        return losses

    def _look_listen_losses(self, enc: Encoded, losses: dict[str, Tensor]) -> Tensor:
        cfg = self.cfg
        y = enc.labels
        losses["cls_audio"] = F.binary_cross_entropy_with_logits(self.audio_head(enc.a_sem), y)
        losses["cls_visual"] = F.binary_cross_entropy_with_logits(self.cls_head(enc.v_cls), y)
        losses["cls_sem"] = F.binary_cross_entropy_with_logits(self.sem_head(enc.v_sem), y)
        total = cfg.audio_cls_weight * losses["cls_audio"] + cfg.visual_cls_weight * losses["cls_visual"] + cfg.visual_sem_weight * losses["cls_sem"]
        if cfg.cmc and cfg.cmc_weight > 0:
            losses["cmc"] = cmc_loss(self.proj_audio(enc.a_sem), self.proj_visual(enc.v_sem), self.proj_cls(enc.v_cls), y, tau=cfg.cmc_tau)
            total = total + cfg.cmc_weight * losses["cmc"]
        fine = int(self.steps) > cfg.fine_losses_after or not self.training
        need_sounding = (cfg.cmpc and cfg.cmpc_sounding_only) or cfg.cmcc
        sounding = self.sounding(enc) if need_sounding else None
        if cfg.cmpc and cfg.cmpc_weight > 0 and fine:
            patches = self.proj_visual(enc.patches)  # (N, E, h, w)
            audio = self.proj_audio(enc.a_sem.detach() if cfg.cmpc_detach_audio else enc.a_sem)
            frame_mask = sounding.any(dim=1) if cfg.cmpc_sounding_only and sounding is not None else None
            losses["cmpc"] = cmpc_loss(patches, audio, high=cfg.cmpc_high, low=cfg.cmpc_low, frame_mask=frame_mask)
            total = total + cfg.cmpc_weight * losses["cmpc"]
        if cfg.cmcc and cfg.cmcc_weight > 0 and fine:
            assert sounding is not None
            losses["cmcc"] = self._cmcc(enc, sounding)
            total = total + cfg.cmcc_weight * losses["cmcc"]
        return total

    def _cmcc(self, enc: Encoded, sounding: Tensor) -> Tensor:
        """Class-token contrast between each frame's v_cls and the class tokens of random local crops."""
        cfg = self.cfg
        n, _, h, w = enc.frames.shape
        m = cfg.cmcc_crops
        with torch.no_grad():
            score, _ = self.foreground(self.normalise_cams(self.cams(enc.patches)), sounding)
            score = F.interpolate(score[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]  # (N, H, W)
            fg, bg = (score >= cfg.cam_high).float(), (score < cfg.cam_low).float()
        side = max(1, round(cfg.cmcc_crop_fraction * min(h, w)))
        ps = self.visual.patch_size
        crop_px = cfg.cmcc_crop_px or side
        if cfg.is_vit:
            crop_px = max(ps, round(crop_px / ps) * ps)  # ViT input must be whole patches
        ys = torch.randint(0, h - side + 1, (n, m)).tolist()
        xs = torch.randint(0, w - side + 1, (n, m)).tolist()
        crops, fg_frac, bg_frac = [], [], []
        for i in range(n):
            for j in range(m):
                y0, x0 = ys[i][j], xs[i][j]
                crops.append(enc.frames[i, :, y0 : y0 + side, x0 : x0 + side])
                fg_frac.append(fg[i, y0 : y0 + side, x0 : x0 + side].mean())
                bg_frac.append(bg[i, y0 : y0 + side, x0 : x0 + side].mean())
        crop_batch = torch.stack(crops)  # (N*M, 3, side, side)
        if crop_px != side:
            crop_batch = F.interpolate(crop_batch, size=(crop_px, crop_px), mode="bilinear", align_corners=False)
        crop_cls = self.proj_cls(self.visual(crop_batch).cls).view(n, m, -1)  # (N, M, E)
        positive = (torch.stack(fg_frac) >= cfg.cmcc_fg_fraction).view(n, m)
        negative = (torch.stack(bg_frac) >= cfg.cmcc_bg_fraction).view(n, m)
        return cmcc_loss(self.proj_cls(enc.v_cls), crop_cls, positive, negative, tau=cfg.cmcc_tau, batch_negatives=cfg.cmcc_batch_negatives)

    def segment_logits(self, enc: Encoded) -> Tensor:
        """(N, K + 1, H, W) segmentation logits of the valid frames."""
        size = tuple(enc.frames.shape[-2:])
        if self.use_fpn:
            assert enc.pyramid is not None
            logits = self.seg_head(enc.pyramid, out_size=size)
        else:
            logits = self.seg_head(enc.patches, out_size=size)
        if self.cfg.segment_audio == "bias":
            # class c's logit + log P(c sounds): a class the audio says is silent cannot win a pixel
            log_p = torch.log(self.audio_probs(enc).detach().clamp_min(1e-4)).to(logits.dtype)  # (N, K)
            logits = torch.cat([logits[:, :1], logits[:, 1:] + log_p[:, :, None, None]], dim=1)
        return logits

    # -- pseudo labels --
    @torch.no_grad()
    def pseudo_labels(self, batch: AVBatch) -> Tensor:
        """(B, T, 2, H, W): [label ids (0 = background, 1..K classes, 255 = ignore), foreground score in [0, 1]].

        CAMs of the classes that sound in frame t (audio head, within the video labels), optionally
        averaged with the CAMs of the mirrored frame; padding frames are background with score 0.
        """
        cfg = self.cfg
        b, t, _, h, w = batch.frames.shape
        enc = self.encode(batch)
        cams = self.normalise_cams(self.cams(enc.patches))
        if cfg.cam_flip:
            flipped = self.encode(batch, batch.frames.flip(-1))
            cams = 0.5 * (cams + self.normalise_cams(self.cams(flipped.patches)).flip(-1))
        cams = F.interpolate(cams, size=(h, w), mode="bilinear", align_corners=False)
        score, ids = self.foreground(cams, self.sounding(enc))
        label = torch.where(score >= cfg.cam_high, ids, torch.where(score < cfg.cam_low, torch.zeros_like(ids), torch.full_like(ids, IGNORE)))
        out = score.new_zeros(b * t, 2, h, w)
        out[enc.valid, 0] = label.float()
        out[enc.valid, 1] = score
        return out.view(b, t, 2, h, w)

    # -- inference --
    @torch.no_grad()
    def class_probs(self, batch: AVBatch) -> Tensor:
        """(B, T, K + 1, H, W) class probabilities of every frame (padding: background), audio-gated."""
        b, t, _, h, w = batch.frames.shape
        enc = self.encode(batch)
        probs = self.segment_logits(enc).softmax(dim=1)  # (N, C, H, W)
        if self.cfg.audio_gate != "none":
            gate = self.audio_probs(enc)  # (N, K)
            if self.cfg.audio_gate == "hard":
                gate = (gate > self.cfg.audio_threshold).to(probs.dtype)
            fg = probs[:, 1:] * gate[:, :, None, None]
            bg = probs[:, :1] + (probs[:, 1:] - fg).sum(dim=1, keepdim=True)  # silent classes -> background
            probs = torch.cat([bg, fg], dim=1)
        if self.cfg.crf:
            probs = _crf_batch(enc.frames, probs, self.cfg.crf_iterations)
        out = probs.new_zeros(b * t, probs.shape[1], h, w)
        out[:, 0] = 1.0
        out[enc.valid] = probs
        return out.view(b, t, -1, h, w)

    @torch.no_grad()
    def predict(self, batch: AVBatch) -> Tensor:
        """AVSS: (B, T, K + 1, H, W) class scores; S4 / MS3: (B, T, H, W) foreground probability = the sum of
        the foreground classes' probabilities (not 1 - P(background), which rounding can push below 0)."""
        probs = self.class_probs(batch)
        return probs if self.semantic else probs[:, :, 1:].sum(dim=2).clamp_(0.0, 1.0)


def _crf_batch(frames: Tensor, probs: Tensor, iterations: int) -> Tensor:
    out = [torch.from_numpy(dense_crf_multi(denormalize(f.cpu().numpy()), p.cpu().numpy(), iterations=iterations)) for f, p in zip(frames, probs)]
    return torch.stack(out).to(probs)


# --- helpers for the stages ----------------------------------------------------------------------------
def num_classes(cfg: PCASConfig) -> int:
    """K: foreground classes of the label vocabulary (the run's record of it, else the data's)."""
    return num_classes_of(cfg.data)


def param_groups(cfg: PCASConfig):
    """Two optimizer groups, the paper's two modules: Looking-before-Listening (encoders, TVP, classification
    heads) at ``settings.lr`` and Listening-before-Segmentation (projections, segmentation head) at
    ``settings.lr * segment_lr_scale``. Frozen parameters are left out; empty groups are dropped."""

    def groups(model: nn.Module) -> list[dict]:
        look, seg = [], []
        for name, p in unwrap_model(model).named_parameters():
            if p.requires_grad:
                (look if name.split(".")[0] in LOOK_LISTEN_MODULES else seg).append(p)
        out = []
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
        inner = unwrap_model(model)
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


def _load(cfg: PCASConfig, path: Path, device: torch.device) -> PCASNet:
    model = PCASNet(cfg, num_classes(cfg), visual_weights=False)
    load_model_weights(model, path)
    return model.to(device).eval()


# --- stages --------------------------------------------------------------------------------------------
def stage_look_listen(ctx: StageContext) -> dict[str, Any]:
    cfg: PCASConfig = ctx.config
    s = cfg.look_listen_train
    model = PCASNet(cfg, num_classes(cfg))
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
    model = PCASNet(cfg, num_classes(cfg), visual_weights=False)
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


def final_checkpoint(run_dir: Path) -> Path:
    best = run_dir / "segment" / "best.safetensors"
    return best if best.is_file() else run_dir / "segment" / "last.safetensors"


def load_predictor(cfg: PCASConfig, run_dir: Path, device: torch.device) -> nn.Module:
    model = _load(cfg, final_checkpoint(Path(run_dir)), device)
    model.mode = "segment"
    return model


SPEC = MethodSpec(
    name="pcas", config_cls=PCASConfig, stages=stages, final_stage="segment", load_predictor=load_predictor, output="semantic",
    supervision="video labels", description="PCAS: looking-before-listening (TVP) + progressive contrast (CMC/CMPC/CMCC) + CAM pseudo labels (ICASSP 2026)",
    display="PCAS",
    tiny=("visual=vit_cpu", "visual_weights=none", "audio=ast_cpu", "embed_dim=16", "seg_channels=16", "cmcc_crops=2"),
)  # fmt: skip
