"""``avseg report RUN``: one self-contained HTML page about a trained run.

Sections: the run (method, data, stage times); metrics of one split under both protocols (``clean`` and
``avsbench``; read from ``RUN/eval/<split>-<protocol>.json``, computed with ``runner.evaluate_run`` when
missing); whether the model listens (``RUN/eval/listen-<split>.json`` and its picture, computed with
``listening.listen_run`` when missing); per-video overlays (prediction in red, ground truth in green); the worst and best frames by
clean IoU; pseudo-mask quality (``RUN/pseudo/manifest.json`` and its contact sheet) when the method has
pseudo masks. Every picture is inlined as a base64 PNG, so the file can be mailed or archived alone.

Memory: pictures are kept as small thumbnails for a bounded number of videos and frames (heaps of the
``extremes`` best and worst), whatever the size of the split.
"""

from __future__ import annotations

import base64
import heapq
import html
import io
import itertools
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from avseg.engine.evaluate import iterate_outputs
from avseg.engine.trainer import resolve_device
from avseg.fileio import write_text_atomic
from avseg.listening import listen_run, read_listen
from avseg.methods.common import make_dataset
from avseg.metrics.binary import frame_iou_clean
from avseg.runner import evaluate_run, load_run
from avseg.visualize import contact_sheet, denormalize, overlay

log = logging.getLogger("avseg")

__all__ = ["write_report", "Pictures", "png_data_uri"]

PROTOCOLS = ("clean", "avsbench")
TILE = 128


def png_data_uri(image: np.ndarray | Image.Image) -> str:
    """(H, W, 3) uint8 array or PIL image -> ``data:image/png;base64,...``."""
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _tile(image: np.ndarray, size: int = TILE) -> np.ndarray:
    if image.shape[0] == size and image.shape[1] == size:
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))


class Pictures:
    """Collects report pictures from ``FrameOutput``s (the ``keep`` callback of ``evaluate_run``).

    Keeps prediction / ground-truth overlays of the first ``videos`` videos and the ``extremes`` frames
    with the lowest and highest clean IoU (frames with ground truth only).
    """

    def __init__(self, layout: str, videos: int = 6, extremes: int = 6) -> None:
        self.layout = layout
        self.max_videos = videos
        self.extremes = extremes
        self.videos: dict[str, list[tuple[int, np.ndarray, np.ndarray | None]]] = {}
        self.best: list[tuple[float, int, dict]] = []  # min-heap on IoU: the k highest survive
        self.worst: list[tuple[float, int, dict]] = []  # min-heap on -IoU: the k lowest survive
        self.ious: list[float] = []
        self._counter = itertools.count()

    def _foreground(self, output: np.ndarray) -> np.ndarray:
        """(H, W) probabilities, or (C, H, W) class scores -> (H, W) foreground map in [0, 1]."""
        if output.ndim == 3:
            return (output.argmax(0) > 0).astype(np.float32)
        return np.clip(output, 0.0, 1.0)

    def __call__(self, fo: Any) -> None:
        rgb = None
        pred = self._foreground(fo.output)
        vid = fo.record.video_id
        if vid in self.videos or len(self.videos) < self.max_videos:
            rgb = denormalize(fo.frame)
            gt_img = overlay(rgb, (fo.gt > 0).astype(np.float32), (40, 220, 40)) if fo.gt is not None else None
            self.videos.setdefault(vid, []).append((fo.frame_number, _tile(overlay(rgb, pred)), None if gt_img is None else _tile(gt_img)))
        if fo.gt is None:
            return
        iou = float(frame_iou_clean(pred[None], (fo.gt > 0)[None])[0])
        self.ious.append(iou)
        n = next(self._counter)
        need_best = len(self.best) < self.extremes or iou > self.best[0][0]
        need_worst = len(self.worst) < self.extremes or -iou > self.worst[0][0]
        if not (need_best or need_worst):
            return
        rgb = denormalize(fo.frame) if rgb is None else rgb
        item = {
            "video": vid, "frame": fo.frame_number, "iou": iou,
            "pred": _tile(overlay(rgb, pred)), "gt": _tile(overlay(rgb, (fo.gt > 0).astype(np.float32), (40, 220, 40))),
        }  # fmt: skip
        for heap, key, need in ((self.best, iou, need_best), (self.worst, -iou, need_worst)):
            if need:
                entry = (key, n, item)
                if len(heap) < self.extremes:
                    heapq.heappush(heap, entry)
                else:
                    heapq.heapreplace(heap, entry)


def _load_or_evaluate(run_dir: Path, split: str, device: str, data_root: str | None, pictures: Pictures | None) -> tuple[dict[str, dict], bool]:
    """Metrics of both protocols; returns (metrics by protocol, whether ``pictures`` were filled)."""

    metrics: dict[str, dict] = {}
    filled = False
    for protocol in PROTOCOLS:
        path = run_dir / "eval" / f"{split}-{protocol}.json"
        if path.is_file():
            metrics[protocol] = json.loads(path.read_text(encoding="utf-8"))
            continue
        log.info("report: %s missing, evaluating %s on %s", path, protocol, split)
        keep = pictures if (pictures is not None and not filled) else None
        metrics[protocol] = evaluate_run(run_dir, split, protocol, device=device, data_root=data_root, keep=keep)
        filled = filled or keep is not None
    return metrics, filled


def _collect_pictures(run_dir: Path, split: str, device: str, data_root: str | None, pictures: Pictures) -> None:
    """One prediction pass over the split feeding ``pictures`` (when the metrics were read from disk)."""

    spec, cfg = load_run(run_dir)
    if data_root is not None:
        cfg.data.root = data_root
    dev = resolve_device(device)
    predictor = spec.load_predictor(cfg, run_dir, dev)
    dataset = make_dataset(cfg.data, split, audio=cfg.data.audio_frontend is not None)
    for fo in iterate_outputs(predictor.predict, dataset, dev, batch_size=4, progress=f"report {split}"):
        pictures(fo)


def _fmt(value: Any, percent: bool = True) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    if isinstance(value, (int, float)):
        return f"{100 * float(value):.2f}" if percent else f"{value}"
    return html.escape(str(value))


def _img(image: np.ndarray | Image.Image, alt: str) -> str:
    return f'<img src="{png_data_uri(image)}" alt="{html.escape(alt)}">'


def _video_strip(frames: list[tuple[int, np.ndarray, np.ndarray | None]]) -> np.ndarray:
    """Two rows (prediction, ground truth) of one video's frames -> one (H, W, 3) picture."""

    frames = sorted(frames, key=lambda f: f[0])
    blank = np.full((TILE, TILE, 3), 235, np.uint8)
    rows = [[f[1] for f in frames], [f[2] if f[2] is not None else blank for f in frames]]
    sheet = contact_sheet(rows, row_labels=["prediction", "ground truth"], col_labels=[f"frame {f[0]}" for f in frames])
    return np.asarray(sheet)


def _extremes_table(title: str, entries: list[dict]) -> str:
    if not entries:
        return f"<h3>{title}</h3><p>No frame of this split has ground truth.</p>"
    cells = "".join(
        f'<figure>{_img(e["pred"], "prediction")}{_img(e["gt"], "ground truth")}'
        f'<figcaption>{html.escape(e["video"])} #{e["frame"]}: IoU {100 * e["iou"]:.1f}</figcaption></figure>'
        for e in entries
    )
    return f'<h3>{title}</h3><div class="grid">{cells}</div>'


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.6em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ccc;padding:.3em .7em;text-align:right}
th:first-child,td:first-child{text-align:left} .muted{color:#777} img{image-rendering:pixelated;max-width:100%}
.grid{display:flex;flex-wrap:wrap;gap:10px} figure{margin:0;padding:4px;border:1px solid #eee}
figure img{width:128px;height:128px;display:inline-block;margin-right:2px} figcaption{font-size:.8em;color:#555}
.strip{margin:.4em 0 1.2em}
"""


def write_report(
    run_dir: Path,
    split: str = "test",
    out: Path | None = None,
    device: str = "auto",
    data_root: str | None = None,
    videos: int = 6,
    extremes: int = 6,
) -> Path:
    """Write the HTML report of ``run_dir`` (default ``RUN/report.html``); returns its path.

    Needs the run's dataset (``data.root`` of its config, or ``data_root``) for the pictures and any
    missing metrics.
    """

    run_dir = Path(run_dir)
    spec, cfg = load_run(run_dir)
    out = Path(out) if out is not None else run_dir / "report.html"
    pictures = Pictures(cfg.data.layout, videos=videos, extremes=extremes)
    metrics, filled = _load_or_evaluate(run_dir, split, device, data_root, pictures)
    if not filled:
        _collect_pictures(run_dir, split, device, data_root, pictures)

    parts = [f"<h1>avseg report: {html.escape(spec.name)}</h1>"]
    parts.append(
        f'<p>Run <code>{html.escape(str(run_dir))}</code>: {html.escape(spec.description)}. Supervision: '
        f"{html.escape(spec.supervision)}. Data <code>{html.escape(str(data_root or cfg.data.root))}</code> "
        f"({cfg.data.layout}, {cfg.data.image_size} px, audio {html.escape(str(cfg.data.audio_frontend))}, "
        f"{cfg.data.audio_window} window).</p>"
    )
    # Metrics
    rows = []
    for protocol in PROTOCOLS:
        m = metrics[protocol]
        rows.append(f"<tr><td>{protocol}</td><td>{_fmt(m.get('miou'))}</td><td>{_fmt(m.get('fscore'))}</td><td>{_fmt(m.get('frames'), False)}</td></tr>")
    parts.append(
        f"<h2>Metrics ({html.escape(split)} split)</h2><table><tr><th>protocol</th><th>mIoU (%)</th><th>F-score (%)</th><th>frames</th></tr>"
        + "".join(rows)
        + "</table><p class=muted><code>clean</code>: batch-independent (per-frame IoU at 0.5, one dataset-level PR curve); "
        "<code>avsbench</code>: the official evaluation (per batch of 20 frames, then averaged)."
        + (" AVSS, binary masks: scored against the union of the sounding objects (docs/metrics.md)."
           if cfg.data.layout == "avss" and metrics[PROTOCOLS[0]].get("scoring") == "binary" else "")
        + "</p>"
    )
    if pictures.ious:
        ious = np.asarray(pictures.ious)
        parts.append(f"<p>Per-frame clean IoU over {ious.size} frames with ground truth: median {100 * np.median(ious):.1f}, "
                     f"{100 * (ious >= 0.5).mean():.0f}% of frames at IoU &ge; 0.5.</p>")  # fmt: skip
    parts.append(_listening_section(run_dir, split, device, data_root))
    # Per-video overlays
    parts.append(f"<h2>Per-video overlays</h2><p class=muted>First {len(pictures.videos)} videos of the split; prediction in red, ground truth in green.</p>")
    for vid, frames in pictures.videos.items():
        parts.append(f'<div class="strip"><b>{html.escape(vid)}</b><br>{_img(_video_strip(frames), vid)}</div>')
    # Extremes
    worst = [e for _, _, e in sorted(pictures.worst, key=lambda x: -x[0])]
    shown = {(e["video"], e["frame"]) for e in worst}  # small splits: a frame is listed once
    best = [e for _, _, e in sorted(pictures.best, key=lambda x: -x[0]) if (e["video"], e["frame"]) not in shown]
    parts.append("<h2>Worst and best frames</h2><p class=muted>By clean IoU; each pair: prediction, ground truth.</p>")
    parts.append(_extremes_table("Worst", worst))
    parts.append(_extremes_table("Best", best))
    # Pseudo masks
    parts.append(_pseudo_section(run_dir))
    parts.append(_stages_section(run_dir))
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>avseg report: {html.escape(run_dir.name)}</title><style>{_CSS}</style></head><body>"
        + "\n".join(parts)
        + "</body></html>\n"
    )
    write_text_atomic(out, page)
    return out


def _listening_section(run_dir: Path, split: str, device: str, data_root: str | None) -> str:
    """Does the model listen? The listening metrics (read, or computed once) and the swap picture."""

    result = read_listen(run_dir, split)
    if result is None:
        log.info("report: %s missing, running the listening evaluation on %s", run_dir / "eval" / f"listen-{split}.json", split)
        result = listen_run(run_dir, split, device=device, data_root=data_root)
    rows = [
        ("mIoU, own sound", "miou_own"), ("F, own sound", "fscore_own"), ("mIoU, another video's sound", "miou_other"),
        ("audio dependence (points)", "audio_dependence"), ("FPR, silence", "fpr_silence"), ("FPR, white noise", "fpr_noise"),
        ("FPR, another video's sound", "fpr_other"), ("G-mIoU", "g_miou"), ("swap IoU", "swap_iou"),
        ("deaf ceiling (mark every visible object)", "deaf_ceiling"),
    ]  # fmt: skip
    cells = []
    for name, key in rows:
        value = result.get(key)
        text = "n/a" if value is None else (f"{value:+.2f}" if key == "audio_dependence" else _fmt(value))
        cells.append(f"<tr><td>{html.escape(name)}</td><td>{text}</td></tr>")
    body = (
        f"<h2>Does the model listen? ({html.escape(split)} split, seed {_fmt(result.get('seed'), False)})</h2>"
        "<table><tr><th>measure</th><th>value (%)</th></tr>" + "".join(cells) + "</table>"
        "<p class=muted>The same frames with their own sound, silence, white noise at the clip's loudness, another video's sound "
        "(another category) and, on synthetic data, the sound of a visible silent object. Audio dependence = mIoU(own) - "
        "mIoU(other), 0 for a model that ignores the sound; FPR = share of pixels marked (0 is right); G-mIoU = harmonic "
        "mean of mIoU and 1 - mean FPR (silence, noise); swap IoU = the mask under a silent object's sound against that "
        "object (docs/metrics.md).</p>"
    )
    picture = run_dir / "eval" / f"listen-{split}.png"
    if picture.is_file():
        body += _img(Image.open(picture).convert("RGB"), "frame, own sound, a silent object's sound, silence")
        body += ("<p class=muted>Columns: frame | own sound (ground truth outlined in green) | sound of a visible silent object "
                 "(outlined in cyan) | silence; predicted mask in red.</p>")  # fmt: skip
    return body


def _pseudo_section(run_dir: Path) -> str:
    manifest = run_dir / "pseudo" / "manifest.json"
    if not manifest.is_file():
        return "<h2>Pseudo masks</h2><p class=muted>This run has no pseudo-mask manifest (the method trains without pseudo masks, or the stage has not run).</p>"
    m = json.loads(manifest.read_text(encoding="utf-8"))
    q = m.get("quality", {}) or {}
    body = (
        "<h2>Pseudo masks</h2><table><tr><th>refinement</th><th>frames</th><th>frames with GT</th><th>mIoU (%)</th><th>F-score (%)</th></tr>"
        f"<tr><td>{_fmt(m.get('refinement'))}</td><td>{_fmt(m.get('frames'), False)}</td><td>{_fmt(q.get('frames'), False)}</td>"
        f"<td>{_fmt(q.get('miou'))}</td><td>{_fmt(q.get('fscore'))}</td></tr></table>"
        "<p class=muted>Quality of the training pseudo masks against the ground truth of the training frames that have it (clean protocol): "
        "it bounds what the segmenter can learn from them.</p>"
    )
    sheet = run_dir / "pseudo" / "contact_sheet.png"
    if sheet.is_file():
        body += _img(Image.open(sheet).convert("RGB"), "pseudo-mask contact sheet")
    return body


def _stages_section(run_dir: Path) -> str:
    markers = sorted((run_dir / "stages").glob("*.json"), key=lambda p: p.stat().st_mtime)
    if not markers:
        return ""
    rows = []
    for p in markers:
        try:
            s = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            continue
        rows.append(f"<tr><td>{html.escape(p.stem)}</td><td>{_fmt(s.get('seconds'), False)}</td></tr>")
    return "<h2>Stages</h2><table><tr><th>stage</th><th>seconds</th></tr>" + "".join(rows) + "</table>"
