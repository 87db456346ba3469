"""The ``avseg`` command line. ``main(argv)`` takes a list so tests call the real entry point."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from avseg.data.layout import LAYOUTS, SPLITS

log = logging.getLogger("avseg")


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


# --- data ---------------------------------------------------------------------------------------------
def cmd_data_synth(args: argparse.Namespace) -> int:
    from avseg.data.synthetic import generate

    counts = generate(args.layout, Path(args.out), num_videos=args.videos, seed=args.seed, size=args.size)
    print(json.dumps(counts) if args.json else f"wrote {args.layout} synthetic dataset to {args.out}: {counts}")
    return 0


def cmd_data_composite(args: argparse.Namespace) -> int:
    from avseg.data.composite import build_composite

    counts = build_composite(Path(args.media), Path(args.out), seed=args.seed, negatives=args.negatives, size=args.size)
    print(json.dumps(counts) if args.json else f"wrote real-media composite (S4 layout) to {args.out}: {counts}")
    return 0


def cmd_data_stamps(args: argparse.Namespace) -> int:
    from avseg.data.stamps import StampsConfig, generate

    counts = generate(args.layout, Path(args.out), num_videos=args.videos, seed=args.seed, size=args.size,
                      stamps=Path(args.stamps), backgrounds=Path(args.backgrounds) if args.backgrounds else None,
                      config=StampsConfig(grouping=args.grouping))  # fmt: skip
    print(json.dumps(counts) if args.json else f"wrote {args.layout} stamp composite to {args.out}: {counts}")
    return 0


def cmd_data_validate(args: argparse.Namespace) -> int:
    from avseg.data.validate import format_report, validate_dataset

    report = validate_dataset(Path(args.root), args.layout)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 1 if report["problems"] else 0


def cmd_data_preview(args: argparse.Namespace) -> int:
    from avseg.inference.preview import preview_sheet

    out = preview_sheet(Path(args.root), args.layout, args.split, Path(args.out), videos=args.videos, tile=args.tile)
    print(f"wrote {out}")
    return 0


# --- scoring ------------------------------------------------------------------------------------------
def cmd_score(args: argparse.Namespace) -> int:
    from avseg.scoring import score_predictions

    result = score_predictions(Path(args.data), args.layout, args.split, Path(args.pred), args.protocol, batch_frames=args.batch_frames)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{args.layout} {args.split} ({result['frames']} frames, protocol {result['protocol']}): "
              f"mIoU {result['miou']:.4f}  F {result['fscore']:.4f}")  # fmt: skip
    return 0


# --- parser -------------------------------------------------------------------------------------------
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="avseg",
        description="Weakly supervised audio-visual segmentation: data, training, evaluation and inference.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument(
        "--threads", type=_positive_int, metavar="N",
        help="CPU threads torch may use (default: torch's own choice, one per core). On a machine that other "
        "jobs keep busy, 1 is often several times faster: torch's threads wait on each other at every operator",
    )  # fmt: skip
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="generate, build, validate and preview datasets in the AVSBench layouts")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    s = dsub.add_parser("synth", help="generate the embedded synthetic audio-visual dataset")
    s.add_argument("--layout", choices=LAYOUTS, required=True)
    s.add_argument("--out", required=True, help="output folder (the subset root)")
    s.add_argument("--videos", type=int, default=100, help="number of videos over all splits (default 100)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size", type=int, default=224, help="frame size in pixels (default 224)")
    s.add_argument("--json", action="store_true", help="print counts as JSON")
    s.set_defaults(func=cmd_data_synth)
    c = dsub.add_parser("composite", help="build an S4-layout benchmark from real photos with masks and real sounds")
    c.add_argument("--media", required=True, help="media folder (classes.txt, images/, labels/, sounds/)")
    c.add_argument("--out", required=True)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--negatives", type=float, default=0.2, help="fraction of extra videos whose sound class is absent (empty mask)")
    c.add_argument("--size", type=int, default=224)
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_data_composite)
    st = dsub.add_parser("stamps", help="cut-out composite: real stamps (photo + alpha + sound) pasted on photos, any layout")
    st.add_argument("--layout", choices=LAYOUTS, required=True)
    st.add_argument("--out", required=True, help="output folder (the subset root)")
    st.add_argument("--videos", type=_positive_int, default=100, help="number of videos over all splits (default 100)")
    st.add_argument("--stamps", default="/usr/share/tuxpaint/stamps", help="stamp folder (default: the tuxpaint-stamps-default install)")
    st.add_argument("--backgrounds", help="folder of background photos, split into disjoint per-split pools (default: synthetic textures)")
    st.add_argument("--seed", type=int, default=0)
    st.add_argument("--size", type=int, default=224, help="frame size in pixels (default 224)")
    st.add_argument("--grouping", choices=("stamp", "coarse"), default="stamp", help="classes: one per stamp, or the coarse groups (docs/data.md)")
    st.add_argument("--json", action="store_true", help="print counts as JSON")
    st.set_defaults(func=cmd_data_stamps)
    v = dsub.add_parser("validate", help="check every file of a dataset; exit 1 listing all problems")
    v.add_argument("root")
    v.add_argument("--layout", choices=LAYOUTS, required=True)
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    v.set_defaults(func=cmd_data_validate)
    pv = dsub.add_parser("preview", help="write a contact sheet PNG of frames, masks and spectrograms")
    pv.add_argument("root")
    pv.add_argument("--layout", choices=LAYOUTS, required=True)
    pv.add_argument("--split", choices=SPLITS, default="test")
    pv.add_argument("--out", required=True, help="PNG path")
    pv.add_argument("--videos", type=int, default=4)
    pv.add_argument("--tile", type=int, default=112)
    pv.set_defaults(func=cmd_data_preview)
    from avseg.data.cache import add_cache_command

    add_cache_command(dsub)

    sc = sub.add_parser("score", help="score a folder of prediction PNGs against a dataset's ground truth")
    sc.add_argument("--data", required=True, help="dataset root")
    sc.add_argument("--layout", choices=LAYOUTS, required=True)
    sc.add_argument("--split", choices=SPLITS, required=True)
    sc.add_argument("--pred", required=True, help="prediction folder mirroring the GT mask paths")
    sc.add_argument("--protocol", choices=("clean", "avsbench", "per-frame-max"), default="clean")
    sc.add_argument("--batch-frames", type=int, default=20, help="frames per batch of the avsbench protocol (default 20)")
    sc.add_argument("--json", action="store_true")
    sc.set_defaults(func=cmd_score)

    _add_run_commands(sub)
    from avseg.inference.commands import add_inference_commands

    add_inference_commands(sub)
    from avseg.bench import add_bench_command

    add_bench_command(sub)
    return p


def _add_run_commands(sub: argparse._SubParsersAction) -> None:
    """train / pseudo / eval / demo: defined in avseg.runner, which owns methods and the engine."""
    from avseg.runner import add_run_commands

    add_run_commands(sub)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from avseg.engine.tracking import setup_logging

    setup_logging(None, level=logging.DEBUG if args.verbose else logging.INFO)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
        log.debug("torch threads: %d", torch.get_num_threads())
    from avseg.audio.frontends import AudioError
    from avseg.data.errors import DataError
    from avseg.engine.trainer import NonFiniteLossError
    from avseg.runner import RunError

    try:
        return int(args.func(args) or 0)
    except (CliError, RunError, DataError, AudioError, NonFiniteLossError, FileNotFoundError, FileExistsError, ValueError) as exc:
        if args.verbose:
            raise
        print(f"avseg: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
