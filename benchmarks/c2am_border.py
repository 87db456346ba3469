"""Does C2AM's border artefact cost accuracy? Test mIoU of a WS-AVS run's C2AM maps, as they are and with
the outermost feature cells replaced by the frame's median foreground probability (``c2am_border: 1``,
``ws_avs.mask_border_cells``), from the same trained C2AM and polarity.

C2AM's head reads one pyramid level (stride 8 with ``c2am_level: 1``); its outermost cells see mostly zero
padding, and a trained head can light them whatever the image (docs/results/listening, "Three seeds"). This
script measures what masking them would change, on the test split with the clean protocol, at the run's
``c2am_threshold`` and the polarity its activation-maps stage chose (``pseudo/maps/polarity.json``):

    python benchmarks/c2am_border.py runs/bench-s4-300/ws-avs [more WS-AVS or WS-AVS-AV run folders ...]

It prints, per run, the polarity and the two mIoU figures, and the mean over the runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from avseg.data.avsbench import collate_videos
from avseg.methods.common import make_dataset
from avseg.methods.ws_avs import _load_c2am, activation_map, mask_border_cells
from avseg.metrics.binary import BinaryAccumulator
from avseg.runner import load_run

VARIANTS = ("as is", "border cells masked")


def score(run: Path, batch_videos: int = 4) -> tuple[bool, dict[str, float]]:
    _, cfg = load_run(run)
    model = _load_c2am(cfg, run, torch.device("cpu"))
    polarity_file = run / "pseudo" / "maps" / "polarity.json"
    if not polarity_file.is_file():
        raise SystemExit(f"{polarity_file}: missing (run the activation-maps stage first)")
    flip = bool(json.loads(polarity_file.read_text())["flip"])
    data = make_dataset(cfg.data, "test", audio=False)
    accs = {k: BinaryAccumulator("clean", 20) for k in VARIANTS}
    with torch.no_grad():
        for start in range(0, len(data), batch_videos):
            batch = collate_videos([data[j] for j in range(start, min(start + batch_videos, len(data)))])
            frames = batch.frames.flatten(0, 1)
            _, fg = model.foreground(frames)
            fg = 1.0 - fg if flip else fg
            keep = batch.has_mask.flatten()
            gt = batch.masks.flatten(0, 1).float()[keep].numpy()
            for key, f in zip(VARIANTS, (fg, mask_border_cells(fg, 1))):
                pred = activation_map(f, frames.shape[-2:])[keep] > cfg.c2am_threshold
                accs[key].update(pred.float().numpy(), gt)
    return flip, {k: 100.0 * float(acc.compute()["miou"]) for k, acc in accs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="WS-AVS or WS-AVS-AV run folders (with c2am/ and pseudo/maps/)")
    args = parser.parse_args()
    results = []
    for run in args.runs:
        flip, miou = score(run)
        results.append(miou)
        print(f"{run}: polarity flipped {flip}; test mIoU " + ", ".join(f"{k} {v:.1f}" for k, v in miou.items()))
    if len(results) > 1:
        print("mean: " + ", ".join(f"{k} {np.mean([r[k] for r in results]):.1f}" for k in VARIANTS))


if __name__ == "__main__":
    main()
