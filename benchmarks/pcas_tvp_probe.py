"""Does PCAS's audio head listen, or look? Audio classification with the visual prompts swapped.

    python benchmarks/pcas_tvp_probe.py --runs RUN [RUN ...] [--split test] [--out probe.json]

For each trained PCAS run (its ``look-listen`` checkpoint: the stage that trains the audio head), the
audio classification report of ``methods.pcas.stages.audio_classification_report`` (mAP over classes and micro
F1, per frame against the video labels and against the classes sounding in that frame) is computed three
times on the same audio:

- ``own``: each frame's own picture feeds its temporal visual prompt (what the model sees in training);
- ``other video``: the prompts come from the frames of the next video of the split (a different scene, the
  same sound);
- ``grey``: the prompts come from grey frames (zeros after normalisation: the dataset mean colour).

A model with ``tvp: false`` has no prompts, so its three rows are equal (a check of the probe). With prompts,
the drop from ``own`` to ``other video`` measures how much of the "audio" classification is read from the
picture rather than heard.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def probe(run: Path, split: str, device: torch.device, batch_size: int = 4) -> dict[str, Any]:
    from avseg.data.avsbench import collate_videos
    from avseg.methods.common import make_dataset
    from avseg.methods.pcas.stages import _load
    from avseg.metrics.classification import classification_scores
    from avseg.runner import load_run

    spec, cfg = load_run(run)
    if spec.name != "pcas":
        raise SystemExit(f"{run} is a {spec.name} run, not pcas")
    model = _load(cfg, run / "look-listen" / "last.safetensors", device)
    dataset = make_dataset(cfg.data, split)
    n = len(dataset)
    items = [dataset[i] for i in range(n)]
    k = model.num_classes
    conditions = ("own", "other video", "grey")
    collected: dict[str, dict[str, list[np.ndarray]]] = {c: {"vp": [], "vy": [], "fp": [], "fy": []} for c in conditions}
    with torch.no_grad():
        for start in range(0, n, batch_size):
            idx = list(range(start, min(n, start + batch_size)))
            batch = collate_videos([items[i] for i in idx]).to(device)
            other = collate_videos([items[(i + 1) % n] for i in idx]).to(device).frames
            if other.shape != batch.frames.shape:
                raise SystemExit(f"{run}: videos of {split} differ in frame count; the probe needs one shape")
            frames = {"own": None, "other video": other, "grey": torch.zeros_like(batch.frames)}
            masks = batch.masks.flatten(0, 1)[batch.valid.flatten()].cpu()
            has = batch.has_mask.flatten()[batch.valid.flatten()].cpu().numpy()
            for c in conditions:
                enc = model.encode(batch, frames=frames[c])
                probs = model.audio_probs(enc).cpu().numpy()
                if model.semantic:
                    present = F.one_hot(masks.flatten(1).long(), k + 1).amax(dim=1)[:, 1:].float()
                else:
                    present = enc.labels.cpu() * (masks.flatten(1).amax(dim=1) > 0).float()[:, None]
                collected[c]["vp"].append(probs)
                collected[c]["vy"].append(enc.labels.cpu().numpy())
                collected[c]["fp"].append(probs[has])
                collected[c]["fy"].append(present.numpy()[has])
    thr = cfg.audio_threshold
    out: dict[str, Any] = {"run": str(run), "tvp": cfg.tvp, "split": split, "videos": n}
    for c in conditions:
        d = collected[c]
        out[c] = {
            "video": classification_scores(np.concatenate(d["vp"]), np.concatenate(d["vy"]), thr),
            "frame": classification_scores(np.concatenate(d["fp"]), np.concatenate(d["fy"]), thr),
        }
    return out


def table(results: list[dict[str, Any]]) -> str:
    lines = ["| run | tvp | prompts from | audio mAP (video) | audio mAP (frame) | audio F1 (frame) |", "|---|---|---|---|---|---|"]
    for r in results:
        for c in ("own", "other video", "grey"):
            v, f = r[c]["video"], r[c]["frame"]
            lines.append(f"| {Path(r['run']).name} | {r['tvp']} | {c} | {100 * v['map']:.1f} | {100 * f['map']:.1f} | {100 * f['f1']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", nargs="+", required=True, help="trained PCAS run folders")
    p.add_argument("--split", default="test")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", help="also write the results as JSON here")
    args = p.parse_args(argv)
    results = [probe(Path(run), args.split, torch.device(args.device)) for run in args.runs]
    text = table(results)
    print(text)
    if args.out:
        Path(args.out).write_text(json.dumps({"results": results, "table": text, "command": " ".join(sys.argv)}, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
