"""WS-AVS with audio-conditioned pseudo masks (``ws-avs-av``, ours, beyond the paper).

WS-AVS's pseudo masks come from C2AM and a saliency detector, which never hear the audio: on scenes with
several visible objects they mark silent ones too, and the segmenter learns to segment them. This
variant keeps only the salient regions that an audio-visual similarity map selects:

1. ``c2am``, ``activation-maps``, ``saliency``: WS-AVS's stages, unchanged (``ws_avs`` stage functions);
   with ``reuse_run`` (set by ``avseg bench``) they are taken from a finished ws-avs run with identical
   settings, so the two rows differ only in the audio selection below.
2. ``av-model``: train an EZ-VSL-style audio-visual model (``ez_vsl.EZVSLNet``: multiple-instance
   contrast, tau 0.03, on ``av_levels``) on the training frames, with each frame's own audio window.
3. ``pseudo-masks``: WS-AVS's Eq. 6 mask (A > 1 - saliency, or A > threshold with ``refinement: c2am``),
   then, per frame, the audio-visual map S = cos(a_t, v) of that frame's audio, upsampled and min-max
   normalised, selects what to keep:

   - ``av_select: components`` (default): regions are scored by their mean S and accepted when it is
     >= ``av_threshold``; with ``av_keep_best`` each frame's best region is always accepted (a heat map
     is relative and cannot say "nothing sounds"; without it a weak map empties frames). The regions are
     ``av_regions: activation`` (default): the connected components (8-connectivity) of the C2AM initial
     mask A > ``c2am_threshold``, object-like proposals; each Eq. 6 pixel belongs to the proposal
     nearest to it inside the Eq. 6 mask, and what belongs to a rejected one is removed (cutting out the
     proposal alone left a ring of Eq. 6 mask around it). Or ``av_regions: pseudo``: the components of
     the Eq. 6 mask itself, the accepted ones kept.
     Eq. 6 masks merge touching objects, and with an over-confident saliency map the whole frame (seen
     on the synthetic MS3 demo: one region, nothing to select), while C2AM's thresholded map separates
     the objects;
   - ``av_select: pixels``: Eq. 6 mask AND S > ``av_threshold``.

   ``av_threshold_from: val`` chooses ``av_threshold`` instead: the same pipeline (C2AM map with the
   training frames' polarity, saliency, Eq. 6, the AV map, the selection) runs on the validation split,
   every value of ``av_threshold_grid`` is scored with the clean protocol against its ground truth, and
   the best (ties: nearest 0.5) selects the training frames' pseudo masks; the manifest keeps the sweep.
   The validation split is the one every method already reads to keep its best checkpoint. The default
   grid starts at the map's midpoint (0.5, 0.55, ..., 0.95): below it the "selection" keeps pixels the
   map rates nearer its minimum, i.e. nearly the whole Eq. 6 mask, and on synthetic MS3 the validation
   mIoU of the pseudo masks (flat there: 19.8 at 0.05, 18.0 at 0.5 on seed 1) would choose that deaf mask.
   ``av_models: K`` (> 1 needs ``av_threshold_from: val``) trains K audio-visual models in stage 2 (the first
   with the run's seed, so it is the single model; the k-th with seed + k x ``DRAW_SEED_STEP``, in
   ``av-model/draw-k``), runs the validation choice for each, and keeps the model and threshold with the
   best validation mIoU (ties: the first). The AV model is what varies most between draws of a run, and
   the validation mIoU of its selected masks follows the test mIoU of the segmenter trained on them.
   ``av_combine: mean`` uses the K models together instead: the selection reads the mean of their
   min-max normalised maps (``AVEnsemble``), its threshold chosen on validation like a single model's
   (or ``av_threshold`` with ``av_threshold_from: config``); each model's own validation score is still
   recorded. Averaging draws whose errors differ gave better selected masks than the best draw alone.
   ``refinement_from: val`` (with ``refinement: saliency``) scores every candidate a second time with the C2AM
   mask alone, A > ``c2am_alone_threshold`` (its components the proposals), in place of Eq. 6, i.e. as
   ``refinement: c2am`` with that threshold would select, and keeps the base (and its model choice and
   threshold) with the better validation mIoU (ties: Eq. 6); the manifest's ``refinement_choice`` keeps both
   scores. The saliency detector is trained on the initial masks either way. On synthetic S4 the saliency map
   of some draws covers half of the objects, and Eq. 6 then cuts the selected objects in half.
   ``refinement_from: segmenter`` makes the same two candidates (each base with its own model choice,
   quiet-frame choice and threshold, chosen on validation as above) but writes both: the Eq. 6 base's masks
   to ``pseudo/masks``, the C2AM-alone base's to ``pseudo/c2am-alone/masks``; stage 4 decides (below). The
   validation mIoU of the pseudo masks did not tell the bases apart (synthetic S4: margins of -1 to +2.6
   points where the segmenters trained on them differ by 5-14 points on test), the segmenters' own
   validation scores did.
   ``av_silence_db``: the frames whose second (one frame per second) is more than that many dB below the
   clip's loudest second in RMS get an empty pseudo mask: nothing sounds there (``SilenceGate``); a heat
   map is relative and always marks something. MS3 and AVSS mark per second what sounds, and on synthetic
   MS3 a sixth of the frames show a silent second. ``av_silence_from: val`` writes the masks with or without
   that emptying by the validation score of the two (ties: without), so a dataset whose annotation marks
   the object in its quiet seconds too (S4: the object of the whole clip) keeps them.
   ``pseudo_crf``: every mask written (each base's) is refined by a dense CRF on its frame (``crf_pseudo_mask``;
   the mask as selected where the CRF would empty it), after every validation choice above. With
   ``pseudo_crf_from: val`` each written base's ``av_threshold`` is then chosen a second time on validation,
   among ``pseudo_crf_grid``, scoring the masks as the CRF writes them (``choose_crf_thresholds``): the CRF
   completes a mask that covers most of its object and erases the rest, so it favours a lower threshold
   (more of each object) than the masks before it do. The base, model and quiet-frame choices stay those
   made before the CRF.

   Written to ``pseudo/masks`` (what the segmenter trains on), with ``pseudo/eq6`` (before the audio
   selection), ``pseudo/av-maps``, a manifest holding the quality of both against the ground truth of
   the training frames that have it, and a contact sheet.
4. ``segmenter``: WS-AVS's final training (``ws_avs.stage_segmenter``) on the selected masks. With
   ``refinement_from: segmenter``: one segmenter on each base's masks (``segmenter/eq6``,
   ``segmenter/c2am-alone``, the same seed and settings), each keeping its best validation checkpoint as
   always; the one whose best validation mIoU is higher (ties: Eq. 6) is copied to ``segmenter/`` (what
   every later command loads), its choice and both scores in the stage's summary (``refinement_choice``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from avseg.config import TrainSettings
from avseg.engine import distributed as dist
from avseg.engine.checkpoint import load_model_weights
from avseg.engine.evaluate import iterate_outputs, save_probability_png
from avseg.engine.trainer import seed_everything
from avseg.fileio import atomic_write_bytes, write_text_atomic
from avseg.methods import ws_avs
from avseg.methods.base import MethodSpec, Stage, StageContext
from avseg.methods.c2am import REUSE_KEYS, reusable
from avseg.methods.cam import check_threshold
from avseg.methods.common import THRESHOLD_GRID, SilenceGate, best_on_split_each, best_threshold, make_dataset, silenced, train_stage
from avseg.methods.ez_vsl import EZVSLNet
from avseg.metrics.binary import BinaryAccumulator, frame_iou_clean
from avseg.models.zoo import AUDIO_ENCODERS, VISUAL_ENCODERS, check_audio_frontend
from avseg.pseudo.crf import crf_refine_masks
from avseg.types import AVBatch
from avseg.visualize import colormap, contact_sheet, denormalize, mask_image, save_image_atomic

log = logging.getLogger("avseg")

SELECT_MODES = ("components", "pixels")
REGION_SOURCES = ("activation", "pseudo")
COMBINE_MODES = ("best", "mean")
REFINEMENT_SOURCES = ("config", "val", "segmenter")
BASE_NAMES = ("saliency", "c2am")  # the two pseudo-mask bases refinement_from compares: Eq. 6 with the saliency map, the C2AM mask alone
ALONE_DIR = "c2am-alone"  # refinement_from: segmenter: pseudo/<this>/masks holds the C2AM-alone base's masks, segmenter/<this> its segmenter
BASE_LABELS = {"saliency": "Eq. 6", "c2am": "the C2AM mask alone"}
EQ6_DIR = "eq6"  # refinement_from: segmenter: segmenter/<this> holds the segmenter trained on the Eq. 6 base's masks (pseudo/masks)


@dataclass
class WSAVSAudioConfig(ws_avs.WSAVSConfig):
    """WS-AVS settings plus the audio-visual model and the selection rule (``av_*``)."""

    av_visual: str = "resnet18"
    av_visual_weights: str = "imagenet"
    av_audio: str = "resnet18"
    av_audio_weights: str = "imagenet"
    av_levels: list[int] = field(default_factory=lambda: [3])
    av_embed_dim: int = 512
    av_audio_norm: Literal["batch", "none"] = "batch"  # BatchNorm1d on the AV model's audio encoder output ("none": off)
    av_label_negatives: bool = False  # the AV contrast ignores batch videos sharing a label (uses the video labels)
    av_tau: float = 0.03
    av_train_frames: int | None = 1
    av_train: TrainSettings = field(default_factory=lambda: TrainSettings(epochs=20, lr=1e-4, batch_size=64, optimizer="adam", schedule="constant"))
    av_select: Literal["components", "pixels"] = "components"
    av_regions: Literal["activation", "pseudo"] = "activation"  # components of: the C2AM initial mask ("activation") or the Eq. 6 mask ("pseudo")
    av_threshold: float = 0.5
    av_threshold_from: Literal["config", "val"] = "config"  # "val": the pseudo-masks stage chooses av_threshold on the validation split
    av_threshold_grid: list[float] = field(default_factory=lambda: [t for t in THRESHOLD_GRID if t >= 0.5])  # the values "val" chooses among
    av_keep_best: bool = True
    av_models: int = 1  # audio-visual models trained (other seeds); how they are used: av_combine
    av_combine: Literal["best", "mean"] = "best"  # av_models > 1: keep the best on validation (needs av_threshold_from: val), or average their maps
    # "val": also try the C2AM mask alone in place of Eq. 6, keep the base whose pseudo masks score better on validation;
    # "segmenter": write the pseudo masks of both, train a segmenter on each, keep the one that scores better on validation
    refinement_from: Literal["config", "val", "segmenter"] = "config"
    c2am_alone_threshold: float = 0.5  # refinement_from: val / segmenter: the C2AM-alone candidate's mask and proposals, A > this
    av_silence_db: float | None = None  # frames whose second is more than this many dB below the clip's loudest get an empty pseudo mask
    av_silence_from: Literal["config", "val"] = "config"  # "val": score the masks with and without that emptying on validation, keep the better
    pseudo_crf: bool = False  # every written pseudo mask (each base's, after the audio selection) refined by a dense CRF on its frame (kept as selected where the CRF would empty it)
    pseudo_crf_confidence: float = 0.7  # the CRF's unary: P(foreground) inside the selected mask, 1 - this outside
    # "val": each written base's av_threshold re-chosen on the validation split with the CRF applied to every candidate
    # (the masks as written are scored), among pseudo_crf_grid; "config": the threshold chosen before the CRF
    pseudo_crf_from: Literal["config", "val"] = "config"
    pseudo_crf_grid: list[float] = field(default_factory=lambda: [round(0.3 + 0.05 * k, 2) for k in range(9)])  # 0.30, 0.35, ..., 0.70
    reuse_run: str | None = None  # a finished ws-avs run whose c2am / activation-maps / saliency stages are reused if identical

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, table in (("av_visual", VISUAL_ENCODERS), ("av_audio", AUDIO_ENCODERS)):
            if getattr(self, name) not in table:
                raise ValueError(f"{name} {getattr(self, name)!r} is not one of {sorted(table)}")
        check_audio_frontend("av_audio", self.av_audio, self.data.audio_frontend)
        if not self.av_levels or any(not 0 <= s <= 3 for s in self.av_levels):
            raise ValueError(f"av_levels must be a non-empty list within 0..3, got {self.av_levels}")
        if self.av_select not in SELECT_MODES:
            raise ValueError(f"av_select must be one of {SELECT_MODES}, got {self.av_select!r}")
        if self.av_regions not in REGION_SOURCES:
            raise ValueError(f"av_regions must be one of {REGION_SOURCES}, got {self.av_regions!r}")
        if self.av_tau <= 0:
            raise ValueError(f"av_tau must be > 0, got {self.av_tau}")
        check_threshold("av_threshold", self.av_threshold)
        if self.av_threshold_from not in ("config", "val"):
            raise ValueError(f"av_threshold_from must be 'config' or 'val', got {self.av_threshold_from!r}")
        if not self.av_threshold_grid:
            raise ValueError("av_threshold_grid must list at least one threshold")
        for t in self.av_threshold_grid:
            check_threshold("av_threshold_grid", t)
        if self.av_models < 1:
            raise ValueError(f"av_models must be >= 1, got {self.av_models}")
        if self.av_combine not in COMBINE_MODES:
            raise ValueError(f"av_combine must be one of {COMBINE_MODES}, got {self.av_combine!r}")
        if self.av_models > 1 and self.av_combine == "best" and self.av_threshold_from != "val":
            raise ValueError(f"av_models: {self.av_models} with av_combine: best needs av_threshold_from: val (the models are compared on the validation split)")
        if self.refinement_from not in REFINEMENT_SOURCES:
            raise ValueError(f"refinement_from must be one of {REFINEMENT_SOURCES}, got {self.refinement_from!r}")
        if self.refinement_from != "config" and (self.refinement != "saliency" or self.av_threshold_from != "val"):
            raise ValueError(f"refinement_from: {self.refinement_from} needs refinement: saliency and av_threshold_from: val (Eq. 6 with the saliency map and the C2AM mask alone are compared on the validation split)")
        if self.refinement_from == "segmenter" and not self.select_best:
            raise ValueError("refinement_from: segmenter needs select_best: true (the two segmenters are compared by their best validation mIoU)")
        check_threshold("c2am_alone_threshold", self.c2am_alone_threshold)
        if self.av_silence_db is not None and not 0.0 < self.av_silence_db <= 60.0:
            raise ValueError(f"av_silence_db must be in (0, 60] dB (or null: off), got {self.av_silence_db}")
        if self.av_silence_from not in ("config", "val"):
            raise ValueError(f"av_silence_from must be 'config' or 'val', got {self.av_silence_from!r}")
        if self.av_silence_from == "val" and (self.av_silence_db is None or self.av_threshold_from != "val"):
            raise ValueError("av_silence_from: val needs av_silence_db and av_threshold_from: val (the masks with and without the quiet frames emptied are compared on the validation split)")
        if self.pseudo_crf_from not in ("config", "val"):
            raise ValueError(f"pseudo_crf_from must be 'config' or 'val', got {self.pseudo_crf_from!r}")
        if self.pseudo_crf_from == "val" and not (self.pseudo_crf and self.av_threshold_from == "val"):
            raise ValueError("pseudo_crf_from: val needs pseudo_crf: true and av_threshold_from: val (the thresholds are re-chosen on the validation split with the CRF)")
        if not self.pseudo_crf_grid:
            raise ValueError("pseudo_crf_grid must list at least one threshold")
        for t in self.pseudo_crf_grid:
            check_threshold("pseudo_crf_grid", t)
        if not 0.5 < self.pseudo_crf_confidence < 1.0:
            raise ValueError(f"pseudo_crf_confidence must be in (0.5, 1): the CRF's P(foreground) inside the selected mask, got {self.pseudo_crf_confidence}")

    def train_settings(self) -> dict[str, TrainSettings]:
        return {**super().train_settings(), "av_train": self.av_train}


# --- selection ----------------------------------------------------------------------------------------
def _max_pool_spread(labels: Tensor, mask: Tensor, fill_only: bool) -> Tensor:
    """Spread float labels (0 = none; zero outside ``mask``) inside ``mask`` by 3x3 max pooling until
    nothing changes: every mask pixel takes its neighbourhood's largest label (``fill_only``: only pixels
    still unlabelled do, so each keeps the first label that reaches it). Returns int64 labels."""
    n, h, w = mask.shape
    if h * w >= 2**24:
        raise ValueError(f"frames of {h}x{w} pixels exceed the float32-exact label range")
    for _ in range(h * w):
        pooled = F.max_pool2d(labels[:, None], 3, stride=1, padding=1)[:, 0]
        grown = torch.where(mask & (labels == 0) if fill_only else mask, pooled, labels)
        if torch.equal(grown, labels):
            break
        labels = grown
    return labels.long()


def connected_components(mask: Tensor) -> Tensor:
    """(N, H, W) bool -> (N, H, W) int64 labels (8-connectivity), 0 = background, ids unique per frame.

    Label propagation by 3x3 max pooling until nothing changes (iterations ~ the longest path inside a
    component): batched, on any device, no compiled dependency.
    """
    n, h, w = mask.shape
    ids = torch.arange(1, h * w + 1, device=mask.device, dtype=torch.float32).view(1, h, w).expand(n, h, w)
    return _max_pool_spread(torch.where(mask, ids, torch.zeros_like(ids)), mask, fill_only=False)


def grow_within(seeds: Tensor, mask: Tensor) -> Tensor:
    """Grow seed labels inside a mask: each mask pixel takes the label of its nearest seed.

    Args:
        seeds: (N, H, W) int64, 0 = no seed (seeds outside ``mask`` are ignored).
        mask: (N, H, W) bool.

    Returns:
        (N, H, W) int64: inside ``mask``, the label of the seed nearest along 8-connected paths that stay
        inside the mask (pixels reached by two labels in the same step take the larger); 0 where no seed
        is reachable and outside the mask. Breadth-first growth by 3x3 max pooling, one ring per step.
    """
    return _max_pool_spread(torch.where(mask, seeds, torch.zeros_like(seeds)).float(), mask, fill_only=True)


def select_by_audio(
    masks: Tensor, sim: Tensor, mode: str = "components", threshold: float = 0.5, keep_best: bool = True, proposals: Tensor | None = None
) -> Tensor:
    """Keep the parts of binary masks that an audio-visual similarity map selects.

    Args:
        masks: (N, H, W) bool, the audio-agnostic pseudo masks.
        sim: (N, H, W) in [0, 1], the frame's audio-visual map (min-max normalised).
        mode: "components" (regions whose mean ``sim`` >= threshold are accepted) or "pixels"
            (``masks & (sim > threshold)``).
        threshold: on ``sim``.
        keep_best: components only: each frame's region of highest mean ``sim`` is always accepted.
        proposals: components only. None: the regions are the connected components of ``masks``, and
            the accepted ones are kept. (N, H, W) bool: the regions are the connected components of
            ``proposals`` (object-like blobs); every pixel of ``masks`` belongs to the proposal nearest
            to it inside ``masks`` (:func:`grow_within`; ties go to an accepted one), and the pixels
            belonging to rejected proposals are removed (pixels no proposal reaches stay). Removing only
            the rejected proposal itself would leave a ring of ``masks`` around it: the proposals
            (C2AM map > threshold) are the objects' cores, the Eq. 6 mask spreads wider.

    Returns:
        (N, H, W) bool, a subset of ``masks``.
    """
    if mode == "pixels":
        return masks & (sim > threshold)
    if mode != "components":
        raise ValueError(f"mode must be one of {SELECT_MODES}, got {mode!r}")
    regions = masks if proposals is None else proposals
    if not regions.any():
        return masks.clone()
    n, h, w = regions.shape
    labels = connected_components(regions)
    frame = torch.arange(n, device=regions.device).view(n, 1, 1).expand(n, h, w)
    keys = (frame * (h * w + 1) + labels)[regions]  # (P,) one key per component of each frame
    unique, inverse = torch.unique(keys, return_inverse=True)
    values = sim[regions].float()
    sums = torch.zeros(len(unique), device=sim.device).index_add_(0, inverse, values)
    counts = torch.zeros(len(unique), device=sim.device).index_add_(0, inverse, torch.ones_like(values))
    means = sums / counts  # (C,)
    accept = means >= threshold
    if keep_best:
        owner = unique // (h * w + 1)  # frame of each component
        best = torch.full((n,), -1.0, device=sim.device).scatter_reduce(0, owner, means, reduce="amax")
        accept = accept | (means >= best[owner])
    accepted = torch.zeros_like(regions)
    accepted[regions] = accept[inverse]
    if proposals is None:
        return accepted
    seeds = torch.where(accepted, 2, torch.where(regions, 1, 0))  # 2: accepted, 1: rejected (ties -> accepted)
    return masks & (grow_within(seeds, masks) != 1)  # remove what belongs to a rejected proposal


# --- stages -------------------------------------------------------------------------------------------
def build_av_model(cfg: WSAVSAudioConfig, pretrained: bool = True) -> EZVSLNet:
    visual = VISUAL_ENCODERS[cfg.av_visual](weights=cfg.av_visual_weights if pretrained else "none")
    audio = AUDIO_ENCODERS[cfg.av_audio](weights=cfg.av_audio_weights if pretrained else "none")
    return EZVSLNet(visual, audio, levels=tuple(cfg.av_levels), embed_dim=cfg.av_embed_dim, tau=cfg.av_tau, audio_norm=cfg.av_audio_norm, label_negatives=cfg.av_label_negatives)


DRAW_SEED_STEP = 100_003  # seed offset of the k-th extra audio-visual model: runs with seeds 0, 1, 2 never share a draw


def av_model_dir(ctx: StageContext, k: int) -> Path:
    """The k-th audio-visual model's folder: ``av-model`` (k = 0, as with a single model), ``av-model/draw-k``."""
    return ctx.path("av-model") if k == 0 else ctx.path("av-model", f"draw-{k}")


def stage_av_model(ctx: StageContext) -> dict[str, Any]:
    """Train ``av_models`` audio-visual models: the first with the run's seed (what a single model is), the
    k-th with seed + k x DRAW_SEED_STEP, its initialisation included."""
    cfg: WSAVSAudioConfig = ctx.config
    draws: list[dict[str, Any]] = []
    for k in range(cfg.av_models):
        s = cfg.av_train if k == 0 else dataclasses.replace(cfg.av_train, seed=cfg.av_train.seed + k * DRAW_SEED_STEP)
        if k:
            seed_everything(s.seed)  # the runner seeded the first model's initialisation
        model = build_av_model(cfg)
        train = make_dataset(cfg.data, "train", augment=True, sample_frames=cfg.av_train_frames, seed=s.seed)
        desc = "av-model" if k == 0 else f"av-model draw {k}"
        draws.append({"seed": s.seed, **train_stage(model, train, s, av_model_dir(ctx, k), resume=ctx.resume, desc=desc)})
    first = {key: value for key, value in draws[0].items() if key != "seed"}  # the single model's summary, as before av_models
    return first if cfg.av_models == 1 else {**first, "draws": draws}


def load_av_net(cfg: WSAVSAudioConfig, weights: Path, device: torch.device) -> EZVSLNet:
    """An audio-visual model with the weights of ``weights``, on ``device``, in eval mode."""
    model = build_av_model(cfg, pretrained=False)
    load_model_weights(model, weights)
    return model.to(device).eval()


def load_av_model(cfg: WSAVSAudioConfig, ctx: StageContext, k: int) -> EZVSLNet:
    """The run's k-th trained audio-visual model (``av_model_dir``)."""
    return load_av_net(cfg, av_model_dir(ctx, k) / "last.safetensors", ctx.device)


def crf_pseudo_mask(image: np.ndarray, mask: np.ndarray, confidence: float) -> np.ndarray:
    """``pseudo_crf``: the audio-selected mask refined by ``crf_refine_mask``, or the selected mask itself (binary)
    where the CRF would empty it. The CRF votes among pixels of similar colour, so it erases a mask that covers
    less than half of its object: on synthetic MS3 (seed 2) it emptied 295 of the 801 sounding training frames'
    masks, and the segmenter learnt to mark less (test mIoU 36.8 -> 26.9); keeping those masks as selected,
    the sounding frames' pseudo-mask mIoU went 26.1 -> 37.5 with 6 empty (as before the CRF)."""
    return crf_pseudo_masks(image, np.asarray(mask)[None], confidence)[0]


def crf_pseudo_masks(image: np.ndarray, masks: np.ndarray, confidence: float, one_product: bool = False) -> np.ndarray:
    """``crf_pseudo_mask`` of several masks of one frame, (K, H, W) -> (K, H, W) float32 in {0, 1}, the frame's
    CRF kernel built once (``crf_refine_masks``; ``one_product``: faster, for scoring candidates)."""
    binary = (np.asarray(masks) > 0.5).astype(np.float32)
    refined = crf_refine_masks(image, binary, confidence, one_product=one_product)
    emptied = ~refined.reshape(len(refined), -1).any(axis=1)
    refined[emptied] = binary[emptied]
    return refined


class AVEnsemble:
    """Several audio-visual models (loaded, on their device, in eval mode) as one (``av_combine: mean``): the
    mean of their per-frame maps, each min-max normalised as ``EZVSLNet.av_map`` returns it (so each model
    weighs the same)."""

    def __init__(self, models: Sequence[EZVSLNet]) -> None:
        if not models:
            raise ValueError("an ensemble needs at least one audio-visual model")
        self.members = list(models)

    @torch.no_grad()
    def av_map(self, batch: AVBatch) -> Tensor:
        return mean_map([m.av_map(batch) for m in self.members])


def mean_map(maps: Sequence[Tensor]) -> Tensor:
    """The mean of same-shaped maps in [0, 1] (what ``AVEnsemble`` selects with)."""
    return torch.stack(list(maps)).mean(0)


COLUMNS = ["frame", "C2AM map", "saliency", "AV map", "Eq. 6 mask", "audio-selected", "ground truth"]


def sweep_selection(
    eq6: Tensor, sim: Tensor, proposals: Tensor | None, gts: Tensor, mode: str, keep_best: bool, grid: Sequence[float] = THRESHOLD_GRID
) -> dict[float, float]:
    """Sum over frames of the clean-protocol IoU of ``select_by_audio(eq6, sim, mode, t, keep_best, proposals)``
    against ``gts`` (all (N, H, W)), for every ``t`` of ``grid``."""
    return {float(t): float(frame_iou_clean(select_by_audio(eq6, sim, mode, t, keep_best, proposals).float(), gts).sum()) for t in grid}


def stored_activation(c2am: ws_avs.C2AMNet, batch: AVBatch, flip: bool) -> Tensor:
    """(B, T, H, W) the C2AM map A of a batch's frames with polarity ``flip``, quantised to 8 bits as the
    activation-maps stage stores it (``save_probability_png``): the validation choices see the maps the training
    frames' pseudo masks are made from."""
    b, t = batch.frames.shape[:2]
    a = c2am.activation(batch.frames.flatten(0, 1), flip=flip)
    return (torch.floor(a.clamp(0, 1) * 255.0 + 0.5) / 255.0).view(b, t, *a.shape[-2:])


def choose_av_threshold(
    cfg: WSAVSAudioConfig, c2am: ws_avs.C2AMNet, flip: bool, saliency: ws_avs.SaliencyNet | None, av_model: EZVSLNet | AVEnsemble, device: torch.device,
    split: str = "val", grid: Sequence[float] = THRESHOLD_GRID, chunk: int = 32,
) -> dict[str, Any]:  # fmt: skip
    """The ``av_threshold`` of ``grid`` whose audio-selected Eq. 6 masks score the best clean mIoU on ``split``'s
    frames with a ground-truth mask (ties: nearest 0.5). The masks are made as for the training frames: the C2AM
    map with their polarity (``flip``), quantised to 8 bits as the activation-maps stage stores it, the saliency
    map, Eq. 6, the audio-visual map of the frame's own sound. Frames are scored ``chunk`` at a time (memory
    stays bounded on any split). Returns the summary the pseudo-masks stage records (the whole sweep included)."""
    return choose_av_thresholds(cfg, c2am, flip, saliency, [av_model], device, split=split, grid=grid, chunk=chunk)[0]


def choose_av_thresholds(
    cfg: WSAVSAudioConfig, c2am: ws_avs.C2AMNet, flip: bool, saliency: ws_avs.SaliencyNet | None, av_models: Sequence[EZVSLNet | AVEnsemble],
    device: torch.device, split: str = "val", grid: Sequence[float] = THRESHOLD_GRID, chunk: int = 32, with_mean: bool = False,
    alone: float | None = None, silence: Sequence[bool] | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """``choose_av_threshold`` for each of several audio-visual models, in one pass over the split: C2AM,
    saliency and Eq. 6 are computed once per frame, the audio-visual map once per model. One summary per
    model, each equal to ``choose_av_threshold`` run on that model alone; ``with_mean`` adds one last summary,
    the models' mean map (``AVEnsemble``) as one more candidate.

    ``alone`` (a threshold on the C2AM map) scores every candidate a second time with the C2AM mask alone,
    A > ``alone``, in place of Eq. 6 (its components the proposals with ``av_regions: activation``), as
    ``refinement: c2am`` with ``c2am_threshold: alone`` selects. ``silence`` lists, for each pass, whether the
    masks of the frames whose second is quiet (``SilenceGate`` at ``av_silence_db``) are emptied, as the
    pseudo-masks stage writes them; None: as configured (emptied when ``av_silence_db`` is set). The summaries
    come in the order silence x base (Eq. 6, then alone) x candidate."""
    dataset = make_dataset(cfg.data, split, audio=True)
    count = len(av_models) + int(with_mean)
    bases = 1 if alone is None else 2
    passes = list(silence) if silence is not None else [cfg.av_silence_db is not None]
    if any(passes) and cfg.av_silence_db is None:
        raise ValueError("emptying the quiet frames needs av_silence_db")
    gate = SilenceGate(dataset.records, cfg.av_silence_db) if cfg.av_silence_db is not None and any(passes) else None

    def inputs(batch: AVBatch) -> Tensor:
        a = stored_activation(c2am, batch, flip)
        eq6 = a > cfg.c2am_threshold if saliency is None else ws_avs.eq6_mask(a, saliency.predict(batch), cfg.eq6_floor)
        sims = [m.av_map(batch) for m in av_models]
        if with_mean:
            sims.append(mean_map(sims))
        quiet = torch.zeros_like(a, dtype=torch.bool) if gate is None else gate(batch)[:, :, None, None].expand_as(a)
        masks = [eq6, a > cfg.c2am_threshold, quiet] + ([] if alone is None else [a > alone])
        return torch.stack([*(m.float() for m in masks), *sims], dim=2)  # (B, T, 3 [+ 1] + candidates, H, W)

    def iou_sums(stacked: Tensor, gts: Tensor) -> list[dict[float, float]]:  # stacked: (n, 3 [+ 1] + candidates, H, W) as ``inputs`` makes them
        quiet = stacked[:, 2] > 0.5
        sims = stacked[:, 2 + bases :]
        pairs = [(stacked[:, 0] > 0.5, stacked[:, 1] > 0.5)] + ([] if alone is None else [(stacked[:, 3] > 0.5,) * 2])  # (mask, its proposals)
        return [sweep_selection(mask & ~quiet if gated else mask, sims[:, k], props if cfg.av_regions == "activation" else None, gts, cfg.av_select, cfg.av_keep_best, grid)
                for gated in passes for mask, props in pairs for k in range(count)]  # fmt: skip

    outputs = iterate_outputs(inputs, dataset, device, batch_size=4, progress=f"av_threshold on {split}")
    return best_on_split_each(outputs, iou_sums, grid, len(passes) * bases * count, split=split, where=str(cfg.data.root), setting="av_threshold_from", chunk=chunk)


def pick_candidate(candidates: Sequence[dict[str, Any]], models: int, mean: bool) -> tuple[dict[str, Any], int]:
    """The validation summary that selects, of one base's candidates (one per audio-visual model, then the
    models' mean map when ``mean``), and the model kept (0 for the mean): the mean's, or the best model's
    (ties: the first)."""
    if mean:
        return candidates[models], 0
    chosen = max(range(models), key=lambda k: (candidates[k]["miou"], -k))
    return candidates[chosen], chosen


@dataclass
class Selection:
    """One set of training-frame pseudo masks the pseudo-masks stage writes: a base (``refinement``: Eq. 6 with
    the saliency map, or the C2AM mask A > ``base_threshold``), whether quiet frames are emptied, the
    audio-visual map that selects (a model or the mean of several) and its threshold."""

    folder: str  # under pseudo/: where its masks go
    refinement: str
    base_threshold: float
    silence_on: bool
    threshold: float
    av_model: EZVSLNet | AVEnsemble

    def base(self, a: Tensor, sal: Tensor, eq6_floor: float) -> Tensor:
        """The audio-agnostic mask the audio-visual map selects from (any shape): A > ``base_threshold`` (the C2AM
        mask alone) or Eq. 6 with the saliency map ``sal``; quiet frames not yet emptied."""
        return a > self.base_threshold if self.refinement == "c2am" else ws_avs.eq6_mask(a, sal, eq6_floor)


def choose_crf_thresholds(
    cfg: WSAVSAudioConfig, c2am: ws_avs.C2AMNet, flip: bool, saliency: ws_avs.SaliencyNet | None, selections: Sequence[Selection],
    device: torch.device, grid: Sequence[float], split: str = "val",
) -> list[dict[str, Any]]:  # fmt: skip
    """``pseudo_crf_from: val``: for each selection (a base, its quiet-frame emptying and audio-visual map, as
    chosen before the CRF), the ``av_threshold`` of ``grid`` whose masks, selected and then refined as the
    pseudo-masks stage writes them (``crf_pseudo_masks``), score the best clean mIoU on ``split``'s frames with a
    ground-truth mask (ties: nearest 0.5). The masks are made as ``choose_av_thresholds`` makes them (the C2AM map
    with the training frames' polarity, quantised to 8 bits, the saliency map, the frame's own sound); each
    frame's CRF kernel is built once for all its candidates. One summary per selection, with the whole sweep.

    Why: the CRF grows a mask that covers most of its object to the whole object and erases the rest, so the
    best threshold before the CRF (precision of the selected pixels) is not the best after it. On synthetic MS3
    (seed 0, the training frames that sound) the selected C2AM masks at 0.55 (the choice before the CRF) scored
    27.9 -> 47.0 mIoU with the CRF, at 0.45 26.4 -> 52.6."""
    dataset = make_dataset(cfg.data, split, audio=True)
    gate = SilenceGate(dataset.records, cfg.av_silence_db) if cfg.av_silence_db is not None and any(sel.silence_on for sel in selections) else None
    selectors = {id(sel.av_model): sel.av_model for sel in selections}
    keys = list(selectors)

    def inputs(batch: AVBatch) -> Tensor:
        a = stored_activation(c2am, batch, flip)
        sal = torch.zeros_like(a) if saliency is None else saliency.predict(batch)
        quiet = torch.zeros_like(a, dtype=torch.bool) if gate is None else gate(batch)[:, :, None, None].expand_as(a)
        return torch.stack([a, sal, quiet.float(), *(selectors[k].av_map(batch) for k in keys)], dim=2)  # (B, T, 3 + maps, H, W)

    sums = np.zeros((len(selections), len(grid)))
    frames = 0
    for fo in iterate_outputs(inputs, dataset, device, batch_size=4, progress=f"pseudo_crf thresholds on {split}"):
        if fo.gt is None:
            continue
        out = torch.from_numpy(np.asarray(fo.output))
        a, sal, quiet = out[0], out[1], out[2] > 0.5
        candidates = []
        for sel in selections:
            base = sel.base(a, sal, cfg.eq6_floor)
            base = base & ~quiet if sel.silence_on else base
            sim = out[3 + keys.index(id(sel.av_model))]
            proposals = (a > sel.base_threshold)[None] if cfg.av_regions == "activation" else None
            candidates += [select_by_audio(base[None], sim[None], cfg.av_select, t, cfg.av_keep_best, proposals)[0] for t in grid]
        refined = crf_pseudo_masks(denormalize(fo.frame), torch.stack(candidates).float().numpy(), cfg.pseudo_crf_confidence, one_product=True)
        gts = np.broadcast_to(np.asarray(fo.gt) != 0, refined.shape)
        sums += frame_iou_clean(refined, gts).reshape(len(selections), len(grid))
        frames += 1
    if not frames:
        raise ValueError(f"the {split} split of {cfg.data.root} has no frame with a ground-truth mask: pseudo_crf_from: val cannot choose a threshold there")
    out_summaries = []
    for row in sums:
        sweep = {float(t): float(v) / frames for t, v in zip(grid, row)}
        best = best_threshold(sweep)
        out_summaries.append({"threshold": best, "split": split, "frames": frames, "miou": sweep[best], "sweep": {f"{t:.2f}": round(v, 5) for t, v in sweep.items()}})
    return out_summaries


def stage_pseudo_masks(ctx: StageContext) -> dict[str, Any]:
    """Eq. 6 masks filtered by the audio-visual map -> pseudo/masks (+ eq6, av-maps, manifest, sheet); with
    ``refinement_from: segmenter`` also the C2AM-alone base's -> pseudo/c2am-alone/masks."""

    cfg: WSAVSAudioConfig = ctx.config
    layout = cfg.data.layout
    train = make_dataset(cfg.data, "train", audio=True, pseudo_dir=ctx.path("pseudo", "maps"))
    saliency = None
    if cfg.refinement == "saliency":
        saliency = ws_avs.SaliencyNet(VISUAL_ENCODERS[cfg.saliency_visual](weights="none"))
        load_model_weights(saliency, ctx.path("saliency", "last.safetensors"))
        saliency = saliency.to(ctx.device).eval()
    threshold, choice, model_choice, chosen = cfg.av_threshold, None, None, 0
    refinement, base_threshold, refinement_choice = cfg.refinement, cfg.c2am_threshold, None
    silence_on, silence_choice = cfg.av_silence_db is not None, None
    second: tuple[bool, float, int] | None = None  # refinement_from: segmenter: the C2AM-alone base's (quiet frames emptied, threshold, model)
    mean = cfg.av_combine == "mean" and cfg.av_models > 1
    models: list[EZVSLNet] = []  # loaded for the validation choice, then the kept one (or all: av_combine mean) writes the pseudo masks
    checkpoints = [str(av_model_dir(ctx, k) / "last.safetensors") for k in range(cfg.av_models)]
    if cfg.av_threshold_from == "val":
        polarity = json.loads(ctx.path("pseudo", "maps", ws_avs.POLARITY_FILE).read_text())
        c2am = ws_avs.load_c2am(cfg, ctx.run_dir, ctx.device)
        models = [load_av_model(cfg, ctx, k) for k in range(cfg.av_models)]
        alone = cfg.c2am_alone_threshold if cfg.refinement_from != "config" else None
        silence = [False, True] if cfg.av_silence_from == "val" else [cfg.av_silence_db is not None]
        choices = choose_av_thresholds(cfg, c2am, bool(polarity["flip"]), saliency, models, ctx.device, grid=cfg.av_threshold_grid,
                                       with_mean=mean, alone=alone, silence=silence)  # fmt: skip
        per = cfg.av_models + int(mean)  # candidates per (silence, base) group: bases Eq. 6, then the C2AM mask alone
        groups = [(gated, name) for gated in silence for name in (BASE_NAMES if alone is not None else [cfg.refinement])]
        per_group = [choices[i * per : (i + 1) * per] for i in range(len(groups))]
        picks = [pick_candidate(cands, cfg.av_models, mean) for cands in per_group]  # (choice, chosen model) per group

        def best_group(pred: Any) -> int:  # ties: the earlier (no emptying, Eq. 6: the paper's)
            return max((i for i in range(len(groups)) if pred(groups[i])), key=lambda i: (picks[i][0]["miou"], -i))

        both = cfg.refinement_from == "segmenter"
        g = best_group(lambda grp: grp[1] == "saliency") if both else best_group(lambda grp: True)
        gated_kept, base_name = groups[g]
        if alone is not None:
            best = {n: best_group(lambda grp, n=n: grp[1] == n) for n in BASE_NAMES}
            scores = {n: picks[i][0] for n, i in best.items()}
            refinement_choice = {"chosen": None if both else base_name, "miou": {n: c["miou"] for n, c in scores.items()},
                                 "thresholds": {n: c["threshold"] for n, c in scores.items()}, "c2am_alone_threshold": alone}  # fmt: skip
            if both:
                refinement_choice.update(decided_by="segmenter", quiet_emptied={n: groups[i][0] for n, i in best.items()})
                second = (groups[best["c2am"]][0], scores["c2am"]["threshold"], picks[best["c2am"]][1])
            log.info("pseudo-masks: validation pseudo-mask mIoU %.1f with Eq. 6 (saliency), %.1f with the C2AM mask alone (A > %.2f): %s",
                     100 * scores["saliency"]["miou"], 100 * scores["c2am"]["miou"], alone,
                     "both written, a segmenter trained on each decides" if both else "Eq. 6 kept" if base_name == "saliency" else "the C2AM mask alone kept")  # fmt: skip
            if base_name == "c2am":
                refinement, base_threshold = "c2am", alone
        if len(silence) > 1:
            scores = {k: picks[best_group(lambda grp, v=v: grp[0] == v and (grp[1] == base_name or not both))][0] for k, v in (("kept", False), ("emptied", True))}
            silence_choice = {"emptied": gated_kept, "miou": {k: c["miou"] for k, c in scores.items()}, "av_silence_db": cfg.av_silence_db}
            log.info("pseudo-masks: validation pseudo-mask mIoU %.1f with the quiet frames kept, %.1f emptied (%.0f dB below the loudest second): %s",
                     100 * scores["kept"]["miou"], 100 * scores["emptied"]["miou"], cfg.av_silence_db, "emptied" if gated_kept else "kept")  # fmt: skip
        silence_on = gated_kept
        singles = per_group[g][: cfg.av_models]  # each model alone, in the kept group
        if cfg.av_models > 1:
            for k, c in enumerate(singles):
                log.info("pseudo-masks: audio-visual model %d: validation pseudo-mask mIoU %.1f at av_threshold %.2f", k, 100 * c["miou"], c["threshold"])
        choice, chosen = picks[g]
        if mean:
            log.info("pseudo-masks: the mean of the %d models' maps: validation pseudo-mask mIoU %.1f at av_threshold %.2f",
                     cfg.av_models, 100 * choice["miou"], choice["threshold"])  # fmt: skip
        threshold = choice["threshold"]
        if cfg.av_models > 1:
            model_choice = {"combine": cfg.av_combine, "chosen": None if mean else chosen, "checkpoints": checkpoints,
                            "miou": [c["miou"] for c in singles], "thresholds": [c["threshold"] for c in singles]}  # fmt: skip
        log.info("pseudo-masks: av_threshold %.2f chosen on validation (pseudo-mask mIoU %.1f over %d frames; %.1f at the configured %.2f)%s",
                 threshold, 100 * choice["miou"], choice["frames"], 100 * choice["sweep"].get(f"{cfg.av_threshold:.2f}", float("nan")), cfg.av_threshold,
                 "" if cfg.av_models == 1 else f", the mean of {cfg.av_models} audio-visual models" if mean else f", audio-visual model {chosen} of {cfg.av_models}")  # fmt: skip
    elif mean:
        models = [load_av_model(cfg, ctx, k) for k in range(cfg.av_models)]

    ensemble = AVEnsemble(models) if mean else None

    def av_model_for(k: int) -> EZVSLNet | AVEnsemble:
        if ensemble is not None:
            return ensemble
        return models[k] if models else load_av_model(cfg, ctx, k)

    selections = [Selection("masks", refinement, base_threshold, silence_on and cfg.av_silence_db is not None, threshold, av_model_for(chosen))]
    if second is not None:
        selections.append(Selection(f"{ALONE_DIR}/masks", "c2am", cfg.c2am_alone_threshold, second[0], second[1], av_model_for(second[2])))
    crf_choice: dict[str, Any] | None = None
    if cfg.pseudo_crf_from == "val":  # needs av_threshold_from: val (checked by the config), so c2am and polarity are loaded
        crf_picks = choose_crf_thresholds(cfg, c2am, bool(polarity["flip"]), saliency, selections, ctx.device, cfg.pseudo_crf_grid)
        crf_choice = {sel.folder: {"before_crf": sel.threshold, **crf_pick} for sel, crf_pick in zip(selections, crf_picks)}
        for sel, crf_pick in zip(selections, crf_picks):
            log.info("pseudo-masks: %s: av_threshold %.2f chosen on validation with the CRF (mIoU %.1f; %.1f at %.2f, the choice before the CRF)",
                     sel.folder, crf_pick["threshold"], 100 * crf_pick["miou"], 100 * crf_pick["sweep"].get(f"{sel.threshold:.2f}", float("nan")), sel.threshold)  # fmt: skip
        selections = [dataclasses.replace(sel, threshold=crf_pick["threshold"]) for sel, crf_pick in zip(selections, crf_picks)]
        threshold = selections[0].threshold
    gate = SilenceGate(train.records, cfg.av_silence_db) if cfg.av_silence_db is not None and any(s.silence_on for s in selections) else None
    selectors = {id(sel.av_model): sel.av_model for sel in selections}  # each distinct map computed once per batch (both bases may share it)

    def combine(batch: AVBatch) -> Tensor:
        a = batch.pseudo_masks  # (B, T, H, W) C2AM map A
        assert a is not None  # the writer's dataset reads the C2AM maps as its pseudo masks
        sal = torch.zeros_like(a) if saliency is None else saliency.predict(batch)
        quiet = None if gate is None else gate(batch)
        sims = {key: model.av_map(batch) for key, model in selectors.items()}  # (B, T, H, W) each
        out = [a, sal]
        for sel in selections:
            eq6 = silenced(sel.base(a, sal, cfg.eq6_floor), quiet if sel.silence_on else None)  # the selection keeps a subset: quiet frames stay empty
            sim = sims[id(sel.av_model)]
            proposals = (a > sel.base_threshold).flatten(0, 1) if cfg.av_regions == "activation" else None
            kept = select_by_audio(eq6.flatten(0, 1), sim.flatten(0, 1), cfg.av_select, sel.threshold, cfg.av_keep_best, proposals).view_as(eq6)
            out += [sim, eq6.float(), kept.float()]
        return torch.stack(out, dim=2)  # (B, T, 2 + 3 x selections, H, W)

    q_eq6, q_kept = BinaryAccumulator(protocol="clean"), [BinaryAccumulator(protocol="clean") for _ in selections]
    q_raw = [BinaryAccumulator(protocol="clean") for _ in selections]  # pseudo_crf: the selected masks before the CRF
    rows: list[list[np.ndarray]] = []
    labels: list[str] = []
    frames = gt_frames = 0
    silent = [0 for _ in selections]
    area_eq6 = 0.0
    area_kept = [0.0 for _ in selections]
    crf_kept = [0 for _ in selections]  # pseudo_crf: non-empty masks the CRF left as selected (unchanged, or erased and restored)
    folder = ctx.path("pseudo")
    for fo in iterate_outputs(combine, train, ctx.device, batch_size=4, progress="audio-selected pseudo masks"):
        amap, sal = fo.output[:2]
        sim, eq6 = fo.output[2:4]
        rel = fo.relpath(layout)
        rgb = denormalize(fo.frame)
        raw = [fo.output[4 + 3 * j] for j in range(len(selections))]  # each selection's audio-selected mask
        written = list(crf_pseudo_masks(rgb, np.stack(raw), cfg.pseudo_crf_confidence)) if cfg.pseudo_crf else raw
        kept = written[0]
        for j, sel in enumerate(selections):
            save_probability_png(written[j], folder / sel.folder / rel)
        save_probability_png(eq6, folder / "eq6" / rel)
        save_probability_png(sim, folder / "av-maps" / rel)
        if saliency is not None:
            save_probability_png(sal, folder / "saliency" / rel)
        frames += 1
        quiet_frame = gate is not None and bool(gate.seconds(fo.record.video_id, fo.t + 1)[fo.t])
        area_eq6 += float(eq6.mean())
        for j, sel in enumerate(selections):
            silent[j] += int(quiet_frame and sel.silence_on)
            crf_kept[j] += int(cfg.pseudo_crf and bool(raw[j].any()) and np.array_equal(written[j], raw[j] > 0.5))
            area_kept[j] += float(written[j].mean())
        if fo.gt is not None:
            gt_frames += 1
            q_eq6.update(eq6[None], fo.gt[None])
            for j in range(len(selections)):
                q_kept[j].update(written[j][None], fo.gt[None])
                q_raw[j].update(raw[j][None], fo.gt[None])
            if len(rows) < 8:
                rows.append([rgb, colormap(amap), colormap(sal), colormap(sim), mask_image(eq6), mask_image(kept), mask_image((fo.gt != 0).astype(np.float32))])
                labels.append(f"{fo.record.video_id}#{fo.frame_number}")
    sheet = folder / "contact_sheet.png"
    if rows:
        save_image_atomic(contact_sheet(rows, row_labels=labels, col_labels=COLUMNS[:5] + (["selected + CRF"] if cfg.pseudo_crf else COLUMNS[5:6]) + COLUMNS[6:]), sheet)

    def quality(acc: BinaryAccumulator) -> dict[str, Any]:
        q = acc.compute() if gt_frames else {"miou": None, "fscore": None, "frames": 0}
        return {"miou": q["miou"], "fscore": q["fscore"], "frames": q["frames"], "protocol": "clean"}

    summary = {
        "stage": "pseudo-masks", "refinement": refinement, "threshold": base_threshold, "refinement_choice": refinement_choice,
        "av_select": cfg.av_select, "av_regions": cfg.av_regions, "av_threshold": threshold, "av_threshold_from": cfg.av_threshold_from,
        "av_threshold_choice": choice, "av_model_choice": model_choice, "av_keep_best": cfg.av_keep_best,
        "frames": frames, "saliency": saliency is not None, "av_silence_db": cfg.av_silence_db if silence_on else None, "silence_choice": silence_choice, "silent_frames": silent[0],
        "quality": quality(q_kept[0]), "quality_eq6": quality(q_eq6),
        "area_eq6": area_eq6 / max(frames, 1), "area_kept": area_kept[0] / max(frames, 1),
        "contact_sheet": str(sheet) if rows else None,
        "av_checkpoint": checkpoints if mean else checkpoints[chosen],  # the mean's models (av_combine: mean) or the one used
        "pseudo_crf": {"confidence": cfg.pseudo_crf_confidence, "quality_before": quality(q_raw[0]), "unchanged": crf_kept[0],
                       "from": cfg.pseudo_crf_from, "threshold_choice": crf_choice} if cfg.pseudo_crf else None,
    }  # fmt: skip
    if second is not None:
        sel = selections[1]
        summary["c2am_alone"] = {"masks": str(folder / sel.folder), "threshold": sel.base_threshold, "av_threshold": sel.threshold, "av_model": None if mean else second[2],
                                 "av_silence_db": cfg.av_silence_db if sel.silence_on else None, "silent_frames": silent[1],
                                 "quality": quality(q_kept[1]), "quality_before_crf": quality(q_raw[1]) if cfg.pseudo_crf else None,
                                 "crf_unchanged": crf_kept[1] if cfg.pseudo_crf else None,
                                 "area_kept": area_kept[1] / max(frames, 1),
                                 "av_checkpoint": checkpoints if mean else checkpoints[second[2]]}  # fmt: skip
    write_text_atomic(folder / "manifest.json", json.dumps(summary, indent=2, default=str))
    ctx.summary["pseudo_masks"] = summary
    return summary


CANDIDATE_FILES = ("best.safetensors", "last.safetensors", "metrics.jsonl")  # what the kept candidate's folder gives segmenter/


def stage_segmenter(ctx: StageContext) -> dict[str, Any]:
    """WS-AVS's segmenter on the pseudo masks; with ``refinement_from: segmenter`` one on each base's masks, the
    better on validation (best validation mIoU; ties: Eq. 6) copied to ``segmenter/``."""
    cfg: WSAVSAudioConfig = ctx.config
    if cfg.refinement_from != "segmenter":
        return ws_avs.stage_segmenter(ctx)
    candidates = {"saliency": (ctx.path("pseudo", "masks"), EQ6_DIR), "c2am": (ctx.path("pseudo", ALONE_DIR, "masks"), ALONE_DIR)}
    results: dict[str, dict[str, Any]] = {}
    for i, (name, (masks, sub)) in enumerate(candidates.items()):
        if i:
            seed_everything(next(iter(cfg.train_settings().values())).seed)  # as the runner seeds a stage: each candidate starts as its own run would
        results[name] = ws_avs.train_segmenter(ctx, masks, ctx.path("segmenter", sub), desc=f"segmenter ({BASE_LABELS[name]})")
    scores: dict[str, float] = {}
    for name, r in results.items():
        score = r["best"] if r["best"] is not None else r["metrics"].get("val_miou")
        if score is None:
            raise RuntimeError(f"segmenter ({BASE_LABELS[name]}): no validation mIoU to compare the two segmenters by ({ctx.path('segmenter', candidates[name][1])})")
        scores[name] = float(score)
    kept = max(candidates, key=lambda n: (scores[n], n == "saliency"))
    log.info("segmenter: best validation mIoU %.1f on the Eq. 6 masks, %.1f on the C2AM-alone masks: %s kept",
             100 * scores["saliency"], 100 * scores["c2am"], BASE_LABELS[kept])  # fmt: skip
    source = ctx.path("segmenter", candidates[kept][1])
    if dist.is_main():
        for name in CANDIDATE_FILES:
            if (source / name).is_file():
                atomic_write_bytes(ctx.path("segmenter", name), (source / name).read_bytes())
    final = ctx.path("segmenter", "best.safetensors" if (source / "best.safetensors").is_file() else "last.safetensors")
    choice = {"chosen": kept, "val_miou": scores, "folders": {n: str(ctx.path("segmenter", sub)) for n, (_, sub) in candidates.items()}}
    return {**results[kept], "checkpoint": str(final), "refinement_choice": choice, "candidates": results}


def stages(cfg: WSAVSAudioConfig) -> list[Stage]:
    out: list[Stage] = []
    for stage in ws_avs.stages(cfg):
        if stage.name == "pseudo-masks":
            out.append(Stage("av-model", stage_av_model, "train the audio-visual (EZ-VSL-style) model on the training frames", all_ranks=True,
                             outputs=("av-model",), reads=()))  # frames and audio only: C2AM / saliency reruns leave it valid
            out.append(Stage(
                "pseudo-masks", stage_pseudo_masks, "Eq. 6 pseudo masks kept where the audio-visual map selects them",
                outputs=("pseudo/masks", "pseudo/eq6", "pseudo/av-maps", "pseudo/saliency", f"pseudo/{ALONE_DIR}", "pseudo/manifest.json", "pseudo/contact_sheet.png"),
            ))  # fmt: skip
        elif stage.name == "segmenter":
            out.append(dataclasses.replace(stage, run=stage_segmenter))
        elif stage.name in REUSE_KEYS:  # shared with ws-avs: taken from reuse_run when identical
            out.append(dataclasses.replace(stage, run=reusable(stage.name, stage.run)))
        else:
            out.append(stage)
    return out


SPEC = MethodSpec(
    name="ws-avs-av", config_cls=WSAVSAudioConfig, stages=stages, final_stage="segmenter", load_predictor=ws_avs.load_predictor,
    output="binary", supervision="video labels",
    description="WS-AVS with audio-conditioned pseudo masks: Eq. 6 regions kept where an audio-visual map selects them (ours)",
    display="WS-AVS-AV (ours)", reuses="ws-avs",
    tiny=ws_avs.SPEC.tiny + ("av_visual=tiny", "av_visual_weights=none", "av_audio=tiny", "av_audio_weights=none", "av_embed_dim=16", "av_levels=[2]"),
)  # fmt: skip
