"""PCAS's configuration: every paper setting and every choice of ours where the paper is silent (docs/pcas.md)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

from avseg.config import DataConfig, TrainSettings
from avseg.models.ast import AST_CONFIGS
from avseg.models.vit import VIT_CONFIGS
from avseg.models.zoo import VISUAL_ENCODERS, VISUAL_WEIGHT_CHOICES

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
