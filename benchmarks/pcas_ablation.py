"""PCAS and its ablations (no TVP; each of CMC / CMPC / CMCC removed), optionally against WS-AVS, on one dataset.

Every variant is trained with ``runner.build_config`` + ``runner.run_method`` (recipe ``pcas/<recipe>`` plus the
variant's overrides; a rerun continues where it stopped) and evaluated with ``runner.evaluate_run`` on the test
split (clean protocol, and avsbench for AVSS). Writes ``OUT/results.md`` and ``OUT/results.json``: test mIoU / F,
per-class IoU (AVSS), the audio classification score of the audio head with and without prompts (the paper's
Table 3 shape) and the pseudo-label quality on the training frames.

    python benchmarks/pcas_ablation.py --data /tmp/synth/avss --layout avss --out runs/pcas-ablation-avss
    python benchmarks/pcas_ablation.py --data /tmp/synth/ms3 --layout ms3 --out runs/pcas-ms3 \
        --variants full,no-tvp --ws-avs
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import traceback
from pathlib import Path
from typing import Any

VARIANTS: dict[str, list[str]] = {
    "full": [],
    "no-tvp": ["tvp=false"],
    "no-cmc": ["cmc=false"],
    "no-cmpc": ["cmpc=false"],
    "no-cmcc": ["cmcc=false"],
    "none": ["cmc=false", "cmpc=false", "cmcc=false"],  # the paper's "none" row: classification only
    "scratch": ["visual=small", "visual_weights=none"],  # the ws-avs demo's backbone class: small CNN from scratch
    "crop-aug": ["segment_crop_augment=true"],  # the segment stage with the dataset's crop augmentation
}
METRICS = ("miou", "fscore", "miou_avsbench", "audio_video_map", "audio_frame_map", "audio_frame_f1", "pseudo_miou", "pseudo_ignored", "train_seconds")


def _pct(x: Any) -> str:
    return "-" if x is None else f"{100 * float(x):.1f}"


def run_variant(method: str, recipe: str, data: Path, layout: str, out: Path, overrides: list[str], image_size: int | None, seed: int) -> dict[str, Any]:
    from avseg.runner import build_config, evaluate_run, run_method

    spec, cfg = build_config(method, recipe, str(data), layout, quick={"seed": seed}, image_size=image_size, overrides=overrides)
    start = time.perf_counter()
    summaries = run_method(spec, cfg, out, resume=True)
    train_seconds = sum(float(s.get("seconds", 0.0)) for s in summaries.values())
    row: dict[str, Any] = {"run": str(out), "train_seconds": round(train_seconds, 1), "overrides": overrides}
    clean = evaluate_run(out, "test", "clean", device="cpu")
    row.update(miou=clean["miou"], fscore=clean["fscore"], frames=clean["frames"])
    if layout == "avss":
        row["per_class_iou"] = clean.get("per_class_iou")
        row["miou_all"] = clean.get("miou_all")
        official = evaluate_run(out, "test", "avsbench", device="cpu")
        row.update(miou_avsbench=official["miou"], fscore_avsbench=official["fscore"], miou_avsbench_no_bg=official.get("miou_no_bg"))
    else:
        row["fscore_at_05"] = clean.get("fscore_at_0.5")
    if method == "pcas":
        row["audio"] = summaries["look-listen"].get("audio_classification")
        row["pseudo"] = summaries["pseudo-labels"].get("quality")
    else:
        pm = summaries.get("pseudo-masks", {})
        row["pseudo"] = pm.get("quality")
    row["wall_seconds"] = round(time.perf_counter() - start, 1)
    audio, pseudo = row.get("audio") or {}, row.get("pseudo") or {}
    row["audio_video_map"] = (audio.get("video") or {}).get("map")
    row["audio_frame_map"] = (audio.get("frame") or {}).get("map")
    row["audio_frame_f1"] = (audio.get("frame") or {}).get("f1")
    row["pseudo_miou"] = pseudo.get("miou")
    row["pseudo_ignored"] = pseudo.get("ignored_fraction")
    return row


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and (population) standard deviation of each metric over the seeds that finished."""
    import numpy as np

    ok = [r for r in runs if "error" not in r]
    out: dict[str, Any] = {"seeds": len(ok), "failed": [r["error"] for r in runs if "error" in r]}
    for key in METRICS:
        values = [float(r[key]) for r in ok if r.get(key) is not None]
        out[key] = (float(np.mean(values)), float(np.std(values))) if values else None
    classes = sorted({int(c) for r in ok for c in (r.get("per_class_iou") or {})})
    out["per_class_iou"] = {c: float(np.mean([float((r.get("per_class_iou") or {}).get(str(c), (r.get("per_class_iou") or {}).get(c, 0.0))) for r in ok])) for c in classes}
    return out


def _cell(stat: Any, pct: bool = True) -> str:
    if stat is None:
        return "-"
    mean, std = stat
    scale = 100.0 if pct else 1.0
    return f"{scale * mean:.1f}" if std == 0 else f"{scale * mean:.1f} ± {scale * std:.1f}"


def write_results(out: Path, rows: dict[str, list[dict[str, Any]]], layout: str, command: str) -> str:
    summary = {name: summarise(runs) for name, runs in rows.items()}
    lines = [f"# PCAS ablation on `{layout}`", "", f"Command: `{command}`", "",
             "Test split, clean protocol (mIoU over foreground classes for AVSS); mean ± std over seeds; % except seconds.", ""]  # fmt: skip
    cols = ["variant", "seeds", "test mIoU", "test F"] + (["mIoU avsbench"] if layout == "avss" else [])
    cols += ["audio mAP (video)", "audio mAP (frame)", "audio F1 (frame)", "pseudo mIoU (train)", "pseudo ignored", "train s"]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    keys = ["miou", "fscore"] + (["miou_avsbench"] if layout == "avss" else [])
    keys += ["audio_video_map", "audio_frame_map", "audio_frame_f1", "pseudo_miou", "pseudo_ignored"]
    for name, sm in summary.items():
        if not sm["seeds"]:
            lines.append(f"| {name} | 0 | failed: {'; '.join(sm['failed'])[:100]} |")
            continue
        cells = [name, str(sm["seeds"])] + [_cell(sm[k]) for k in keys] + [_cell(sm["train_seconds"], pct=False)]
        lines.append("| " + " | ".join(cells) + " |")
    if layout == "avss":
        classes = sorted({c for sm in summary.values() for c in sm["per_class_iou"]})
        lines += ["", "Per-class IoU (clean protocol, test split, mean over seeds; class 0 = background):", ""]
        lines += ["| variant | " + " | ".join(f"class {c}" for c in classes) + " |", "|" + "---|" * (len(classes) + 1)]
        for name, sm in summary.items():
            lines.append(f"| {name} | " + " | ".join(f"{100 * sm['per_class_iou'][c]:.1f}" if c in sm["per_class_iou"] else "-" for c in classes) + " |")
    text = "\n".join(lines) + "\n"
    (out / "results.md").write_text(text)
    (out / "results.json").write_text(json.dumps({"runs": rows, "summary": summary}, indent=2, default=float))
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--layout", required=True, choices=("s4", "ms3", "avss"))
    p.add_argument("--out", required=True)
    p.add_argument("--recipe", default="demo", help="PCAS recipe name under pcas/ (default demo)")
    p.add_argument("--variants", default="full,no-tvp,no-cmc,no-cmpc,no-cmcc", help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--ws-avs", action="store_true", help="also train WS-AVS (ws-avs/<recipe>); binary layouts only")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every PCAS variant")
    p.add_argument("--seeds", default="0", help="comma list of seeds (every stage's TrainSettings.seed); default 0")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[dict[str, Any]]] = {}
    plan = [(f"pcas {v}", "pcas", f"pcas/{args.recipe}", VARIANTS[v] + list(args.set), f"pcas-{v}") for v in args.variants.split(",")]
    if args.ws_avs:
        if args.layout == "avss":
            raise SystemExit("WS-AVS predicts binary masks: --ws-avs needs the s4 or ms3 layout")
        plan.append(("ws-avs", "ws-avs", f"ws-avs/{args.recipe}", [], "ws-avs"))
    seeds = [int(x) for x in args.seeds.split(",")]
    command = "python benchmarks/pcas_ablation.py " + " ".join(argv if argv is not None else sys.argv[1:])
    for seed in seeds:  # seed by seed, so an interrupted benchmark already has every variant of the first seeds
        for name, method, recipe, overrides, folder in plan:
            run_dir = out / (folder if seed == 0 else f"{folder}-s{seed}")
            logging.info("=== %s seed %d (%s)", name, seed, " ".join(overrides) or "recipe as is")
            try:
                row = run_variant(method, recipe, Path(args.data), args.layout, run_dir, overrides, args.image_size, seed)
            except Exception as exc:  # reported in the table, never hidden
                run_dir.mkdir(parents=True, exist_ok=True)
                (run_dir / "bench-error.txt").write_text(traceback.format_exc())
                row = {"error": f"{type(exc).__name__}: {exc}"}
            rows.setdefault(name, []).append({"seed": seed, **row})
            write_results(out, rows, args.layout, command)
    print(write_results(out, rows, args.layout, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
