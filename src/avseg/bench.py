"""``avseg bench``: train and evaluate several methods on one dataset with shared settings.

For each method, in ``OUT/<method>``: ``runner.build_config`` (recipe ``<method>/<recipe>`` + the shared
data location, layout, image size and training flags + overrides) -> ``runner.run_method`` (a rerun
continues where it stopped) -> ``runner.evaluate_run`` on the test split with the ``clean`` and
``avsbench`` protocols; methods whose predictor has a ``heatmap`` (CAM, EZ-VSL, C2AM) are also scored as
heat maps with cIoU / AUC (frames with a non-empty ground truth); every method gets the listening
evaluation (``avseg.listening``: audio dependence, FPR under silence / noise, G-mIoU, swap IoU). A method that fails is reported in the
table with its status and error (traceback in ``OUT/<method>/bench-error.txt``), never hidden.

Writes ``OUT/results.md`` and ``OUT/results.csv`` (the shape of the WS-AVS paper's Table 1: method,
supervision, mIoU and F in both protocols, training time, cIoU / AUC, the paper's numbers),
``OUT/results.json``, ``OUT/chart.png`` (bar chart, PIL) and ``OUT/grid.png`` (rows = test frames,
columns = frame, ground truth, each method's binary mask; like the paper's Figure 2).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from avseg.config import dump_yaml, to_dict
from avseg.data.avsbench import read_mask
from avseg.data.index import index_videos
from avseg.engine.evaluate import iterate_outputs
from avseg.engine.trainer import resolve_device
from avseg.fileio import write_text_atomic
from avseg.listening import deaf_ceiling, listen_run
from avseg.methods import METHODS
from avseg.methods.common import make_dataset
from avseg.metrics.binary import BinaryAccumulator
from avseg.metrics.localization import LocalizationAccumulator
from avseg.runner import RunError, build_config, evaluate_run, load_run, record_classes, reuse_override, run_method
from avseg.visualize import contact_sheet, denormalize, overlay, save_image_atomic

log = logging.getLogger("avseg")

CSV_COLUMNS = (
    "method", "display", "supervision", "status", "error", "failed_stage",
    "miou_clean", "fscore_clean", "fscore_at_0.5_clean", "miou_avsbench", "fscore_avsbench",
    "train_seconds", "eval_seconds", "ciou_ap50", "auc", "mean_ciou",
    "pseudo_miou", "pseudo_miou_eq6", "paper_miou", "paper_fscore", "run_dir",
    "miou_other", "audio_dependence", "fpr_silence", "fpr_noise", "g_miou", "swap_iou",
)  # fmt: skip


@dataclass
class BenchRow:
    """One method's outcome. Metrics are fractions in [0, 1] (the tables print %); None where n/a."""

    method: str
    display: str
    supervision: str = ""
    status: str = "pending"  # ok | failed
    error: str = ""
    failed_stage: str = ""
    miou_clean: float | None = None
    fscore_clean: float | None = None
    fscore_at_05_clean: float | None = None
    miou_avsbench: float | None = None
    fscore_avsbench: float | None = None
    train_seconds: float | None = None
    eval_seconds: float | None = None
    ciou_ap50: float | None = None
    auc: float | None = None
    mean_ciou: float | None = None
    pseudo_miou: float | None = None  # pseudo-mask quality on training frames with GT (WS-AVS variants)
    pseudo_miou_eq6: float | None = None  # ws-avs-av: the same masks before the audio selection
    # thresholds the run chose on the validation split: {"heat map": t} (threshold_from: val, CAM / EZ-VSL),
    # {"av_threshold": t} (ws-avs-av, av_threshold_from: val); each with its validation mIoU
    chosen_thresholds: dict[str, dict[str, float]] = field(default_factory=dict)
    paper_miou: float | None = None
    paper_fscore: float | None = None
    run_dir: str = ""
    stage_seconds: dict[str, float] = field(default_factory=dict)
    reused_stages: dict[str, str] = field(default_factory=dict)  # stage -> run folder it was taken from
    test_frames: int | None = None
    # listening (avseg.listening, test split, seed 0): fractions, but audio_dependence in points
    miou_other: float | None = None
    audio_dependence: float | None = None
    fpr_silence: float | None = None
    fpr_noise: float | None = None
    g_miou: float | None = None
    swap_iou: float | None = None

    def csv_values(self) -> list[Any]:
        d = asdict(self)
        d["fscore_at_0.5_clean"] = d.pop("fscore_at_05_clean")
        return ["" if d[c] is None else d[c] for c in CSV_COLUMNS]


MODEL_CHOICE = "audio-visual model"
BASE_CHOICE = "pseudo-mask base"
BASES = ("Eq. 6", "C2AM alone")  # WS-AVS-AV's refinement_from: val, values 0 and 1 of BASE_CHOICE
SILENCE_CHOICE = "quiet frames"
SILENCE = ("kept", "emptied")  # WS-AVS-AV's av_silence_from: val, values 0 and 1 of SILENCE_CHOICE


def _choice_value(name: str, value: float) -> str:
    if name == BASE_CHOICE:
        return BASES[int(value)]
    if name == SILENCE_CHOICE:
        return SILENCE[int(value)]
    return f"{int(value)}" if name == MODEL_CHOICE else f"{value:.2f}"


def c2am_alone_kept(summaries: dict[str, dict[str, Any]]) -> bool:
    """A ws-avs-av run with ``refinement_from: segmenter`` whose kept segmenter trained on the C2AM-alone base's
    pseudo masks (the pseudo-masks summary's ``c2am_alone``), not on ``pseudo/masks``."""
    return ((summaries.get("segmenter") or {}).get("refinement_choice") or {}).get("chosen") == "c2am"


def chosen_thresholds(summaries: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """What a run chose on the validation split, from its stage summaries: the heat map's binarisation threshold
    (stage ``threshold``) and WS-AVS-AV's selection threshold (``pseudo-masks`` with ``av_threshold_from: val``),
    each as {"value": t, "val_miou": its validation mIoU}; with several audio-visual models (``av_models``) also
    the one kept (``"audio-visual model"``: its index, 0 = the run's seed; absent when their maps are averaged,
    ``av_combine: mean``); with ``refinement_from: val`` the pseudo-mask base kept (``"pseudo-mask base"``: 0 =
    Eq. 6 with the saliency map, 1 = the C2AM mask alone; with ``refinement_from: segmenter`` the base whose
    segmenter was kept, its ``val_miou`` that segmenter's best), with ``av_silence_from: val`` whether the quiet
    frames' masks were emptied (``"quiet frames"``: 0 = kept, 1 = emptied)."""
    out: dict[str, dict[str, float]] = {}
    heat = summaries.get("threshold") or {}
    if "threshold" in heat:
        out["heat map"] = {"value": float(heat["threshold"]), "val_miou": float(heat["miou"])}
    pseudo = summaries.get("pseudo-masks") or {}
    choice = pseudo.get("av_threshold_choice")
    by_segmenter: dict[str, Any] = (summaries.get("segmenter") or {}).get("refinement_choice") or {}  # refinement_from: segmenter
    alone_kept = c2am_alone_kept(summaries)
    bases: dict[str, Any] = pseudo.get("refinement_choice") or {}
    if alone_kept:
        out["av_threshold"] = {"value": float(pseudo["c2am_alone"]["av_threshold"]), "val_miou": float(bases["miou"]["c2am"])}
    elif choice:
        out["av_threshold"] = {"value": float(choice["threshold"]), "val_miou": float(choice["miou"])}
    models = pseudo.get("av_model_choice")
    if models and models.get("chosen") is not None and alone_kept:  # the model that selected the C2AM-alone base's masks
        out[MODEL_CHOICE] = {"value": float(pseudo["c2am_alone"]["av_model"]), "val_miou": float(bases["miou"]["c2am"])}
    elif models and models.get("chosen") is not None:  # None: av_combine mean (the threshold above is the mean map's)
        out[MODEL_CHOICE] = {"value": float(models["chosen"]), "val_miou": float(models["miou"][models["chosen"]])}
    if by_segmenter:
        kept = by_segmenter["chosen"]
        out[BASE_CHOICE] = {"value": float(kept == "c2am"), "val_miou": float(by_segmenter["val_miou"][kept])}
    elif bases and bases.get("chosen"):
        kept = bases["chosen"]
        out[BASE_CHOICE] = {"value": float(kept == "c2am"), "val_miou": float(bases["miou"][kept])}
    silence = pseudo.get("silence_choice")
    if silence and alone_kept:
        emptied = bool(bases["quiet_emptied"]["c2am"])
        out[SILENCE_CHOICE] = {"value": float(emptied), "val_miou": float(bases["miou"]["c2am"])}
    elif silence:
        which = "emptied" if silence["emptied"] else "kept"
        out[SILENCE_CHOICE] = {"value": float(silence["emptied"]), "val_miou": float(silence["miou"][which])}
    return out


# --- method selection and configs ----------------------------------------------------------------------
def resolve_methods(spec: str) -> list[str]:
    """``all`` -> every registered method (the paper's order first; PCAS's semantic masks are scored as their
    union, its binary output on S4 / MS3); else a comma list."""

    if spec.strip() == "all":
        return list(METHODS)  # the registry's order
    names = [m.strip() for m in spec.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise RunError(f"unknown method(s) {unknown or spec!r}; expected 'all' or a comma list of {sorted(METHODS)}")
    if len(set(names)) != len(names):
        raise RunError(f"--methods lists a method twice: {spec}")
    return names


def split_overrides(items: list[str] | None, methods: list[str]) -> dict[str, list[str]]:
    """``KEY=VALUE`` applies to every method, ``METHOD:KEY=VALUE`` to one -> {method: [overrides]}."""

    out: dict[str, list[str]] = {m: [] for m in methods}
    for item in items or []:
        head, sep, _ = item.partition("=")
        if not sep:
            raise RunError(f"override {item!r} is not of the form [METHOD:]KEY=VALUE")
        if ":" in head:
            method, _, rest = item.partition(":")
            if method not in METHODS:
                raise RunError(f"override {item!r} names method {method!r}, which is not registered ({', '.join(sorted(METHODS))})")
            if method in out:  # overrides of registered methods left out of this bench are ignored
                out[method].append(rest)
        else:
            for m in methods:
                out[m].append(item)
    return out


def _same_config(run_dir: Path, method: str, cfg: Any) -> bool:
    """The run folder holds ``method`` with the settings ``cfg``. The saved config is read through the method's
    config class, so a setting added to the code since (absent from the file) counts at its default."""
    import yaml

    try:
        spec, saved = load_run(run_dir)
    except (RunError, ValueError, TypeError):
        return False

    def canonical(c: Any) -> Any:
        return yaml.safe_load(dump_yaml({"method": method, **to_dict(c)}))

    return spec.name == method and canonical(saved) == canonical(cfg)


# --- evaluation helpers -------------------------------------------------------------------------------
def heatmap_scores(run_dir: Path, device: str = "auto", split: str = "test") -> dict[str, Any] | None:
    """cIoU AP50 / AUC / mean cIoU of a run's heat maps (predictor.heatmap) on frames with non-empty GT.

    Returns None for methods without heat maps. Writes ``eval/{split}-heatmap.json`` in the run.
    """

    spec, cfg = load_run(run_dir)
    dev = resolve_device(device)
    predictor = spec.load_predictor(cfg, Path(run_dir), dev)
    if not hasattr(predictor, "heatmap"):
        return None
    dataset = make_dataset(cfg.data, split, audio=cfg.data.audio_frontend is not None)
    acc = LocalizationAccumulator()
    for fo in iterate_outputs(predictor.heatmap, dataset, dev, batch_size=4, progress=f"heat maps {split}"):
        if fo.gt is not None and fo.gt.any():
            acc.update(fo.output, fo.gt)
    result = acc.compute() if acc.cious else {"protocol": "ez-vsl", "samples": 0, "ciou_ap50": None, "auc": None, "mean_ciou": None}
    result.update({"method": spec.name, "split": split, "run": str(run_dir), "frames": "non-empty ground truth only"})
    write_text_atomic(Path(run_dir) / "eval" / f"{split}-heatmap.json", json.dumps(result, indent=2))
    return result


def trivial_baselines(root: Path, layout: str, split: str = "test", batch_frames: int = 20) -> list[dict[str, Any]]:
    """Scores of the constant predictions "all foreground" and "all background" on a split (read from the
    ground-truth files in canonical order): the floor every method must clear. Empty-GT frames reward an
    empty prediction in both protocols, and large objects reward "all foreground"."""

    accs = {name: {p: BinaryAccumulator(p, batch_frames) for p in ("clean", "avsbench")} for name in ("all foreground", "all background")}
    for record in index_videos(Path(root), layout, split):
        for path in record.mask_paths:
            if path is None:
                continue
            gt = read_mask(path, layout)[None]
            for name, value in (("all foreground", 1.0), ("all background", 0.0)):
                for acc in accs[name].values():
                    acc.update(np.full(gt.shape, value, np.float32), gt)
    out = []
    for name, by_protocol in accs.items():
        clean, legacy = by_protocol["clean"].compute(), by_protocol["avsbench"].compute()
        out.append({"name": name, "miou_clean": clean["miou"], "fscore_clean": clean["fscore"],
                    "miou_avsbench": legacy["miou"], "fscore_avsbench": legacy["fscore"],
                    "empty_gt_frames": clean["frames"] - clean["fscore_frames"], "frames": clean["frames"]})  # fmt: skip
    return out


def grid_keys(root: Path, layout: str, rows: int, split: str = "test") -> list[tuple[str, int]]:
    """(video id, frame number) of ``rows`` test frames with non-empty ground truth: one per video from
    evenly spaced videos (the frame position rotates from row to row), more per video when the split has
    fewer videos than rows. The same for every method."""

    records = index_videos(Path(root), layout, split)
    if not records or rows < 1:
        return []
    chosen = records[:: max(1, len(records) // rows)]
    keys: list[tuple[str, int]] = []
    for turn in range(max(len(r.frame_paths) for r in chosen)):
        for i, record in enumerate(chosen):
            t = (i + turn) % len(record.frame_paths)
            path = record.mask_paths[t]
            key = (record.video_id, record.frame_numbers[t])
            if path is not None and key not in keys and read_mask(path, layout).any():
                keys.append(key)
                if len(keys) == rows:
                    return keys
    return keys


# --- the bench ------------------------------------------------------------------------------------------
def run_bench(
    data: Path,
    layout: str,
    methods: list[str],
    out: Path,
    recipe: str = "demo",
    quick: dict[str, Any] | None = None,
    image_size: int | None = None,
    overrides: list[str] | None = None,
    device: str = "auto",
    grid_rows: int = 6,
    command: str | None = None,
    reuse: bool = True,
) -> list[BenchRow]:
    """Train + evaluate ``methods`` on one dataset into ``out/<method>``; write tables and figures.

    Args:
        data: dataset root; layout: "s4", "ms3" or "avss". The bench scores binary masks: on AVSS against
            the union of the sounding objects, semantic models (PCAS) by their foreground probability
            (``evaluate_run(binary=True)``), so that every method is in one table.
        methods: registered method names (``resolve_methods``).
        recipe: shipped recipe name per method (``<method>/<recipe>.yaml``).
        quick: training flags applied to every training stage of every method (epochs, max_steps, ...).
        image_size: frame size for every method (None: the recipes').
        overrides: ``KEY=VALUE`` for every method or ``METHOD:KEY=VALUE`` for one.
        device: evaluation device ("auto", "cpu", "cuda").
        grid_rows: test frames in the qualitative grid.
        command: the command line, recorded in results.md.
        reuse: let c2am and ws-avs-av take their C2AM / saliency stages from this bench's ws-avs run
            when the settings are identical (``MethodSpec.reuses``); their training time still counts them.

    Returns:
        One BenchRow per method, in ``methods`` order.
    """

    if layout not in ("s4", "ms3", "avss"):
        raise RunError(f"bench: layout must be s4, ms3 or avss, got {layout!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    per_method = split_overrides(overrides, methods)
    keys = grid_keys(Path(data), layout, grid_rows)
    pictures: dict[str, dict[tuple[str, int], Any]] = {}
    by_method: dict[str, BenchRow] = {}
    started = time.perf_counter()
    for i, method in enumerate(execution_order(methods) if reuse else methods, 1):
        spec = METHODS[method]
        paper = spec.paper.get(layout)
        row = BenchRow(method=method, display=spec.display or method, supervision=spec.supervision,
                       run_dir=str(out / method), paper_miou=paper[0] / 100 if paper else None,
                       paper_fscore=paper[1] / 100 if paper else None)  # fmt: skip
        by_method[method] = row
        run_dir = out / method
        phase, cfg = "config", None
        log.info("bench [%d/%d] %s: start (recipe %s/%s)", i, len(methods), method, method, recipe)
        try:
            extra = list(per_method[method])
            source = spec.reuses
            if reuse and source in by_method and by_method[source].status == "ok" and not any(o.startswith("reuse_run=") for o in extra):
                extra.append(reuse_override(out / source))
            spec, cfg = build_config(method, f"{method}/{recipe}", str(data), layout, quick, image_size, extra)
            cfg = record_classes(spec, cfg)  # as run_method records it, so that a finished run compares equal
            if (run_dir / "config.yaml").is_file() and not _same_config(run_dir, method, cfg):
                raise RunError(f"{run_dir} holds a run of {method} with other settings; remove it or choose another --out")
            phase = "train"
            summaries = run_method(spec, cfg, run_dir, resume=True)
            row.stage_seconds = {k: float(v.get("reused_seconds", v.get("seconds")) or 0.0) for k, v in summaries.items()}
            row.reused_stages = {k: str(v["reused_from"]) for k, v in summaries.items() if v.get("reused_from")}
            row.train_seconds = round(sum(row.stage_seconds.values()), 1)
            pseudo = summaries.get("pseudo-masks", {})
            row.pseudo_miou = ((pseudo["c2am_alone"] if c2am_alone_kept(summaries) else pseudo).get("quality") or {}).get("miou")  # the kept segmenter's masks
            row.pseudo_miou_eq6 = (pseudo.get("quality_eq6") or {}).get("miou")
            row.chosen_thresholds = chosen_thresholds(summaries)
            phase = "eval"
            log.info("bench [%d/%d] %s: trained in %.1f s; evaluating on test", i, len(methods), method, row.train_seconds)
            t0 = time.perf_counter()
            collected: dict[tuple[str, int], Any] = {}
            wanted = set(keys)

            def keep(fo: Any, collected: dict = collected) -> None:
                key = (fo.record.video_id, fo.frame_number)
                if key in wanted and fo.gt is not None:
                    collected[key] = (fo.frame, (fo.gt != 0).astype(np.int64), (fo.output > 0.5).astype(np.float32))

            clean = evaluate_run(run_dir, "test", "clean", device=device, keep=keep, binary=True)
            pictures[method] = collected
            legacy = evaluate_run(run_dir, "test", "avsbench", device=device, binary=True)
            row.miou_clean, row.fscore_clean = clean["miou"], clean["fscore"]
            row.fscore_at_05_clean = clean.get("fscore_at_0.5")
            row.miou_avsbench, row.fscore_avsbench = legacy["miou"], legacy["fscore"]
            row.test_frames = clean.get("frames")
            heat = heatmap_scores(run_dir, device)
            if heat is not None:
                row.ciou_ap50, row.auc, row.mean_ciou = heat["ciou_ap50"], heat["auc"], heat["mean_ciou"]
            phase = "listen"
            listened = listen_run(run_dir, "test", seed=0, device=device)
            for key in ("miou_other", "audio_dependence", "fpr_silence", "fpr_noise", "g_miou", "swap_iou"):
                setattr(row, key, listened.get(key))
            row.eval_seconds = round(time.perf_counter() - t0, 1)
            row.status = "ok"
            log.info("bench [%d/%d] %s: mIoU %.4f F %.4f (clean)", i, len(methods), method, row.miou_clean, row.fscore_clean)
        except Exception as exc:  # a failed method is a row of the table, not the end of the bench
            row.status = "failed"
            row.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            row.failed_stage = phase
            if phase == "train" and cfg is not None:
                pending = [s.name for s in METHODS[method].stages(cfg) if not s.is_done(run_dir)]
                row.failed_stage = f"train/{pending[0]}" if pending else "train"

            write_text_atomic(run_dir / "bench-error.txt", traceback.format_exc())
            log.error("bench [%d/%d] %s: FAILED in %s: %s (traceback in %s)", i, len(methods), method, row.failed_stage, row.error, run_dir / "bench-error.txt")
    rows = [by_method[m] for m in methods]
    baselines = trivial_baselines(Path(data), layout)
    deaf = deaf_ceiling(Path(data), layout)
    write_results(out, rows, data=Path(data), layout=layout, recipe=recipe, command=command, seconds=time.perf_counter() - started, baselines=baselines, deaf=deaf)
    write_chart(out / "chart.png", rows, title=f"{Path(data).name} ({layout}), test split, clean protocol", floor=baselines[0]["miou_clean"])
    write_grid(out / "grid.png", rows, pictures, keys)
    return rows


def execution_order(methods: list[str]) -> list[str]:
    """``methods`` with every reuse source moved before the first method that reuses it."""
    order: list[str] = []
    for m in methods:
        source = METHODS[m].reuses if m in METHODS else None
        if source in methods and source not in order:
            order.append(source)
        if m not in order:
            order.append(m)
    return order


# --- outputs -----------------------------------------------------------------------------------------
def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def order_notes(rows: list[BenchRow]) -> list[str]:
    """Lines comparing the measured clean-mIoU order of the paper's methods with the paper's order."""
    paper_order = [m for m, spec in METHODS.items() if spec.paper]  # Table 1's order, weakest first
    ok = {r.method: r for r in rows if r.status == "ok" and r.method in paper_order}
    if len(ok) < 2:
        return []
    measured = sorted(ok, key=lambda m: ok[m].miou_clean or 0.0)
    expected = [m for m in paper_order if m in ok]
    lines = [
        "Order by clean mIoU, weakest first: " + " < ".join(METHODS[m].display for m in measured) + ".",
        "Paper (Table 1): " + " < ".join(METHODS[m].display for m in expected) + ".",
    ]
    swapped = [
        f"{METHODS[a].display} ({_pct(ok[a].miou_clean)}) >= {METHODS[b].display} ({_pct(ok[b].miou_clean)})"
        for n, a in enumerate(expected) for b in expected[n + 1:] if (ok[a].miou_clean or 0.0) >= (ok[b].miou_clean or 0.0)
    ]  # fmt: skip
    lines.append("Pairs ordered differently from the paper: " + ("; ".join(swapped) if swapped else "none") + ".")
    return lines


def _pts(x: float | None) -> str:
    return "-" if x is None else f"{x:+.1f}"


def write_results(
    out: Path, rows: list[BenchRow], data: Path, layout: str, recipe: str, command: str | None, seconds: float,
    baselines: list[dict[str, Any]] | None = None, deaf: dict[str, Any] | None = None,
) -> None:
    """results.csv / .json / .md. ``deaf``: the deaf ceiling of synthetic data (``listening.deaf_ceiling``),
    shown beside the constant baselines in results.md and kept in results.json."""

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in rows:
        w.writerow(r.csv_values())
    for b in baselines or []:  # constant predictions, for reference
        values = {"method": b["name"], "display": b["name"], "supervision": "-", "status": "baseline"}
        values.update({k: b[k] for k in ("miou_clean", "fscore_clean", "miou_avsbench", "fscore_avsbench")})
        w.writerow([values.get(c, "") for c in CSV_COLUMNS])
    write_text_atomic(out / "results.csv", buf.getvalue())
    write_text_atomic(out / "results.json", json.dumps({"methods": [asdict(r) for r in rows], "baselines": baselines or [], "deaf_ceiling": deaf}, indent=2))

    frames = next((r.test_frames for r in rows if r.test_frames), None)
    lines = [
        f"# Bench: {data.name} ({layout})",
        "",
        f"Data: `{data}` ({layout} layout), test split{f', {frames} frames with ground truth' if frames else ''}. "
        f"Recipes: `<method>/{recipe}`. Wall time of this bench call: {seconds:.0f} s (stages finished by an earlier "
        "call into the same folder are skipped; the `train s` column counts every stage's own time).",
    ]
    if command:
        lines += ["", f"Command: `{command}`"]
    lines += [
        "",
        "mIoU / F in %. `clean`: batch-independent (empty ground truth scores 1 only for an empty prediction); "
        "`avsbench`: the official code's batches of 20 frames. F sweeps 255 thresholds over the output from 0 (every "
        "pixel), so it never falls below the all-foreground F; F@0.5: F of the binary mask itself. cIoU AP50 / AUC: heat-map methods, frames with non-empty ground truth. "
        "Paper: WS-AVS Table 1 on AVSBench (per-frame-max F), for the order only: the data differ. "
        "Listening (`avseg listen`, docs/metrics.md): audio dep. = mIoU with the own sound minus mIoU with another test "
        "video's sound, in points (a deaf model scores 0); FPR = % of pixels marked under silence / white noise "
        "(0 is right); G-mIoU = harmonic mean of mIoU and 1 - mean FPR; swap IoU = IoU of the mask, under the sound of a "
        "visible silent object, with that object (synthetic data).",
        "",
        "| method | supervision | status | mIoU clean | F clean | F@0.5 clean | mIoU avsbench | F avsbench | train s | cIoU AP50 | AUC "
        "| audio dep. | FPR silence | FPR noise | swap IoU | G-mIoU | paper mIoU / F |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        status = r.status if r.status == "ok" else f"**{r.status}** ({r.failed_stage})"
        paper = "-"
        if r.paper_miou is not None:
            assert r.paper_fscore is not None  # both are set from the spec's paper figures, or neither
            paper = f"{100 * r.paper_miou:.2f} / {100 * r.paper_fscore:.2f}"
        train = "-" if r.train_seconds is None else f"{r.train_seconds:.0f}"
        lines.append(
            f"| {r.display} | {r.supervision} | {status} | {_pct(r.miou_clean)} | {_pct(r.fscore_clean)} | {_pct(r.fscore_at_05_clean)} | "
            f"{_pct(r.miou_avsbench)} | {_pct(r.fscore_avsbench)} | {train} | {_pct(r.ciou_ap50)} | {_pct(r.auc)} | "
            f"{_pts(r.audio_dependence)} | {_pct(r.fpr_silence)} | {_pct(r.fpr_noise)} | {_pct(r.swap_iou)} | {_pct(r.g_miou)} | {paper} |"
        )
    for b in baselines or []:
        lines.append(
            f"| *{b['name']}* (constant) | - | baseline | {_pct(b['miou_clean'])} | {_pct(b['fscore_clean'])} | - | "
            f"{_pct(b['miou_avsbench'])} | {_pct(b['fscore_avsbench'])} | - | - | - | - | - | - | - | - | - |"
        )
    if deaf is not None:
        lines.append(f"| *every visible object* (deaf ceiling) | - | baseline | {_pct(deaf['miou_clean'])} | - | - | - | - | - | - | - "
                     "| 0.0 | - | - | - | - | - |")  # fmt: skip
    if baselines:
        lines += ["", f"Constant predictions are the floor: {baselines[0]['empty_gt_frames']} of the {baselines[0]['frames']} "
                      "test frames have an empty ground truth (an empty prediction scores IoU 1 there)."]  # fmt: skip
    if deaf is not None:
        lines += ["", f"Deaf ceiling: marking every visible object exactly scores {_pct(deaf['miou_clean'])} clean mIoU on the "
                      f"{deaf['frames']} test frames (at the data's own size): the best a model that does not listen can do "
                      "on scenes with visible silent objects."]  # fmt: skip
    failed = [r for r in rows if r.status != "ok"]
    if failed:
        lines += ["", "## Failed", ""]
        lines += [f"- {r.display} ({r.method}), in {r.failed_stage}: `{r.error}` (traceback: `{r.run_dir}/bench-error.txt`)" for r in failed]
    chosen = [r for r in rows if r.chosen_thresholds]
    if chosen:
        lines += ["", "## Thresholds chosen on the validation split", ""]
        for r in chosen:
            told = ", ".join(f"{name} {_choice_value(name, c['value'])} (validation mIoU {_pct(c['val_miou'])})" for name, c in r.chosen_thresholds.items())
            lines.append(f"- {r.display}: {told}")
    pseudo = [r for r in rows if r.pseudo_miou is not None]
    if pseudo:
        lines += ["", "## Pseudo masks (training frames with ground truth, clean mIoU %)", ""]
        for r in pseudo:
            before = f"Eq. 6 {_pct(r.pseudo_miou_eq6)} -> audio-selected " if r.pseudo_miou_eq6 is not None else ""
            lines.append(f"- {r.display}: {before}{_pct(r.pseudo_miou)}")
    notes = order_notes(rows)
    if notes:
        lines += ["", "## Order", ""] + [f"- {n}" for n in notes]
    stage_rows = [r for r in rows if r.stage_seconds]
    if stage_rows:
        lines += ["", "## Training time per stage (s)", "", "| method | stages |", "|---|---|"]
        lines += [
            f"| {r.display} | " + ", ".join(f"{k} {v:.0f}" + (" (shared)" if k in r.reused_stages else "") for k, v in r.stage_seconds.items()) + " |"
            for r in stage_rows
        ]  # fmt: skip
        if any(r.reused_stages for r in stage_rows):
            lines += ["", "(shared): taken from the bench's ws-avs run (identical settings, trained once); its time is counted in both rows."]
    lines += ["", "Figures: `chart.png` (mIoU and F, clean), `grid.png` (test frames: frame, ground truth, each method's mask).", ""]
    write_text_atomic(out / "results.md", "\n".join(lines))


# --- several seeds -----------------------------------------------------------------------------------
SUMMARY_COLUMNS = (
    ("miou_clean", "mIoU", 100.0), ("fscore_clean", "F", 100.0), ("audio_dependence", "audio dep.", 1.0),
    ("fpr_silence", "FPR silence", 100.0), ("fpr_noise", "FPR noise", 100.0), ("swap_iou", "swap IoU", 100.0),
    ("g_miou", "G-mIoU", 100.0),
)  # (results.json key, table heading, scale to % or points)


def summarize_benches(folders: list[Path], across_data: bool = False) -> dict[str, Any]:
    """Mean and sample standard deviation per method and column over several bench folders (one per seed).

    Every folder must hold a ``results.json`` of the same test frames (same deaf ceiling and constant
    baselines, so the same data and split), unless ``across_data``: then each folder benches its own
    dataset (e.g. one generated per seed) and the constants and the deaf ceiling are averaged over the
    folders as well (``baseline_values`` / ``deaf_ceiling_values`` keep each folder's). A method counts in
    a folder only where its status is ``ok`` (``n`` says how many), and failed rows are listed. Values are
    % (audio dependence: points).
    """

    if len(folders) < 2:
        raise RunError("a seed summary needs at least two bench folders")
    loaded: list[tuple[Path, dict[str, Any]]] = []
    for folder in folders:
        path = Path(folder) / "results.json"
        if not path.is_file():
            raise RunError(f"{path}: no results.json (not a finished bench folder)")
        try:
            loaded.append((Path(folder), json.loads(path.read_text())))
        except json.JSONDecodeError as exc:
            raise RunError(f"{path}: not valid JSON ({exc})") from exc

    def fingerprint(results: dict[str, Any]) -> tuple:
        deaf = results.get("deaf_ceiling") or {}
        base = [(b.get("name"), round(b.get("miou_clean", 0.0), 6), b.get("frames")) for b in results.get("baselines", [])]
        return (round(deaf.get("miou_clean", -1.0), 6), deaf.get("frames"), tuple(base))

    first_folder, first = loaded[0]
    for folder, results in loaded[1:]:
        if not across_data and fingerprint(results) != fingerprint(first):
            raise RunError(f"{folder} and {first_folder} were not measured on the same test frames "
                           "(their deaf ceilings or constant baselines differ): summarize benches of one dataset only")  # fmt: skip
    per_method: dict[str, dict[str, Any]] = {}  # in the order the methods first appear
    failed: list[str] = []
    for folder, results in loaded:
        for row in results["methods"]:
            m = per_method.setdefault(row["method"], {"n": 0, "values": {}, "thresholds": {}})
            m["display"], m["supervision"] = row.get("display") or row["method"], row.get("supervision", "")
            if row.get("status") != "ok":
                failed.append(f"{m['display']} in {folder}: {row.get('status')} ({row.get('failed_stage', '')}) {row.get('error', '')}".rstrip())
                continue
            m["n"] += 1
            for name, chosen in (row.get("chosen_thresholds") or {}).items():
                m["thresholds"].setdefault(name, []).append(float(chosen["value"]))
            for key, _, scale in SUMMARY_COLUMNS:
                if row.get(key) is not None:
                    m["values"].setdefault(key, []).append(scale * float(row[key]))

    def stats(xs: list[float]) -> dict[str, Any]:
        arr = np.asarray(xs, dtype=np.float64)
        return {"mean": float(arr.mean()), "sd": float(arr.std(ddof=1)) if arr.size > 1 else None, "values": [float(x) for x in xs]}

    methods = [
        {"method": name, "display": m["display"], "supervision": m["supervision"], "n": m["n"],
         "columns": {key: stats(xs) for key, xs in m["values"].items()}, "thresholds": m["thresholds"]}
        for name, m in per_method.items()
    ]  # fmt: skip
    # The same in every folder (checked above) unless across_data: then the mean of the folders'.
    ceilings = [100.0 * r["deaf_ceiling"]["miou_clean"] for _, r in loaded if r.get("deaf_ceiling")]
    baseline_values: dict[str, list[float]] = {}
    for _, results in loaded:
        for b in results.get("baselines", []):
            baseline_values.setdefault(b["name"], []).append(100.0 * b["miou_clean"])
    frames = {(r.get("deaf_ceiling") or {}).get("frames") for _, r in loaded}
    return {
        "folders": [str(f) for f, _ in loaded],
        "methods": methods,
        "across_data": across_data,
        "deaf_ceiling": float(np.mean(ceilings)) if len(ceilings) == len(loaded) else None,
        "deaf_ceiling_values": ceilings,
        "baselines": {name: float(np.mean(xs)) for name, xs in baseline_values.items()},
        "baseline_values": baseline_values,
        "frames": frames.pop() if len(frames) == 1 else None,
        "failed": failed,
    }


def write_summary(out: Path, summary: dict[str, Any], command: str | None = None) -> str:
    """summary.json and summary.md (mean ± sd over the seeds, then every seed's value) into ``out``; returns the markdown."""

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2))

    def cell(method: dict[str, Any], key: str) -> str:
        c = method["columns"].get(key)
        if c is None:
            return "-"
        sign = "+" if key == "audio_dependence" else ""
        sd = "" if c["sd"] is None else f" ± {c['sd']:.1f}"
        return f"{c['mean']:{sign}.1f}{sd}"

    heads = [h for _, h, _ in SUMMARY_COLUMNS]
    n_folders = len(summary["folders"])
    lines = [f"# Bench over {n_folders} seeds", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    lines += [
        "Folders: " + ", ".join(f"`{f}`" for f in summary["folders"]) + f". Test frames: {summary['frames'] or '-'}, clean protocol. "
        "Mean ± sample standard deviation over the seeds where the method finished (`n`); mIoU, F, FPR, swap IoU, "
        "G-mIoU in %, audio dependence in points (docs/metrics.md, Listening)."
        + (" Each folder benches its own dataset (`--across-data`): the constants and the deaf ceiling are the means "
           "of the folders' own (every seed's below)." if summary.get("across_data") else ""),
        "",
        "| method | supervision | n | " + " | ".join(heads) + " |",
        "|---|---|---|" + "---|" * len(heads),
    ]
    for m in summary["methods"]:
        lines.append(f"| {m['display']} | {m['supervision']} | {m['n']} | " + " | ".join(cell(m, k) for k, _, _ in SUMMARY_COLUMNS) + " |")
    for name, miou in summary["baselines"].items():
        lines.append(f"| *{name}* (constant) | - | - | {miou:.1f} | " + " | ".join("-" for _ in heads[1:]) + " |")
    if summary["deaf_ceiling"] is not None:
        lines.append(f"| *every visible object* (deaf ceiling) | - | - | {summary['deaf_ceiling']:.1f} | - | 0.0 | " + " | ".join("-" for _ in heads[3:]) + " |")
    lines += ["", "## Every seed", "", "| method | " + " | ".join(heads) + " |", "|---|" + "---|" * len(heads)]
    for m in summary["methods"]:
        per = [", ".join(f"{v:.1f}" for v in m["columns"][k]["values"]) if k in m["columns"] else "-" for k, _, _ in SUMMARY_COLUMNS]
        lines.append(f"| {m['display']} | " + " | ".join(per) + " |")
    if summary.get("across_data"):
        for name, values in summary["baseline_values"].items():
            lines.append(f"| *{name}* (constant) | " + ", ".join(f"{v:.1f}" for v in values) + " |" + " - |" * (len(heads) - 1))
        if summary["deaf_ceiling_values"]:
            ceilings = ", ".join(f"{v:.1f}" for v in summary["deaf_ceiling_values"])
            lines.append(f"| *every visible object* (deaf ceiling) | {ceilings} | - | 0.0 |" + " - |" * (len(heads) - 3))
    chosen = [m for m in summary["methods"] if m.get("thresholds")]
    if chosen:
        lines += ["", "## Thresholds chosen on the validation split (every seed)", ""]
        lines += [f"- {m['display']}: " + "; ".join(f"{name} " + ", ".join(_choice_value(name, v) for v in values) for name, values in m["thresholds"].items()) for m in chosen]
    if summary["failed"]:
        lines += ["", "## Failed rows (not counted)", ""] + [f"- {f}" for f in summary["failed"]]
    text = "\n".join(lines) + "\n"
    write_text_atomic(out / "summary.md", text)
    return text


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def write_chart(path: Path, rows: list[BenchRow], title: str = "", floor: float | None = None) -> None:
    """Grouped bars per method: mIoU and F (clean, %), failed methods marked, a dashed line at the
    "all foreground" mIoU (``floor``); PIL only."""
    from PIL import Image, ImageDraw

    series = [("mIoU", "miou_clean", (66, 114, 196)), ("F", "fscore_clean", (237, 125, 49))]
    group_w, bar_w, left, top, plot_h = 120, 44, 60, 50, 300
    width = left + max(1, len(rows)) * group_w + 30
    height = top + plot_h + 70
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    small, normal = _font(11), _font(13)
    d.text((left, 10), title or "bench", fill="black", font=normal)
    y0 = top + plot_h
    for v in range(0, 101, 20):  # axis and grid lines
        y = y0 - v * plot_h / 100
        d.line([(left, y), (width - 20, y)], fill=(225, 225, 225))
        d.text((left - 30, y - 7), f"{v}", fill="black", font=small)
    d.line([(left, top), (left, y0), (width - 20, y0)], fill="black")
    if floor is not None:  # dashed: the mIoU of predicting every pixel as foreground
        y = y0 - floor * plot_h
        for x0 in range(left, width - 20, 12):
            d.line([(x0, y), (min(x0 + 6, width - 20), y)], fill=(120, 120, 120), width=2)
        d.text((width - 190, y - 14), f"all foreground mIoU {100 * floor:.1f}", fill=(90, 90, 90), font=small)
    for i, r in enumerate(rows):
        x = left + 10 + i * group_w
        if r.status != "ok":
            d.text((x + 10, y0 - 20), "failed", fill=(200, 0, 0), font=normal)
        else:
            for j, (_, key, colour) in enumerate(series):
                value = getattr(r, key) or 0.0
                bx = x + j * (bar_w + 4)
                d.rectangle([bx, y0 - value * plot_h, bx + bar_w, y0], fill=colour)
                d.text((bx + 2, y0 - value * plot_h - 14), f"{100 * value:.1f}", fill="black", font=small)
        d.text((x, y0 + 6), r.display[:18], fill="black", font=small)
    lx = width - 150
    for j, (name, _, colour) in enumerate(series):  # legend
        d.rectangle([lx, 12 + j * 16, lx + 12, 24 + j * 16], fill=colour)
        d.text((lx + 18, 11 + j * 16), f"{name} (clean, %)", fill="black", font=small)
    save_image_atomic(img, path)


def write_grid(path: Path, rows: list[BenchRow], pictures: dict[str, dict], keys: list[tuple[str, int]]) -> None:
    """Rows = test frames; columns = frame, ground truth, each method's binary mask (red overlay)."""

    keys = [k for k in keys if any(k in p for p in pictures.values())]
    if not keys:
        log.warning("bench: no test frames to draw (every method failed?); %s not written", path)
        return
    grid, labels = [], []
    for key in keys:
        source = next(p[key] for p in pictures.values() if key in p)
        rgb = denormalize(source[0])
        tiles = [rgb, overlay(rgb, source[1].astype(np.float32), (40, 220, 40))]
        for r in rows:
            item = pictures.get(r.method, {}).get(key)
            if item is None:  # failed method: a grey tile
                tiles.append(np.full_like(rgb, 200))
            else:
                tiles.append(overlay(rgb, item[2]))
        grid.append(tiles)
        labels.append(f"{key[0]}#{key[1]}")
    tile = max(112, grid[0][0].shape[0])
    sheet = contact_sheet(grid, row_labels=labels, col_labels=["frame", "ground truth"] + [r.display for r in rows], tile=tile)
    save_image_atomic(sheet, path)
