"""``avseg data validate``: check a dataset in an AVSBench layout and list every problem in one pass.

Files are read with the same readers the training loader uses (``read_frame``, ``read_mask``,
``avseg.audio.load_audio``, the tensor-only ``.pkl`` reader), so whatever validates also loads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from avseg.audio.decode import AudioError, load_audio
from avseg.data import layout as L
from avseg.data.avsbench import read_frame, read_mask
from avseg.data.errors import DataError
from avseg.data.index import VideoRecord, avss_classes, index_videos, scan_metadata
from avseg.data.safe_pickle import load_tensor_pickle

# What a file's name promises, by suffix, against what PIL finds in it.
_IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}


def _check_audio(path: Path) -> tuple[str | None, str | None]:
    """(problem, warning) of one audio file: a problem when it does not decode to finite, non-empty audio
    (missing, 0 bytes, truncated, corrupt, no samples, NaN/Inf); a warning when it is all zeros."""

    if not path.is_file():
        return "audio file not found", None
    if path.stat().st_size == 0:
        return "audio file is 0 bytes", None
    try:
        wave, _ = load_audio(path, warn_silent=False)  # native rate; silence is listed as a warning below
    except AudioError as exc:
        return (exc.problem if exc.path == str(path) else str(exc)), None
    except Exception as exc:  # a decoder failure the audio layer did not anticipate: still this file's
        return f"audio is not readable ({type(exc).__name__}: {exc})", None
    if not wave.any():
        return None, "audio is all zeros (silent); accepted, its features are those of silence"
    return None, None


def _check_pkl(path: Path | None) -> str | None:
    """The official VGGish feature file, when present: it must load through the tensor-only reader."""
    if path is None or not path.is_file():
        return None  # optional: features are computed from the wav by default

    try:
        feats = load_tensor_pickle(path)
    except DataError as exc:
        return exc.problem
    if feats.dim() != 4 or tuple(feats.shape[1:]) != (1, 96, 64):
        return f"expected a [T, 1, 96, 64] tensor, found {list(feats.shape)}"
    return None


def _format_warning(path: Path) -> str | None:
    """A warning when an image's content is another format than its name says (it is read by content)."""
    expected = _IMAGE_FORMATS.get(path.suffix.lower())
    try:
        with Image.open(path) as img:
            found = img.format
    except Exception:
        return None  # already reported as a problem
    if expected is not None and found is not None and found != expected:
        return f"file is a {found} image named {path.suffix}; read by its content"
    return None


def _check_video(record: VideoRecord, layout: str, num_classes: int | None) -> tuple[list[dict], int, int, list[dict]]:
    """Returns (problems, frames ok, masks ok, warnings) for one video."""
    problems: list[dict] = []
    warnings: list[dict] = []
    size: tuple[int, int] | None = None
    n_frames = n_masks = 0
    for path in record.frame_paths:
        try:
            shape = read_frame(path).shape[:2]
        except DataError as exc:
            problems.append({"path": exc.path, "problem": exc.problem})
            continue
        n_frames += 1
        warning = _format_warning(path)
        if warning:
            warnings.append({"path": str(path), "problem": warning})
        if size is None:
            size = shape
        elif shape != size:
            problems.append({"path": str(path), "problem": f"frame is {shape[1]}x{shape[0]}, other frames of the video are {size[1]}x{size[0]}"})
    for mask_path in record.mask_paths:
        if mask_path is None:
            continue
        try:
            mask = read_mask(mask_path, layout, num_classes)
        except DataError as exc:
            problems.append({"path": exc.path, "problem": exc.problem})
            continue
        if size is not None and mask.shape != size:
            problems.append({"path": str(mask_path), "problem": f"mask is {mask.shape[1]}x{mask.shape[0]}, its frames are {size[1]}x{size[0]}"})
            continue
        if layout != "avss":
            with Image.open(mask_path) as img:
                if img.mode == "L":
                    values = set(np.unique(np.asarray(img)).tolist())
                    if not values <= {0, 1, 255}:
                        warnings.append({"path": str(mask_path), "problem": f"grey mask holds values other than 0/255 ({len(values)} distinct); binarised with != 0"})
        n_masks += 1
    problem, warning = _check_audio(record.audio_path)
    if problem:
        problems.append({"path": str(record.audio_path), "problem": problem})
    if warning:
        warnings.append({"path": str(record.audio_path), "problem": warning})
    problem = _check_pkl(record.pkl_path)
    if problem:
        problems.append({"path": str(record.pkl_path), "problem": problem})
    return problems, n_frames, n_masks, warnings


def validate_dataset(root: Path, layout: str) -> dict:
    """Validate every split of a dataset.

    Returns:
        {"layout", "root", "splits": {split: {"videos", "frames", "masks"}}, "problems": [{"path",
        "problem"}], "warnings": [...]}: counts are of files that exist and decode; every missing or
        unreadable file is a problem naming its path. Problems: metadata (missing columns, unknown split,
        duplicate or unsafe ids), malformed label2idx.json, frames / masks / wavs that are missing, 0 bytes,
        truncated or undecodable, frames of different sizes within a video, masks of the wrong size or
        with out-of-range class ids, audio with no samples or NaN/Inf, ``.pkl`` features (when present)
        that are not a plain [T, 1, 96, 64] tensor pickle. Warnings: grey masks with values other than
        0/1/255, all-zero audio, images whose content is another format than their name.
    """
    root = Path(root)
    report: dict = {"layout": layout, "root": str(root), "splits": {}, "problems": [], "warnings": []}
    if not root.is_dir():
        report["problems"].append({"path": str(root), "problem": "dataset folder not found"})
        return report
    rows, meta_problems = scan_metadata(root, layout)
    report["problems"].extend({"path": p.path, "problem": p.problem} for p in meta_problems)
    num_classes = None
    if layout == "avss":
        try:
            num_classes = len(avss_classes(root))
        except DataError as exc:
            report["problems"].append({"path": exc.path, "problem": exc.problem})
    if not rows:
        return report
    for split in L.SPLITS:
        records = index_videos(root, layout, split, rows=rows)  # only the rows that parsed
        counts = {"videos": len(records), "frames": 0, "masks": 0}
        for record in records:
            problems, n_frames, n_masks, warnings = _check_video(record, layout, num_classes)
            report["problems"].extend(problems)
            report["warnings"].extend(warnings)
            counts["frames"] += n_frames
            counts["masks"] += n_masks
        report["splits"][split] = counts
    return report


def format_report(report: dict) -> str:
    """Human-readable summary: counts table, then every problem."""
    lines = [f"{report['layout']} dataset at {report['root']}"]
    lines.append(f"{'split':<8}{'videos':>8}{'frames':>8}{'masks':>8}")
    for split, c in report["splits"].items():
        lines.append(f"{split:<8}{c['videos']:>8}{c['frames']:>8}{c['masks']:>8}")
    for w in report.get("warnings", [])[:20]:
        lines.append(f"warning: {w['path']}: {w['problem']}")
    if len(report.get("warnings", [])) > 20:
        lines.append(f"... and {len(report['warnings']) - 20} more warnings")
    if report["problems"]:
        lines.append(f"{len(report['problems'])} problem(s):")
        lines.extend(f"  {p['path']}: {p['problem']}" for p in report["problems"])
    else:
        lines.append("no problems found")
    return "\n".join(lines)
