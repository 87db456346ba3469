"""The PCAS network: visual and audio encoders, TVP, classification / semantic heads, CAMs, the segmentation head."""

from __future__ import annotations

import logging
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avseg.losses.pcas import cmc_loss, cmcc_loss, cmpc_loss
from avseg.losses.segmentation import ce_loss
from avseg.methods.pcas.config import IGNORE
from avseg.models.ast import ASTEncoder, frame_segments
from avseg.models.decoders import PanopticFPNDecoder
from avseg.models.heads import AttentionPool, ProjectionHead
from avseg.models.visual import encoder_channels, group_norm
from avseg.models.vit import build_vit
from avseg.pseudo.crf import dense_crf_multi
from avseg.types import AVBatch
from avseg.visualize import denormalize

log = logging.getLogger("avseg")


# --- visual side ---------------------------------------------------------------------------------------
class VisualTokens(NamedTuple):
    cls: Tensor  # (N, D) v_cls
    patches: Tensor  # (N, D, h, w) v_th
    pyramid: list[Tensor] | None  # CNN feature pyramid (for the FPN segmentation head), None for ViTs


class ViTVisual(nn.Module):
    """timm ViT: class token and patch tokens."""

    def __init__(self, name: str, weights_path: str | None, input_norm: str, drop_path: float) -> None:
        super().__init__()
        self.encoder = build_vit(name, weights_path=weights_path, input_norm=input_norm, drop_path_rate=drop_path)
        self.embed_dim = self.encoder.embed_dim
        self.patch_size = self.encoder.patch_size

    def forward(self, images: Tensor) -> VisualTokens:
        out = self.encoder(images)
        return VisualTokens(out.cls, out.patches, None)


class CNNVisual(nn.Module):
    """A CNN pyramid; patch tokens = positions of level ``level``, class token = attention pooling over them."""

    def __init__(self, encoder: nn.Module, level: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.level = level
        self.embed_dim = int(encoder_channels(encoder)[level])
        heads = next(h for h in (8, 4, 2, 1) if self.embed_dim % h == 0)
        self.pool = AttentionPool(self.embed_dim, num_heads=heads)
        self.patch_size = 4 * 2**level

    def forward(self, images: Tensor) -> VisualTokens:
        pyramid = self.encoder(images)
        patches = pyramid[self.level]  # (N, C, h, w)
        return VisualTokens(self.pool(patches), patches, pyramid)


class ConvSegHead(nn.Module):
    """Segmentation head on a patch map: 2 x (conv3x3-GN-ReLU), 1x1 to C logits, bilinear to the frame size."""

    def __init__(self, in_channels: int, channels: int, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1, bias=False), group_norm(channels), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), group_norm(channels), nn.ReLU(inplace=True),
        )  # fmt: skip
        self.predictor = nn.Conv2d(channels, num_classes, 1)

    def forward(self, patches: Tensor, out_size: tuple[int, int]) -> Tensor:
        """patches (N, D, h, w) -> logits (N, C, H, W)."""
        return F.interpolate(self.predictor(self.body(patches)), size=out_size, mode="bilinear", align_corners=False)


class Encoded(NamedTuple):
    """Everything one forward pass computes for the real (valid) frames of a batch, N = their number."""

    v_cls: Tensor  # (N, Dv)
    v_sem: Tensor  # (N, Dv)
    patches: Tensor  # (N, Dv, h, w)
    pyramid: list[Tensor] | None
    a_sem: Tensor  # (N, Da)
    frames: Tensor  # (N, 3, H, W)
    labels: Tensor  # (N, K) the video labels of each frame
    valid: Tensor  # (B*T,) bool, which frames of the batch these are


# --- the model -----------------------------------------------------------------------------------------
LOOK_LISTEN_MODULES = ("visual", "audio", "audio_head", "cls_head", "sem_head")  # lr = settings.lr


class PCASNet(nn.Module):
    """Visual encoder + AST with TVP + classification heads + contrastive projections + segmentation head.

    ``mode`` ("look-listen" or "segment") selects the training objective; ``predict`` is the inference.
    Takes its two encoders and the settings it reads; ``stages.build_model`` builds it from a ``PCASConfig``.
    """

    def __init__(
        self,
        visual: ViTVisual | CNNVisual,
        audio: ASTEncoder,
        num_classes: int,
        *,
        semantic: bool,
        window_seconds: float,
        # audio side: which part of each frame's window the AST reads; temporal visual prompts
        audio_segment: Literal["centre", "window"],
        segment_seconds: float,
        tvp: bool,
        tvp_detach: bool,
        # Looking-before-Listening: classification
        audio_cls_weight: float,
        visual_cls_weight: float,
        visual_sem_weight: float,
        # Listening-before-Segmentation: progressive contrast in an embed_dim space
        embed_dim: int,
        cmc: bool,
        cmc_weight: float,
        cmc_tau: float,
        cmpc: bool,
        cmpc_weight: float,
        cmpc_high: float,
        cmpc_low: float,
        cmpc_detach_audio: bool,
        cmpc_sounding_only: bool,
        cmcc: bool,
        cmcc_weight: float,
        cmcc_tau: float,
        cmcc_crops: int,
        cmcc_crop_fraction: float,
        cmcc_crop_px: int | None,
        cmcc_fg_fraction: float,
        cmcc_bg_fraction: float,
        cmcc_batch_negatives: bool,
        fine_losses_after: int,
        # class activation maps and pseudo labels
        audio_threshold: float,
        empty_audio: Literal["background", "top1"],
        cam_source: Literal["sem", "cls"],
        cam_high: float,
        cam_low: float,
        cam_flip: bool,
        cam_norm: Literal["max", "minmax"],
        # segmentation head
        use_fpn: bool,
        seg_channels: int,
        seg_weight: float,
        segment_joint: bool,
        segment_audio: Literal["bias", "none"],
        flip_augment: bool,
        # inference
        audio_gate: Literal["soft", "hard", "none"],
        crf: bool,
        crf_iterations: int,
    ) -> None:
        """Every setting means what the ``PCASConfig`` field of the same name means (``stages.build_model``
        passes them); ``semantic``: the layout is AVSS (``predict`` returns class scores); ``window_seconds``:
        the length of each frame's audio window (the front-end's); ``use_fpn``: a Panoptic-FPN head on the
        CNN pyramid instead of the conv head on the patch map."""
        super().__init__()
        # Registered in this order (visual, audio, heads, projections, segmentation head), as the state dict
        # and the optimizer's parameter order have always had them.
        self.visual = visual
        self.audio = audio
        self.num_classes = num_classes  # K foreground classes; the segmentation head predicts K + 1
        self.semantic = semantic
        self.output = "semantic" if self.semantic else "binary"  # what predict returns on this layout
        self.mode = "look-listen"
        self.window_seconds = window_seconds
        self.audio_segment, self.segment_seconds, self.tvp, self.tvp_detach = audio_segment, segment_seconds, tvp, tvp_detach
        self.audio_cls_weight, self.visual_cls_weight, self.visual_sem_weight = audio_cls_weight, visual_cls_weight, visual_sem_weight
        self.cmc, self.cmc_weight, self.cmc_tau = cmc, cmc_weight, cmc_tau
        self.cmpc, self.cmpc_weight, self.cmpc_high, self.cmpc_low = cmpc, cmpc_weight, cmpc_high, cmpc_low
        self.cmpc_detach_audio, self.cmpc_sounding_only = cmpc_detach_audio, cmpc_sounding_only
        self.cmcc, self.cmcc_weight, self.cmcc_tau, self.cmcc_crops = cmcc, cmcc_weight, cmcc_tau, cmcc_crops
        self.cmcc_crop_fraction, self.cmcc_crop_px = cmcc_crop_fraction, cmcc_crop_px
        self.cmcc_fg_fraction, self.cmcc_bg_fraction, self.cmcc_batch_negatives = cmcc_fg_fraction, cmcc_bg_fraction, cmcc_batch_negatives
        self.fine_losses_after = fine_losses_after
        self.audio_threshold, self.empty_audio = audio_threshold, empty_audio
        self.cam_source, self.cam_high, self.cam_low, self.cam_flip, self.cam_norm = cam_source, cam_high, cam_low, cam_flip, cam_norm
        self.seg_weight, self.segment_joint, self.segment_audio, self.flip_augment = seg_weight, segment_joint, segment_audio, flip_augment
        self.audio_gate, self.crf, self.crf_iterations = audio_gate, crf, crf_iterations
        dv = self.visual.embed_dim
        da = self.audio.embed_dim
        k = num_classes
        self.audio_head = nn.Linear(da, k)
        self.cls_head = nn.Linear(dv, k)
        self.sem_head = nn.Linear(dv, k)  # on v_sem = mean of patches; on each patch it is the CAM
        e = embed_dim
        # LayerNorm -> Linear (WS-AVS's projection without dropout): the LayerNorm takes away each vector's
        # common offset (ReLU features of a CNN are all positive and nearly parallel).
        self.proj_audio = ProjectionHead(da, e, dropout=0.0)
        self.proj_visual = ProjectionHead(dv, e, dropout=0.0)  # v_sem and every patch token (N, Dv, h, w)
        self.proj_cls = ProjectionHead(dv, e, dropout=0.0)  # v_cls of frames and of local crops
        if use_fpn:
            self.seg_head: nn.Module = PanopticFPNDecoder(encoder_channels(self.visual.encoder), channels=seg_channels, num_classes=k + 1)
        else:
            self.seg_head = ConvSegHead(dv, seg_channels, k + 1)
        self.use_fpn = use_fpn
        self.steps: Tensor
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))  # training steps seen (persisted)
        self.frozen: tuple[str, ...] = ()  # submodules kept frozen and in eval mode (BatchNorm statistics)

    def freeze(self, keep_training: tuple[str, ...]) -> None:
        """Freeze every top-level submodule except ``keep_training`` (e.g. ("seg_head",))."""
        self.frozen = tuple(name for name, _ in self.named_children() if name not in keep_training)
        for name in self.frozen:
            getattr(self, name).requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> "PCASNet":
        super().train(mode)
        for name in self.frozen:
            getattr(self, name).eval()
        return self

    # -- encoding --
    def encode(self, batch: AVBatch, frames: Tensor | None = None) -> Encoded:
        """Run both encoders on the valid frames of ``batch`` (``frames`` replaces ``batch.frames``, e.g. flipped)."""
        if batch.audio is None:
            raise ValueError("PCAS needs audio features: build the dataset with an audio front-end")
        b, t = batch.frames.shape[:2]
        valid = batch.valid.flatten()  # (B*T,)
        x = (batch.frames if frames is None else frames).flatten(0, 1)[valid]  # (N, 3, H, W)
        vis = self.visual(x)
        v_sem = vis.patches.mean(dim=(2, 3))  # (N, Dv)
        prompts = None
        if self.tvp:
            full = v_sem.new_zeros(b * t, v_sem.shape[1])
            full[valid] = v_sem.detach() if self.tvp_detach else v_sem
            prompts = full.view(b, t, -1)  # (B, T, Dv): prompt t = frame t's v_sem
        segments = frame_segments(batch.audio, self.audio_segment, self.window_seconds, self.segment_seconds)
        a = self.audio(segments, batch.valid, prompts).sem  # (B, T, Da)
        labels = batch.labels[:, None].expand(b, t, -1).flatten(0, 1)[valid]  # (N, K)
        return Encoded(vis.cls, v_sem, vis.patches, vis.pyramid, a.flatten(0, 1)[valid], x, labels, valid)

    def audio_probs(self, enc: Encoded) -> Tensor:
        """(N, K) per-frame probability that each class sounds."""
        return torch.sigmoid(self.audio_head(enc.a_sem))

    def sounding(self, enc: Encoded, probs: Tensor | None = None) -> Tensor:
        """(N, K) bool: classes of the video labels that the audio head says sound in the frame."""
        probs = self.audio_probs(enc).detach() if probs is None else probs
        labelled = enc.labels > 0.5
        on = labelled & (probs > self.audio_threshold)
        if self.empty_audio == "top1":
            none = ~on.any(dim=1) & labelled.any(dim=1)
            top = probs.masked_fill(~labelled, -1.0).argmax(dim=1)
            on = on | (F.one_hot(top, probs.shape[1]).bool() & none[:, None])
        return on

    def cams(self, patches: Tensor) -> Tensor:
        """(N, Dv, h, w) patch tokens -> (N, K, h, w) class activation maps: the classifier weights on each
        patch, without the bias (Zhou et al. 2016; the bias only shifts a map and would push every map of a
        rare class below zero)."""
        head = self.sem_head if self.cam_source == "sem" else self.cls_head
        return torch.einsum("kd,ndhw->nkhw", head.weight, patches)

    def normalise_cams(self, cams: Tensor) -> Tensor:
        """(N, K, h, w) -> [0, 1] per class map: ``cam_norm`` "max" = ReLU then divided by the maximum (ToCo);
        "minmax" = rescaled between its minimum and maximum (every map then has a peak, which suits classes the
        audio says are sounding)."""
        if self.cam_norm == "minmax":
            flat = cams.flatten(2)
            lo, hi = flat.amin(dim=2)[:, :, None, None], flat.amax(dim=2)[:, :, None, None]
            return (cams - lo) / (hi - lo).clamp_min(1e-5)
        cams = F.relu(cams)
        return cams / cams.flatten(2).amax(dim=2)[:, :, None, None].clamp_min(1e-5)

    def foreground(self, cams: Tensor, sounding: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised CAMs (N, K, h, w) of the sounding classes -> (score (N, h, w) in [0, 1], class id (N, h, w))."""
        masked = cams * sounding[:, :, None, None].to(cams.dtype)
        score, index = masked.max(dim=1)
        return score, index + 1

    # -- training --
    def forward(self, batch: AVBatch) -> dict[str, Tensor]:
        if self.training:
            self.steps += 1
        frames, targets = batch.frames, None
        if self.mode == "segment":
            if batch.pseudo_masks is None:
                raise ValueError("the segment stage needs pseudo labels (dataset pseudo_dir)")
            assert batch.has_pseudo is not None  # loaded with the pseudo masks
            targets = (batch.pseudo_masks * 255.0).round().long()  # class-index PNG read as value / 255
            targets = targets.masked_fill(~(batch.has_pseudo & batch.valid)[:, :, None, None], IGNORE)
        if self.training and self.flip_augment:
            flip = torch.rand(frames.shape[0], device=frames.device) < 0.5  # one flip per video
            frames = torch.where(flip[:, None, None, None, None], frames.flip(-1), frames)
            if targets is not None:
                targets = torch.where(flip[:, None, None, None], targets.flip(-1), targets)
        enc = self.encode(batch, frames)
        losses: dict[str, Tensor] = {}
        total = enc.a_sem.new_zeros(())
        train_look_listen = self.mode == "look-listen" or self.segment_joint
        if train_look_listen:
            total = total + self._look_listen_losses(enc, losses)
        if self.mode == "segment":
            assert targets is not None
            logits = self.segment_logits(enc)  # (N, C, H, W)
            losses["seg"] = ce_loss(logits, targets.flatten(0, 1)[enc.valid], ignore_index=IGNORE)
            total = total + self.seg_weight * losses["seg"]
        losses["loss"] = total
        return losses

    def _look_listen_losses(self, enc: Encoded, losses: dict[str, Tensor]) -> Tensor:
        y = enc.labels
        losses["cls_audio"] = F.binary_cross_entropy_with_logits(self.audio_head(enc.a_sem), y)
        losses["cls_visual"] = F.binary_cross_entropy_with_logits(self.cls_head(enc.v_cls), y)
        losses["cls_sem"] = F.binary_cross_entropy_with_logits(self.sem_head(enc.v_sem), y)
        total = self.audio_cls_weight * losses["cls_audio"] + self.visual_cls_weight * losses["cls_visual"] + self.visual_sem_weight * losses["cls_sem"]
        if self.cmc and self.cmc_weight > 0:
            losses["cmc"] = cmc_loss(self.proj_audio(enc.a_sem), self.proj_visual(enc.v_sem), self.proj_cls(enc.v_cls), y, tau=self.cmc_tau)
            total = total + self.cmc_weight * losses["cmc"]
        fine = int(self.steps) > self.fine_losses_after or not self.training
        need_sounding = (self.cmpc and self.cmpc_sounding_only) or self.cmcc
        sounding = self.sounding(enc) if need_sounding else None
        if self.cmpc and self.cmpc_weight > 0 and fine:
            patches = self.proj_visual(enc.patches)  # (N, E, h, w)
            audio = self.proj_audio(enc.a_sem.detach() if self.cmpc_detach_audio else enc.a_sem)
            frame_mask = sounding.any(dim=1) if self.cmpc_sounding_only and sounding is not None else None
            losses["cmpc"] = cmpc_loss(patches, audio, high=self.cmpc_high, low=self.cmpc_low, frame_mask=frame_mask)
            total = total + self.cmpc_weight * losses["cmpc"]
        if self.cmcc and self.cmcc_weight > 0 and fine:
            assert sounding is not None
            losses["cmcc"] = self._cmcc(enc, sounding)
            total = total + self.cmcc_weight * losses["cmcc"]
        return total

    def _cmcc(self, enc: Encoded, sounding: Tensor) -> Tensor:
        """Class-token contrast between each frame's v_cls and the class tokens of random local crops."""
        n, _, h, w = enc.frames.shape
        m = self.cmcc_crops
        with torch.no_grad():
            score, _ = self.foreground(self.normalise_cams(self.cams(enc.patches)), sounding)
            score = F.interpolate(score[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]  # (N, H, W)
            fg, bg = (score >= self.cam_high).float(), (score < self.cam_low).float()
        side = max(1, round(self.cmcc_crop_fraction * min(h, w)))
        ps = self.visual.patch_size
        crop_px = self.cmcc_crop_px or side
        if isinstance(self.visual, ViTVisual):
            crop_px = max(ps, round(crop_px / ps) * ps)  # ViT input must be whole patches
        ys = torch.randint(0, h - side + 1, (n, m)).tolist()
        xs = torch.randint(0, w - side + 1, (n, m)).tolist()
        crops, fg_frac, bg_frac = [], [], []
        for i in range(n):
            for j in range(m):
                y0, x0 = ys[i][j], xs[i][j]
                crops.append(enc.frames[i, :, y0 : y0 + side, x0 : x0 + side])
                fg_frac.append(fg[i, y0 : y0 + side, x0 : x0 + side].mean())
                bg_frac.append(bg[i, y0 : y0 + side, x0 : x0 + side].mean())
        crop_batch = torch.stack(crops)  # (N*M, 3, side, side)
        if crop_px != side:
            crop_batch = F.interpolate(crop_batch, size=(crop_px, crop_px), mode="bilinear", align_corners=False)
        crop_cls = self.proj_cls(self.visual(crop_batch).cls).view(n, m, -1)  # (N, M, E)
        positive = (torch.stack(fg_frac) >= self.cmcc_fg_fraction).view(n, m)
        negative = (torch.stack(bg_frac) >= self.cmcc_bg_fraction).view(n, m)
        return cmcc_loss(self.proj_cls(enc.v_cls), crop_cls, positive, negative, tau=self.cmcc_tau, batch_negatives=self.cmcc_batch_negatives)

    def segment_logits(self, enc: Encoded) -> Tensor:
        """(N, K + 1, H, W) segmentation logits of the valid frames."""
        size = tuple(enc.frames.shape[-2:])
        if self.use_fpn:
            assert enc.pyramid is not None
            logits = self.seg_head(enc.pyramid, out_size=size)
        else:
            logits = self.seg_head(enc.patches, out_size=size)
        if self.segment_audio == "bias":
            # class c's logit + log P(c sounds): a class the audio says is silent cannot win a pixel
            log_p = torch.log(self.audio_probs(enc).detach().clamp_min(1e-4)).to(logits.dtype)  # (N, K)
            logits = torch.cat([logits[:, :1], logits[:, 1:] + log_p[:, :, None, None]], dim=1)
        return logits

    # -- pseudo labels --
    @torch.no_grad()
    def pseudo_labels(self, batch: AVBatch) -> Tensor:
        """(B, T, 2, H, W): [label ids (0 = background, 1..K classes, 255 = ignore), foreground score in [0, 1]].

        CAMs of the classes that sound in frame t (audio head, within the video labels), optionally
        averaged with the CAMs of the mirrored frame; padding frames are background with score 0.
        """
        b, t, _, h, w = batch.frames.shape
        enc = self.encode(batch)
        cams = self.normalise_cams(self.cams(enc.patches))
        if self.cam_flip:
            flipped = self.encode(batch, batch.frames.flip(-1))
            cams = 0.5 * (cams + self.normalise_cams(self.cams(flipped.patches)).flip(-1))
        cams = F.interpolate(cams, size=(h, w), mode="bilinear", align_corners=False)
        score, ids = self.foreground(cams, self.sounding(enc))
        label = torch.where(score >= self.cam_high, ids, torch.where(score < self.cam_low, torch.zeros_like(ids), torch.full_like(ids, IGNORE)))
        out = score.new_zeros(b * t, 2, h, w)
        out[enc.valid, 0] = label.float()
        out[enc.valid, 1] = score
        return out.view(b, t, 2, h, w)

    # -- inference --
    @torch.no_grad()
    def class_probs(self, batch: AVBatch) -> Tensor:
        """(B, T, K + 1, H, W) class probabilities of every frame (padding: background), audio-gated."""
        b, t, _, h, w = batch.frames.shape
        enc = self.encode(batch)
        probs = self.segment_logits(enc).softmax(dim=1)  # (N, C, H, W)
        if self.audio_gate != "none":
            gate = self.audio_probs(enc)  # (N, K)
            if self.audio_gate == "hard":
                gate = (gate > self.audio_threshold).to(probs.dtype)
            fg = probs[:, 1:] * gate[:, :, None, None]
            bg = probs[:, :1] + (probs[:, 1:] - fg).sum(dim=1, keepdim=True)  # silent classes -> background
            probs = torch.cat([bg, fg], dim=1)
        if self.crf:
            probs = _crf_batch(enc.frames, probs, self.crf_iterations)
        out = probs.new_zeros(b * t, probs.shape[1], h, w)
        out[:, 0] = 1.0
        out[enc.valid] = probs
        return out.view(b, t, -1, h, w)

    @torch.no_grad()
    def predict(self, batch: AVBatch) -> Tensor:
        """AVSS: (B, T, K + 1, H, W) class scores; S4 / MS3: (B, T, H, W) foreground probability = the sum of
        the foreground classes' probabilities (not 1 - P(background), which rounding can push below 0)."""
        probs = self.class_probs(batch)
        return probs if self.semantic else probs[:, :, 1:].sum(dim=2).clamp_(0.0, 1.0)


def _crf_batch(frames: Tensor, probs: Tensor, iterations: int) -> Tensor:
    out = [torch.from_numpy(dense_crf_multi(denormalize(f.cpu().numpy()), p.cpu().numpy(), iterations=iterations)) for f, p in zip(frames, probs)]
    return torch.stack(out).to(probs)
