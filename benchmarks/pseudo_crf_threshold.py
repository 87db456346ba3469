"""Which audio-selection threshold is best once WS-AVS-AV's pseudo masks go through the dense CRF?

A WS-AVS-AV run (``av_select: pixels``) keeps, on every training frame, the pixels of its base mask where the
audio-visual map exceeds ``av_threshold``; with ``pseudo_crf`` the kept mask is then refined by a dense CRF
(``ws_avs_av.crf_pseudo_masks``), which completes a mask covering most of its object and erases the rest. This
script rebuilds, from the maps the run stored, the C2AM-alone base's selection (C2AM map A > 0.5, as
``refinement_from: segmenter`` writes ``pseudo/c2am-alone/masks``) at several thresholds, with and without the
CRF, and scores them against the ground truth of the training frames that sound (recall, precision and mIoU of
the pixels; frames without a sounding object are left out, the quiet-second rule handles those):

    python benchmarks/pseudo_crf_threshold.py runs/ws-avs-av-ms3 [--thresholds 0.35 0.45 0.55 0.65]

The session-21 figures (docs/results/listening) came from this on synthetic MS3 runs of ``ws-avs-av/demo``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from avseg.data.avsbench import read_probability_png
from avseg.engine.evaluate import iterate_outputs
from avseg.methods.common import make_dataset
from avseg.methods.ws_avs_av import crf_pseudo_masks
from avseg.runner import load_run
from avseg.visualize import denormalize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a finished ws-avs-av run folder (pseudo/maps and pseudo/av-maps written)")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.35, 0.45, 0.55, 0.65])
    parser.add_argument("--base-threshold", type=float, default=0.5, help="the C2AM-alone base: A > this (c2am_alone_threshold)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    _, cfg = load_run(args.run)
    confidence = cfg.pseudo_crf_confidence
    train = make_dataset(cfg.data, "train", audio=False, pseudo_dir=args.run / "pseudo" / "maps")
    names = [f"{t:.2f}{suffix}" for t in args.thresholds for suffix in ("", " + CRF")]
    hits = {n: np.zeros(3) for n in names}  # true positives, predicted, ground truth (pixels)
    ious: dict[str, list[float]] = {n: [] for n in names}
    for fo in iterate_outputs(lambda batch: batch.pseudo_masks, train, torch.device("cpu"), progress="frames"):
        if fo.gt is None or not (np.asarray(fo.gt) != 0).any():
            continue
        gt = np.asarray(fo.gt) != 0
        sim = read_probability_png(args.run / "pseudo" / "av-maps" / fo.relpath(cfg.data.layout))
        base = np.asarray(fo.output) > args.base_threshold
        selected = np.stack([base & (sim > t) for t in args.thresholds]).astype(np.float32)
        refined = crf_pseudo_masks(denormalize(fo.frame), selected, confidence) > 0.5
        for k, t in enumerate(args.thresholds):
            for name, mask in ((f"{t:.2f}", selected[k] > 0.5), (f"{t:.2f} + CRF", refined[k])):
                hits[name] += ((mask & gt).sum(), mask.sum(), gt.sum())
                ious[name].append(float((mask & gt).sum() / (mask | gt).sum()))
    print(f"{args.run}: {len(ious[names[0]])} sounding training frames, C2AM-alone base (A > {args.base_threshold}), CRF confidence {confidence}")
    print("| av_threshold | recall | precision | mIoU |\n|---|---|---|---|")
    for name in names:
        tp, pred, truth = hits[name]
        print(f"| {name} | {100 * tp / truth:.1f} | {100 * tp / max(pred, 1):.1f} | {100 * np.mean(ious[name]):.1f} |")


if __name__ == "__main__":
    main()
