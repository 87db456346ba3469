"""The audio-visual segmenter of WS-AVS (and the AVS / fully supervised references built from it).

visual encoder -> 4-level pyramid v^s; audio encoder -> a; projection heads give the M2ICL tokens;
fusion (Eq. 1) at every stage; Panoptic-FPN decoder -> mask logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from torch import Tensor, nn

from avseg.models.decoders import PanopticFPNDecoder
from avseg.models.fusion import AVFusion
from avseg.models.heads import ProjectionHead
from avseg.models.visual import encoder_channels

AUDIO_NORMS = ("batch", "none")


@dataclass
class SegmenterOutput:
    logits: Tensor  # (N, K, H, W) mask logits
    audio_embed: Tensor  # (N, D) projected audio a (not normalised)
    visual_embeds: list[Tensor]  # per fused stage (N, D, h_s, w_s) projected visual tokens
    audio_features: Tensor  # (N, D_a) audio encoder output (after audio_norm)
    pyramid: list[Tensor]  # what the decoder reads: z^s at fusion stages, the encoder's level elsewhere


class AVSegmenter(nn.Module):
    """Encoders, M2ICL projections, per-stage fusion and a Panoptic-FPN decoder.

    The features that M2ICL contrasts are the ones that are fused and decoded (paper Eq. 1 and the official
    model): at a fusion stage s the projection head gives v^s (N, D, h, w), the audio projection gives a
    (N, D), fusion turns them into z^s = v^s + f(v^s, a), and the decoder reads z^s. Levels without fusion
    reach the decoder as the encoder gave them. So the contrast shapes what is segmented, and the audio
    vector that fusion sees is the one M2ICL aligns with the object's tokens.

    Args:
        visual_encoder: returns [(N, C_s, H/4s, W/4s)] for 4 stages, with attribute ``channels``.
        audio_encoder: (N, 1, F, W_a) -> (N, D_a), with attribute ``out_dim``; None gives a visual-only
            segmenter (no fusion, no M2ICL tokens).
        fusion_stages: pyramid levels (0..3) that get the projection head and the fusion block.
        embed_dim: D of the M2ICL space (the width of the fused levels).
        visual_dropout: dropout of the visual projection heads (0.9 in the official code).
        decoder_channels: width of the Panoptic-FPN decoder.
        num_classes: output channels of the decoder (1 for binary masks).
        audio_norm: "batch": BatchNorm1d on the audio encoder's output before the projection (keeps the
            clips of a batch apart: without it a small audio encoder maps every clip to one vector within a
            few steps at lr 1e-3 and the contrast sits at chance); "none": the encoder output as it is.
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
        audio_norm: str = "batch",
    ) -> None:
        super().__init__()
        channels = encoder_channels(visual_encoder)
        if any(not 0 <= s < len(channels) for s in fusion_stages):
            raise ValueError(f"fusion_stages must be within 0..{len(channels) - 1}, got {fusion_stages}")
        if audio_norm not in AUDIO_NORMS:
            raise ValueError(f"audio_norm must be one of {AUDIO_NORMS}, got {audio_norm!r}")
        self.visual_encoder = visual_encoder
        self.audio_encoder = audio_encoder
        self.fusion_stages = tuple(sorted(set(fusion_stages)))
        decoder_in = channels
        if audio_encoder is not None:
            audio_dim = int(cast(int, audio_encoder.out_dim))  # every audio encoder sets out_dim
            self.audio_norm: nn.Module = nn.BatchNorm1d(audio_dim) if audio_norm == "batch" else nn.Identity()
            self.audio_proj = nn.Linear(audio_dim, embed_dim)
            self.visual_proj = nn.ModuleDict({str(s): ProjectionHead(channels[s], embed_dim, dropout=visual_dropout) for s in self.fusion_stages})
            self.fusion = nn.ModuleDict({str(s): AVFusion(embed_dim, embed_dim) for s in self.fusion_stages})
            decoder_in = tuple(embed_dim if s in self.fusion_stages else c for s, c in enumerate(channels))
        self.decoder = PanopticFPNDecoder(decoder_in, channels=decoder_channels, num_classes=num_classes)

    def forward(self, frames: Tensor, audio: Tensor | None) -> SegmenterOutput:
        """frames (N, 3, H, W), audio (N, 1, F, W_a) or None -> SegmenterOutput."""
        pyramid = self.visual_encoder(frames)
        audio_embed = frames.new_zeros(frames.shape[0], 0)
        audio_features = audio_embed
        visual_embeds: list[Tensor] = []
        if self.audio_encoder is not None:
            if audio is None:
                raise ValueError("this segmenter fuses audio: the batch has no audio features")
            audio_features = self.audio_norm(self.audio_encoder(audio))  # (N, D_a)
            audio_embed = self.audio_proj(audio_features)  # (N, D): a, what M2ICL contrasts
            fused = list(pyramid)
            for s in self.fusion_stages:
                v = self.visual_proj[str(s)](pyramid[s])  # (N, D, h, w): v^s, what M2ICL contrasts
                visual_embeds.append(v)
                fused[s] = self.fusion[str(s)](v, audio_embed)  # z^s (N, D, h, w)
            pyramid = fused
        logits = self.decoder(pyramid, out_size=frames.shape[-2:])
        return SegmenterOutput(logits=logits, audio_embed=audio_embed, visual_embeds=visual_embeds, audio_features=audio_features, pyramid=pyramid)
