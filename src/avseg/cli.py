"""The ``avseg`` command line: one module mapping each subcommand to a library function.

``main(argv)`` takes a list so tests call the real entry point. Every flag is declared once here; flags
several subcommands share come from the ``_add_*`` helpers.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from avseg.audio.decode import AudioError
from avseg.bench import resolve_methods, run_bench, summarize_benches, write_summary
from avseg.data.cache import build_cache
from avseg.data.composite import build_composite
from avseg.data.errors import DataError
from avseg.data.layout import LAYOUTS, SPLITS
from avseg.data.stamps import StampsConfig
from avseg.data.stamps import generate as generate_stamps
from avseg.data.synthetic import generate as generate_synthetic
from avseg.data.validate import format_report, validate_dataset
from avseg.demo import run_demo
from avseg.engine import distributed as dist
from avseg.engine.tracking import setup_logging
from avseg.engine.trainer import NonFiniteLossError
from avseg.inference.predictor import Predictor
from avseg.inference.preview import preview_sheet
from avseg.inference.report import write_report
from avseg.inference.segment import segment_videos
from avseg.listening import format_listen, listen_run
from avseg.methods import METHODS
from avseg.runner import QUICK_TRAIN_FLAGS, RunError, build_config, evaluate_run, load_run, reconfigure, run_method
from avseg.scoring import score_predictions

log = logging.getLogger("avseg")

# The training flags of ``train`` and ``bench``, in the order ``bench`` writes them into results.md;
# all but image_size apply to every training stage (runner.QUICK_TRAIN_FLAGS).
TRAINING_FLAGS = ("epochs", "batch_size", "max_steps", "image_size", "device", "seed", "workers", "amp")
assert set(TRAINING_FLAGS) == set(QUICK_TRAIN_FLAGS) | {"image_size"}


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


# --- data ---------------------------------------------------------------------------------------------
def cmd_data_synth(args: argparse.Namespace) -> int:
    counts = generate_synthetic(args.layout, Path(args.out), num_videos=args.videos, seed=args.seed, size=args.size)
    print(json.dumps(counts) if args.json else f"wrote {args.layout} synthetic dataset to {args.out}: {counts}")
    return 0


def cmd_data_composite(args: argparse.Namespace) -> int:
    counts = build_composite(Path(args.media), Path(args.out), seed=args.seed, negatives=args.negatives, size=args.size)
    print(json.dumps(counts) if args.json else f"wrote real-media composite (S4 layout) to {args.out}: {counts}")
    return 0


def cmd_data_stamps(args: argparse.Namespace) -> int:
    counts = generate_stamps(args.layout, Path(args.out), num_videos=args.videos, seed=args.seed, size=args.size,
                      stamps=Path(args.stamps), backgrounds=Path(args.backgrounds) if args.backgrounds else None,
                      config=StampsConfig(grouping=args.grouping))  # fmt: skip
    print(json.dumps(counts) if args.json else f"wrote {args.layout} stamp composite to {args.out}: {counts}")
    return 0


def cmd_data_validate(args: argparse.Namespace) -> int:
    report = validate_dataset(Path(args.root), args.layout)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 1 if report["problems"] else 0


def cmd_data_preview(args: argparse.Namespace) -> int:
    out = preview_sheet(Path(args.root), args.layout, args.split, Path(args.out), videos=args.videos, tile=args.tile)
    print(f"wrote {out}")
    return 0


# --- scoring ------------------------------------------------------------------------------------------
def cmd_score(args: argparse.Namespace) -> int:
    result = score_predictions(Path(args.data), args.layout, args.split, Path(args.pred), args.protocol, batch_frames=args.batch_frames, binary=args.binary)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{args.layout} {args.split} ({result['frames']} frames, protocol {result['protocol']}): "
              f"mIoU {result['miou']:.4f}  F {result['fscore']:.4f}")  # fmt: skip
    return 0


def cmd_data_cache(args: argparse.Namespace) -> int:
    index = build_cache(
        Path(args.root), args.layout, Path(args.out), image_size=args.image_size,
        audio_frontend=None if args.audio_frontend == "none" else args.audio_frontend, audio_window=args.audio_window,
        splits=tuple(args.splits), workers=args.workers, progress=not args.json,
    )  # fmt: skip
    sizes = {p.name: p.stat().st_size for p in Path(args.out).glob("*.npy")}
    summary = {
        "out": str(args.out), "seconds": index["seconds"], "megabytes": round(sum(sizes.values()) / 1e6, 1),
        "splits": {s: {"videos": len(v["videos"]), "frames": v["frames"]} for s, v in index["splits"].items()},
    }  # fmt: skip
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        splits = ", ".join(f"{s} {v['videos']} videos / {v['frames']} frames" for s, v in summary["splits"].items())
        print(f"wrote cache {args.out} ({summary['megabytes']} MB in {summary['seconds']:.1f} s): {splits}")
    return 0


# --- training, pseudo masks, evaluation, listening, demo -------------------------------------------
def _quick(args: argparse.Namespace) -> dict[str, Any]:
    """The quick training flags given on the command line (max_steps is applied per call, see run_method)."""
    return {k: getattr(args, k, None) for k in QUICK_TRAIN_FLAGS if k != "max_steps"}


def cmd_train(args: argparse.Namespace) -> int:
    run_dir = Path(args.out)
    # --visual-weights / --audio-weights are shorthands for the config keys of the same names.
    weights = [f"{key}={json.dumps(value)}" for key, value in (("visual_weights", args.visual_weights), ("audio_weights", args.audio_weights)) if value]
    args.set = weights + list(args.set or [])
    dist.init_from_env("cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu")
    try:
        if args.resume and (run_dir / "config.yaml").is_file():
            # The run's own config; flags given again change only what they name.
            spec, cfg = load_run(run_dir)
            if args.method is not None and args.method != spec.name:
                raise RunError(f"{run_dir} holds a {spec.name} run, not {args.method}")
            sets = list(args.set or [])
            sets += [f"data.root={json.dumps(str(args.data))}"] if args.data else []
            sets += [f"data.image_size={args.image_size}"] if args.image_size else []
            cfg = reconfigure(spec, cfg, _quick(args), sets, source=str(run_dir / "config.yaml"))
        else:
            spec, cfg = build_config(args.method or "ws-avs", args.config, args.data, args.layout, _quick(args), args.image_size, args.set)
        summaries = run_method(spec, cfg, run_dir, resume=args.resume, max_steps=args.max_steps)
        if dist.is_main():
            truncated = [k for k, v in summaries.items() if v.get("truncated")]
            print(json.dumps({"run": str(run_dir), "stages": {k: v.get("seconds") for k, v in summaries.items()},
                              **({"truncated": truncated} if truncated else {})}))  # fmt: skip
    finally:
        dist.cleanup()
    return 0


def cmd_pseudo(args: argparse.Namespace) -> int:
    run_dir = Path(args.run)
    spec, cfg = load_run(run_dir)
    pseudo = spec.pseudo_stages(cfg)  # every stage before the final model's
    if not pseudo:
        raise RunError(f"method {spec.name} has no pseudo-mask stages")
    if args.from_stage is not None and args.from_stage not in pseudo:
        raise RunError(f"--from {args.from_stage!r}: the pseudo-mask stages of {spec.name} are {', '.join(pseudo)}")
    only = pseudo[pseudo.index(args.from_stage):] if args.from_stage else pseudo
    # --from X reruns X, and after it what reads X's outputs (directly or not); --force reruns every stage named.
    force: bool | set[str] = True if args.force else {args.from_stage} if args.from_stage else False
    summaries = run_method(spec, cfg, run_dir, resume=True, only=only, force=force)
    print(json.dumps({k: v.get("quality", v.get("seconds")) for k, v in summaries.items()}, default=str))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    result = evaluate_run(Path(args.run), args.split, args.protocol, args.batch_frames, args.device, Path(args.save_pred) if args.save_pred else None, args.data, binary=args.binary)
    if args.json and not args.listen:
        print(json.dumps(result, indent=2, default=float))
    elif not args.json:
        scoring = " binary" if result["layout"] == "avss" and result["scoring"] == "binary" else ""
        print(f"{result['method']} on {result['layout']} {args.split} ({result['frames']} frames, {args.protocol}{scoring}): mIoU {result['miou']:.4f}  F {result['fscore']:.4f}")
    if args.listen:
        listened = listen_run(Path(args.run), args.split, seed=args.seed, device=args.device, data_root=args.data)
        print(json.dumps({**result, "listen": listened}, indent=2, default=float) if args.json else "\n" + format_listen(listened))
    return 0


def cmd_listen(args: argparse.Namespace) -> int:
    """``avseg listen`` (and ``avseg eval --listen``): does the model listen? See avseg.listening."""
    result = listen_run(Path(args.run), args.split, seed=args.seed, device=args.device, max_videos=args.max_videos, data_root=args.data)
    print(json.dumps(result, indent=2, default=float) if args.json else format_listen(result))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    metrics = run_demo(Path(args.out), videos=args.videos, size=args.size, seed=args.seed, recipe=args.recipe, quick=args.quick, methods=methods)
    print(json.dumps(metrics, indent=2))
    return 0


# --- bench ---------------------------------------------------------------------------------------------
def _command_line(args: argparse.Namespace) -> str:
    """The bench command as typed (canonical order), for results.md."""
    parts = ["avseg", "bench", "--data", str(args.data), "--layout", args.layout, "--methods", args.methods, "--out", str(args.out)]
    if args.recipe != "demo":
        parts += ["--recipe", args.recipe]
    if args.quick:
        parts.append("--quick")
    if args.no_reuse:
        parts.append("--no-reuse")
    for flag in TRAINING_FLAGS:
        value = getattr(args, flag, None)
        if value is not None:
            parts += [f"--{flag.replace('_', '-')}", str(value)]
    for item in args.set or []:
        parts += ["--set", item]
    return " ".join(shlex.quote(p) for p in parts)


def cmd_bench(args: argparse.Namespace) -> int:
    methods = resolve_methods(args.methods)
    quick = {k: getattr(args, k, None) for k in QUICK_TRAIN_FLAGS}
    if args.quick:  # a smoke run of every stage: one epoch of at most 2 steps each
        quick["epochs"] = quick["epochs"] or 1
        quick["max_steps"] = quick["max_steps"] or 2
    command = _command_line(args)
    rows = run_bench(
        Path(args.data), args.layout, methods, Path(args.out), recipe=args.recipe, quick=quick, image_size=args.image_size,
        overrides=args.set, device=args.device or "auto", grid_rows=args.grid_rows, command=command, reuse=not args.no_reuse,
    )  # fmt: skip
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
    else:
        print((Path(args.out) / "results.md").read_text())
    return 0


def cmd_bench_summary(args: argparse.Namespace) -> int:
    summary = summarize_benches([Path(f) for f in args.folders], across_data=args.across_data)
    flags = ["--across-data"] if args.across_data else []
    command = " ".join(shlex.quote(p) for p in ["avseg", "bench-summary", *args.folders, "--out", str(args.out), *flags])
    text = write_summary(Path(args.out), summary, command=command)
    print(json.dumps(summary, indent=2) if args.json else text)
    return 0


# --- your own videos, run reports ------------------------------------------------------------------
def cmd_segment(args: argparse.Namespace) -> int:
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
    out = write_report(Path(args.run), split=args.split, out=Path(args.out) if args.out else None, device=args.device, data_root=args.data)
    print(f"wrote {out}")
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
    _add_cache_command(dsub)

    sc = sub.add_parser("score", help="score a folder of prediction PNGs against a dataset's ground truth")
    sc.add_argument("--data", required=True, help="dataset root")
    sc.add_argument("--layout", choices=LAYOUTS, required=True)
    sc.add_argument("--split", choices=SPLITS, required=True)
    sc.add_argument("--pred", required=True, help="prediction folder mirroring the GT mask paths")
    sc.add_argument("--protocol", choices=("clean", "avsbench", "per-frame-max"), default="clean")
    sc.add_argument("--batch-frames", type=int, default=20, help="frames per batch of the avsbench protocol (default 20)")
    sc.add_argument("--binary", action="store_true", help="AVSS: the PNGs are probabilities (a binary model's, or avseg eval --binary --save-pred); scored against the union of the sounding objects")
    sc.add_argument("--json", action="store_true")
    sc.set_defaults(func=cmd_score)

    _add_run_commands(sub)
    _add_inference_commands(sub)
    _add_bench_command(sub)
    return p


def _add_evaluation_flags(p: argparse.ArgumentParser) -> None:
    """The split, device and data location of the commands that evaluate a trained run (eval, listen, report)."""
    p.add_argument("--split", choices=SPLITS, default="test")
    p.add_argument("--device", default="auto")
    p.add_argument("--data", help="dataset root, if it moved since training")


def _add_training_flags(p: argparse.ArgumentParser, device_help: str) -> None:
    """The TRAINING_FLAGS of ``train`` and ``bench``; unset (None) unless given."""
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, dest="batch_size")
    p.add_argument("--max-steps", type=int, dest="max_steps")
    p.add_argument("--image-size", type=int, dest="image_size")
    p.add_argument("--device", help=device_help)
    p.add_argument("--seed", type=int)
    p.add_argument("--workers", type=int)
    p.add_argument("--amp", choices=("off", "bf16", "fp16"))


def _add_cache_command(sub: argparse._SubParsersAction) -> None:
    """Register ``cache`` on the subparsers of the ``avseg data`` group."""
    c = sub.add_parser(
        "cache", help="decode frames and audio features once into a compact cache that training reads fast",
        description="Decode every frame (resized to --image-size) and compute every audio feature of a dataset once, "
        "into uint8 / float16 .npy arrays plus index.json in OUT; CachedDataset reads them as memory maps.",
    )  # fmt: skip
    c.add_argument("root", help="dataset root (the folder holding the metadata CSV)")
    c.add_argument("--layout", choices=LAYOUTS, required=True)
    c.add_argument("--image-size", type=int, default=224, dest="image_size", help="frame size of the cached frames (default 224)")
    c.add_argument("--audio-frontend", default="wsavs-logmel", dest="audio_frontend", help="audio front-end, 'pkl', or 'none' (default wsavs-logmel)")
    c.add_argument("--audio-window", choices=("centred", "inside", "clip"), default="centred", dest="audio_window")
    c.add_argument("--splits", nargs="+", choices=SPLITS, default=list(SPLITS), help="splits to cache (default all)")
    c.add_argument("--workers", type=int, default=0, help="decoding processes (default 0: this process)")
    c.add_argument("--out", required=True, help="cache folder")
    c.add_argument("--json", action="store_true", help="print the summary as JSON")
    c.set_defaults(func=cmd_data_cache)


def _add_run_commands(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train", help="train a method (all its stages) into a run folder")
    t.add_argument("--method", metavar="METHOD", help=f"one of {', '.join(sorted(METHODS))} (default ws-avs; on --resume, the run's)")
    t.add_argument("--data", help="dataset root (the folder holding the metadata CSV)")
    t.add_argument("--layout", choices=LAYOUTS)
    t.add_argument("--out", required=True, help="run folder")
    t.add_argument("--config", help="recipe YAML file or shipped recipe name, e.g. ws-avs/s4 or ws-avs/demo")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="dotted override, e.g. segmenter_train.lr=3e-4 (repeatable)")
    _add_training_flags(t, device_help="auto, cpu, cuda or cuda:N")
    t.add_argument("--visual-weights", dest="visual_weights", help="none | imagenet (torchvision file in the torch hub cache; the error names it)")
    t.add_argument("--audio-weights", dest="audio_weights", help="none | imagenet | aisfx (encoder-dependent)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    t.set_defaults(func=cmd_train)

    p = sub.add_parser("pseudo", help="run or rerun the pseudo-mask stages of a run")
    p.add_argument("--run", required=True)
    p.add_argument("--from", dest="from_stage", help="rerun from this stage on (e.g. activation-maps)")
    p.add_argument("--force", action="store_true", help="rerun finished stages")
    p.set_defaults(func=cmd_pseudo)

    e = sub.add_parser("eval", help="evaluate a run's final model on a split")
    e.add_argument("--run", required=True)
    _add_evaluation_flags(e)
    e.add_argument("--protocol", choices=("clean", "avsbench", "per-frame-max"), default="clean")
    e.add_argument("--batch-frames", type=int, default=20, dest="batch_frames")
    e.add_argument("--save-pred", dest="save_pred", help="also write prediction PNGs here (readable by avseg score)")
    e.add_argument("--binary", action="store_true", help="AVSS, semantic model (PCAS): score the foreground probability against the union of the sounding objects, as binary models are scored")
    e.add_argument("--json", action="store_true")
    e.add_argument("--listen", action="store_true", help="also run the listening evaluation (as `avseg listen`)")
    e.add_argument("--seed", type=int, default=0, help="seed of the listening evaluation's choices (with --listen)")
    e.set_defaults(func=cmd_eval)

    li = sub.add_parser("listen", help="does the model listen? masks under own / silent / noise / other / swapped sound")
    li.add_argument("--run", required=True)
    _add_evaluation_flags(li)
    li.add_argument("--seed", type=int, default=0, help="fixes the 'other' video, the noise and the swap objects")
    li.add_argument("--max-videos", type=int, dest="max_videos", help="only the first N videos of the split")
    li.add_argument("--json", action="store_true")
    li.set_defaults(func=cmd_listen)

    d = sub.add_parser("demo", help="the main job on the embedded synthetic data: PCAS + supervised reference, listening, report")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--videos", type=int, default=None, help="videos to generate (default 300)")
    d.add_argument("--size", type=int, default=None, help="frame size in pixels (default 96)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--recipe", default="demo", help="recipe name under each method's recipes (<method>/<recipe>.yaml)")
    d.add_argument("--methods", default="pcas,supervised", help="comma list among ws-avs, pcas, supervised (supervised and a weak one); ws-avs about doubles the time")
    d.add_argument("--quick", action="store_true", help="smoke test: 32 px, 1 epoch per stage, batch 4 (seconds, meaningless numbers)")
    d.set_defaults(func=cmd_demo)


def _add_bench_command(sub: argparse._SubParsersAction) -> None:
    """Register ``avseg bench`` on the CLI's subparsers."""
    b = sub.add_parser("bench", help="train and evaluate several methods on one dataset: table, bar chart, qualitative grid")
    b.add_argument("--data", required=True, help="dataset root (the folder holding the metadata CSV)")
    b.add_argument("--layout", choices=LAYOUTS, required=True, help="avss: every method scored as binary masks (the union of the sounding objects)")
    b.add_argument("--methods", default="all", help="'all' (every method, PCAS scored on its binary output) or a comma list, e.g. cam,ez-vsl,ws-avs")
    b.add_argument("--out", required=True, help="bench folder: one run folder per method, results.md/.csv, chart.png, grid.png")
    b.add_argument("--recipe", default="demo", help="recipe name used for every method: <method>/<recipe>.yaml (demo, s4, ms3)")
    b.add_argument("--quick", action="store_true", help="smoke run: every training stage 1 epoch of at most 2 steps")
    b.add_argument("--set", action="append", metavar="[METHOD:]KEY=VALUE", help="override for every method, or one (cam:threshold=0.4); repeatable")
    _add_training_flags(b, device_help="auto, cpu, cuda or cuda:N (training and evaluation)")
    b.add_argument("--no-reuse", action="store_true", dest="no_reuse", help="train c2am / ws-avs-av's C2AM and saliency stages again instead of taking ws-avs's")
    b.add_argument("--grid-rows", type=int, default=6, dest="grid_rows", help="test frames in grid.png (default 6)")
    b.add_argument("--json", action="store_true", help="print the rows as JSON instead of the markdown table")
    b.set_defaults(func=cmd_bench)
    m = sub.add_parser("bench-summary", help="mean ± sd over several bench folders (one per seed), with the listening columns")
    m.add_argument("folders", nargs="+", help="bench folders (each holding results.json), e.g. runs/bench-seed0 runs/bench-seed1 ...")
    m.add_argument("--out", required=True, help="folder for summary.md / summary.json")
    m.add_argument("--json", action="store_true", help="print the summary as JSON instead of the markdown table")
    m.add_argument("--across-data", action="store_true", dest="across_data",
                   help="each folder benches its own dataset (e.g. generated with its seed): average the constants and deaf ceilings too")
    m.set_defaults(func=cmd_bench_summary)


def _add_inference_commands(sub: argparse._SubParsersAction) -> None:
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
    _add_evaluation_flags(r)
    r.add_argument("--out", help="HTML file (default RUN/report.html)")
    r.set_defaults(func=cmd_report)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(None, level=logging.DEBUG if args.verbose else logging.INFO)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
        log.debug("torch threads: %d", torch.get_num_threads())
    try:
        return int(args.func(args) or 0)
    except (CliError, RunError, DataError, AudioError, NonFiniteLossError, FileNotFoundError, FileExistsError, ValueError) as exc:
        if args.verbose:
            raise
        print(f"avseg: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
