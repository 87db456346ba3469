"""Training and inference throughput of WS-AVS on one device, fp32 eager against each optimisation.

Model-only (random tensors on the device) and with the real data pipeline, plus the pseudo-mask stages
and the scaling of cost with video length and batch size. One run, one device; the table is printed last.

    python benchmarks/throughput.py --device cpu --model small --image-size 64 --steps 3        # CPU smoke: ~25 s of CPU time
    python benchmarks/throughput.py --device cuda --model paper --steps 20 --warmup 5          # GPU, random tensors
    python benchmarks/throughput.py --device cuda --pipeline real --data S4_ROOT --cache CACHE_DIR --workers 12

Models come from the shipped recipes through the real classes: ``paper`` = ``ws-avs/s4`` (ResNet-50
visual + ResNet-50 audio, 4 fusion stages, Panoptic-FPN decoder 128 ch, 224 px, batch 64, one frame per
video), ``small`` = ``ws-avs/demo`` (the CPU demo's model). Encoders start from random weights.

Variants are the options of the normal paths (``TrainSettings.amp / channels_last / compile /
fused_optimizer``; ``torch.backends.cudnn.benchmark``); each row builds a fresh model. Training rows run
forward + backward + optimizer step as ``engine.trainer.fit`` does (its optimizer builder, its autocast);
inference rows run ``WSAVSNet.predict`` under ``torch.inference_mode``. ``fit`` rows (pipeline section)
run the engine's loop itself on the real dataset, the cache, or in-memory samples.

frames/s = frames per step / median seconds per step (blocks of --steps steps, timed with a device
sync at both ends, --repeats blocks); spread = (max - min) / median of the blocks. Peak memory:
``torch.cuda.max_memory_allocated`` on CUDA, the process's peak RSS (VmHWM, reset per row) on CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from avseg.audio import feature_shape
from avseg.config import TrainSettings
from avseg.engine.trainer import build_optimizer
from avseg.losses.segmentation import bce_loss
from avseg.methods.ws_avs import C2AMNet, SaliencyNet, WSAVSNet, build_segmenter
from avseg.models.zoo import VISUAL_ENCODERS
from avseg.runner import build_config
from avseg.types import AVBatch

RECIPES = {"paper": "ws-avs/s4", "small": "ws-avs/demo"}
RANDOM_WEIGHTS = ["visual_weights=none", "audio_weights=none", "c2am_weights=none", "saliency_weights=none"]
SECTIONS = ("model", "stages", "sweep", "pipeline")


# --- variants ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    """One combination of the optimisation options of the training / inference paths."""

    name: str
    amp: str = "off"  # TrainSettings.amp
    channels_last: bool = False  # TrainSettings.channels_last
    compile: bool = False  # TrainSettings.compile
    cudnn_benchmark: bool = False  # torch.backends.cudnn.benchmark
    fused_optimizer: bool = False  # TrainSettings.fused_optimizer

    def unsupported(self, device: torch.device, cpu_compile: bool) -> str | None:
        if device.type != "cuda":
            if self.cudnn_benchmark:
                return "n/a: cuDNN only"
            if self.fused_optimizer:
                return "n/a: the engine allows it on CUDA only"
            if self.compile and not cpu_compile:
                return "skipped: compiling takes minutes on 2 cores (--cpu-compile)"
        return None


VARIANTS = (
    Variant("fp32"),
    Variant("bf16", amp="bf16"),
    Variant("channels_last", channels_last=True),
    Variant("cudnn.benchmark", cudnn_benchmark=True),
    Variant("fused-adam", fused_optimizer=True),
    Variant("compile", compile=True),
    Variant("bf16+cl", amp="bf16", channels_last=True),
    Variant("bf16+cl+cudnn+fused", amp="bf16", channels_last=True, cudnn_benchmark=True, fused_optimizer=True),
    Variant("all+compile", amp="bf16", channels_last=True, cudnn_benchmark=True, fused_optimizer=True, compile=True),
)
BY_NAME = {v.name: v for v in VARIANTS}


def best_variant(device: torch.device) -> Variant:
    """The fastest combination without compile (compile is measured in its own rows: minutes to build)."""
    return BY_NAME["bf16+cl+cudnn+fused"] if device.type == "cuda" else BY_NAME["bf16+cl"]


# --- measuring -----------------------------------------------------------------------------------------
@dataclass
class Row:
    section: str
    what: str
    variant: str
    frames: int = 0  # frames per step
    fps: float | None = None  # frames per second
    ms: float | None = None  # milliseconds per step
    spread: float | None = None  # (max - min) / median of the timed blocks
    peak_mib: float | None = None
    note: str = ""


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _vm_hwm_mib() -> float | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    m = re.search(r"VmHWM:\s+(\d+) kB", text)
    return int(m.group(1)) / 1024 if m else None


def reset_peak(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    else:
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux)


def peak_mib(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return _vm_hwm_mib()


def time_blocks(step: Callable[[], Any], device: torch.device, steps: int, warmup: int, repeats: int) -> tuple[float, float]:
    """(median seconds per step, spread) over ``repeats`` blocks of ``steps`` steps after ``warmup`` steps."""
    for _ in range(warmup):
        step()
    sync(device)
    blocks = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync(device)
        blocks.append((time.perf_counter() - start) / steps)
    med = statistics.median(blocks)
    return med, (max(blocks) - min(blocks)) / med


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


class UtilisationSampler:
    """GPU utilisation (nvidia-smi's %) sampled every 0.1 s in a thread: mean over a time window."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.available = False
        if device.type == "cuda":
            try:
                torch.cuda.utilization(device)
                self.available = True
            except Exception:  # no pynvml / NVML: leave utilisation out
                self.available = False

    def __enter__(self) -> "UtilisationSampler":
        if self.available:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                self.samples.append((time.perf_counter(), int(torch.cuda.utilization(self.device))))
            self._stop.wait(0.1)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def mean(self, start: float, end: float) -> float | None:
        values = [u for t, u in self.samples if start <= t <= end]
        return float(np.mean(values)) if values else None


# --- batches and models --------------------------------------------------------------------------------
def random_batch(b: int, t: int, size: int, audio_shape: tuple[int, int], num_classes: int, device: torch.device, seed: int = 0) -> AVBatch:
    """A batch in the AVBatch contract from random (never all-zero) tensors, made on the device."""
    g = torch.Generator(device=device).manual_seed(seed)
    labels = torch.zeros(b, num_classes, device=device)
    labels[torch.arange(b), torch.arange(b) % num_classes] = 1.0
    return AVBatch(
        frames=torch.randn(b, t, 3, size, size, generator=g, device=device),
        audio=torch.randn(b, t, 1, *audio_shape, generator=g, device=device),
        waveform=None,
        masks=(torch.rand(b, t, size, size, generator=g, device=device) > 0.5).long(),
        has_mask=torch.ones(b, t, dtype=torch.bool, device=device),
        valid=torch.ones(b, t, dtype=torch.bool, device=device),
        labels=labels,
        video_ids=[f"v{i}" for i in range(b)],
        frame_ids=[list(range(1, t + 1)) for _ in range(b)],
        pseudo_masks=torch.rand(b, t, size, size, generator=g, device=device),
        has_pseudo=torch.ones(b, t, dtype=torch.bool, device=device),
    )


def load_config(model: str, image_size: int, data_root: str = "unused", layout: str = "s4", extra: list[str] | None = None) -> Any:
    _, cfg = build_config("ws-avs", RECIPES[model], data_root, layout, image_size=image_size, overrides=RANDOM_WEIGHTS + list(extra or []))
    return cfg


def build_wsavs(cfg: Any) -> WSAVSNet:
    return WSAVSNet(build_segmenter(cfg), tau=cfg.tau, scale_by_tau=cfg.m2icl_scale_by_tau, m2icl_weight=cfg.m2icl_weight)


class MaskedLossWSAVS(WSAVSNet):
    """PROPOSAL, measured only: WSAVSNet's pseudo-mask loss with a weight mask instead of boolean
    indexing (``logits[keep]`` needs the number of kept frames on the host: a device sync per step)."""

    def pseudo_mask_loss(self, logits: Tensor, batch: AVBatch) -> Tensor:
        keep = (batch.valid & batch.has_pseudo).flatten()
        return bce_loss(logits, batch.pseudo_masks.flatten(0, 1), weight_mask=keep)


def _release() -> None:
    """Free what the caller has deleted (the next row's peak memory starts from here)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def train_row(
    section: str, what: str, build: Callable[[], nn.Module], batch: AVBatch, settings: TrainSettings,
    variant: Variant, device: torch.device, args: argparse.Namespace,
) -> Row:  # fmt: skip
    """Forward + backward + optimizer step of ``build()`` on one fixed batch, as fit() runs them."""
    frames = int(batch.valid.sum())
    row = Row(section, what, variant.name, frames=frames)
    reason = variant.unsupported(device, args.cpu_compile)
    if reason:
        row.note = reason
        return row
    torch.backends.cudnn.benchmark = variant.cudnn_benchmark
    s = dataclasses.replace(
        settings, amp=variant.amp, channels_last=variant.channels_last, compile=variant.compile,
        fused_optimizer=variant.fused_optimizer, device=device.type, workers=0,
    )  # fmt: skip
    reset_peak(device)
    torch.manual_seed(0)
    model = build().to(device)
    if s.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = build_optimizer(model, s)
    run = torch.compile(model) if s.compile else model
    last: dict[str, Tensor] = {}

    def step() -> None:
        with autocast(device, s.amp):
            out = run(batch)
        out["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        last["loss"] = out["loss"].detach()

    warmup = max(args.warmup, 2) if s.compile else args.warmup
    sec, spread = time_blocks(step, device, args.steps, warmup, args.repeats)
    row.fps, row.ms, row.spread, row.peak_mib = frames / sec, sec * 1e3, spread, peak_mib(device)
    if not torch.isfinite(last["loss"]).item():
        row.note = "NON-FINITE LOSS"
    model = optimizer = run = last = None  # free before _release()
    _release()
    return row


def infer_row(
    section: str, what: str, build: Callable[[], nn.Module], predict: Callable[[nn.Module, AVBatch], Tensor],
    compile_parts: tuple[str, ...], batch: AVBatch, variant: Variant, device: torch.device, args: argparse.Namespace,
) -> Row:  # fmt: skip
    """``predict(model, batch)`` in eval mode under inference_mode; compile wraps ``compile_parts``."""
    frames = int(batch.valid.sum())
    row = Row(section, what, variant.name, frames=frames)
    if variant.name == "fused-adam":
        row.note = "n/a: inference has no optimizer"
        return row
    reason = dataclasses.replace(variant, fused_optimizer=False).unsupported(device, args.cpu_compile)
    if reason:
        row.note = reason
        return row
    torch.backends.cudnn.benchmark = variant.cudnn_benchmark
    reset_peak(device)
    torch.manual_seed(0)
    model = build().to(device).eval()
    if variant.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if variant.compile:
        for name in compile_parts:
            setattr(model, name, torch.compile(getattr(model, name)))

    def step() -> None:
        with torch.inference_mode(), autocast(device, variant.amp):
            predict(model, batch)

    warmup = max(args.warmup, 2) if variant.compile else args.warmup
    sec, spread = time_blocks(step, device, args.steps, warmup, args.repeats)
    row.fps, row.ms, row.spread, row.peak_mib = frames / sec, sec * 1e3, spread, peak_mib(device)
    model = None  # free before _release()
    _release()
    return row


def guarded(fn: Callable[[], Row], section: str, what: str, variant: str) -> Row:
    """Run one measurement; a failure becomes a row saying why (the other rows still run)."""
    try:
        return fn()
    except Exception as exc:  # reported in the table, with the traceback on stderr
        traceback.print_exc()
        _release()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return Row(section, what, variant, note=f"FAILED: {type(exc).__name__}: {first[:120]}")


# --- sections ------------------------------------------------------------------------------------------
class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = torch.device(args.device)
        self.cfg = load_config(args.model, args.image_size)
        self.rows: list[Row] = []
        self.audio_shape = feature_shape(self.cfg.data.audio_frontend)
        self.t = args.frames_per_video or (self.cfg.train_frames or 5)
        self.b = max(1, args.batch // self.t)
        self.infer_batch = args.infer_batch or (4 * args.batch if self.device.type == "cuda" else args.batch)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        print(format_row(row), flush=True)

    def variants(self) -> list[Variant]:
        names = self.args.variants.split(",") if self.args.variants else [v.name for v in VARIANTS]
        unknown = [n for n in names if n not in BY_NAME]
        if unknown:
            raise SystemExit(f"unknown variants {unknown}; choose from {list(BY_NAME)}")
        return [BY_NAME[n] for n in names]

    def batch(self, b: int, t: int, size: int | None = None) -> AVBatch:
        return random_batch(b, t, size or self.args.image_size, self.audio_shape, 8, self.device)

    # model-only WS-AVS: every variant, training and inference
    def model(self) -> None:
        cfg, dev, args = self.cfg, self.device, self.args
        train_batch = self.batch(self.b, self.t)
        what = f"ws-avs train ({self.b}x{self.t})"
        for v in self.variants():
            self.add(guarded(lambda v=v: train_row("model", what, lambda: build_wsavs(cfg), train_batch, cfg.segmenter_train, v, dev, args), "model", what, v.name))
        # the proposed no-sync loss, beside the fastest selected variants
        what_p = f"ws-avs train, proposal: masked BCE ({self.b}x{self.t})"
        for v in [v for v in self.variants() if v.name in (best_variant(dev).name, "all+compile")]:
            self.add(guarded(lambda v=v: train_row("model", what_p, lambda: MaskedLossWSAVS(build_segmenter(cfg), cfg.tau, cfg.m2icl_scale_by_tau, cfg.m2icl_weight), train_batch, cfg.segmenter_train, v, dev, args), "model", what_p, v.name))
        train_batch = None  # free before _release()
        _release()
        infer_batch = self.batch(self.infer_batch, 1)
        what = f"ws-avs infer ({self.infer_batch}x1)"
        for v in self.variants():
            self.add(guarded(lambda v=v: infer_row("model", what, lambda: build_wsavs(cfg), lambda m, b: m.predict(b), ("segmenter",), infer_batch, v, dev, args), "model", what, v.name))
        infer_batch = None  # free before _release()
        _release()

    # pseudo-mask stages, model-only: C2AM and saliency training steps and inference
    def stages(self) -> None:
        cfg, dev, args = self.cfg, self.device, self.args
        variants = [BY_NAME["fp32"], best_variant(dev)]
        if dev.type == "cuda" and "all+compile" in [v.name for v in self.variants()] and not args.no_stage_compile:
            variants.append(BY_NAME["all+compile"])
        t = 5  # the C2AM and saliency stages train on every frame of a video

        def c2am() -> C2AMNet:
            return C2AMNet(VISUAL_ENCODERS[cfg.c2am_visual](weights="none"), level=cfg.c2am_level)

        def saliency() -> SaliencyNet:
            return SaliencyNet(VISUAL_ENCODERS[cfg.saliency_visual](weights="none"))

        def c2am_maps(m: nn.Module, b: AVBatch) -> Tensor:
            return m.activation(b.frames.flatten(0, 1), flip=False)

        for name, build, settings, predict, parts in (
            (f"c2am ({cfg.c2am_visual})", c2am, cfg.c2am_train, c2am_maps, ("encoder",)),
            (f"saliency ({cfg.saliency_visual})", saliency, cfg.saliency_train, lambda m, b: m.predict(b), ("encoder", "decoder")),
        ):
            b = args.stage_batch or (settings.batch_size if dev.type == "cuda" else 2)
            train_batch = self.batch(b, t)
            for v in variants:
                what = f"{name} train ({b}x{t})"
                self.add(guarded(lambda v=v: train_row("stages", what, build, train_batch, settings, v, dev, args), "stages", what, v.name))
            train_batch = None  # free before _release()
            _release()
            infer_batch = self.batch(self.infer_batch, 1)
            for v in variants:
                what = f"{name} infer ({self.infer_batch}x1)"
                self.add(guarded(lambda v=v: infer_row("stages", what, build, predict, parts, infer_batch, v, dev, args), "stages", what, v.name))
            infer_batch = None  # free before _release()
            _release()

    # cost against frames per video and batch size
    def sweep(self) -> None:
        cfg, dev, args = self.cfg, self.device, self.args
        v = BY_NAME[args.sweep_variant] if args.sweep_variant else (best_variant(dev) if dev.type == "cuda" else BY_NAME["fp32"])
        videos = max(2, args.batch // 5)
        for t in (1, 2, 5):
            batch = self.batch(videos, t)
            what = f"video length: {videos} videos x {t} frames"
            self.add(guarded(lambda: train_row("sweep", what, lambda: build_wsavs(cfg), batch, cfg.segmenter_train, v, dev, args), "sweep", what, v.name))
            batch = None  # free before _release()
            _release()
        for frames in sorted({max(2, args.batch // 4), args.batch, 2 * args.batch} if dev.type == "cpu" else {args.batch // 4, args.batch // 2, args.batch, 2 * args.batch}):
            batch = self.batch(frames, 1)
            what = f"train batch: {frames} videos x 1 frame"
            self.add(guarded(lambda: train_row("sweep", what, lambda: build_wsavs(cfg), batch, cfg.segmenter_train, v, dev, args), "sweep", what, v.name))
            batch = None  # free before _release()
            _release()
        for frames in sorted({max(1, self.infer_batch // 4), self.infer_batch, 4 * self.infer_batch} if dev.type == "cuda" else {max(1, args.batch // 4), args.batch}):
            batch = self.batch(frames, 1)
            what = f"infer batch: {frames} frames"
            self.add(guarded(lambda: infer_row("sweep", what, lambda: build_wsavs(cfg), lambda m, b: m.predict(b), ("segmenter",), batch, v, dev, args), "sweep", what, v.name))
            batch = None  # free before _release()
            _release()

    # the real input pipeline: loaders alone, the engine's fit() on them, the pseudo-mask stages
    def pipeline(self) -> None:
        args = self.args
        if not args.data:
            self.add(Row("pipeline", "real data pipeline", "-", note="skipped: needs --pipeline real --data ROOT"))
            return
        work = Path(tempfile.mkdtemp(prefix="avseg_throughput_"))
        try:
            Pipeline(self, work).run()
        finally:
            shutil.rmtree(work, ignore_errors=True)


class Repeat(torch.utils.data.Dataset):
    """``dataset`` repeated to ``length`` items, so one epoch outlasts the measurement (a small dataset
    would otherwise restart the DataLoader's workers every few steps)."""

    def __init__(self, dataset: Any, length: int) -> None:
        self.dataset, self.length = dataset, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Any:
        return self.dataset[index % len(self.dataset)]

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)


class InMemory(torch.utils.data.Dataset):
    """Pre-made random samples: the engine's loop without any decoding."""

    def __init__(self, batch: AVBatch) -> None:
        from avseg.data.avsbench import VideoSample

        cpu = batch.to("cpu")
        self.samples = [
            VideoSample(
                frames=cpu.frames[i], audio=cpu.audio[i], waveform=None, masks=cpu.masks[i], has_mask=cpu.has_mask[i],
                valid=cpu.valid[i], labels=cpu.labels[i], video_id=cpu.video_ids[i], frame_ids=cpu.frame_ids[i],
                pseudo_masks=cpu.pseudo_masks[i], has_pseudo=cpu.has_pseudo[i],
            )  # fmt: skip
            for i in range(cpu.batch_size)
        ]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Any:
        return self.samples[index]


class DeviceAugment(nn.Module):
    """Runs ``avseg.data.gpu_augment.augment_batch`` on the device before the model (uint8 cache batches).
    A stand-in for the engine hook proposed in docs/performance.md."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, batch: AVBatch) -> dict[str, Tensor]:
        from avseg.data.gpu_augment import augment_batch

        return self.net(augment_batch(batch))


def write_stand_in_pseudo_masks(dataset: Any, folder: Path) -> int:
    """A smooth random probability map per training frame at the dataset's image size, where the
    segmenter stage reads its pseudo masks (the real ones come from the pseudo-mask stages)."""
    from avseg.data.imageio import save_png_atomic
    from avseg.data.layout import prediction_relpath

    rng = np.random.default_rng(0)
    size = dataset.image_size
    yy, xx = np.mgrid[0:size, 0:size] / size
    count = 0
    for r in dataset.records:
        for k in r.frame_numbers:
            cy, cx = rng.uniform(0.3, 0.7, size=2)
            prob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.05)
            save_png_atomic(folder / prediction_relpath(dataset.layout, r.split, r.category, r.video_id, k), (prob * 255).astype(np.uint8))
            count += 1
    return count


class Pipeline:
    """Rows of the pipeline section; everything it writes goes under ``work``."""

    def __init__(self, bench: Bench, work: Path) -> None:
        self.bench, self.work = bench, work
        self.args, self.device = bench.args, bench.device
        self.cfg = load_config(self.args.model, self.args.image_size, self.args.data, self.args.layout)
        self.t, self.b = bench.t, bench.b

    def add(self, row: Row) -> None:
        self.bench.add(row)

    def run(self) -> None:
        from avseg.data.avsbench import AVSBenchDataset, collate_videos
        from avseg.data.cache import CachedDataset, collate_cached
        from avseg.data.gpu_augment import augment_batch

        args, cfg, dev = self.args, self.cfg, self.device
        cache_dir = self.ensure_cache()
        pseudo_dir = self.work / "pseudo"
        common = dict(augment=True, pseudo_dir=pseudo_dir, sample_frames=self.t, seed=0)
        decoded = AVSBenchDataset(Path(args.data), args.layout, "train", image_size=args.image_size, audio_frontend=cfg.data.audio_frontend, audio_window=cfg.data.audio_window, **common)
        write_stand_in_pseudo_masks(decoded, pseudo_dir)
        cached = CachedDataset(cache_dir, "train", **common)
        raw = CachedDataset(cache_dir, "train", frames="uint8", **common)
        w = args.workers
        shape = f"{self.b}x{self.t}, {w} workers"
        # 1. the loaders alone (batches moved to the device; uint8 ones augmented there)
        for name, ds, collate, transform in (
            ("loader: decoded dataset", decoded, collate_videos, None),
            ("loader: cache", cached, collate_cached, None),
            ("loader: cache uint8 + gpu_augment", raw, collate_cached, augment_batch),
        ):
            what = f"{name} ({shape})"
            self.add(guarded(lambda ds=ds, collate=collate, transform=transform, what=what: self.loader_row(what, ds, collate, transform), "pipeline", what, "-"))
        # 2. the engine's loop: in-memory samples (no decoding), the dataset, the cache
        best = best_variant(dev)
        in_memory = InMemory(self.bench.batch(self.b, self.t))
        runs = [
            ("fit: in-memory samples (0 workers)", in_memory, collate_videos, None, best, 0),
            ("fit: decoded dataset", decoded, collate_videos, None, best, w),
            ("fit: cache", cached, collate_cached, None, best, w),
            ("fit: cache uint8 + gpu_augment", raw, collate_cached, DeviceAugment, best, w),
        ]
        if dev.type == "cuda" and not args.no_pipeline_compile:
            runs.append(("fit: cache uint8 + gpu_augment", raw, collate_cached, DeviceAugment, BY_NAME["all+compile"], w))
        if dev.type == "cuda":
            runs.insert(2, ("fit: cache", cached, collate_cached, None, BY_NAME["fp32"], w))
        for name, ds, collate, wrap, v, workers in runs:
            what = f"{name} ({self.b}x{self.t}, {workers} workers)" if "in-memory" not in name else f"{name} ({self.b}x{self.t})"
            self.add(guarded(lambda ds=ds, collate=collate, wrap=wrap, v=v, workers=workers, what=what: self.fit_row(what, ds, collate, wrap, v, workers), "pipeline", what, v.name))
        # 3. the real pseudo-mask stages over the training split (decode + model + PNG writes)
        self.stage_rows()

    def ensure_cache(self) -> Path:
        from avseg.data.cache import build_cache, read_index
        from avseg.data.errors import DataError

        args, cfg = self.args, self.cfg
        cache_dir = Path(args.cache) if args.cache else self.work / "cache"
        want = {"layout": args.layout, "image_size": args.image_size, "audio_frontend": cfg.data.audio_frontend, "audio_window": cfg.data.audio_window}
        try:
            index = read_index(cache_dir)
            ok = all(index.get(k) == v for k, v in want.items()) and "train" in index["splits"]
        except DataError:
            ok = False
        if not ok:
            start = time.perf_counter()
            index = build_cache(Path(args.data), args.layout, cache_dir, image_size=args.image_size, audio_frontend=cfg.data.audio_frontend,
                                audio_window=cfg.data.audio_window, splits=("train",), workers=args.workers)  # fmt: skip
            sec = time.perf_counter() - start
            frames = index["splits"]["train"]["frames"]
            mb = sum(p.stat().st_size for p in cache_dir.glob("train.*.npy")) / 1e6
            self.add(Row("pipeline", f"build cache, train split ({args.workers} workers)", "-", frames=frames, fps=frames / sec, note=f"{sec:.1f} s, {mb:.0f} MB"))
        return cache_dir

    def loader_row(self, what: str, dataset: Any, collate: Callable, transform: Callable | None) -> Row:
        from torch.utils.data import DataLoader

        args, dev = self.args, self.device
        n = args.loader_batches
        loader = DataLoader(Repeat(dataset, (n + 1) * self.b), batch_size=self.b, shuffle=True, num_workers=args.workers,
                            collate_fn=collate, pin_memory=dev.type == "cuda", drop_last=True)  # fmt: skip
        reset_peak(dev)
        it = iter(loader)
        next(it)  # worker start-up and the first batch stay out of the rate
        start, count = time.perf_counter(), 0
        for batch in it:
            batch = batch.to(dev, non_blocking=True)
            if transform is not None:
                batch = transform(batch)
            count += 1
        sync(dev)
        sec = (time.perf_counter() - start) / count
        return Row("pipeline", what, "-", frames=self.b * self.t, fps=self.b * self.t / sec, ms=sec * 1e3, peak_mib=peak_mib(dev))

    def fit_row(self, what: str, dataset: Any, collate: Callable, wrap: Callable | None, v: Variant, workers: int) -> Row:
        from avseg.engine.trainer import fit

        args, dev, cfg = self.args, self.device, self.cfg
        row = Row("pipeline", what, v.name, frames=self.b * self.t)
        reason = v.unsupported(dev, args.cpu_compile)
        if reason:
            row.note = reason
            return row
        windows = 3 if v.compile else 2  # the first window holds start-up (and compilation); the last is the rate
        steps = args.steps
        settings = dataclasses.replace(
            cfg.segmenter_train, amp=v.amp, channels_last=v.channels_last, compile=v.compile, fused_optimizer=v.fused_optimizer,
            device=dev.type, workers=workers, batch_size=self.b, epochs=1, max_steps=windows * steps, log_every=steps, progress="off",
        )  # fmt: skip
        torch.backends.cudnn.benchmark = v.cudnn_benchmark
        torch.manual_seed(0)
        model = build_wsavs(cfg)
        if wrap is not None:
            model = wrap(model)
        out_dir = self.work / f"fit-{len(self.bench.rows)}"
        reset_peak(dev)
        with UtilisationSampler(dev) as util:
            start = time.perf_counter()
            fit(model, Repeat(dataset, (windows * steps + 1) * self.b), settings, out_dir, collate_fn=collate, desc="throughput", drop_last=True)
        records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
        last = [r for r in records if r.get("kind") == "train"][-1]
        sec = float(last["sec_per_step"])
        row.fps, row.ms, row.peak_mib = self.b * self.t / sec, sec * 1e3, peak_mib(dev)
        end = start + float(last["time"])
        u = util.mean(end - steps * sec, end)
        row.note = f"GPU util {u:.0f}%" if u is not None else ""
        if not np.isfinite(last.get("loss", 0.0)):
            row.note += " NON-FINITE LOSS"
        shutil.rmtree(out_dir, ignore_errors=True)
        del model
        _release()
        return row

    def stage_rows(self) -> None:
        from avseg.engine.checkpoint import save_model_weights
        from avseg.methods.base import StageContext
        from avseg.methods.ws_avs import stage_activation_maps, stage_pseudo_masks

        cfg, dev = self.cfg, self.device
        run_dir = self.work / "run"
        try:
            torch.manual_seed(0)
            save_model_weights(C2AMNet(VISUAL_ENCODERS[cfg.c2am_visual](weights="none"), level=cfg.c2am_level), run_dir / "c2am" / "last.safetensors")
            if cfg.refinement == "saliency":
                save_model_weights(SaliencyNet(VISUAL_ENCODERS[cfg.saliency_visual](weights="none")), run_dir / "saliency" / "last.safetensors")
        except Exception as exc:
            self.add(Row("pipeline", "pseudo-mask stages", "fp32", note=f"FAILED: {type(exc).__name__}: {exc}"[:160]))
            return
        ctx = StageContext(run_dir=run_dir, config=cfg, device=dev)
        from avseg.data.index import index_videos

        frames = sum(len(r.frame_paths) for r in index_videos(Path(self.args.data), self.args.layout, "train"))
        for name, fn in (("stage activation-maps (C2AM maps + PNGs)", stage_activation_maps), ("stage pseudo-masks (saliency + Eq. 6 + PNGs)", stage_pseudo_masks)):

            def measure(fn: Callable = fn, name: str = name) -> Row:
                reset_peak(dev)
                start = time.perf_counter()
                fn(ctx)
                sync(dev)
                sec = time.perf_counter() - start
                return Row("pipeline", f"{name}, train split", "fp32 (as coded)", frames=frames, fps=frames / sec, peak_mib=peak_mib(dev), note=f"{sec:.1f} s for {frames} frames")

            self.add(guarded(measure, "pipeline", name, "fp32 (as coded)"))


def format_row(r: Row) -> str:
    def num(x: float | None, fmt: str) -> str:
        width = int(re.match(r">(\d+)", fmt).group(1))  # type: ignore[union-attr]
        return format(x, fmt) if x is not None else "-".rjust(width)

    return (
        f"{r.section:<9}{r.what[:62]:<63}{r.variant[:20]:<21}{r.frames:>6}{num(r.fps, '>10.1f')}"
        f"{num(r.ms, '>10.1f')}{num(None if r.spread is None else 100 * r.spread, '>8.1f')}{num(r.peak_mib, '>10.0f')}  {r.note}"
    )


HEADER = f"{'section':<9}{'what':<63}{'variant':<21}{'frames':>6}{'frames/s':>10}{'ms/step':>10}{'spread%':>8}{'peak MiB':>10}  note"


def environment(device: torch.device) -> list[str]:
    lines = [f"torch {torch.__version__}, python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs"]
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        lines.append(f"device: {p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
    else:
        with contextlib.suppress(OSError):
            lines.append(f"device: CPU, {torch.get_num_threads()} threads, load average {Path('/proc/loadavg').read_text().split()[:3]} (shared machine: contended)")
    with contextlib.suppress(Exception):
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=5).stdout.strip()
        if rev:
            lines.append(f"git {rev}{' (uncommitted changes)' if dirty else ''}")
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", choices=sorted(RECIPES), default="paper", help="paper = ws-avs/s4 recipe, small = ws-avs/demo")
    p.add_argument("--batch", type=int, default=None, help="training frames per step (default 64 on CUDA, 8 on CPU; videos = batch / frames per video)")
    p.add_argument("--stage-batch", type=int, default=None, dest="stage_batch", help="videos (x 5 frames) per C2AM / saliency training step (default: the recipe's on CUDA, 2 on CPU)")
    p.add_argument("--frames-per-video", type=int, default=None, dest="frames_per_video", help="T of a training batch (default: the recipe's train_frames)")
    p.add_argument("--infer-batch", type=int, default=None, dest="infer_batch", help="inference frames per forward (default 4 x batch on CUDA, batch on CPU)")
    p.add_argument("--image-size", type=int, default=224, dest="image_size")
    p.add_argument("--steps", type=int, default=10, help="steps per timed block (default 10)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3 on CUDA, 1 on CPU; at least 2 with compile)")
    p.add_argument("--repeats", type=int, default=None, help="timed blocks, the median is kept (default 3 on CUDA, 1 on CPU)")
    p.add_argument("--sections", default=None, help=f"comma list of {', '.join(SECTIONS)} (default: all; pipeline needs --data)")
    p.add_argument("--variants", default=None, help=f"comma list of variant names for the model section (default all: {', '.join(BY_NAME)})")
    p.add_argument("--sweep-variant", default=None, dest="sweep_variant", help="variant of the sweep rows (default: bf16+cl+cudnn+fused on CUDA, fp32 on CPU)")
    p.add_argument("--pipeline", choices=("synthetic", "real"), default="synthetic", help="synthetic: random tensors only; real: also the data pipeline of --data")
    p.add_argument("--data", default=None, help="dataset root for --pipeline real (e.g. from `avseg data synth`)")
    p.add_argument("--layout", default="s4", choices=("s4", "ms3"))
    p.add_argument("--cache", default=None, help="cache folder for --pipeline real (built when missing; default: a temporary one)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="DataLoader workers of the pipeline rows")
    p.add_argument("--loader-batches", type=int, default=None, dest="loader_batches", help="batches timed per loader row (default 2 x steps)")
    p.add_argument("--cpu-compile", action="store_true", dest="cpu_compile", help="also run the torch.compile rows on CPU (minutes)")
    p.add_argument("--no-stage-compile", action="store_true", dest="no_stage_compile", help="skip the compile rows of the stages section")
    p.add_argument("--no-pipeline-compile", action="store_true", dest="no_pipeline_compile", help="skip the compile row of the pipeline section")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's, but 1 on a CPU whose load average exceeds its cores: "
                   "two threads on a crowded 2-core machine wait on each other at every op, ten times slower than one)")
    p.add_argument("--json", default=None, help="also write every row as JSON here")
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        p.error("--device cuda but CUDA is not available")
    args.batch = args.batch or (64 if cuda else 8)
    args.warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    args.repeats = args.repeats if args.repeats is not None else (3 if cuda else 1)
    args.loader_batches = args.loader_batches or 2 * args.steps
    sections = args.sections.split(",") if args.sections else list(SECTIONS)
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        p.error(f"unknown sections {bad}; choose from {SECTIONS}")
    if args.pipeline == "synthetic" and not args.sections:
        sections = [s for s in sections if s != "pipeline"]
    if "pipeline" in sections and (args.pipeline != "real" or not args.data):
        p.error("the pipeline section needs --pipeline real --data ROOT")
    args.section_list = sections
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    elif args.device == "cpu" and os.getloadavg()[0] > (os.cpu_count() or 1):
        torch.set_num_threads(1)
    device = torch.device(args.device)
    bench = Bench(args)
    started, cpu_started = time.perf_counter(), time.process_time()
    env = environment(device)
    title = (f"avseg throughput: model {args.model} ({RECIPES[args.model]}), {args.image_size} px, train batch {bench.b} videos x {bench.t} frames, "
             f"inference batch {bench.infer_batch}, steps {args.steps} x {args.repeats} after {args.warmup} warm-up")  # fmt: skip
    print(title, *env, HEADER, sep="\n", flush=True)
    for section in args.section_list:
        getattr(bench, section)()
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    print(f"\n=== {title}", *env, f"{seconds:.0f} s wall, {cpu_seconds:.0f} s CPU time of this process (workers not counted)", "", HEADER, *(format_row(r) for r in bench.rows), sep="\n", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"title": title, "environment": env, "args": {k: v for k, v in vars(args).items()}, "seconds": seconds, "rows": [dataclasses.asdict(r) for r in bench.rows]}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
