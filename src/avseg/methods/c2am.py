"""C2AM reference (Xie et al., CVPR 2022): class-agnostic activation maps, image only, no labels.

The same model and stages WS-AVS uses for its pseudo masks (``ws_avs.C2AMNet``, ``ws_avs.stage_c2am``,
``ws_avs.stage_activation_maps``), applied to the test frames:

1. ``c2am``: train C2AM (conv3x3 -> BN -> sigmoid head, contrastive fg/bg losses) on the training frames.
2. ``activation-maps``: maps of every training frame; the polarity (which side of P is the object) is
   decided there from the border statistics and recorded in the stage marker; the maps and initial
   masks are kept in ``pseudo/`` as for WS-AVS.

With ``reuse_run`` (set by ``avseg bench`` when it also runs ws-avs) the two stages are taken from a
finished ws-avs run whose settings for them are identical (:func:`reusable`): the C2AM row then shows
exactly the maps that WS-AVS refines, and C2AM is trained once.

Inference (documented binarisation rule): activation map A = P (or 1 - P when the polarity is flipped),
upsampled and min-max normalised per frame (the heat map); mask = A > ``c2am_threshold`` (default 0.3,
WS-AVS's initial-mask threshold, so this row shows the initial masks WS-AVS refines). ``predict`` returns
the calibrated map (``cam.calibrate``) so the metrics' 0.5 threshold gives that mask.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from avseg.config import DataConfig, TrainSettings, load_yaml, to_dict
from avseg.engine import distributed as dist
from avseg.engine.checkpoint import load_model_weights
from avseg.methods.base import MethodSpec, Stage, StageContext, read_marker
from avseg.methods.cam import calibrate, check_threshold
from avseg.methods.ws_avs import C2AMNet, check_border, stage_activation_maps, stage_c2am
from avseg.models.zoo import VISUAL_ENCODERS
from avseg.types import AVBatch

log = logging.getLogger("avseg")


@dataclass
class C2AMConfig:
    """C2AM settings; field names match WSAVSConfig's so ws_avs's stage functions run on this config."""

    data: DataConfig
    c2am_visual: str = "resnet50"
    c2am_weights: str = "imagenet"
    c2am_level: int = 3
    c2am_threshold: float = 0.3  # mask = normalised map > threshold (also the initial masks' threshold)
    c2am_border: int = 0  # rings of outermost feature cells replaced by the frame's median (ws_avs.mask_border_cells)
    crf: bool = False  # dense CRF on the training frames' initial masks (not used at inference)
    c2am_train: TrainSettings = field(default_factory=lambda: TrainSettings(epochs=10, lr=1e-4, batch_size=16, optimizer="adam", schedule="constant"))
    reuse_run: str | None = None  # a finished ws-avs run whose c2am / activation-maps stages are reused if identical

    def __post_init__(self) -> None:
        if self.c2am_visual not in VISUAL_ENCODERS:
            raise ValueError(f"c2am_visual {self.c2am_visual!r} is not one of {sorted(VISUAL_ENCODERS)}")
        check_threshold("c2am_threshold", self.c2am_threshold)
        check_border("c2am_border", self.c2am_border)

    def train_settings(self) -> dict[str, TrainSettings]:
        return {"c2am_train": self.c2am_train}


class C2AMPredictor(nn.Module):
    """A trained C2AMNet with its polarity: ``heatmap`` (normalised A) and ``predict`` (calibrated A)."""

    output = "binary"

    def __init__(self, net: C2AMNet, flip: bool, threshold: float) -> None:
        super().__init__()
        self.net = net
        self.flip = flip
        self.threshold = threshold

    @torch.no_grad()
    def heatmap(self, batch: AVBatch) -> Tensor:
        """(B, T, H, W) activation map A in [0, 1]."""
        b, t = batch.frames.shape[:2]
        return self.net.activation(batch.frames.flatten(0, 1), flip=self.flip).view(b, t, *batch.frames.shape[-2:])

    @torch.no_grad()
    def predict(self, batch: AVBatch) -> Tensor:
        return calibrate(self.heatmap(batch), self.threshold)


# --- reusing the stages of a finished ws-avs run -------------------------------------------------------
# Config keys each shareable stage reads (cumulative: a stage depends on the ones before it).
REUSE_KEYS: dict[str, tuple[str, ...]] = {
    "c2am": ("data", "c2am_visual", "c2am_weights", "c2am_level", "c2am_train"),
    "activation-maps": ("data", "c2am_visual", "c2am_weights", "c2am_level", "c2am_train", "c2am_border", "c2am_threshold", "crf"),
    "saliency": (
        "data", "c2am_visual", "c2am_weights", "c2am_level", "c2am_train", "c2am_border", "c2am_threshold", "crf",
        "refinement", "saliency_visual", "saliency_weights", "saliency_train",
    ),
}  # fmt: skip
REUSE_OUTPUTS: dict[str, tuple[str, ...]] = {
    "c2am": ("c2am",), "activation-maps": ("pseudo/maps", "pseudo/initial"), "saliency": ("saliency",),
}  # fmt: skip
# Data keys that change nothing the reusable stages compute: workers (loading only), classes (follow from root
# + layout), and the audio settings (C2AM, its activation maps and the saliency detector never read audio).
_IGNORED_DATA_KEYS = ("workers", "classes", "audio_frontend", "audio_window", "window_seconds")


def reuse_problem(source: Path, stage: str, cfg: Any) -> str | None:
    """Why stage ``stage`` of run ``source`` cannot stand in for this config's (None: it can)."""

    marker = read_marker(stage, source)
    if marker is None:
        return f"{source} has not finished stage {stage}"
    if marker.get("stale") or marker.get("truncated"):
        return f"stage {stage} of {source} is stale or was cut short"
    if not (source / "config.yaml").is_file():
        return f"{source} is not a run folder"
    theirs, ours = load_yaml(source / "config.yaml"), to_dict(cfg)
    for key in REUSE_KEYS[stage]:
        a, b = theirs.get(key), ours.get(key)
        if key == "data" and isinstance(a, dict) and isinstance(b, dict):
            a = {k: v for k, v in a.items() if k not in _IGNORED_DATA_KEYS}
            b = {k: v for k, v in b.items() if k not in _IGNORED_DATA_KEYS}
        if a != b:
            return f"{key} differs ({source}: {a!r}, here: {b!r})"
    return None


def _link_tree(src: Path, dst: Path) -> None:
    """Copy a file or folder, hard-linking files where the file system allows (artifacts are never edited)."""

    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    if dst.is_dir():
        shutil.rmtree(dst)
    elif dst.exists():
        dst.unlink()
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dst, copy_function=link)
    else:
        link(str(src), str(dst))


def reusable(name: str, run: Callable[[StageContext], dict[str, Any]]) -> Callable[[StageContext], dict[str, Any]]:
    """Stage function ``run`` that first tries to take stage ``name`` from ``config.reuse_run``.

    Reused artifacts are linked into this run; the summary is the source's, plus ``reused_from`` and
    ``reused_seconds`` (the source's training time, which ``avseg bench`` counts as this method's).
    """

    def stage(ctx: StageContext) -> dict[str, Any]:
        source = getattr(ctx.config, "reuse_run", None)
        if source:
            source_dir = Path(source)
            problem = reuse_problem(source_dir, name, ctx.config)
            if problem is None:
                if dist.is_main():
                    for rel in REUSE_OUTPUTS[name]:
                        if (source_dir / rel).exists():
                            _link_tree(source_dir / rel, ctx.path(rel))
                dist.barrier()
                marker = read_marker(name, source_dir) or {}
                log.info("stage %s: reused from %s (identical settings)", name, source_dir)
                summary = {k: v for k, v in marker.items() if k not in ("stage", "seconds", "reused_from", "reused_seconds")}
                seconds = float(marker.get("reused_seconds", marker.get("seconds", 0.0)) or 0.0)
                return {**summary, "reused_from": str(marker.get("reused_from", source_dir)), "reused_seconds": seconds}
            log.info("stage %s: computed here, not reused: %s", name, problem)
        return run(ctx)

    return stage


def stages(cfg: C2AMConfig) -> list[Stage]:
    return [
        Stage("c2am", reusable("c2am", stage_c2am), "train C2AM on the training frames", all_ranks=True, outputs=("c2am",)),
        Stage(
            "activation-maps", reusable("activation-maps", stage_activation_maps), "C2AM maps of the training frames; polarity",
            outputs=("pseudo/maps", "pseudo/initial"),
        ),  # fmt: skip
    ]


def load_predictor(cfg: C2AMConfig, run_dir: Path | None, device: torch.device, weights: Path | None = None) -> nn.Module:
    if run_dir is None:
        raise ValueError("c2am's final model needs its run folder: the polarity of the C2AM map is decided by its activation-maps stage")
    marker = read_marker("activation-maps", Path(run_dir))
    if marker is None:
        raise FileNotFoundError(f"{run_dir}/stages/activation-maps.json is missing: the polarity of the C2AM map is decided there; run the stage first")
    net = C2AMNet(VISUAL_ENCODERS[cfg.c2am_visual](weights="none"), level=cfg.c2am_level, border=cfg.c2am_border)
    load_model_weights(net, Path(weights) if weights is not None else Path(run_dir) / "c2am" / "last.safetensors")
    return C2AMPredictor(net, flip=bool(marker["polarity_flipped"]), threshold=cfg.c2am_threshold).to(device).eval()


SPEC = MethodSpec(
    name="c2am", config_cls=C2AMConfig, stages=stages, final_stage="activation-maps", load_predictor=load_predictor,
    output="binary", supervision="none (class-agnostic), image only",
    description="C2AM (CVPR 2022): class-agnostic activation map, min-max normalised, > 0.3 -> mask; no audio",
    display="C2AM", paper={"s4": (30.87, 36.55), "ms3": (25.33, 29.58)}, reuses="ws-avs",
    tiny=("c2am_visual=tiny", "c2am_weights=none", "c2am_level=2"),
)  # fmt: skip
