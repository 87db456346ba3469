"""The one training loop, shared by every method and stage, on one device or under torchrun.

A model plugs in by returning ``{"loss": scalar, **scalar_extras}`` from ``forward(batch: AVBatch)``;
the loop owns devices, AMP, the optimizer and LR schedule, checkpoints, exact resume, logging and
distributed training. There is no method-specific code here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import random
import sys
import time
from collections.abc import Callable, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from avseg.config import TrainSettings
from avseg.engine import distributed
from avseg.engine.checkpoint import BEST, LAST, STATE, capture_rng_state, load_training_state, restore_rng_state, rng_isolated, save_model_weights, save_training_state
from avseg.engine.tracking import JsonlWriter, truncate_jsonl
from avseg.fileio import remove_stale_temporaries

log = logging.getLogger(__name__)

# Settings that may legitimately change between a run and its resumption.
# Settings whose effect lives in the optimizer / scheduler state: a resumed run keeps the saved values.
_FROM_CHECKPOINT = {"lr", "optimizer", "weight_decay", "momentum", "betas", "schedule", "warmup_steps", "min_lr_ratio", "poly_power"}
_RESUME_MAY_CHANGE = {"epochs", "max_steps", "workers", "log_every", "progress", "checkpoint_every_steps", "device"}


@dataclass
class FitResult:
    """What :func:`fit` returns.

    ``metrics``: the last evaluation (empty without ``evaluate``); ``best`` / ``best_step``: best value
    of ``best_key`` and the step it was reached; ``steps``: optimizer steps done in total (including
    those before a resume); ``seconds``: wall time of this call; ``train_loss``: mean training loss of
    the last (partial) epoch run in this call, None when nothing was left to train.
    """

    metrics: dict[str, float]
    best: float | None
    best_step: int | None
    steps: int
    seconds: float
    last_checkpoint: Path | None
    best_checkpoint: Path | None
    train_loss: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)  # eval records of this call


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/Inf loss (or non-finite weights after a finite one); the last checkpoint on
    disk is the last good state."""


def resolve_device(spec: str) -> torch.device:
    """``auto`` -> this process's GPU (LOCAL_RANK) when CUDA is present, else CPU."""
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "auto":
        return torch.device("cuda", distributed.local_rank()) if torch.cuda.is_available() else torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"device={spec!r} but CUDA is not available")
    if spec == "cuda":
        return torch.device("cuda", distributed.local_rank())
    if distributed.env_world_size() > 1:
        raise ValueError(f"device={spec!r} pins a GPU, but torchrun assigns one per process: use 'cuda' or 'auto'")
    return torch.device(spec)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_factor(step: int, settings: TrainSettings, total_steps: int) -> float:
    """LR multiplier before optimizer step ``step`` (0-based): linear warmup, then the schedule."""
    warmup = settings.warmup_steps
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if settings.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    if settings.schedule == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:  # poly, the usual segmentation schedule
        decay = (1.0 - progress) ** settings.poly_power
    return settings.min_lr_ratio + (1.0 - settings.min_lr_ratio) * decay


def build_optimizer(
    model: nn.Module,
    settings: TrainSettings,
    param_groups: Callable[[nn.Module], list[dict]] | None = None,
) -> torch.optim.Optimizer:
    """Optimizer over ``param_groups(model)`` or every parameter with ``requires_grad``.

    A group may set ``lr`` or ``lr_scale`` (multiplies ``settings.lr``) and any optimizer option.
    """
    groups: list[dict[str, Any]]
    if param_groups is None:
        groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    else:
        groups = [dict(g) for g in param_groups(model)]
    for i, group in enumerate(groups):
        group["params"] = list(group["params"])
        scale = group.pop("lr_scale", 1.0)
        group.setdefault("lr", settings.lr * scale)
        if not group["params"]:
            raise ValueError(f"parameter group {i} is empty")
    if not any(g["params"] for g in groups):
        raise ValueError("the model has no trainable parameters")
    extra: dict[str, Any] = {"fused": True} if settings.fused_optimizer else {}
    if settings.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay, **extra)
    cls = torch.optim.Adam if settings.optimizer == "adam" else torch.optim.AdamW
    return cls(groups, lr=settings.lr, betas=settings.betas, weight_decay=settings.weight_decay, **extra)


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; numpy / python follow it.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def _loader_seed(seed: int, epoch: int) -> int:
    # The DataLoader draws worker base seeds from its own generator, re-seeded per epoch so that
    # creating an iterator never consumes the global torch RNG and a resumed epoch gets the same seeds.
    return (seed * 1_000_003 + epoch) % 2**63


class _Meter:
    """Running sums of logged scalars, kept on the device so logging costs no sync per step."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, values: dict[str, Tensor]) -> None:
        for key, value in values.items():
            value = value.detach().float().reshape(())
            self.sums[key] = self.sums[key] + value if key in self.sums else value
            self.counts[key] = self.counts.get(key, 0) + 1

    def means(self) -> dict[str, float]:
        """Local means, averaged over processes (keys present on some ranks only are averaged there)."""
        local = {k: (v / self.counts[k]).item() for k, v in self.sums.items()}
        gathered = distributed.all_gather_object(local)
        keys = sorted({k for g in gathered for k in g}, key=lambda k: (k != "loss", k))
        return {k: float(np.mean([g[k] for g in gathered if k in g])) for k in keys}

    def reset(self) -> None:
        self.sums.clear()
        self.counts.clear()


def _scalars(out: Any, desc: str, step: int) -> dict[str, Tensor]:
    """``loss`` and the scalar extras of a forward output (non-scalar outputs such as logits are not logged)."""
    if not isinstance(out, dict) or "loss" not in out:
        raise TypeError(f"{desc}: model forward must return a dict with a 'loss' tensor, got {type(out).__name__}"
                        + (f" with keys {sorted(out)}" if isinstance(out, dict) else ""))
    loss = out["loss"]
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise TypeError(f"{desc}: 'loss' at step {step} must be a scalar tensor, got {getattr(loss, 'shape', type(loss))}")
    values = {"loss": loss}
    for key, value in out.items():
        if key != "loss" and isinstance(value, Tensor) and value.numel() == 1:
            values[key] = value
    return values


def fit(
    model: nn.Module,
    train_set: Dataset,
    settings: TrainSettings,
    out_dir: Path,
    *,
    collate_fn: Callable[[list[Any]], Any],
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
    best_key: str | None = None,
    best_mode: str = "max",
    resume: bool = False,
    param_groups: Callable[[nn.Module], list[dict]] | None = None,
    desc: str = "train",
    drop_last: bool = True,
    find_unused_parameters: bool = False,
) -> FitResult:
    """Train ``model`` on ``train_set``; write checkpoints and ``metrics.jsonl`` to ``out_dir``.

    Args:
        model: ``forward(batch)`` returns ``{"loss": scalar, ...}``; scalar extras are logged.
        train_set: map-style dataset; if it has ``set_epoch(epoch)`` it is called every epoch.
        collate_fn: turns a list of samples into the batch (an ``AVBatch`` or anything with ``.to``).
        evaluate: called after every epoch (and when ``max_steps`` stops training) on rank 0 only, with
            the plain model in eval mode and the training RNG isolated; returns scalar metrics.
        best_key / best_mode: metric of ``evaluate`` kept in ``best.safetensors`` (max or min).
        resume: continue exactly from ``out_dir/train_state.pt`` (a fresh start if there is none).
            Without it an existing checkpoint in ``out_dir`` is an error, never overwritten.
        param_groups: optimizer groups (dicts with ``params`` and optional ``lr`` / ``lr_scale``).
        desc: stage name used in the progress bar, logs and errors.
        drop_last: drop the incomplete last batch of each epoch.
        find_unused_parameters: passed to DDP (for models with parameters unused in some steps).
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    if best_key is not None and evaluate is None:
        raise ValueError(f"{desc}: best_key={best_key!r} needs an evaluate function")
    if best_mode not in ("max", "min"):
        raise ValueError(f"{desc}: best_mode must be 'max' or 'min' (got {best_mode!r})")
    if settings.negative_audio > 0:
        # The dataset replaces the soundtrack before its audio front-end; the loop only turns it on.
        set_negative = getattr(train_set, "set_negative_audio", None)
        if set_negative is None:
            raise ValueError(f"{desc}: negative_audio={settings.negative_audio} needs a dataset that can replace its soundtrack (set_negative_audio)")
        try:
            set_negative(settings.negative_audio, settings.negative_kinds, settings.negative_mode)
        except ValueError as exc:
            raise ValueError(f"{desc}: negative_audio={settings.negative_audio}: {exc} (this stage trains without audio from wav files: set it on a stage that hears audio)") from exc
    device = resolve_device(settings.device)
    settings.check_device(device)
    distributed.init_from_env(device.type)
    world, rank, main = distributed.world_size(), distributed.rank(), distributed.is_main()
    if settings.batch_size % world:
        raise ValueError(f"{desc}: global batch_size {settings.batch_size} is not divisible by {world} processes")
    per_batch = settings.batch_size // world

    state_path, last_path, best_path = out_dir / STATE, out_dir / LAST, out_dir / BEST
    if not resume and (state_path.exists() or last_path.exists()):
        raise FileExistsError(f"{desc}: {out_dir} already holds a checkpoint; pass resume=True or use another folder")
    out_dir.mkdir(parents=True, exist_ok=True)

    seed_everything(settings.seed + rank)  # rank offset: dropout differs across ranks, like nanoGPT
    raw = model.to(device)
    if settings.channels_last:
        raw = raw.to(memory_format=torch.channels_last)
    raw.train()
    optimizer = build_optimizer(raw, settings, param_groups)
    trainable = [p for g in optimizer.param_groups for p in g["params"]]

    num_samples = len(cast(Sized, train_set))  # a map-style dataset
    sampler = distributed.EpochSampler(num_samples, seed=settings.seed, rank=rank, world_size=world)
    steps_per_epoch = sampler.num_samples // per_batch if drop_last else math.ceil(sampler.num_samples / per_batch)
    if steps_per_epoch == 0:
        raise ValueError(f"{desc}: {num_samples} samples give no full batch of {per_batch} per process (drop_last)")
    total_steps = settings.epochs * steps_per_epoch
    stop_step = min(total_steps, settings.max_steps) if settings.max_steps else total_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, settings, total_steps))
    scaler = torch.amp.GradScaler("cuda") if settings.amp == "fp16" else None
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(settings.amp)

    epoch, batch_in_epoch, step, elapsed_before = 0, 0, 0, 0.0
    best, best_step, metrics = None, None, {}
    if resume and state_path.is_file():
        st = load_training_state(state_path)
        if st["steps_per_epoch"] != steps_per_epoch:
            raise ValueError(
                f"{desc}: {state_path} has {st['steps_per_epoch']} steps per epoch, this run {steps_per_epoch}: "
                "the dataset or batch size changed, so the run cannot continue exactly"
            )
        changed = {k: (v, getattr(settings, k)) for k, v in st["settings"].items()
                   if k not in _RESUME_MAY_CHANGE and hasattr(settings, k) and _plain(getattr(settings, k)) != _plain(v)}
        if changed and main:
            frozen = sorted(set(changed) & _FROM_CHECKPOINT)
            log.warning("%s: resuming with changed settings (saved, now): %s%s", desc, changed,
                        f". Ignored: {', '.join(frozen)} (the optimizer and LR schedule continue from the checkpoint; "
                        "start a new run to change them)" if frozen else "")
        raw.load_state_dict(st["model"])
        optimizer.load_state_dict(st["optimizer"])
        scheduler.load_state_dict(st["scheduler"])
        if scaler is not None and st.get("scaler"):
            scaler.load_state_dict(st["scaler"])
        if len(st["rng"]) == world:
            restore_rng_state(st["rng"][rank])
        elif main:
            log.warning("%s: checkpoint from %d processes, now %d: RNG streams restart from the seed",
                        desc, len(st["rng"]), world)
        epoch, batch_in_epoch, step = st["epoch"], st["batch_in_epoch"], st["step"]
        best, best_step, metrics = st["best"], st["best_step"], dict(st["metrics"])
        elapsed_before = st["elapsed"]
        if main:
            truncate_jsonl(out_dir / "metrics.jsonl", step)  # drop lines logged after this checkpoint
            remove_stale_temporaries(out_dir)  # half-written files of a killed run
            log.info("%s: resumed from %s at step %d (epoch %d, batch %d)", desc, state_path, step, epoch + 1, batch_in_epoch)
    elif resume and main:
        log.info("%s: no checkpoint in %s, starting from scratch", desc, out_dir)

    train_model = cast(nn.Module, torch.compile(raw)) if settings.compile else raw  # compile returns the wrapped module
    train_model = distributed.wrap_ddp(train_model, device, find_unused_parameters)

    loader_rng = torch.Generator()
    loader = DataLoader(
        train_set, batch_size=per_batch, sampler=sampler, collate_fn=collate_fn, num_workers=settings.workers,
        pin_memory=device.type == "cuda", drop_last=drop_last, generator=loader_rng, worker_init_fn=_seed_worker,
    )
    writer = JsonlWriter(out_dir / "metrics.jsonl") if main else None
    show_bar = main and (settings.progress == "on" or (settings.progress == "auto" and sys.stderr.isatty()))
    bar = tqdm(total=stop_step, initial=step, desc=desc, disable=not show_bar, dynamic_ncols=True)
    history: list[dict[str, Any]] = []

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - started

    def check_weights() -> None:
        """A finite loss can still leave non-finite weights (an absurd learning rate, overflowing gradients):
        they are never evaluated or checkpointed. Run before every evaluation and checkpoint."""
        tensors = [t for t in (*raw.parameters(), *raw.buffers()) if t.is_floating_point()]
        ok = bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()) if tensors else True
        if distributed.all_reduce_max(torch.tensor(0.0 if ok else 1.0, device=device)).item():
            names = [n for n, t in (*raw.named_parameters(), *raw.named_buffers()) if t.is_floating_point() and not torch.isfinite(t).all()]
            raise NonFiniteLossError(
                f"{desc}: non-finite weights after step {step} (epoch {epoch + 1}, e.g. {', '.join(names[:3]) or 'on another rank'}) "
                f"although the loss was finite; training stopped, last good checkpoint: {state_path if state_path.exists() else 'none'}"
            )

    def save_last() -> None:
        check_weights()
        rng_states = distributed.all_gather_object(capture_rng_state())  # every rank's streams
        if main:
            meta = {"desc": desc, "step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
                    "metrics": metrics, "settings": dataclasses.asdict(settings)}
            save_model_weights(raw, last_path, meta)
            save_training_state(state_path, {
                "model": raw.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "epoch": epoch, "batch_in_epoch": batch_in_epoch, "step": step, "steps_per_epoch": steps_per_epoch,
                "sampler": {"seed": settings.seed, "epoch": epoch, "start": batch_in_epoch * per_batch},
                "rng": rng_states, "world_size": world, "best": best, "best_step": best_step, "metrics": metrics,
                "elapsed": elapsed(), "settings": dataclasses.asdict(settings), "desc": desc,
            })
        distributed.barrier()

    def run_evaluation(update_best: bool) -> dict[str, float]:
        nonlocal best, best_step
        result = None
        if main:
            raw.eval()
            with rng_isolated():
                try:
                    result = evaluate(raw)  # type: ignore[misc]
                except (ValueError, RuntimeError, TypeError) as exc:
                    # e.g. a diverged model's NaN predictions refused by the metrics: say which stage and step
                    context = (f"{desc}: evaluation after step {step} (epoch {epoch}) failed; last good checkpoint: "
                               f"{state_path if state_path.exists() else 'none'}")
                    if type(exc) in (ValueError, RuntimeError, TypeError):
                        raise type(exc)(f"{context}: {exc}") from exc
                    raise  # a specific error (e.g. DataError naming a validation file) says enough
            raw.train()
            if not isinstance(result, dict):
                raise TypeError(f"{desc}: evaluate must return a dict of floats, got {type(result).__name__}")
            result = {k: float(v) for k, v in result.items()}
            if best_key is not None and best_key not in result:
                raise KeyError(f"{desc}: best_key {best_key!r} not among evaluation metrics {sorted(result)}")
        result = distributed.broadcast_object(result)
        if best_key is not None and update_best:
            value = result[best_key]
            if best is None or (value > best if best_mode == "max" else value < best):
                best, best_step = value, step
                if main:
                    save_model_weights(raw, best_path, {"desc": desc, "step": step, "epoch": epoch, "metrics": result,
                                                        "best_key": best_key, "settings": dataclasses.asdict(settings)})
        record = {**result, "kind": "eval", "step": step, "epoch": epoch, "time": round(elapsed(), 3)}
        history.append(record)
        if writer is not None:
            writer.write(record)
            log.info("%s eval step %d: %s", desc, step, ", ".join(f"{k} {v:.4g}" for k, v in result.items()))
        return result

    window, epoch_meter = _Meter(), _Meter()
    train_loss = None
    window_started = time.perf_counter()
    autocast = (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext())
    try:
        while epoch < settings.epochs and step < stop_step:
            sampler.set_epoch(epoch)
            sampler.set_start(batch_in_epoch * per_batch)  # skip the batches a resumed epoch already did
            if hasattr(train_set, "set_epoch"):
                train_set.set_epoch(epoch)
            loader_rng.manual_seed(_loader_seed(settings.seed, epoch))
            epoch_meter.reset()
            for batch in loader:
                batch = batch.to(device, non_blocking=True)
                with autocast:
                    out = train_model(batch)
                values = _scalars(out, desc, step + 1)
                loss = values["loss"]
                (scaler.scale(loss) if scaler is not None else loss).backward()
                # One flag for all ranks so every process stops at the same step (no hang in a collective).
                if distributed.all_reduce_max((~torch.isfinite(loss.detach())).float()).item():
                    raise NonFiniteLossError(
                        f"{desc}: non-finite loss ({loss.item()}) at step {step + 1} (epoch {epoch + 1}, batch "
                        f"{batch_in_epoch + 1}); training stopped, last good checkpoint: "
                        f"{state_path if state_path.exists() else 'none'}"
                    )
                if settings.grad_clip is not None:
                    if scaler is not None:
                        scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(trainable, settings.grad_clip)
                lr = optimizer.param_groups[0]["lr"]
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                step += 1
                batch_in_epoch += 1
                window.add(values)
                epoch_meter.add({"loss": loss})
                bar.update(1)

                if step % settings.log_every == 0 or step == stop_step:
                    means = window.means()
                    now = time.perf_counter()
                    record = {"kind": "train", "step": step, "epoch": epoch, "lr": lr, **means,
                              "sec_per_step": round((now - window_started) / window.counts["loss"], 5),
                              "time": round(elapsed(), 3)}
                    window.reset()
                    window_started = now
                    if writer is not None:
                        writer.write(record)
                        bar.set_postfix(loss=f"{means['loss']:.4f}", lr=f"{lr:.3g}")
                        log.info("%s step %d/%d epoch %d/%d: %s lr %.3g", desc, step, stop_step, epoch + 1,
                                 settings.epochs, " ".join(f"{k} {v:.4f}" for k, v in means.items()), lr)
                if step >= stop_step:
                    break
                every = settings.checkpoint_every_steps
                if every and step % every == 0 and batch_in_epoch < steps_per_epoch:
                    save_last()  # mid-epoch; the epoch end saves anyway

            train_loss = epoch_meter.means().get("loss")
            if batch_in_epoch >= steps_per_epoch:
                epoch, batch_in_epoch = epoch + 1, 0
            if evaluate is not None:
                check_weights()
                # A max_steps stop mid-epoch is evaluated (its metrics are reported) but cannot become
                # best.safetensors: an uninterrupted run never evaluates there, and a resumed run must
                # keep the same best checkpoint as an uninterrupted one.
                metrics = run_evaluation(update_best=batch_in_epoch == 0)
            save_last()
    finally:
        bar.close()
        if writer is not None:
            writer.close()

    return FitResult(
        metrics=dict(metrics), best=best, best_step=best_step, steps=step, seconds=time.perf_counter() - started,
        last_checkpoint=last_path if last_path.exists() else None,
        best_checkpoint=best_path if best_path.exists() else None, train_loss=train_loss, history=history,
    )


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
