"""CAM reference (Zhou et al., CVPR 2016): an image classifier on the video labels; no audio.

Model: visual encoder -> ``ClassifierHead`` (1x1 conv) on one pyramid level; class scores are the
spatial mean of its map (GAP -> linear), trained with multi-label BCE against the video-level labels
(every frame of a video gets the video's labels).

Inference (documented binarisation rule):
1. class scores ``sigmoid(logits)``; the frame's classes are those scoring > 0.5, or the top-1 class when
   none does (``cam_class: predicted``, default), or the video's labelled classes
   (``cam_class: labelled``: an oracle that reads the test labels, for analysis only);
2. CAM of each selected class upsampled (bilinear) to the frame and min-max normalised per frame; the
   map of the frame is the pixel-wise max over its selected classes: the heat map, in [0, 1];
3. mask = heat map > ``threshold`` (default 0.5). ``predict`` returns the heat map remapped monotonically
   so that ``threshold`` lands on 0.5 (:func:`calibrate`): the metrics' 0.5 threshold gives exactly this
   mask, and their F-score sweep still sees the whole map.
   ``threshold_from: val``: the threshold is the grid value that scores best on the validation split (the
   ``threshold`` stage, ``common.threshold_stage``; docs/reference-methods.md).

The helpers :func:`minmax_normalize` and :func:`calibrate` are shared by the other heat-map methods.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avseg.config import DataConfig, TrainSettings
from avseg.engine.checkpoint import load_model_weights
from avseg.methods.base import MethodSpec, Stage, StageContext, final_weights
from avseg.methods.common import binary_validator, check_threshold_source, chosen_threshold, make_dataset, num_classes_of, threshold_stage, train_stage
from avseg.models.heads import ClassifierHead
from avseg.models.visual import encoder_channels
from avseg.models.zoo import VISUAL_ENCODERS
from avseg.types import AVBatch


# --- heat-map helpers shared by the reference methods -----------------------------------------------
def minmax_normalize(maps: Tensor) -> Tensor:
    """(N, H, W) -> (N, H, W) in [0, 1], min-max per map (a constant map becomes all zeros)."""
    flat = maps.flatten(1)
    lo = flat.min(1).values[:, None, None]
    hi = flat.max(1).values[:, None, None]
    return (maps - lo) / (hi - lo).clamp_min(1e-6)


def calibrate(maps: Tensor, threshold: float) -> Tensor:
    """Monotone piecewise-linear remap of [0, 1] maps that sends ``threshold`` to 0.5.

    ``calibrate(m, t) > 0.5`` exactly where ``m > t``, so a binary metric thresholding at 0.5 scores the
    mask of the documented rule "map > t", while threshold sweeps (F-score) keep the map's order.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    if threshold == 0.5:
        return maps.clamp(0.0, 1.0)
    low = maps / (2.0 * threshold)
    high = 0.5 + (maps - threshold) / (2.0 * (1.0 - threshold))
    return torch.where(maps <= threshold, low, high).clamp(0.0, 1.0)


def upsample_maps(maps: Tensor, size: tuple[int, ...]) -> Tensor:
    """(N, h, w) -> (N, H, W) bilinear."""
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def check_threshold(name: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {value}")


# --- config -------------------------------------------------------------------------------------------
@dataclass
class CAMConfig:
    """CAM settings. Defaults: ResNet-50 (ImageNet), last stage, Adam 1e-4, 20 epochs (ours; see docs)."""

    data: DataConfig
    visual: str = "resnet50"
    visual_weights: str = "imagenet"
    level: int = 3  # pyramid level of the classifier (3 = stride 32)
    train_frames: int | None = None  # frames per video and step; None = all (image only: every frame has the label)
    threshold: float = 0.5  # mask = normalised CAM > threshold
    threshold_from: Literal["config", "val"] = "config"  # "config": ``threshold``; "val": the threshold stage's choice on validation
    cam_class: Literal["predicted", "labelled"] = "predicted"  # "predicted" (scores > 0.5, else top-1) | "labelled" (oracle: test labels)
    train: TrainSettings = field(default_factory=lambda: TrainSettings(epochs=20, lr=1e-4, batch_size=16, optimizer="adam", schedule="constant"))
    select_best: bool = True  # keep the checkpoint with the best validation mIoU (as ws-avs does)

    def __post_init__(self) -> None:
        if self.visual not in VISUAL_ENCODERS:
            raise ValueError(f"visual {self.visual!r} is not one of {sorted(VISUAL_ENCODERS)}")
        if not 0 <= self.level <= 3:
            raise ValueError(f"level must be 0..3, got {self.level}")
        if self.cam_class not in ("predicted", "labelled"):
            raise ValueError(f"cam_class must be 'predicted' or 'labelled', got {self.cam_class!r}")
        check_threshold("threshold", self.threshold)
        check_threshold_source(self.threshold_from)

    def train_settings(self) -> dict[str, TrainSettings]:
        return {"train": self.train}


# --- model --------------------------------------------------------------------------------------------
class CAMNet(nn.Module):
    """Visual encoder + 1x1 classifier on one level; ``forward`` = BCE on video labels.

    Args:
        encoder: visual encoder (4-level pyramid, attribute ``channels``).
        num_classes: K of the video-level label vector.
        level: pyramid level the classifier reads.
        threshold: the binarisation threshold of the normalised CAM.
        cam_class: "predicted" or "labelled" (see the module docstring).
    """

    output = "binary"

    def __init__(self, encoder: nn.Module, num_classes: int, level: int = 3, threshold: float = 0.5, cam_class: str = "predicted") -> None:
        super().__init__()
        self.encoder = encoder
        self.level = level
        self.classifier = ClassifierHead(encoder_channels(encoder)[level], num_classes)
        self.threshold = threshold
        self.cam_class = cam_class

    def forward(self, batch: AVBatch) -> dict[str, Tensor]:
        b, t = batch.frames.shape[:2]
        keep = batch.valid.flatten()
        features = self.encoder(batch.frames.flatten(0, 1)[keep])[self.level]
        logits = self.classifier(features)  # (N, K)
        labels = batch.labels[:, None].expand(b, t, -1).flatten(0, 1)[keep]  # (N, K): the video's labels
        loss = F.binary_cross_entropy_with_logits(logits, labels)
        return {"loss": loss}

    def selected_classes(self, logits: Tensor, labels: Tensor) -> Tensor:
        """logits (N, K), labels (N, K) -> (N, K) bool: the classes whose CAM forms the frame's map."""
        if self.cam_class == "labelled":
            chosen = labels > 0.5
        else:
            chosen = torch.sigmoid(logits) > 0.5
        top = F.one_hot(logits.argmax(1), logits.shape[1]).bool()
        return torch.where(chosen.any(1, keepdim=True), chosen, top)  # never empty

    @torch.no_grad()
    def heatmap(self, batch: AVBatch) -> Tensor:
        """(B, T, H, W) in [0, 1]: max over the selected classes of their min-max normalised CAMs."""
        b, t = batch.frames.shape[:2]
        size = batch.frames.shape[-2:]
        features = self.encoder(batch.frames.flatten(0, 1))[self.level]
        cams = self.classifier.cam(features)  # (N, K, h, w)
        logits = cams.mean(dim=(2, 3))  # (N, K): the classifier's scores (the conv is linear)
        labels = batch.labels[:, None].expand(b, t, -1).flatten(0, 1)
        chosen = self.selected_classes(logits, labels)  # (N, K)
        n, k = chosen.shape
        maps = minmax_normalize(upsample_maps(cams.flatten(0, 1), size)).view(n, k, *size)
        maps = maps.masked_fill(~chosen[:, :, None, None], 0.0).amax(1)  # (N, H, W)
        return maps.view(b, t, *size)

    @torch.no_grad()
    def predict(self, batch: AVBatch) -> Tensor:
        """(B, T, H, W): the heat map calibrated so that > 0.5 is the mask (heat map > threshold)."""
        return calibrate(self.heatmap(batch), self.threshold)


def build_net(cfg: CAMConfig, weights: str | None = None) -> CAMNet:
    encoder = VISUAL_ENCODERS[cfg.visual](weights=cfg.visual_weights if weights is None else weights)
    return CAMNet(encoder, num_classes_of(cfg.data), level=cfg.level, threshold=cfg.threshold, cam_class=cfg.cam_class)


def stage_train(ctx: StageContext) -> dict[str, Any]:
    cfg: CAMConfig = ctx.config
    s = cfg.train
    model = build_net(cfg)
    train = make_dataset(cfg.data, "train", augment=True, audio=False, sample_frames=cfg.train_frames, seed=s.seed)
    evaluate = binary_validator(cfg.data, ctx.device, audio=False) if cfg.select_best else None
    summary = train_stage(model, train, s, ctx.path("classifier"), resume=ctx.resume, desc="cam", evaluate=evaluate, best_key="val_miou" if evaluate else None)
    summary["classes"] = model.classifier.conv.out_channels
    return summary


def load_predictor(cfg: CAMConfig, run_dir: Path | None, device: torch.device, weights: Path | None = None) -> nn.Module:
    net = build_net(cfg, weights="none")
    net.threshold = chosen_threshold(cfg.threshold_from, cfg.threshold, run_dir)
    load_model_weights(net, final_weights(run_dir, weights, "classifier"))
    return net.to(device).eval()


SPEC = MethodSpec(
    name="cam", config_cls=CAMConfig,
    stages=lambda cfg: [Stage("classifier", stage_train, "train the image classifier on video labels", all_ranks=True, outputs=("classifier",))]
    + ([threshold_stage(load_predictor, audio=False, after="classifier")] if cfg.threshold_from == "val" else []),
    final_stage="classifier", load_predictor=load_predictor, output="binary", supervision="video labels, image only",
    description="CAM (Zhou et al. 2016): image classifier on video labels, CAM > 0.5 -> mask; no audio",
    display="CAM", paper={"s4": (19.26, 27.88), "ms3": (12.65, 19.83)},
    tiny=("visual=tiny", "visual_weights=none", "level=2"),
)  # fmt: skip
