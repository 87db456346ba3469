"""Toy audio-visual training run for the engine tests.

Imported by tests/test_engine.py (toy dataset, collate, model) and run as a script by
tests/test_ddp.py (``python -m torch.distributed.run --nproc_per_node=2 --standalone``, gloo on CPU)
and by the SIGKILL resume test (plain ``python``). Final weights are ``<out>/last.safetensors``.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from avseg.config import TrainSettings
from avseg.engine import distributed, fit
from avseg.types import AVBatch

FRAME = (3, 4, 4)  # tiny frames: (C, H, W)
NUM_CLASSES = 2


class ToyAV(Dataset):
    """``n`` one-frame videos (T=1) whose labels are a fixed linear function of the frame.

    ``set_epoch`` + ``noise`` mimic real augmentation: the noise of sample ``i`` in epoch ``e`` is drawn
    from a generator seeded by (seed, epoch, index), so it does not depend on workers or call order.
    """

    def __init__(self, n: int = 16, seed: int = 0, noise: float = 0.0):
        g = torch.Generator().manual_seed(1234)
        self.frames = torch.randn(n, 1, *FRAME, generator=g)  # (N, T=1, 3, 4, 4)
        self.audio = self.frames[:, :, :1] * 0.5 + 0.1 * torch.randn(n, 1, 1, 4, 4, generator=g)  # (N, 1, 1, F, W)
        w = torch.randn(self.frames[0].numel(), NUM_CLASSES, generator=g)
        self.labels = (self.frames.reshape(n, -1) @ w > 0).float()  # (N, K)
        self.seed, self.noise, self.epoch = seed, noise, 0
        self.epochs_seen: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.epochs_seen.append(epoch)

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int) -> dict[str, Any]:
        frames = self.frames[i]
        if self.noise:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch * 10_007 + i)
            frames = frames + self.noise * torch.randn(frames.shape, generator=g)
        return {"frames": frames, "audio": self.audio[i], "labels": self.labels[i], "id": f"v{i:03d}"}


def collate(samples: list[dict[str, Any]]) -> AVBatch:
    frames = torch.stack([s["frames"] for s in samples])  # (B, T, 3, H, W)
    b, t, _, h, w = frames.shape
    return AVBatch(
        frames=frames,
        audio=torch.stack([s["audio"] for s in samples]),  # (B, T, 1, F, W_a)
        waveform=None,
        masks=torch.zeros(b, t, h, w, dtype=torch.int64),
        has_mask=torch.zeros(b, t, dtype=torch.bool),
        valid=torch.ones(b, t, dtype=torch.bool),
        labels=torch.stack([s["labels"] for s in samples]),  # (B, K)
        video_ids=[s["id"] for s in samples],
        frame_ids=[[1] * t for _ in samples],
    )


class ToyModel(nn.Module):
    """Linear visual/audio encoders + a classification head; no BatchNorm (batch-size independent).

    ``contrastive`` adds an audio-visual InfoNCE whose negatives are the audio embeddings of the GLOBAL
    batch, gathered across processes with the autograd-aware ``torch.distributed.nn.functional``.
    ``nan_at_call`` / ``crash_at_call`` inject failures at the n-th training forward call (1-based).
    """

    def __init__(self, dropout: float = 0.0, contrastive: bool = False, nan_at_call: int | None = None,
                 crash_at_call: int | None = None, sleep: float = 0.0):
        super().__init__()
        self.visual = nn.Linear(3 * 4 * 4, 8)
        self.audio = nn.Linear(4 * 4, 8)
        self.head = nn.Linear(8, NUM_CLASSES)
        self.drop = nn.Dropout(dropout)
        self.contrastive = contrastive
        self.nan_at_call, self.crash_at_call, self.sleep = nan_at_call, crash_at_call, sleep
        self.calls = 0

    def forward(self, batch: AVBatch) -> dict[str, torch.Tensor]:
        self.calls += self.training  # evaluation calls do not count
        if self.training and self.crash_at_call == self.calls:
            raise RuntimeError(f"simulated crash at forward call {self.calls}")
        if self.sleep:
            time.sleep(self.sleep)
        v = self.visual(batch.frames.flatten(1))  # (B, 8), T=1
        logits = self.head(self.drop(torch.relu(v)))  # (B, K)
        bce = F.binary_cross_entropy_with_logits(logits, batch.labels)
        loss = bce
        out = {"bce": bce.detach(), "logits": logits}
        if self.contrastive:
            zv = F.normalize(v, dim=-1)  # (B, 8)
            za = F.normalize(self.audio(batch.audio.flatten(1)), dim=-1)  # (B, 8)
            keys, offset = za, 0
            # Only while training: evaluation runs on rank 0 alone and must not enter a collective.
            if self.training and dist.is_initialized() and dist.get_world_size() > 1:
                keys = torch.cat(dist_nn.all_gather(za))  # (B_global, 8), rank order
                offset = dist.get_rank() * za.shape[0]
            sim = zv @ keys.T / 0.1  # (B, B_global)
            target = torch.arange(za.shape[0]) + offset  # positives: the same video's audio
            nce = F.cross_entropy(sim, target)
            loss = loss + nce
            out["nce"] = nce.detach()
        if self.training and self.nan_at_call == self.calls:
            loss = loss * float("nan")
        out["loss"] = loss
        return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch", type=int, default=4, help="global batch")
    p.add_argument("--videos", type=int, default=16)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--noise", type=float, default=0.0)
    p.add_argument("--contrastive", action="store_true")
    p.add_argument("--sleep", type=float, default=0.0, help="seconds per forward (kill tests)")
    p.add_argument("--checkpoint-every", type=int, default=None)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    args = p.parse_args(argv)

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)  # identical initial weights on every rank
    model = ToyModel(dropout=args.dropout, contrastive=args.contrastive, sleep=args.sleep)
    settings = TrainSettings(
        epochs=args.epochs, lr=args.lr, batch_size=args.batch, optimizer="adamw", schedule="cosine",
        warmup_steps=2, grad_clip=1.0, seed=args.seed, device="cpu", workers=args.workers,
        checkpoint_every_steps=args.checkpoint_every, log_every=1, progress="off",
    )
    result = fit(model, ToyAV(args.videos, args.seed, args.noise), settings, args.out, collate_fn=collate,
                 resume=args.resume, desc="toy")
    if distributed.is_main():
        print(json.dumps({"steps": result.steps, "train_loss": result.train_loss}))
    distributed.cleanup()


if __name__ == "__main__":
    main()
