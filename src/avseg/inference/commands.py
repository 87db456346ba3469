"""The ``segment`` and ``report`` subcommands (wired into ``avseg.cli`` by ``add_inference_commands``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def cmd_segment(args: argparse.Namespace) -> int:
    from avseg.inference.predictor import Predictor
    from avseg.inference.segment import segment_videos

    if (args.run is None) == (args.checkpoint is None):
        raise ValueError("pass exactly one of --run RUN or --checkpoint FILE (with --config when it is not in a run folder)")
    if args.config is not None and args.checkpoint is None:
        raise ValueError("--config goes with --checkpoint (a run folder carries its own config.yaml)")
    if args.run is not None:
        predictor = Predictor.from_run(Path(args.run), device=args.device, batch_size=args.batch_size)
    else:
        predictor = Predictor.from_checkpoint(Path(args.checkpoint), args.config, device=args.device, batch_size=args.batch_size)
    index = segment_videos(predictor, [Path(v) for v in args.videos], Path(args.out), fps=args.fps, allow_silent=args.allow_silent, progress=not args.no_progress)
    if args.json:
        print(json.dumps(index, indent=2))
    else:
        for v in index["videos"]:
            print(f"{v['video']}: {v['frames']} frames in {v['seconds']:.1f} s, mean sounding area {v['mean_area']:.3f} -> {Path(args.out) / v['folder']}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from avseg.inference.report import write_report

    out = write_report(Path(args.run), split=args.split, out=Path(args.out) if args.out else None, device=args.device, data_root=args.data)
    print(f"wrote {out}")
    return 0


def add_inference_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``avseg segment`` and ``avseg report`` on the CLI's subparsers."""
    s = sub.add_parser(
        "segment", help="segment the sounding objects of your own videos (masks, overlay MP4 with sound, GIF, JSON)",
        description="Decode any video FFmpeg reads, sample frames at --fps, give each frame the audio window the model "
        "was trained with, and write per-frame mask PNGs, an overlay MP4 with the original audio, a GIF, a contact "
        "sheet and a JSON summary into OUT/<video name>/.",
    )  # fmt: skip
    s.add_argument("videos", nargs="+", metavar="VIDEO", help="video files (any container / codec FFmpeg reads)")
    s.add_argument("--run", help="trained run folder (config.yaml + final checkpoint)")
    s.add_argument("--checkpoint", help="weights file (.safetensors) instead of --run")
    s.add_argument("--config", help="with --checkpoint: the run's config.yaml or a recipe (default: config.yaml of the checkpoint's run folder)")
    s.add_argument("--out", required=True, help="output folder (one subfolder per video)")
    s.add_argument("--fps", type=float, default=1.0, help="frames per second to segment, at (k + 0.5) / fps s (default 1, as AVSBench; 0 = every frame)")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    s.add_argument("--batch-size", type=int, default=8, dest="batch_size", help="frames per forward pass (default 8)")
    s.add_argument("--allow-silent", action="store_true", dest="allow_silent", help="segment videos without an audio track using silence (default: error)")
    s.add_argument("--no-progress", action="store_true", dest="no_progress", help="no progress bar")
    s.add_argument("--json", action="store_true", help="print the summary index as JSON")
    s.set_defaults(func=cmd_segment)

    r = sub.add_parser("report", help="self-contained HTML report of a run: metrics, overlays, best/worst frames, pseudo masks")
    r.add_argument("run", metavar="RUN", help="trained run folder")
    r.add_argument("--split", choices=("train", "val", "test"), default="test")
    r.add_argument("--out", help="HTML file (default RUN/report.html)")
    r.add_argument("--device", default="auto")
    r.add_argument("--data", help="dataset root, if it moved since training")
    r.set_defaults(func=cmd_report)
