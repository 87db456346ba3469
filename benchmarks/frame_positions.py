"""Test mIoU of runs per frame position (frame 1, 2, ... of each video; clean protocol, binary masks).

A model should find the sounding object as well in every frame of a video. One that does much better on
one position has learnt something about that position rather than about the scene: S4 training has a
mask on frame 1 only, and with ``audio_window: centred`` frame 1's window starts with silence before the
clip, so the supervised reference trained that way scored 63.0 on frame 1 against 30-34 on frames 2-5
(session 14, docs/results/listening); ``audio_window: inside`` evens it out.

    python benchmarks/frame_positions.py RUN [RUN ...] [--split test]

One line per run: the mIoU at each position (frames with ground truth in brackets) and over all frames.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from avseg.engine.evaluate import binary_miou_by, iterate_outputs
from avseg.methods.common import make_dataset
from avseg.runner import load_run


def position_miou(run: Path, split: str, device: torch.device) -> dict[str, tuple[float, int]]:
    """{"1": (mIoU, frames), "2": ..., "all": ...}: clean binary mIoU of a run's final model per frame position."""
    spec, cfg = load_run(run)
    predictor = spec.load_predictor(cfg, run, device)
    outputs = iterate_outputs(predictor.predict, make_dataset(cfg.data, split, audio=cfg.data.audio_frontend is not None), device)
    scores = dict(sorted(binary_miou_by(outputs, lambda fo: str(fo.t + 1)).items(), key=lambda kv: int(kv[0])))
    frames = sum(n for _, n in scores.values())
    if frames:  # the clean mIoU is a mean over frames: the positions' weighted by their frames
        scores["all"] = (sum(m * n for m, n in scores.values()) / frames, frames)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--split", default="test")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    for run in args.runs:
        scores = position_miou(run, args.split, device)
        print(f"{run}  " + "  ".join(f"{k} {100 * v:.1f} ({n})" for k, (v, n) in scores.items()))


if __name__ == "__main__":
    main()
