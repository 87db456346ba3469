"""Losses: contrastive (M2ICL / MIL, supervised contrast, InfoNCE), C2AM, segmentation."""

from avseg.losses.c2am import border_foreground_fraction, c2am_losses, foreground_background_features
from avseg.losses.contrastive import (
    info_nce,
    m2icl_loss,
    mil_logits,
    mil_similarity_map,
    supervised_contrastive,
)
from avseg.losses.segmentation import bce_loss, ce_loss, iou_loss

__all__ = [
    "bce_loss",
    "border_foreground_fraction",
    "c2am_losses",
    "ce_loss",
    "foreground_background_features",
    "info_nce",
    "iou_loss",
    "m2icl_loss",
    "mil_logits",
    "mil_similarity_map",
    "supervised_contrastive",
]
