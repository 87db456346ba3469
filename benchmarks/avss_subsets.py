"""Binary test mIoU of AVSS runs per subset (v1s: one source, v1m: several, v2: ten seconds, several), beside
the deaf ceiling of each subset (marking every visible object exactly; generated data only).

AVSS mixes single- and multi-source videos; this says where a method's AVSS score comes from, and whether
it clears "mark every object" on the multi-source subsets too. Binary scoring (docs/metrics.md, "Binary
masks on AVSS"): the union of the sounding objects, clean protocol; PCAS's class maps count as their
foreground probability.

    python benchmarks/avss_subsets.py RUN [RUN ...]

It prints the ceiling per subset (frames with ground truth in brackets), then one line per run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from avseg.engine.evaluate import binary_miou_by, iterate_outputs
from avseg.listening import deaf_ceiling
from avseg.methods.common import make_dataset
from avseg.runner import load_run

SUBSETS = ("v1s", "v1m", "v2")


def subset_miou(run: Path, split: str, device: torch.device) -> dict[str, float]:
    """Clean binary mIoU of a run's final model on each AVSS subset of ``split``."""
    spec, cfg = load_run(run)
    if cfg.data.layout != "avss":
        raise SystemExit(f"{run}: layout {cfg.data.layout}, not avss")
    predictor = spec.load_predictor(cfg, run, device)
    outputs = iterate_outputs(predictor.predict, make_dataset(cfg.data, split, audio=True), device)
    scores = binary_miou_by(outputs, lambda fo: fo.record.category)
    return {name: scores[name][0] for name in SUBSETS if name in scores}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--split", default="test")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    root = Path(load_run(args.runs[0])[1].data.root)
    ceilings = {name: deaf_ceiling(root, "avss", args.split, category=name) for name in SUBSETS}
    if all(c is not None for c in ceilings.values()):
        print("deaf ceiling   " + "  ".join(f"{n} {100 * c['miou_clean']:.1f} ({c['frames']})" for n, c in ceilings.items() if c))
    for run in args.runs:
        scores = subset_miou(run, args.split, device)
        print(f"{run}  " + "  ".join(f"{n} {100 * v:.1f}" for n, v in scores.items()))


if __name__ == "__main__":
    main()
