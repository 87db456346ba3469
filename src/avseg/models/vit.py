"""Vision transformers (timm architecture) giving a class token and a map of patch tokens per frame.

The architecture is built with timm and never downloads anything: weights come from a local file only
when a path is given (``load_vit_weights``), otherwise the model starts from random initialisation.
Sizes are plain builder arguments collected in one dict, ``VIT_CONFIGS``:

- ``vit_b16``: ViT-B/16 (PCAS's main backbone), 86 M parameters.
- ``vit_s16``: ViT-S/16, 22 M parameters.
- ``vit_cpu``: a 4-block, 96-wide ViT with 8 px patches (~0.5 M parameters) for CPU demos and tests;
  at 128 px frames it gives a 16 x 16 patch map.

``ViTEncoder(images (N, 3, H, W))`` -> ``ViTOutput(cls (N, D), patches (N, D, H/p, W/p))``; H and W must be
multiples of the patch size (timm's ``dynamic_img_size`` interpolates the position embedding to any grid).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor, nn

from avseg.types import IMAGENET_MEAN, IMAGENET_STD
from avseg.weights import load_state_dict_file

if TYPE_CHECKING:  # timm is imported where a ViT is built, not at import time
    from timm.models.vision_transformer import VisionTransformer

__all__ = ["VIT_CONFIGS", "ViTConfig", "ViTEncoder", "ViTOutput", "build_vit", "load_vit_weights", "vit_state_dict_from_file"]


@dataclass(frozen=True)
class ViTConfig:
    """Size of a ViT: patch size, width, depth, heads; ``img_size`` only sets the stored position grid."""

    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    img_size: int = 224


VIT_CONFIGS: dict[str, ViTConfig] = {
    "vit_b16": ViTConfig(patch_size=16, embed_dim=768, depth=12, num_heads=12),
    "vit_s16": ViTConfig(patch_size=16, embed_dim=384, depth=12, num_heads=6),
    "vit_cpu": ViTConfig(patch_size=8, embed_dim=96, depth=4, num_heads=4, mlp_ratio=2.0, img_size=128),
}


class ViTOutput(NamedTuple):
    cls: Tensor  # (N, D) class token after the final norm
    patches: Tensor  # (N, D, h, w) patch tokens after the final norm


class ViTEncoder(nn.Module):
    """A timm ``VisionTransformer`` (one class token, no head) returning its class token and patch map.

    Args:
        vit: ``timm.models.vision_transformer.VisionTransformer`` built with ``num_classes=0``,
            ``class_token=True`` and ``dynamic_img_size=True``.
        input_norm: "imagenet": frames are fed as they come (ImageNet mean/std, as the batch contract);
            "half": mapped to (x - 0.5) / 0.5 first, the normalisation of the augreg / original ViT weights.
    """

    def __init__(self, vit: VisionTransformer, input_norm: str = "imagenet") -> None:
        super().__init__()
        if input_norm not in ("imagenet", "half"):
            raise ValueError(f"input_norm must be 'imagenet' or 'half', got {input_norm!r}")
        if getattr(vit, "num_prefix_tokens", 1) != 1 or getattr(vit, "cls_token", None) is None:
            raise ValueError("ViTEncoder needs a ViT with exactly one prefix token (the class token)")
        self.vit = vit
        self.patch_size = int(vit.patch_embed.patch_size[0])
        self.embed_dim = int(vit.embed_dim)
        self.input_norm = input_norm
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        # imagenet-normalised x -> pixel p = x * std + mean -> (p - 0.5) / 0.5, folded into one affine map
        self.input_scale: Tensor
        self.input_shift: Tensor
        self.register_buffer("input_scale", std * 2.0, persistent=False)
        self.register_buffer("input_shift", mean * 2.0 - 1.0, persistent=False)

    def forward(self, images: Tensor) -> ViTOutput:
        """images (N, 3, H, W), H and W multiples of the patch size -> ViTOutput(cls (N, D), patches (N, D, H/p, W/p))."""
        n, _, height, width = images.shape
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(f"frame size {height}x{width} is not a multiple of the ViT patch size {p}")
        x = images * self.input_scale + self.input_shift if self.input_norm == "half" else images
        tokens = self.vit.forward_features(x)  # (N, 1 + h*w, D), final norm applied
        cls = tokens[:, 0]
        patches = tokens[:, 1:].transpose(1, 2).reshape(n, self.embed_dim, height // p, width // p)
        return ViTOutput(cls, patches)


def build_vit(
    name: str,
    weights_path: Path | str | None = None,
    input_norm: str = "imagenet",
    drop_path_rate: float = 0.0,
) -> ViTEncoder:
    """A ViT of ``VIT_CONFIGS[name]``, random init, or the weights of a local file when ``weights_path`` is given.

    Nothing is downloaded: timm builds the bare architecture (``pretrained=False``).
    """
    from timm.models.vision_transformer import VisionTransformer

    if name not in VIT_CONFIGS:
        raise ValueError(f"unknown ViT {name!r}; expected one of {sorted(VIT_CONFIGS)}")
    c = VIT_CONFIGS[name]
    vit = VisionTransformer(
        img_size=c.img_size, patch_size=c.patch_size, embed_dim=c.embed_dim, depth=c.depth, num_heads=c.num_heads,
        mlp_ratio=c.mlp_ratio, num_classes=0, class_token=True, global_pool="token", dynamic_img_size=True,
        drop_path_rate=drop_path_rate,
    )  # fmt: skip
    if weights_path is not None:
        load_vit_weights(vit, vit_state_dict_from_file(weights_path))
    return ViTEncoder(vit, input_norm=input_norm)


def vit_state_dict_from_file(path: Path | str) -> dict[str, Tensor]:
    """Read a ViT checkpoint: ``.safetensors``, or a torch file read with ``weights_only=True``.

    Accepts a bare state dict or one nested under ``model`` / ``state_dict`` (as training scripts save it).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ViT weights file {path} does not exist")
    if path.suffix == ".safetensors":
        import safetensors.torch

        state: Any = safetensors.torch.load_file(str(path))
    else:
        state = load_state_dict_file(path)
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict of tensors")
    return state


def load_vit_weights(vit: VisionTransformer, state: dict[str, Tensor]) -> None:
    """Load a timm ViT state dict into ``vit`` (position embedding resampled to its grid; head weights dropped).

    Raises ValueError naming the missing / unexpected keys when the checkpoint is not this architecture.
    """
    from timm.models.vision_transformer import checkpoint_filter_fn

    state = {k.removeprefix("module."): v for k, v in state.items()}
    state = checkpoint_filter_fn(state, vit)
    state = {k: v for k, v in state.items() if not k.startswith("head.")}  # classifier of another task
    result = vit.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("head.")]
    if missing or result.unexpected_keys:
        raise ValueError(f"ViT weights do not match the architecture: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}")
