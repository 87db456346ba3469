"""Encoders, fusion, decoders and heads; the name -> builder registries live in :mod:`avseg.models.zoo`."""

from avseg.models.audio import AisfxEncoder, ResNetAudioEncoder, TinyAudioEncoder
from avseg.models.decoders import PanopticFPNDecoder
from avseg.models.fusion import AVFusion, IdentityFusion
from avseg.models.heads import AttentionPool, C2AMHead, ClassifierHead, ProjectionHead
from avseg.models.visual import EfficientNetLiteEncoder, ResNetEncoder, TinyVisualEncoder
from avseg.models.zoo import (
    AUDIO_ENCODERS,
    AUDIO_WEIGHT_CHOICES,
    DECODERS,
    FUSIONS,
    VISUAL_ENCODERS,
    VISUAL_WEIGHT_CHOICES,
    count_parameters,
)
from avseg.weights import UnsafeCheckpointError, WeightsNotFoundError

__all__ = [
    "AUDIO_ENCODERS",
    "AUDIO_WEIGHT_CHOICES",
    "DECODERS",
    "FUSIONS",
    "VISUAL_ENCODERS",
    "VISUAL_WEIGHT_CHOICES",
    "AVFusion",
    "AisfxEncoder",
    "AttentionPool",
    "C2AMHead",
    "ClassifierHead",
    "EfficientNetLiteEncoder",
    "IdentityFusion",
    "PanopticFPNDecoder",
    "ProjectionHead",
    "ResNetAudioEncoder",
    "ResNetEncoder",
    "TinyAudioEncoder",
    "TinyVisualEncoder",
    "UnsafeCheckpointError",
    "WeightsNotFoundError",
    "count_parameters",
]
