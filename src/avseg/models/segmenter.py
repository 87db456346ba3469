"""The audio-visual segmenter of WS-AVS (and the AVS / fully supervised references built from it).

visual encoder -> 4-level pyramid v^s; audio encoder -> a; projection heads give the M2ICL tokens;
fusion (Eq. 1) at every stage; Panoptic-FPN decoder -> mask logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from avseg.models.decoders import PanopticFPNDecoder
from avseg.models.fusion import AVFusion
from avseg.models.heads import ProjectionHead


@dataclass
class SegmenterOutput:
    logits: Tensor  # (N, K, H, W) mask logits
    audio_embed: Tensor  # (N, D) projected audio a (not normalised)
    visual_embeds: list[Tensor]  # per fused stage (N, D, h_s, w_s) projected visual tokens
    audio_features: Tensor  # (N, D_a) audio encoder output
    pyramid: list[Tensor]  # fused visual pyramid z^s


class AVSegmenter(nn.Module):
    """Encoders, M2ICL projections, per-stage fusion and a Panoptic-FPN decoder.

    Args:
        visual_encoder: returns [(N, C_s, H/4s, W/4s)] for 4 stages, with attribute ``channels``.
        audio_encoder: (N, 1, F, W_a) -> (N, D_a), with attribute ``out_dim``.
        fusion_stages: pyramid levels (0..3) that get the fusion block and the M2ICL projection.
        embed_dim: D of the M2ICL space.
        visual_dropout: dropout of the visual projection heads (0.9 in the official code).
        decoder_channels: width of the Panoptic-FPN decoder.
        num_classes: output channels of the decoder (1 for binary masks).
        use_audio: False gives a visual-only segmenter (no fusion, no M2ICL tokens).
    """

    def __init__(
        self,
        visual_encoder: nn.Module,
        audio_encoder: nn.Module | None,
        fusion_stages: tuple[int, ...] = (0, 1, 2, 3),
        embed_dim: int = 512,
        visual_dropout: float = 0.9,
        decoder_channels: int = 128,
        num_classes: int = 1,
    ) -> None:
        super().__init__()
        channels = tuple(visual_encoder.channels)
        if any(not 0 <= s < len(channels) for s in fusion_stages):
            raise ValueError(f"fusion_stages must be within 0..{len(channels) - 1}, got {fusion_stages}")
        self.visual_encoder = visual_encoder
        self.audio_encoder = audio_encoder
        self.fusion_stages = tuple(sorted(set(fusion_stages)))
        if audio_encoder is not None:
            audio_dim = int(audio_encoder.out_dim)
            self.audio_proj = nn.Linear(audio_dim, embed_dim)
            self.visual_proj = nn.ModuleDict({str(s): ProjectionHead(channels[s], embed_dim, dropout=visual_dropout) for s in self.fusion_stages})
            self.fusion = nn.ModuleDict({str(s): AVFusion(channels[s], audio_dim) for s in self.fusion_stages})
        self.decoder = PanopticFPNDecoder(channels, channels=decoder_channels, num_classes=num_classes)

    def forward(self, frames: Tensor, audio: Tensor | None) -> SegmenterOutput:
        """frames (N, 3, H, W), audio (N, 1, F, W_a) or None -> SegmenterOutput."""
        pyramid = self.visual_encoder(frames)
        audio_embed = frames.new_zeros(frames.shape[0], 0)
        audio_features = audio_embed
        visual_embeds: list[Tensor] = []
        if self.audio_encoder is not None:
            if audio is None:
                raise ValueError("this segmenter fuses audio: the batch has no audio features")
            audio_features = self.audio_encoder(audio)  # (N, D_a)
            audio_embed = self.audio_proj(audio_features)  # (N, D)
            fused = list(pyramid)
            for s in self.fusion_stages:
                visual_embeds.append(self.visual_proj[str(s)](pyramid[s]))  # (N, D, h, w)
                fused[s] = self.fusion[str(s)](pyramid[s], audio_features)
            pyramid = fused
        logits = self.decoder(pyramid, out_size=frames.shape[-2:])
        return SegmenterOutput(logits=logits, audio_embed=audio_embed, visual_embeds=visual_embeds, audio_features=audio_features, pyramid=pyramid)


def frames_and_audio(batch_frames: Tensor, batch_audio: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """(B, T, ...) -> (B*T, ...) for frames and audio."""
    frames = batch_frames.flatten(0, 1)
    audio = batch_audio.flatten(0, 1) if batch_audio is not None else None
    return frames, audio


def masked_mean(values: Tensor, weights: Tensor) -> Tensor:
    """Mean of ``values`` over entries where ``weights`` > 0 (0 when none): shapes broadcast."""
    w = weights.to(values.dtype)
    return (values * w).sum() / w.sum().clamp_min(1.0)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
