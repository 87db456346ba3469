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
}


def _pct(x: Any) -> str:
    return "-" if x is None else f"{100 * float(x):.1f}"


def run_variant(method: str, recipe: str, data: Path, layout: str, out: Path, overrides: list[str], image_size: int | None) -> dict[str, Any]:
    from avseg.runner import build_config, evaluate_run, run_method

    spec, cfg = build_config(method, recipe, str(data), layout, image_size=image_size, overrides=overrides)
    start = time.time()
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
    row["wall_seconds"] = round(time.time() - start, 1)
    return row


def write_results(out: Path, rows: dict[str, dict[str, Any]], layout: str, command: str) -> str:
    lines = [f"# PCAS ablation on `{layout}`", "", f"Command: `{command}`", ""]
    head = "| variant | test mIoU | test F | audio mAP (video) | audio mAP (frame) | audio F1 (frame) | pseudo mIoU | pseudo ignored | train s |"
    if layout == "avss":
        head = head.replace("| test F |", "| test F | mIoU avsbench |")
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for name, r in rows.items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error'][:80]} |")
            continue
        audio = r.get("audio") or {}
        pseudo = r.get("pseudo") or {}
        cells = [name, _pct(r["miou"]), _pct(r["fscore"])]
        if layout == "avss":
            cells.append(_pct(r.get("miou_avsbench")))
        cells += [
            _pct((audio.get("video") or {}).get("map")), _pct((audio.get("frame") or {}).get("map")), _pct((audio.get("frame") or {}).get("f1")),
            _pct(pseudo.get("miou")), _pct(pseudo.get("ignored_fraction")), f"{r['train_seconds']:.0f}",
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    if layout == "avss":
        lines += ["", "Per-class IoU (clean protocol, test split):", ""]
        classes = sorted({int(c) for r in rows.values() for c in (r.get("per_class_iou") or {})})
        lines.append("| variant | " + " | ".join(f"class {c}" for c in classes) + " |")
        lines.append("|" + "---|" * (len(classes) + 1))
        for name, r in rows.items():
            pc = {int(k): v for k, v in (r.get("per_class_iou") or {}).items()}
            lines.append(f"| {name} | " + " | ".join(_pct(pc.get(c)) for c in classes) + " |")
    text = "\n".join(lines) + "\n"
    (out / "results.md").write_text(text)
    (out / "results.json").write_text(json.dumps(rows, indent=2, default=float))
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
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict[str, Any]] = {}
    plan = [(f"pcas {v}", "pcas", f"pcas/{args.recipe}", VARIANTS[v] + list(args.set), out / f"pcas-{v}") for v in args.variants.split(",")]
    if args.ws_avs:
        if args.layout == "avss":
            raise SystemExit("WS-AVS predicts binary masks: --ws-avs needs the s4 or ms3 layout")
        plan.append(("ws-avs", "ws-avs", f"ws-avs/{args.recipe}", [], out / "ws-avs"))
    command = "python benchmarks/pcas_ablation.py " + " ".join(argv if argv is not None else sys.argv[1:])
    for name, method, recipe, overrides, run_dir in plan:
        logging.info("=== %s (%s)", name, " ".join(overrides) or "recipe as is")
        try:
            rows[name] = run_variant(method, recipe, Path(args.data), args.layout, run_dir, overrides, args.image_size)
        except Exception as exc:  # reported in the table, never hidden
            (run_dir / "bench-error.txt").parent.mkdir(parents=True, exist_ok=True)
            (run_dir / "bench-error.txt").write_text(traceback.format_exc())
            rows[name] = {"error": f"{type(exc).__name__}: {exc}"}
        write_results(out, rows, args.layout, command)
    print(write_results(out, rows, args.layout, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
