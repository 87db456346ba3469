"""Score a folder of prediction PNGs against a dataset's ground truth (``avseg score``).

The prediction folder mirrors the ground-truth mask paths relative to the subset's mask folder, as given
by ``avseg.data.layout.prediction_relpath`` (S4 ``{category}/{name}/{name}_{k}.png``; MS3
``{vid}/{vid}_{k}.png``; AVSS ``{label}/{uid}/{i}.png``). Files for frames without ground truth, and any
other files, are ignored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from avseg.data import layout as L
from avseg.data.avsbench import read_mask
from avseg.data.index import avss_classes, index_videos
from avseg.metrics import PROTOCOLS, SEMANTIC_PROTOCOLS, BinaryAccumulator, SemanticAccumulator

MAX_LISTED = 20  # missing files named in the error message


class ScoringError(ValueError):
    """Predictions are missing or unreadable; the message names the files."""

    def __init__(self, message: str, missing: list[Path] | None = None) -> None:
        super().__init__(message)
        self.missing = missing or []


def _missing_message(missing: list[Path], pred_dir: Path, layout: str, split: str) -> str:
    lines = [f"{len(missing)} prediction file(s) missing from {pred_dir} "
             f"(one PNG is expected per ground-truth frame of {layout} {split}):"]  # fmt: skip
    lines += [f"  {p}" for p in missing[:MAX_LISTED]]
    if len(missing) > MAX_LISTED:
        lines.append(f"  ... and {len(missing) - MAX_LISTED} more")
    return "\n".join(lines)


def _open_png(path: Path) -> Image.Image:
    if path.stat().st_size == 0:
        raise ScoringError(f"{path}: prediction is 0 bytes")
    try:
        img = Image.open(path)
        img.load()
    except Exception as exc:
        raise ScoringError(f"{path}: prediction is not a readable image ({type(exc).__name__}: {exc})") from exc
    return img


def _read_probs(path: Path) -> np.ndarray:
    """(H, W) float32 in [0, 1] from an 8-bit grey PNG holding probability x 255 (mode L; bilevel mode 1
    and RGB with equal channels are accepted as the same grey values)."""
    img = _open_png(path)
    rgb = np.asarray(img) if img.mode == "RGB" else None
    if img.mode in ("L", "1"):
        grey = np.asarray(img.convert("L"))
    elif rgb is not None and (rgb == rgb[..., :1]).all():
        grey = rgb[..., 0]
    else:
        raise ScoringError(
            f"{path}: expected an 8-bit grey PNG (mode L) holding probability x 255, found mode {img.mode}"
        )
    return grey.astype(np.float32) / 255.0


def _read_classes(path: Path, num_classes: int) -> np.ndarray:
    """(H, W) int64 class ids from a class-index PNG (mode L or P, raw indices)."""
    img = _open_png(path)
    if img.mode not in ("L", "P", "I", "I;16"):
        raise ScoringError(f"{path}: expected a class-index PNG (mode L or P), found mode {img.mode}")
    ids = np.asarray(img).astype(np.int64)
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= num_classes):
        raise ScoringError(f"{path}: class index {int(ids.max())} out of range 0..{num_classes - 1} "
                           "(probability PNGs of a binary model? score them with --binary)")
    return ids


def _resize(x: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    """(H, W) -> size with torch interpolate (bilinear with align_corners=False, or nearest)."""
    t = torch.from_numpy(x.astype(np.float32))[None, None]
    if mode == "bilinear":
        out = F.interpolate(t, size=size, mode="bilinear", align_corners=False).clamp_(0.0, 1.0)
        return out[0, 0].numpy()
    return F.interpolate(t, size=size, mode="nearest")[0, 0].numpy().astype(np.int64)


def score_predictions(
    data_root: Path,
    layout: str,
    split: str,
    pred_dir: Path,
    protocol: str = "clean",
    batch_frames: int = 20,
    binary: bool = False,
) -> dict:
    """Evaluate prediction PNGs against the ground truth of one subset and split.

    Args:
        data_root: the subset folder (the one holding the metadata CSV).
        layout: "s4", "ms3" or "avss".
        split: "train", "val" or "test".
        pred_dir: prediction folder; one PNG per ground-truth frame at ``layout.prediction_relpath``.
            S4/MS3: 8-bit grey PNG = probability x 255 (divided by 255; ground truth binarised with != 0).
            AVSS: 8-bit class-index PNG (mode L or P, raw indices).
        protocol: binary subsets: "clean", "avsbench" or "per-frame-max"; AVSS: "clean" or "avsbench"
            (see ``avseg.metrics``).
        batch_frames: frames per batch of the binary "avsbench" protocol (official test batch: 20).
        binary: AVSS only: the PNGs are probabilities (a binary model's predictions) and are scored with the
            binary protocols against the union of the sounding objects (class map != 0); the official AVSS
            evaluation is semantic, this is how binary methods compare on AVSS.

    Frames are fed in the canonical order: metadata rows of the split in file order, frames ascending,
    only frames with ground truth; that order forms the "avsbench" batches. A prediction whose size
    differs from its ground truth is resized to the ground-truth size (bilinear for probabilities,
    nearest for class ids; ``torch.nn.functional.interpolate``, align_corners=False) and counted in
    "resized". AVSS "avsbench": the official evaluation also counts the zero-padded frames of 5-frame
    videos; a prediction folder has no predictions for them, so they are not included (see "note").

    Returns:
        the accumulator's dict ("miou", "fscore", "frames", "protocol", ...) plus "layout", "split",
        "videos", "resized".

    Raises:
        ScoringError: missing prediction files (all of them are collected; up to 20 are named), unreadable
            or malformed predictions, an empty split or a protocol the layout does not offer.
        avseg.data.errors.DataError: a ground-truth file is missing or malformed.
    """
    data_root, pred_dir = Path(data_root), Path(pred_dir)
    if layout not in L.LAYOUTS:
        raise ScoringError(f"unknown layout {layout!r}; expected one of {L.LAYOUTS}")
    if binary and layout != "avss":
        raise ScoringError(f"binary scoring is the AVSS option (the {layout} layout is binary already)")
    semantic = layout == "avss" and not binary
    allowed = SEMANTIC_PROTOCOLS if semantic else PROTOCOLS
    if protocol not in allowed:
        raise ScoringError(f"protocol {protocol!r} is not available for {layout}; expected one of {allowed}")
    if not pred_dir.is_dir():
        raise ScoringError(f"{pred_dir}: prediction folder not found")

    records = index_videos(data_root, layout, split)
    # canonical order: (ground-truth mask, prediction file)
    pairs: list[tuple[Path, Path]] = []
    for rec in records:
        for k, mask in zip(rec.frame_numbers, rec.mask_paths):
            if mask is not None:
                rel = L.prediction_relpath(layout, split, rec.category, rec.video_id, k)
                pairs.append((mask, pred_dir / rel))
    if not pairs:
        raise ScoringError(f"{L.metadata_path(data_root, layout)}: split {split!r} has no frames with ground truth")
    missing = [pred for _, pred in pairs if not pred.is_file()]
    if missing:
        raise ScoringError(_missing_message(missing, pred_dir, layout, split), missing)

    num_classes = len(avss_classes(data_root)) if layout == "avss" else 2
    acc: BinaryAccumulator | SemanticAccumulator
    if semantic:
        acc = SemanticAccumulator(num_classes, protocol)
    else:
        acc = BinaryAccumulator(protocol, batch_frames=batch_frames)
    resized = 0
    for mask_path, pred_path in pairs:
        gt = read_mask(mask_path, layout, num_classes if layout == "avss" else None)  # (H, W) int64
        if semantic:
            pred = _read_classes(pred_path, num_classes)
            mode = "nearest"
        else:
            pred = _read_probs(pred_path)
            mode = "bilinear"
        if pred.shape != gt.shape:
            pred = _resize(pred, gt.shape, mode)
            resized += 1
        acc.update(torch.from_numpy(pred)[None], torch.from_numpy(gt)[None])  # (1, H, W)

    result = acc.compute()
    result.update(layout=layout, split=split, videos=len(records), resized=resized, scoring="semantic" if semantic else "binary")
    if semantic and protocol == "avsbench":
        result["note"] = ("the official AVSS evaluation also counts the zero-padded frames of 5-frame videos; "
                          "prediction folders have none, so they are not included")  # fmt: skip
    return result
