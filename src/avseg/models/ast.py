"""An AST-style spectrogram transformer over a video's audio, with temporal visual prompts (PCAS TVP).

The clip's spectrogram is cut into T time segments, one per video frame (second). Each segment becomes
``S = n_f * n_t`` patch tokens (non-overlapping ``patch_freq x patch_time`` patches, time-major inside the
segment), with a learned frequency embedding and a learned embedding of the global time-patch index.

With temporal visual prompts (``forward(..., prompts=...)``) frame t's visual semantic vector, projected to
the audio width, is inserted right before segment t's tokens::

    [p_1, s_1^1 .. s_1^S, p_2, s_2^1 .. s_2^S, ..., p_T, s_T^1 .. s_T^S]

and the audio semantic token a_sem_t is the encoder output at p_t. A prompt carries a learned type
embedding plus the time embedding of its segment's first patch. Without prompts (plain AST) a_sem_t is the
mean of segment t's output tokens. Segments of padded frames (``valid == False``) are masked out of the
attention as keys.

The blocks are timm ``Block`` modules with ViT parameter names, so a timm ViT checkpoint initialises the
transformer (``load_vit_into_ast``; patch embedding averaged over RGB), which is how AST starts from
ImageNet weights. Sizes live in ``AST_CONFIGS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

from avseg.models.vit import vit_state_dict_from_file

__all__ = ["AST_CONFIGS", "ASTConfig", "ASTEncoder", "ASTOutput", "SequenceLayout", "sequence_layout", "build_ast", "load_vit_into_ast", "frame_segments"]


@dataclass(frozen=True)
class ASTConfig:
    """Size of an AST: width, depth, heads and the patch size on the spectrogram (frequency x time)."""

    embed_dim: int
    depth: int
    num_heads: int
    patch_freq: int = 16
    patch_time: int = 16
    mlp_ratio: float = 4.0
    max_freq_patches: int = 64
    max_time_patches: int = 1024  # time patches of the whole clip (all segments)


AST_CONFIGS: dict[str, ASTConfig] = {
    "ast_base": ASTConfig(embed_dim=768, depth=12, num_heads=12),
    "ast_small": ASTConfig(embed_dim=384, depth=12, num_heads=6),
    # CPU demos / tests: on a 128-mel x 43-step segment (1 s of wsavs-logmel) -> 4 x 5 = 20 tokens
    "ast_cpu": ASTConfig(embed_dim=96, depth=3, num_heads=4, patch_freq=32, patch_time=8, mlp_ratio=2.0),
}


class SequenceLayout(NamedTuple):
    """Where things sit in the token sequence of one clip (the same for every clip of a batch)."""

    prompt_index: Tensor  # (T,) positions of the prompts; empty without prompts
    segment_start: Tensor  # (T,) position of the first token of each segment
    tokens_per_segment: int  # S
    length: int  # L


def sequence_layout(num_segments: int, tokens_per_segment: int, prompts: bool) -> SequenceLayout:
    """Positions of prompts and segments: with prompts, p_t at t*(S+1) and segment t from t*(S+1)+1."""
    t = torch.arange(num_segments)
    if prompts:
        stride = tokens_per_segment + 1
        return SequenceLayout(t * stride, t * stride + 1, tokens_per_segment, num_segments * stride)
    return SequenceLayout(t[:0], t * tokens_per_segment, tokens_per_segment, num_segments * tokens_per_segment)


class ASTOutput(NamedTuple):
    sem: Tensor  # (B, T, D) a_sem_t: output at prompt t (TVP) or mean of segment t's tokens (plain AST)
    tokens: Tensor  # (B, L, D) every output token, in sequence order
    layout: SequenceLayout


class ASTEncoder(nn.Module):
    """AST-style transformer over T spectrogram segments, optionally with one visual prompt per segment.

    Args:
        config: sizes (``AST_CONFIGS``).
        prompt_dim: width of the visual vectors turned into prompts (Linear to the audio width); None = the
            model has no prompt projection (plain AST only).
        spec_norm: "clip": each clip's spectrogram is standardised with the mean / std of its valid segments
            (no dataset statistics needed); "none": fed as is.
        drop_path_rate: stochastic depth of the blocks.
    """

    def __init__(self, config: ASTConfig, prompt_dim: int | None = None, spec_norm: str = "clip", drop_path_rate: float = 0.0) -> None:
        super().__init__()
        from timm.models.vision_transformer import Block

        if spec_norm not in ("clip", "none"):
            raise ValueError(f"spec_norm must be 'clip' or 'none', got {spec_norm!r}")
        c = config
        self.config = c
        self.embed_dim = c.embed_dim
        self.spec_norm = spec_norm
        self.patch_embed = nn.Conv2d(1, c.embed_dim, kernel_size=(c.patch_freq, c.patch_time), stride=(c.patch_freq, c.patch_time))
        self.freq_embed = nn.Parameter(torch.zeros(1, c.max_freq_patches, c.embed_dim))
        self.time_embed = nn.Parameter(torch.zeros(1, c.max_time_patches, c.embed_dim))
        self.prompt_type = nn.Parameter(torch.zeros(1, 1, c.embed_dim))
        for p in (self.freq_embed, self.time_embed, self.prompt_type):
            nn.init.trunc_normal_(p, std=0.02)
        self.prompt_proj = nn.Linear(prompt_dim, c.embed_dim) if prompt_dim is not None else None
        dpr = [drop_path_rate * i / max(1, c.depth - 1) for i in range(c.depth)]
        self.blocks = nn.ModuleList(
            Block(c.embed_dim, c.num_heads, mlp_ratio=c.mlp_ratio, qkv_bias=True, drop_path=dpr[i]) for i in range(c.depth)
        )
        self.norm = nn.LayerNorm(c.embed_dim, eps=1e-6)

    def patch_tokens(self, segments: Tensor, valid: Tensor) -> tuple[Tensor, int, int]:
        """segments (B, T, 1, F, W) -> (tokens (B, T, S, D) with position embeddings, n_f, n_t)."""
        b, t = segments.shape[:2]
        x = segments
        if self.spec_norm == "clip":
            w = valid.to(x.dtype)[:, :, None, None, None]  # (B, T, 1, 1, 1)
            count = (w.sum(1, keepdim=True) * x[0, 0].numel()).clamp_min(1.0)
            mean = (x * w).sum(dim=(1, 2, 3, 4), keepdim=True) / count
            var = ((x - mean).pow(2) * w).sum(dim=(1, 2, 3, 4), keepdim=True) / count
            x = (x - mean) / var.add(1e-5).sqrt() * w
        x = self.patch_embed(x.flatten(0, 1))  # (B*T, D, n_f, n_t)
        n_f, n_t = x.shape[-2:]
        if n_f == 0 or n_t == 0:
            raise ValueError(f"a segment of {segments.shape[-2]}x{segments.shape[-1]} is smaller than one {self.config.patch_freq}x{self.config.patch_time} patch")
        if n_f > self.config.max_freq_patches or t * n_t > self.config.max_time_patches:
            raise ValueError(f"{n_f} frequency / {t * n_t} time patches exceed the embeddings ({self.config.max_freq_patches} / {self.config.max_time_patches})")
        x = x.permute(0, 3, 2, 1).reshape(b, t, n_t, n_f, self.embed_dim)  # time-major inside a segment
        time_index = torch.arange(t * n_t, device=x.device).view(t, n_t)
        x = x + self.time_embed[0, time_index][None, :, :, None] + self.freq_embed[0, :n_f][None, None, None]
        return x.reshape(b, t, n_t * n_f, self.embed_dim), n_f, n_t

    def forward(self, segments: Tensor, valid: Tensor, prompts: Tensor | None = None) -> ASTOutput:
        """Encode a batch of clips.

        Args:
            segments: (B, T, 1, F, W) spectrogram of each frame's time segment (T segments per clip).
            valid: (B, T) bool; False segments (padding) are not attended to.
            prompts: (B, T, D_v) visual semantic vectors (one per frame) or None for the plain AST.

        Returns:
            ASTOutput(sem (B, T, D), tokens (B, L, D), layout).
        """
        b, t = segments.shape[:2]
        tokens, n_f, n_t = self.patch_tokens(segments, valid)  # (B, T, S, D)
        s = tokens.shape[2]
        use_prompts = prompts is not None
        layout = sequence_layout(t, s, use_prompts)
        key_valid = valid[:, :, None].expand(b, t, s + int(use_prompts))  # (B, T, S[+1])
        if use_prompts:
            if self.prompt_proj is None:
                raise ValueError("this AST was built without a prompt projection (prompt_dim=None)")
            start_time = self.time_embed[0, torch.arange(t, device=tokens.device) * n_t]  # (T, D)
            p = self.prompt_proj(prompts) + self.prompt_type + start_time[None]  # (B, T, D)
            tokens = torch.cat([p[:, :, None], tokens], dim=2)  # (B, T, 1 + S, D): p_t right before segment t
        x = tokens.reshape(b, layout.length, self.embed_dim)  # (B, L, D)
        mask = key_valid.reshape(b, 1, 1, layout.length)  # True = may be attended to
        for block in self.blocks:
            x = block(x, attn_mask=mask)
        x = self.norm(x)
        if use_prompts:
            sem = x[:, layout.prompt_index.to(x.device)]  # (B, T, D): output at p_t
        else:
            sem = x.view(b, t, s, self.embed_dim).mean(dim=2)
        return ASTOutput(sem, x, layout)


def build_ast(name: str, prompt_dim: int | None, weights_path: Path | str | None = None, weights_format: str = "ast", spec_norm: str = "clip", drop_path_rate: float = 0.0) -> ASTEncoder:
    """An AST of ``AST_CONFIGS[name]``: random init, or weights from a local file.

    weights_format: "ast" = a state dict of this module (e.g. from an earlier run); "vit" = a timm ViT
    checkpoint of the same width / depth / heads, loaded as AST does (blocks and final norm copied, the
    RGB patch embedding averaged to one channel; patch size must match).
    """
    if name not in AST_CONFIGS:
        raise ValueError(f"unknown AST {name!r}; expected one of {sorted(AST_CONFIGS)}")
    model = ASTEncoder(AST_CONFIGS[name], prompt_dim=prompt_dim, spec_norm=spec_norm, drop_path_rate=drop_path_rate)
    if weights_path is not None:
        state = vit_state_dict_from_file(weights_path)
        if weights_format == "vit":
            load_vit_into_ast(model, state)
        elif weights_format == "ast":
            result = model.load_state_dict(state, strict=False)
            if result.unexpected_keys or [k for k in result.missing_keys if not k.startswith("prompt_proj")]:
                raise ValueError(f"{weights_path}: not an AST state dict of {name} (missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]})")
        else:
            raise ValueError(f"weights_format must be 'ast' or 'vit', got {weights_format!r}")
    return model


def load_vit_into_ast(model: ASTEncoder, state: dict[str, Tensor]) -> None:
    """Initialise the AST from a timm ViT state dict (AST's ImageNet start): blocks, final norm, patch embedding."""
    own = model.state_dict()
    copied = {k: v for k, v in state.items() if (k.startswith("blocks.") or k.startswith("norm.")) and k in own}
    missing = [k for k in own if (k.startswith("blocks.") or k.startswith("norm.")) and k not in copied]
    if missing:
        raise ValueError(f"ViT checkpoint does not fit this AST: missing {missing[:5]}")
    for k, v in copied.items():
        if v.shape != own[k].shape:
            raise ValueError(f"ViT checkpoint does not fit this AST: {k} is {tuple(v.shape)}, expected {tuple(own[k].shape)}")
    w = state.get("patch_embed.proj.weight")
    if w is not None:
        mono = w.mean(dim=1, keepdim=True)  # (D, 1, p, p)
        if mono.shape != own["patch_embed.weight"].shape:
            raise ValueError(f"ViT patch embedding {tuple(mono.shape)} does not match the AST's {tuple(own['patch_embed.weight'].shape)}")
        copied["patch_embed.weight"] = mono
        copied["patch_embed.bias"] = state["patch_embed.proj.bias"]
    model.load_state_dict(copied, strict=False)


def frame_segments(audio: Tensor, mode: str, window_seconds: float, segment_seconds: float = 1.0) -> Tensor:
    """The clip's time segments from per-frame features (the dataset's ``centred`` windows).

    Args:
        audio: (B, T, 1, F, W) features of each frame's window (``window_seconds`` long, centred on the
            frame's second).
        mode: "centre": keep the middle ``segment_seconds`` of each window, i.e. frame t's own second, so
            the T segments laid end to end are the clip's spectrogram (the paper's setting: AST over the
            clip, segment t = second t); "window": the whole window of each frame (overlapping context).

    Returns:
        (B, T, 1, F, W_s).
    """
    if mode == "window":
        return audio
    if mode != "centre":
        raise ValueError(f"segment mode must be 'centre' or 'window', got {mode!r}")
    w = audio.shape[-1]
    keep = max(1, round(w * min(1.0, segment_seconds / window_seconds)))
    start = (w - keep) // 2
    return audio[..., start : start + keep]

