"""AVS (ws) reference: the AVS segmenter (encoders + TPAVI fusion + Panoptic-FPN decoder) with the mask
supervision removed.

The WS-AVS paper does not say what replaces the masks; ours is a multiple-instance objective: the decoder
outputs one mask-logit map per class (K = the video-label vocabulary), each map is pooled into a class
score (``pool``: top-k mean of the highest ``topk_fraction`` of pixels by default, or max, or
log-sum-exp), and the scores are trained with multi-label BCE against the video-level labels.

Binarisation (documented): class probabilities ``sigmoid(score)``; the frame's classes are those > 0.5,
or the top-1 class when none is; the output is the pixel-wise max over those classes of
``sigmoid(mask logit)``, a probability map the metrics threshold at 0.5. With the official MS3 labels
(one class, ``sounding``, positive in every video) the objective has no negatives and cannot localise:
this method needs the class vocabulary of S4 or of our synthetic MS3.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avseg.config import DataConfig, TrainSettings
from avseg.engine.checkpoint import load_model_weights
from avseg.losses.contrastive import m2icl_per_second
from avseg.methods.base import MethodSpec, Stage, StageContext, final_weights
from avseg.methods.common import binary_validator, heard_videos, make_dataset, num_classes_of, real_inputs, scatter_rows, train_stage
from avseg.models.segmenter import AVSegmenter
from avseg.models.zoo import AUDIO_ENCODERS, VISUAL_ENCODERS, check_audio_frontend
from avseg.types import AVBatch

POOLS = ("topk", "max", "lse")


@dataclass
class AVSWeakConfig:
    """AVS (ws) settings: the WS-AVS segmenter's defaults (R50 x2, 224 px, Adam 1e-4, batch 64, 20 epochs)."""

    data: DataConfig
    visual: str = "resnet50"
    visual_weights: str = "imagenet"
    audio: str = "resnet50"
    audio_weights: str = "imagenet"
    embed_dim: int = 512
    visual_dropout: float = 0.9
    audio_norm: Literal["batch", "none"] = "batch"  # BatchNorm1d on the audio encoder output (keeps clips apart; "none": off)
    fusion_stages: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    decoder_channels: int = 128
    pool: Literal["topk", "max", "lse"] = "topk"  # class score from its mask logits: "topk" mean, "max" or "lse"
    topk_fraction: float = 0.1  # fraction of pixels averaged by "topk"
    lse_r: float = 5.0  # sharpness of "lse"
    m2icl_weight: float = 0.0  # AVS has no contrastive term; > 0 adds M2ICL on the projected tokens
    tau: float = 0.03
    train_frames: int | None = 1
    train: TrainSettings = field(default_factory=lambda: TrainSettings(epochs=20, lr=1e-4, batch_size=64, optimizer="adam", schedule="constant"))
    select_best: bool = True  # keep the checkpoint with the best validation mIoU (as ws-avs does)

    def __post_init__(self) -> None:
        for name, table in (("visual", VISUAL_ENCODERS), ("audio", AUDIO_ENCODERS)):
            if getattr(self, name) not in table:
                raise ValueError(f"{name} {getattr(self, name)!r} is not one of {sorted(table)}")
        check_audio_frontend("audio", self.audio, self.data.audio_frontend)
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {self.pool!r}")
        if not 0.0 < self.topk_fraction <= 1.0:
            raise ValueError(f"topk_fraction must be in (0, 1], got {self.topk_fraction}")
        if self.lse_r <= 0:
            raise ValueError(f"lse_r must be > 0, got {self.lse_r}")

    def train_settings(self) -> dict[str, TrainSettings]:
        return {"train": self.train}


def pool_scores(logits: Tensor, pool: str, topk_fraction: float = 0.1, lse_r: float = 5.0) -> Tensor:
    """Per-class mask logits (N, K, H, W) -> class scores (N, K) (a logit)."""
    flat = logits.flatten(2)  # (N, K, HW)
    if pool == "max":
        return flat.amax(-1)
    if pool == "topk":
        k = max(1, math.ceil(topk_fraction * flat.shape[-1]))
        return flat.topk(k, dim=-1).values.mean(-1)
    if pool == "lse":
        return (torch.logsumexp(lse_r * flat, dim=-1) - math.log(flat.shape[-1])) / lse_r
    raise ValueError(f"unknown pool {pool!r}")


class AVSWeakNet(nn.Module):
    """AVSegmenter with K class maps trained by multiple-instance BCE on video labels."""

    output = "binary"

    def __init__(self, segmenter: AVSegmenter, pool: str = "topk", topk_fraction: float = 0.1, lse_r: float = 5.0, m2icl_weight: float = 0.0, tau: float = 0.03) -> None:
        super().__init__()
        self.segmenter = segmenter
        self.pool = pool
        self.topk_fraction = topk_fraction
        self.lse_r = lse_r
        self.m2icl_weight = m2icl_weight
        self.tau = tau

    def _run(self, batch: AVBatch):
        return self.segmenter(batch.frames.flatten(0, 1), batch.audio.flatten(0, 1) if batch.audio is not None else None)

    def forward(self, batch: AVBatch) -> dict[str, Tensor]:
        b, t = batch.frames.shape[:2]
        frames, audio, rows = real_inputs(batch)  # AVSS padding never goes through the network
        out = self.segmenter(frames, audio)
        scores = pool_scores(out.logits, self.pool, self.topk_fraction, self.lse_r)  # (N, K), real frames
        labels = batch.labels[:, None].expand(b, t, -1).flatten(0, 1)
        labels = labels if rows is None else labels[rows]
        losses = {"bce": F.binary_cross_entropy_with_logits(scores, labels)}
        total = losses["bce"]
        if self.m2icl_weight > 0 and out.visual_embeds:
            visual = [scatter_rows(v, rows) for v in out.visual_embeds]
            losses["m2icl"] = m2icl_per_second(scatter_rows(out.audio_embed, rows), visual, b, t, tau=self.tau, heard=heard_videos(batch), valid=batch.valid)
            total = total + self.m2icl_weight * losses["m2icl"]
        losses["loss"] = total
        return losses

    @torch.no_grad()
    def predict(self, batch: AVBatch) -> Tensor:
        """(B, T, H, W): max over the frame's predicted classes of sigmoid(class mask logits)."""
        b, t = batch.frames.shape[:2]
        logits = self._run(batch).logits  # (N, K, H, W)
        scores = pool_scores(logits, self.pool, self.topk_fraction, self.lse_r)
        chosen = torch.sigmoid(scores) > 0.5
        top = F.one_hot(scores.argmax(1), scores.shape[1]).bool()
        chosen = torch.where(chosen.any(1, keepdim=True), chosen, top)  # (N, K), never empty
        probs = torch.sigmoid(logits).masked_fill(~chosen[:, :, None, None], 0.0).amax(1)  # (N, H, W)
        return probs.view(b, t, *batch.frames.shape[-2:])


def build_net(cfg: AVSWeakConfig, pretrained: bool = True) -> AVSWeakNet:
    visual = VISUAL_ENCODERS[cfg.visual](weights=cfg.visual_weights if pretrained else "none")
    audio = AUDIO_ENCODERS[cfg.audio](weights=cfg.audio_weights if pretrained else "none")
    segmenter = AVSegmenter(
        visual, audio, fusion_stages=tuple(cfg.fusion_stages), embed_dim=cfg.embed_dim, visual_dropout=cfg.visual_dropout,
        decoder_channels=cfg.decoder_channels, num_classes=num_classes_of(cfg.data), audio_norm=cfg.audio_norm,
    )  # fmt: skip
    return AVSWeakNet(segmenter, pool=cfg.pool, topk_fraction=cfg.topk_fraction, lse_r=cfg.lse_r, m2icl_weight=cfg.m2icl_weight, tau=cfg.tau)


def stage_train(ctx: StageContext) -> dict[str, Any]:
    cfg: AVSWeakConfig = ctx.config
    s = cfg.train
    model = build_net(cfg)
    train = make_dataset(cfg.data, "train", augment=True, sample_frames=cfg.train_frames, seed=s.seed)
    evaluate = binary_validator(cfg.data, ctx.device, audio=True) if cfg.select_best else None
    return train_stage(
        model, train, s, ctx.path("segmenter"), resume=ctx.resume, desc="avs-ws", evaluate=evaluate,
        best_key="val_miou" if evaluate else None, find_unused_parameters=cfg.m2icl_weight == 0,  # projections unused
    )  # fmt: skip


def load_predictor(cfg: AVSWeakConfig, run_dir: Path | None, device: torch.device, weights: Path | None = None) -> nn.Module:
    net = build_net(cfg, pretrained=False)
    load_model_weights(net, final_weights(run_dir, weights))
    return net.to(device).eval()


SPEC = MethodSpec(
    name="avs-ws", config_cls=AVSWeakConfig,
    stages=lambda cfg: [Stage("segmenter", stage_train, "train the AVS segmenter with multiple-instance BCE on video labels", all_ranks=True, outputs=("segmenter",))],
    final_stage="segmenter", load_predictor=load_predictor, output="binary", supervision="video labels",
    description="AVS (ws): AVS segmenter, masks replaced by MIL BCE on class scores pooled from class mask logits",
    display="AVS (ws)", paper={"s4": (12.63, 24.99), "ms3": (8.76, 15.72)},
    tiny=("visual=tiny", "visual_weights=none", "audio=tiny", "audio_weights=none", "embed_dim=16", "decoder_channels=8"),
)  # fmt: skip
