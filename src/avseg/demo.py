"""The main job on the embedded default: synthetic S4 -> every PCAS stage (and, with ``methods`` naming it,
every WS-AVS stage) and the fully supervised reference -> evaluation on test and the listening evaluation
(``avseg.listening``) -> ``report.md``, overlay PNGs, ``listen_test.png`` (the weakly supervised model
under its own sound, a visible silent object's sound and silence), ``metrics.json`` and ``listening.json``
in the output folder.

Re-running continues where a previous run stopped (finished stages are skipped).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from avseg.config import to_dict
from avseg.data.avsbench import read_probability_png
from avseg.data.synthetic import generate
from avseg.data.validate import format_report, validate_dataset
from avseg.engine.evaluate import iterate_outputs
from avseg.engine.trainer import resolve_device
from avseg.fileio import atomic_write_bytes, write_text_atomic
from avseg.inference.preview import preview_sheet
from avseg.listening import listen_run
from avseg.methods import METHODS
from avseg.methods.common import make_dataset
from avseg.metrics.listening import format_table
from avseg.runner import RunError, build_config, evaluate_run, load_run, reuse_override, run_method
from avseg.visualize import contact_sheet, denormalize, overlay, save_image_atomic

log = logging.getLogger("avseg")


# 300 videos (180 training videos, 180 training masks) at 96 px: at 100 videos no model learned which object
# sounds (the supervised reference's audio dependence was 0.4 points); the frame size keeps it in minutes.
DEFAULT_VIDEOS, DEFAULT_SIZE = 300, 96
# The runs of the demo: PCAS (weak; its segmentation head hears the audio) and the fully supervised
# reference. WS-AVS (the paper's method) is deaf on these scenes -- its pseudo masks never hear the audio,
# docs/results/listening -- and its C2AM stage alone doubles the demo's time: ``methods`` adds it, and
# WS-AVS-AV (ours: WS-AVS's pseudo masks selected by an audio-visual map, which listens; with ws-avs in
# the same demo it reuses that run's C2AM, activation-map and saliency stages).
DEMO_METHODS = ("pcas", "supervised")
KNOWN_METHODS = ("ws-avs", "ws-avs-av", "pcas", "supervised")  # in this order in tables and pictures
WEAK_METHODS = ("ws-avs", "ws-avs-av", "pcas")
DISPLAY = {"ws-avs": "WS-AVS", "ws-avs-av": "WS-AVS-AV", "pcas": "PCAS", "supervised": "fully supervised reference"}
# Listening numbers kept in listening.json (avseg.metrics.listening.SUMMARY_KEYS + the swap frame count).
LISTEN_KEYS = ("miou_own", "fscore_own", "miou_other", "audio_dependence", "fpr_silence", "fpr_noise", "fpr_other",
               "g_miou", "swap_iou", "swap_frames", "deaf_ceiling")  # fmt: skip
# --quick: every stage runs, on 32 px frames for 1 epoch, so a smoke test takes seconds.
QUICK = {"image_size": 32, "epochs": 1, "batch_size": 4}


def run_demo(
    out: Path,
    videos: int | None = None,
    size: int | None = None,
    seed: int = 0,
    recipe: str = "demo",
    quick: bool = False,
    methods: tuple[str, ...] | list[str] = DEMO_METHODS,
) -> dict[str, Any]:
    """Run the demo into ``out``; returns the metrics written to ``out/metrics.json``.

    ``quick`` builds the recipes with image_size 32, 1 epoch and batch 4 for smoke tests (the numbers
    mean nothing then). A second call with the same arguments continues an interrupted demo.
    """

    unknown = sorted(set(methods) - set(KNOWN_METHODS))
    methods = tuple(m for m in KNOWN_METHODS if m in set(methods))
    weak = [m for m in methods if m in WEAK_METHODS]
    if unknown or "supervised" not in methods or not weak:
        raise RunError(f"demo methods: the supervised reference and at least one of {WEAK_METHODS}, among {KNOWN_METHODS}; got {sorted(methods)}")
    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data_root = out / "data" / "s4"
    demo: dict[str, Any] = {"videos": DEFAULT_VIDEOS if videos is None else videos, "size": DEFAULT_SIZE if size is None else size, "seed": seed}
    _ensure_data(data_root, demo)
    report = validate_dataset(data_root, "s4")
    log.info(format_report(report))
    if report["problems"]:
        raise RunError(f"the generated dataset in {data_root} does not validate: {report['problems'][:3]}")
    preview_sheet(data_root, "s4", "test", out / "preview.png")

    runs = {m: out / m for m in methods}
    stage_summaries: dict[str, Any] = {}
    for method, run_dir in runs.items():
        source = METHODS[method].reuses
        overrides = [reuse_override(runs[source])] if source in runs else []
        if quick:
            spec, cfg = build_config(method, f"{method}/{recipe}", str(data_root), "s4", quick={k: QUICK[k] for k in ("epochs", "batch_size")}, image_size=QUICK["image_size"], overrides=overrides)
        else:
            spec, cfg = build_config(method, f"{method}/{recipe}", str(data_root), "s4", image_size=demo["size"], overrides=overrides)
        _check_same_run(spec, cfg, run_dir)
        stage_summaries[method] = run_method(spec, cfg, run_dir, resume=True)

    results: dict[str, dict[str, Any]] = {}
    listening: dict[str, dict[str, Any]] = {}
    pictures: dict[str, dict[tuple[str, int], Any]] = {}
    for method, run_dir in runs.items():
        collected: dict[tuple[str, int], Any] = {}

        def keep(fo: Any, collected: dict = collected) -> None:
            if fo.gt is not None and len(collected) < 6 and fo.frame_number in (1, 3):
                collected[(fo.record.video_id, fo.frame_number)] = fo

        results[method] = {
            "clean": evaluate_run(run_dir, "test", "clean", keep=keep),
            "avsbench": evaluate_run(run_dir, "test", "avsbench"),
        }
        pictures[method] = collected
        listening[method] = listen_run(run_dir, "test", seed=seed)
    # pseudo masks (WS-AVS) / pseudo labels (PCAS, binary) against the training frames' ground truth
    pseudo = {m: (stage_summaries[m].get("pseudo-masks") or stage_summaries[m].get("pseudo-labels") or {}).get("quality", {}) for m in weak}
    seconds = round(time.perf_counter() - start, 1)
    # The listening numbers of every run (their full results: RUN/eval/listen-test.json).
    summary = {m: {k: r.get(k) for k in LISTEN_KEYS} for m, r in listening.items()}
    metrics = {
        **{m: {"miou": results[m]["clean"]["miou"], "fscore": results[m]["clean"]["fscore"]} for m in methods},
        "pseudo-masks": {m: {"miou": pseudo[m].get("binary_miou", pseudo[m].get("miou"))} for m in weak},
        "listening": {m: {k: summary[m][k] for k in ("audio_dependence", "fpr_silence", "fpr_noise", "swap_iou", "g_miou")} for m in methods},
        "protocol": "clean",
        "seconds": seconds,
    }
    write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2))
    write_text_atomic(out / "listening.json", json.dumps({"split": "test", "seed": seed, **summary}, indent=2))
    overlays = _write_overlays(out, runs, pictures)

    shown = _shown(methods)
    for method in methods:  # each model under its own sound, a silent object's sound and silence
        picture = listening[method].get("picture")
        if picture:
            name = "listen_test.png" if method == shown else f"listen_test_{method}.png"
            atomic_write_bytes(out / name, Path(picture).read_bytes())
    if quick:
        demo["quick"] = QUICK
    _write_report(out, metrics, results, stage_summaries, overlays, data_root, demo, listening)
    return metrics


def _ensure_data(data_root: Path, demo: dict[str, Any]) -> None:
    """Generate the synthetic data once; a later call must ask for the same data (else: an error)."""

    info_path = data_root / "synth_info.json"
    if info_path.is_file():
        info = json.loads(info_path.read_text())
        have = {"videos": info.get("num_videos"), "size": info.get("size"), "seed": info.get("seed")}
        if have != demo:
            raise RunError(f"{data_root} holds demo data generated with {have}, not {demo}: choose another --out or remove it")
        return
    if (data_root / "s4_meta_data.csv").is_file():
        raise RunError(f"{data_root} holds a dataset without synth_info.json: choose another --out or remove it")
    log.info("generating %d synthetic S4 videos at %d px into %s", demo["videos"], demo["size"], data_root)
    generate("s4", data_root, num_videos=demo["videos"], seed=demo["seed"], size=demo["size"])


def _check_same_run(spec: Any, cfg: Any, run_dir: Path) -> None:
    """Continuing a demo run is only right with the settings it started with."""

    if not (run_dir / "config.yaml").is_file():
        return
    saved_spec, saved = load_run(run_dir)
    a, b = to_dict(saved), to_dict(cfg)
    for d in (a["data"], b["data"]):
        d.pop("root")
        d.pop("classes", None)  # recorded by the run when it starts
    if saved_spec.name != spec.name or a != b:
        raise RunError(f"{run_dir} holds a run with other settings (e.g. a --quick run): choose another --out or remove it")


def _write_overlays(out: Path, runs: dict[str, Path], pictures: dict[str, dict]) -> list[str]:
    """overlays_test.png: frame | GT | each run's mask; overlays_train.png (with WS-AVS): frame | GT | pseudo | WS-AVS."""

    written = []
    methods = list(runs)
    colours = {"ws-avs": (255, 40, 40), "ws-avs-av": (220, 40, 220), "pcas": (255, 160, 0), "supervised": (40, 120, 255)}
    keys = [k for k in pictures[methods[0]] if all(k in pictures[m] for m in methods)]
    rows, labels = [], []
    for key in keys:
        first = pictures[methods[0]][key]
        rgb = denormalize(first.frame)
        rows.append([rgb, overlay(rgb, first.gt.astype(np.float32), (40, 220, 40))] + [overlay(rgb, pictures[m][key].output, colours[m]) for m in methods])
        labels.append(f"{key[0]}#{key[1]}")
    if rows:
        save_image_atomic(contact_sheet(rows, labels, ["frame", "ground truth"] + [DISPLAY[m] for m in methods]), out / "overlays_test.png")
        written.append("overlays_test.png")
    if "ws-avs" not in runs:
        return written

    # Training frames with ground truth (frame 1): the pseudo mask the segmenter learned from, and its output.
    spec, cfg = load_run(runs["ws-avs"])

    device = resolve_device("cpu")
    predictor = spec.load_predictor(cfg, runs["ws-avs"], device)
    train = make_dataset(cfg.data, "train", max_videos=6)
    rows, labels = [], []
    for fo in iterate_outputs(predictor.predict, train, device):
        if fo.gt is None:
            continue
        rgb = denormalize(fo.frame)
        pseudo_file = runs["ws-avs"] / "pseudo" / "masks" / fo.relpath(cfg.data.layout)
        pseudo = read_probability_png(pseudo_file)
        if pseudo.shape != rgb.shape[:2]:
            from PIL import Image

            pseudo = np.asarray(Image.fromarray((pseudo * 255).astype(np.uint8)).resize(rgb.shape[1::-1])) / 255.0
        rows.append([rgb, overlay(rgb, fo.gt.astype(np.float32), (40, 220, 40)), overlay(rgb, pseudo, (255, 200, 0)), overlay(rgb, fo.output)])
        labels.append(f"{fo.record.video_id}#{fo.frame_number}")
    if rows:
        save_image_atomic(contact_sheet(rows, labels, ["frame", "ground truth", "pseudo mask", "WS-AVS"]), out / "overlays_train.png")
        written.append("overlays_train.png")
    return written


def _fmt(x: Any) -> str:
    return "n/a" if x is None else f"{100 * float(x):.2f}"


def _write_report(out: Path, metrics: dict, results: dict, stages: dict, overlays: list[str], data_root: Path, demo: dict, listening: dict | None = None) -> None:
    methods = [m for m in KNOWN_METHODS if m in results]
    weak = [m for m in methods if m in WEAK_METHODS]
    sup = results["supervised"]
    best = max(weak, key=lambda m: results[m]["clean"]["miou"])
    ratio = results[best]["clean"]["miou"] / sup["clean"]["miou"] if sup["clean"]["miou"] else float("nan")
    supervision = {"ws-avs": "video labels", "ws-avs-av": "video labels", "pcas": "video labels", "supervised": "GT masks"}
    lines = [
        f"# avseg demo: {' and '.join(DISPLAY[m] for m in weak)} on the embedded synthetic S4 data",
        "",
        f"Data: {demo['videos']} synthetic S4 videos at {demo['size']} px in `{data_root}` (silent distractor objects in every frame).",
        *([f"**Quick smoke run** ({demo['quick']}): the numbers below say nothing about the methods.", ""] if demo.get("quick") else []),
        f"Total time: {metrics['seconds']} s.",
        "",
        "| model | supervision | mIoU (clean) | F (clean) | mIoU (avsbench) | F (avsbench) |",
        "|---|---|---|---|---|---|",
    ]
    for m in methods:
        r = results[m]
        lines.append(f"| {DISPLAY[m]} | {supervision[m]} | {_fmt(r['clean']['miou'])} | {_fmt(r['clean']['fscore'])} | {_fmt(r['avsbench']['miou'])} | {_fmt(r['avsbench']['fscore'])} |")
    for m in weak:
        what = "pseudo labels (binary)" if m == "pcas" else "pseudo masks"
        lines.append(f"| {DISPLAY[m]} {what} (train frames with GT) | - | {_fmt(metrics['pseudo-masks'][m]['miou'])} | - | - | - |")
    lines += [
        "",
        f"Weak / fully supervised mIoU ratio (clean, best weak model: {DISPLAY[best]}): **{ratio:.2f}**.",
        "",
        "The `clean` protocol is batch-independent; `avsbench` reproduces the official evaluation (20-frame batches).",
        "PCAS's pseudo labels mark only the classes its audio head hears, and its segmentation head adds",
        "log P(class sounds) to each class's logits, so its masks follow the sound. WS-AVS (`avseg demo --methods",
        "ws-avs,pcas,supervised`, about twice the time) does not listen on these scenes: its pseudo masks come from",
        "C2AM and a saliency detector, which never hear the audio and mark every salient object (docs/results/listening).",
        "WS-AVS-AV (`--methods ws-avs-av,...`, ours) keeps of those pseudo masks the objects an audio-visual map selects",
        "(EZ-VSL's contrast on pretrained aisfx sound features), so its segmenter learns from masks that follow the sound.",
        "",
        *(_listening_lines(listening, out) if listening else []),
        "## Stage times (s)",
        "",
        "| run | stage | seconds |",
        "|---|---|---|",
    ]
    for method, summaries in stages.items():
        for name, st in summaries.items():
            lines.append(f"| {method} | {name} | {st.get('seconds')} |")
    lines += ["", "## Pictures", "", "- `preview.png`: test videos, ground truth and spectrograms"]
    lines += [f"- `{name}`" for name in overlays]
    if (out / "listen_test.png").is_file():
        others = ", ".join(f"`listen_test_{m}.png`" for m in methods if (out / f"listen_test_{m}.png").is_file())
        lines += [f"- `listen_test.png`: {DISPLAY[_shown(methods)]} on test frames under their own sound, the sound of a visible silent object (outlined), and silence"
                  + (f"; {others}: the same frames for the other models" if others else "")]
    if "pcas" in methods:
        lines += ["- `pcas/pseudo/contact_sheet.png`: PCAS's pseudo labels"]
    if "ws-avs" in methods:
        lines += ["- `ws-avs/pseudo/contact_sheet.png`: frame / C2AM map / saliency / pseudo mask / ground truth"]
    if "ws-avs-av" in methods:
        lines += ["- `ws-avs-av/pseudo/contact_sheet.png`: frame / C2AM map / saliency / AV map / Eq. 6 mask / audio-selected / ground truth"]
    lines += [""]
    write_text_atomic(out / "report.md", "\n".join(lines))


def _shown(methods: list[str] | tuple[str, ...]) -> str:
    """The weak model whose listening picture is ``listen_test.png``: PCAS when it ran."""
    return "pcas" if "pcas" in methods else next(m for m in methods if m in WEAK_METHODS)


def _listening_lines(listening: dict, out: Path) -> list[str]:
    """The report's listening section: one table row per run, and the weak model's picture."""

    names = DISPLAY
    ws = listening.get(_shown(list(listening)), {})
    lines = [
        "## Does the model listen?",
        "",
        f"`avseg listen` on the test split (seed {ws.get('seed', 0)}): the same frames with their own sound, silence, white noise at the "
        "clip's loudness, another test video's sound (another category), and the sound of a visible silent object. Values in %; "
        "audio dependence = mIoU(own) - mIoU(other) in points (0 for a model that ignores the sound); FPR = pixels marked "
        "(0 is right); swap IoU = the mask under a silent object's sound against that object; deaf ceiling = marking every "
        "visible object (the best a model that does not listen can do here).",
        "",
        format_table({names.get(m, m): r for m, r in listening.items()}, title="model"),
        "",
    ]
    if (out / "listen_test.png").is_file():
        lines += [f"![{names[_shown(list(listening))]} under its own sound, a silent object's sound and silence](listen_test.png)", "",
                  "Columns: frame | own sound (ground truth outlined in green) | sound of a visible silent object "
                  "(that object outlined in cyan) | silence; the predicted mask in red.", ""]  # fmt: skip
    return lines
