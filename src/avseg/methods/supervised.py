"""Fully supervised reference: the WS-AVS segmenter trained on ground-truth masks (BCE + IoU loss).

It reports how much of the supervised result the weak methods reach on the same data. Only frames with
ground truth contribute to the loss (S4 train: frame 1 of each video).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from avseg.config import DataConfig, TrainSettings
from avseg.engine.checkpoint import load_model_weights
from avseg.methods.base import MethodSpec, Stage, StageContext, final_weights
from avseg.methods.common import binary_validator, make_dataset, train_stage, without_pretrained_weights
from avseg.methods.ws_avs import WSAVSNet, build_segmenter
from avseg.models.zoo import AUDIO_ENCODERS, VISUAL_ENCODERS, check_audio_frontend


@dataclass
class SupervisedConfig:
    data: DataConfig
    visual: str = "resnet50"
    visual_weights: str = "imagenet"
    audio: str = "resnet50"
    audio_weights: str = "imagenet"
    embed_dim: int = 512
    visual_dropout: float = 0.9
    audio_norm: Literal["batch", "none"] = "batch"  # BatchNorm1d on the audio encoder output (keeps clips apart; "none": off)
    tau: float = 0.03
    m2icl_scale_by_tau: bool = True
    m2icl_weight: float = 0.0  # plain BCE + IoU; set > 0 to add the M2ICL term
    fusion_stages: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    decoder_channels: int = 128
    # "all": every frame of a training video goes through the model, those without a mask only for BatchNorm
    # statistics (S4 train: 1 mask in 5 frames); "masked": only the frames with a mask (5x fewer images per
    # step on S4, the same loss: the segmenter sees each frame on its own). MS3 train has a mask on every frame.
    train_frames: Literal["all", "masked"] = "all"
    train: TrainSettings = field(default_factory=lambda: TrainSettings(epochs=20, lr=1e-4, batch_size=16, optimizer="adam", schedule="constant"))
    select_best: bool = True
    crf_inference: bool = False  # dense CRF on the predictions (inference only, ``ws_avs.crf_foreground``)

    def __post_init__(self) -> None:
        for name, table in (("visual", VISUAL_ENCODERS), ("audio", AUDIO_ENCODERS)):
            if getattr(self, name) not in table:
                raise ValueError(f"{name} {getattr(self, name)!r} is not one of {sorted(table)}")
        check_audio_frontend("audio", self.audio, self.data.audio_frontend)

    def train_settings(self) -> dict[str, TrainSettings]:
        return {"train": self.train}


def stage_train(ctx: StageContext) -> dict[str, Any]:
    cfg: SupervisedConfig = ctx.config
    s = cfg.train
    model = WSAVSNet(build_segmenter(cfg), tau=cfg.tau, scale_by_tau=cfg.m2icl_scale_by_tau, m2icl_weight=cfg.m2icl_weight, mask_source="gt")
    # S4 train videos have ground truth on frame 1 only (train_frames: masked keeps just that one).
    train = make_dataset(cfg.data, "train", augment=True, seed=s.seed, masked_frames=cfg.train_frames == "masked")
    evaluate = binary_validator(cfg.data, ctx.device, audio=True) if cfg.select_best else None
    return train_stage(model, train, s, ctx.path("segmenter"), resume=ctx.resume, desc="supervised", evaluate=evaluate, best_key="val_miou" if evaluate else None)


def load_predictor(cfg: SupervisedConfig, run_dir: Path | None, device: torch.device, weights: Path | None = None) -> nn.Module:
    net = WSAVSNet(build_segmenter(without_pretrained_weights(cfg)), tau=cfg.tau, scale_by_tau=cfg.m2icl_scale_by_tau, m2icl_weight=cfg.m2icl_weight, mask_source="gt",
                   crf_inference=cfg.crf_inference)  # fmt: skip
    load_model_weights(net, final_weights(run_dir, weights))
    return net.to(device).eval()


SPEC = MethodSpec(
    name="supervised", config_cls=SupervisedConfig, stages=lambda cfg: [Stage("segmenter", stage_train, "train on ground-truth masks", all_ranks=True, outputs=("segmenter",))],
    final_stage="segmenter", load_predictor=load_predictor, output="binary", supervision="ground-truth masks",
    description="fully supervised reference: the WS-AVS segmenter trained on GT masks (BCE + IoU)",
    display="supervised (GT)", tiny=("visual=tiny", "visual_weights=none", "audio=tiny", "audio_weights=none", "embed_dim=16", "decoder_channels=8"),
)  # fmt: skip
