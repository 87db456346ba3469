"""``avseg bench`` on tiny data: tables, chart and grid are written, and a failing method is a row of the
table (status, stage, error), not a crash and not a hole."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from avseg.bench import BASE_CHOICE, MODEL_CHOICE, SILENCE_CHOICE, resolve_methods, run_bench, split_overrides
from avseg.cli import build_parser
from avseg.methods import METHODS
from avseg.runner import RunError

SIZE = 32
TINY = [f"{name}:{o}" for name, spec in METHODS.items() for o in spec.tiny]  # every method's tiny models
if importlib.util.find_spec("efficientnet_lite_pytorch") is None:
    TINY.append("ez-vsl:ogl=false")
QUICK = {"epochs": 1, "max_steps": 2, "batch_size": 2, "device": "cpu"}


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_bench_writes_table_chart_grid_and_reports_failures(synth_s4: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    # avs-ws is made to fail inside its training stage (frames below the dataset's 8 px minimum).
    overrides = TINY + ["avs-ws:data.image_size=4"]
    rows = run_bench(synth_s4, "s4", ["cam", "c2am", "ez-vsl", "avs-ws"], out, quick=QUICK, image_size=SIZE, overrides=overrides, device="cpu", grid_rows=3)
    status = {r.method: r for r in rows}
    assert [r.method for r in rows] == ["cam", "c2am", "ez-vsl", "avs-ws"]
    for m in ("cam", "c2am", "ez-vsl"):
        r = status[m]
        assert r.status == "ok", r.error
        for value in (r.miou_clean, r.fscore_clean, r.miou_avsbench, r.fscore_avsbench, r.ciou_ap50, r.auc):
            assert value is not None and 0.0 <= value <= 1.0
        assert r.train_seconds is not None and (out / m / "eval" / "test-heatmap.json").is_file()
        assert (out / m / "eval" / "test-clean.json").is_file() and (out / m / "eval" / "test-avsbench.json").is_file()
    marker = json.loads((out / "cam" / "stages" / "threshold.json").read_text())  # cam/demo: threshold_from: val
    assert status["cam"].chosen_thresholds == {"heat map": {"value": marker["threshold"], "val_miou": marker["miou"]}}
    assert not status["c2am"].chosen_thresholds
    failed = status["avs-ws"]
    assert failed.status == "failed" and failed.failed_stage == "train/segmenter"
    assert "image_size" in failed.error and (out / "avs-ws" / "bench-error.txt").is_file()

    table = read_csv(out / "results.csv")
    assert [r["method"] for r in table] == ["cam", "c2am", "ez-vsl", "avs-ws", "all foreground", "all background"]
    assert table[4]["status"] == table[5]["status"] == "baseline"
    assert table[3]["status"] == "failed" and "image_size" in table[3]["error"] and table[3]["miou_clean"] == ""
    assert float(table[0]["paper_miou"]) == pytest.approx(0.1926)
    md = (out / "results.md").read_text()
    assert "*all foreground* (constant)" in md and "| AVS (ws) |" in md and "**failed** (train/segmenter)" in md and "## Failed" in md and "## Order" in md
    assert f"- CAM: heat map {marker['threshold']:.2f} (validation mIoU" in md
    assert (out / "results.json").is_file()

    chart = Image.open(out / "chart.png")
    assert chart.size[0] > 300 and chart.size[1] > 200
    grid = Image.open(out / "grid.png")
    tile, pad = 112, 4
    assert grid.size[0] >= 6 * (tile + pad)  # frame, ground truth + 4 methods (the failed one greyed)
    assert grid.size[1] >= 3 * (tile + pad)  # 3 test frames

    # A rerun into the same folder continues: finished stages are skipped, results are rewritten.
    again = run_bench(synth_s4, "s4", ["cam"], out, quick=QUICK, image_size=SIZE, overrides=TINY, device="cpu", grid_rows=3)
    assert again[0].status == "ok" and again[0].miou_clean == pytest.approx(status["cam"].miou_clean)
    # ... but never mixes settings: other settings in an existing run folder fail that method.
    other = run_bench(synth_s4, "s4", ["cam"], out, quick=QUICK, image_size=SIZE, overrides=TINY + ["cam:threshold=0.4"], device="cpu", grid_rows=3)
    assert other[0].status == "failed" and "other settings" in other[0].error


def test_bench_cli(synth_s4: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    parser = build_parser()
    out = tmp_path / "cli"
    argv = ["bench", "--data", str(synth_s4), "--layout", "s4", "--methods", "cam", "--out", str(out), "--quick",
            "--batch-size", "2", "--image-size", str(SIZE), "--device", "cpu", "--grid-rows", "2"]  # fmt: skip
    for item in TINY:
        argv += ["--set", item]
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "| CAM |" in printed and "avseg bench --data" in printed
    assert {"results.md", "results.csv", "chart.png", "grid.png"} <= {p.name for p in out.iterdir()}


def test_trivial_baselines(synth_s4: Path) -> None:
    """Hand-checkable: all background scores IoU 1 exactly on empty-GT frames, all foreground the GT area."""
    from avseg.bench import trivial_baselines
    from avseg.data.avsbench import read_mask
    from avseg.data.index import index_videos

    masks = [read_mask(p, "s4") for r in index_videos(synth_s4, "s4", "test") for p in r.mask_paths if p is not None]
    fg, bg = trivial_baselines(synth_s4, "s4")
    assert fg["name"] == "all foreground" and bg["name"] == "all background"
    assert fg["miou_clean"] == pytest.approx(float(np.mean([m.mean() if m.any() else 0.0 for m in masks])))
    assert bg["miou_clean"] == pytest.approx(float(np.mean([0.0 if m.any() else 1.0 for m in masks])))
    # the F sweep starts at threshold 0 (probs >= 0: every pixel), so any output's F >= all-foreground F
    assert bg["fscore_clean"] == pytest.approx(fg["fscore_clean"]) and fg["frames"] == len(masks)


def test_resolve_methods_and_overrides() -> None:
    from avseg.methods import METHODS

    names = resolve_methods("all")
    assert names[:5] == ["avs-ws", "cam", "ez-vsl", "c2am", "ws-avs"]
    assert {"ws-avs-av", "supervised", "pcas"} <= set(names)
    assert set(names) == set(METHODS)  # every registered method, PCAS on its binary output
    assert resolve_methods("cam, ez-vsl") == ["cam", "ez-vsl"]
    with pytest.raises(RunError, match="unknown"):
        resolve_methods("cam,nope")
    with pytest.raises(RunError, match="twice"):
        resolve_methods("cam,cam")
    assert split_overrides(["a=1", "cam:b=2"], ["cam", "c2am"]) == {"cam": ["a=1", "b=2"], "c2am": ["a=1"]}
    assert split_overrides(["ws-avs:b=2"], ["cam"]) == {"cam": []}  # registered, not benchmarked: ignored
    with pytest.raises(RunError, match="not registered"):
        split_overrides(["nope:b=2"], ["cam"])


WS_TINY = list(METHODS["ws-avs"].tiny)


def test_bench_shares_ws_avs_stages(synth_s4: Path, tmp_path: Path) -> None:
    """c2am and ws-avs-av take C2AM (and saliency) from the bench's ws-avs run: trained once, identical."""
    out = tmp_path / "bench"
    overrides = [f"{name}:{o}" for name in ("c2am", "ws-avs", "ws-avs-av") for o in METHODS[name].tiny]
    rows = run_bench(synth_s4, "s4", ["c2am", "ws-avs-av", "ws-avs"], out, quick=QUICK, image_size=SIZE, overrides=overrides, device="cpu", grid_rows=2)
    assert [r.method for r in rows] == ["c2am", "ws-avs-av", "ws-avs"]  # table order = the order asked for
    row = {r.method: r for r in rows}
    assert all(r.status == "ok" for r in rows), [r.error for r in rows]
    assert set(row["c2am"].reused_stages) == {"c2am", "activation-maps"}
    assert set(row["ws-avs-av"].reused_stages) == {"c2am", "activation-maps", "saliency"}
    assert not row["ws-avs"].reused_stages
    source = (out / "ws-avs" / "c2am" / "last.safetensors").read_bytes()
    assert (out / "c2am" / "c2am" / "last.safetensors").read_bytes() == source
    assert (out / "ws-avs-av" / "c2am" / "last.safetensors").read_bytes() == source
    # the shared stages' time counts for every method that uses them
    assert row["c2am"].stage_seconds["c2am"] == pytest.approx(row["ws-avs"].stage_seconds["c2am"])
    assert row["ws-avs-av"].pseudo_miou is not None and row["ws-avs-av"].pseudo_miou_eq6 is not None
    marker = json.loads((out / "ws-avs-av" / "stages" / "pseudo-masks.json").read_text())  # ws-avs-av/demo: from val, the mean of 3 models
    choice, models = marker["av_threshold_choice"], marker["av_model_choice"]
    assert models["combine"] == "mean" and models["chosen"] is None and len(models["miou"]) == 3
    silence = marker["silence_choice"]  # ws-avs-av/demo: the quiet seconds' masks kept or emptied by validation
    assert silence["miou"]["emptied" if silence["emptied"] else "kept"] == choice["miou"]
    # ws-avs-av/demo: a segmenter on each pseudo-mask base, the better on validation kept; the bench names the kept one's choices
    segmenter = json.loads((out / "ws-avs-av" / "stages" / "segmenter.json").read_text())["refinement_choice"]
    kept = segmenter["chosen"]
    if kept == "c2am":
        alone, score = marker["c2am_alone"], marker["refinement_choice"]["miou"]["c2am"]
        expected = {"av_threshold": {"value": alone["av_threshold"], "val_miou": score},
                    SILENCE_CHOICE: {"value": float(marker["refinement_choice"]["quiet_emptied"]["c2am"]), "val_miou": score}}  # fmt: skip
    else:
        expected = {"av_threshold": {"value": choice["threshold"], "val_miou": choice["miou"]}, SILENCE_CHOICE: {"value": float(silence["emptied"]), "val_miou": choice["miou"]}}
    expected[BASE_CHOICE] = {"value": float(kept == "c2am"), "val_miou": segmenter["val_miou"][kept]}
    assert row["ws-avs-av"].pseudo_miou == (marker["c2am_alone"] if kept == "c2am" else marker)["quality"]["miou"]  # the kept segmenter's masks
    assert row["ws-avs-av"].chosen_thresholds == expected  # no single model kept (the mean of three)
    assert "(shared)" in (out / "results.md").read_text()


def test_chosen_thresholds_name_the_kept_audio_visual_model(tmp_path: Path) -> None:
    from avseg.bench import BenchRow, chosen_thresholds, write_results

    pseudo = {"av_threshold_choice": {"threshold": 0.55, "miou": 0.41},
              "av_model_choice": {"chosen": 2, "miou": [0.30, 0.38, 0.41], "thresholds": [0.5, 0.6, 0.55]}}  # fmt: skip
    chosen = chosen_thresholds({"pseudo-masks": pseudo})
    assert chosen == {"av_threshold": {"value": 0.55, "val_miou": 0.41}, MODEL_CHOICE: {"value": 2.0, "val_miou": 0.41}}
    assert chosen_thresholds({"pseudo-masks": {**pseudo, "av_model_choice": None}}) == {"av_threshold": {"value": 0.55, "val_miou": 0.41}}
    baselines = [{"name": "all foreground", "miou_clean": 0.03, "fscore_clean": 0.04, "miou_avsbench": 0.03, "fscore_avsbench": 0.04, "empty_gt_frames": 0, "frames": 10}]
    row = BenchRow(method="ws-avs-av", display="WS-AVS-AV", status="ok", miou_clean=0.4, chosen_thresholds=chosen)
    write_results(tmp_path, [row], data=tmp_path, layout="s4", recipe="demo", command=None, seconds=1.0, baselines=baselines, deaf={"miou_clean": 0.4, "frames": 10})
    assert "- WS-AVS-AV: av_threshold 0.55 (validation mIoU 41.00), audio-visual model 2 (validation mIoU 41.00)" in (tmp_path / "results.md").read_text()
    both = chosen_thresholds({"pseudo-masks": {**pseudo, "refinement_choice": {"chosen": "c2am", "miou": {"saliency": 0.39, "c2am": 0.41}},
                                               "silence_choice": {"emptied": True, "miou": {"kept": 0.35, "emptied": 0.41}}}})  # fmt: skip
    assert both[BASE_CHOICE] == {"value": 1.0, "val_miou": 0.41} and both[SILENCE_CHOICE] == {"value": 1.0, "val_miou": 0.41}
    row = BenchRow(method="ws-avs-av", display="WS-AVS-AV", status="ok", miou_clean=0.4, chosen_thresholds=both)
    write_results(tmp_path, [row], data=tmp_path, layout="s4", recipe="demo", command=None, seconds=1.0, baselines=baselines, deaf={"miou_clean": 0.4, "frames": 10})
    assert "pseudo-mask base C2AM alone (validation mIoU 41.00), quiet frames emptied (validation mIoU 41.00)" in (tmp_path / "results.md").read_text()
    # refinement_from: segmenter: the pseudo-mask stage wrote both bases, the segmenter stage kept the C2AM-alone one
    pseudo_both = {**pseudo, "refinement_choice": {"chosen": None, "miou": {"saliency": 0.41, "c2am": 0.39}, "quiet_emptied": {"saliency": True, "c2am": False}},
                   "silence_choice": {"emptied": True, "miou": {"kept": 0.35, "emptied": 0.41}}, "c2am_alone": {"av_threshold": 0.7, "av_model": 1}}  # fmt: skip
    by_segmenter = chosen_thresholds({"pseudo-masks": pseudo_both, "segmenter": {"refinement_choice": {"chosen": "c2am", "val_miou": {"saliency": 0.30, "c2am": 0.33}}}})
    assert by_segmenter == {"av_threshold": {"value": 0.7, "val_miou": 0.39}, MODEL_CHOICE: {"value": 1.0, "val_miou": 0.39},
                            BASE_CHOICE: {"value": 1.0, "val_miou": 0.33}, SILENCE_CHOICE: {"value": 0.0, "val_miou": 0.39}}  # fmt: skip
    eq6_kept = chosen_thresholds({"pseudo-masks": pseudo_both, "segmenter": {"refinement_choice": {"chosen": "saliency", "val_miou": {"saliency": 0.34, "c2am": 0.33}}}})
    assert eq6_kept == {"av_threshold": {"value": 0.55, "val_miou": 0.41}, MODEL_CHOICE: {"value": 2.0, "val_miou": 0.41},
                        BASE_CHOICE: {"value": 0.0, "val_miou": 0.34}, SILENCE_CHOICE: {"value": 1.0, "val_miou": 0.41}}  # fmt: skip


def test_reuse_refuses_other_settings(synth_s4: Path, tmp_path: Path) -> None:
    from avseg.methods.c2am import reuse_problem
    from avseg.runner import build_config, run_method

    ws_dir = tmp_path / "ws-avs"
    spec, cfg = build_config("ws-avs", "ws-avs/demo", str(synth_s4), "s4", QUICK, SIZE, WS_TINY)
    run_method(spec, cfg, ws_dir, only=["c2am"])
    base = ["c2am_visual=tiny", "c2am_weights=none", "c2am_level=2", f"reuse_run={ws_dir}"]
    _, same = build_config("c2am", "c2am/demo", str(synth_s4), "s4", QUICK, SIZE, base)
    assert reuse_problem(ws_dir, "c2am", same) is None
    assert "activation-maps" in reuse_problem(ws_dir, "activation-maps", same)  # not finished there
    _, other = build_config("c2am", "c2am/demo", str(synth_s4), "s4", QUICK, SIZE, base + ["c2am_level=1"])
    assert "c2am_level differs" in reuse_problem(ws_dir, "c2am", other)
    # c2am_border changes the maps, not the trained C2AM: the training is shared, the maps are not
    _, border = build_config("c2am", "c2am/demo", str(synth_s4), "s4", QUICK, SIZE, base + ["c2am_border=0"])  # the recipes say 1
    assert reuse_problem(ws_dir, "c2am", border) is None
    run_method(spec, cfg, ws_dir, resume=True, only=["c2am", "activation-maps"])
    assert reuse_problem(ws_dir, "activation-maps", same) is None
    assert "c2am_border differs" in reuse_problem(ws_dir, "activation-maps", border)
    # C2AM never reads audio: another audio front-end does not block reuse; another image size does
    _, other_audio = build_config("c2am", "c2am/demo", str(synth_s4), "s4", QUICK, SIZE, base + ["data.audio_frontend=aisfx-logmel", "data.audio_window=clip"])
    assert reuse_problem(ws_dir, "c2am", other_audio) is None
    _, other_size = build_config("c2am", "c2am/demo", str(synth_s4), "s4", QUICK, SIZE + 8, base)
    assert "data differs" in reuse_problem(ws_dir, "c2am", other_size)
    summaries = run_method(*build_config("c2am", "c2am/demo", str(synth_s4), "s4", QUICK, SIZE, base + ["c2am_level=1"]), tmp_path / "c2am")
    assert "reused_from" not in summaries["c2am"]  # trained here instead


def test_bench_reports_listening_columns_and_the_deaf_ceiling(synth_s4: Path, tmp_path: Path) -> None:
    out = tmp_path / "listen"
    rows = run_bench(synth_s4, "s4", ["cam"], out, quick=QUICK, image_size=SIZE, overrides=TINY, device="cpu", grid_rows=2)
    r = rows[0]
    assert r.status == "ok", r.error
    assert r.audio_dependence == 0.0  # CAM sees only the image: deaf by construction
    for value in (r.fpr_silence, r.fpr_noise, r.g_miou, r.swap_iou):
        assert value is not None and 0.0 <= value <= 1.0
    assert (out / "cam" / "eval" / "listen-test.json").is_file()
    table = read_csv(out / "results.csv")
    assert table[0]["audio_dependence"] == "0.0" and table[0]["swap_iou"] != ""
    md = (out / "results.md").read_text()
    assert "| audio dep. | FPR silence | FPR noise | swap IoU | G-mIoU |" in md
    assert "*every visible object* (deaf ceiling)" in md and "Deaf ceiling:" in md


def test_bench_on_avss_scores_every_method_as_binary_masks(tmp_path: Path) -> None:
    """AVSS: the binary methods train on the union of the sounding objects, PCAS's class maps are scored by
    their foreground probability, all in one table with the constants and the deaf ceiling."""
    from avseg.data.synthetic import generate
    from avseg.runner import evaluate_run

    data = tmp_path / "avss"
    generate("avss", data, num_videos=12, seed=0, size=SIZE)
    out = tmp_path / "bench"
    rows = run_bench(data, "avss", ["cam", "pcas"], out, quick=QUICK, image_size=SIZE, overrides=TINY, device="cpu", grid_rows=2)
    assert [r.status for r in rows] == ["ok", "ok"], [r.error for r in rows]
    pcas = rows[1]
    semantic = evaluate_run(out / "pcas", "test", "clean", device="cpu")
    binary = json.loads((out / "pcas" / "eval" / "test-clean-binary.json").read_text())
    assert semantic["scoring"] == "semantic" and binary["scoring"] == "binary"
    assert pcas.miou_clean == pytest.approx(binary["miou"]) and binary["frames"] == semantic["frames"]
    assert pcas.swap_iou is not None and rows[0].audio_dependence == 0.0
    md = (out / "results.md").read_text()
    assert "# Bench: avss (avss)" in md and "*every visible object* (deaf ceiling)" in md and "*all foreground* (constant)" in md
    assert (out / "grid.png").is_file()


def test_same_config_counts_a_new_setting_at_its_default(synth_s4: Path, tmp_path: Path) -> None:
    """A run trained before a setting existed (its config.yaml lacks the key) is the same run as one built now
    with that setting at its default; any other value differs."""
    from avseg.bench import _same_config
    from avseg.config import dump_yaml, to_dict
    from avseg.runner import build_config

    spec, cfg = build_config("ez-vsl", "ez-vsl/demo", str(synth_s4), "s4")
    saved = {"method": "ez-vsl", **to_dict(cfg)}
    saved.pop("label_negatives")
    run = tmp_path / "ez-vsl"
    run.mkdir()
    (run / "config.yaml").write_text(dump_yaml(saved))
    assert _same_config(run, "ez-vsl", cfg)
    cfg.label_negatives = True
    assert not _same_config(run, "ez-vsl", cfg)
    assert not _same_config(run, "cam", cfg)


def _fake_bench(folder: Path, rows: list, ceiling: float = 0.405) -> Path:
    from avseg.bench import BenchRow, write_results

    baselines = [{"name": "all foreground", "miou_clean": 0.03, "fscore_clean": 0.04, "miou_avsbench": 0.03, "fscore_avsbench": 0.04, "empty_gt_frames": 0, "frames": 10}]
    bench_rows = [BenchRow(method=m, display=m.upper(), status=status, miou_clean=miou, fscore_clean=0.5, audio_dependence=dep,
                           fpr_silence=0.01, fpr_noise=0.02, swap_iou=0.3, g_miou=0.4, error="" if status == "ok" else "boom",
                           chosen_thresholds={"heat map": {"value": 0.6 + miou, "val_miou": 0.2}} if m == "cam" and miou is not None else {})
                  for m, status, miou, dep in rows]  # fmt: skip
    folder.mkdir(parents=True)
    write_results(folder, bench_rows, data=folder, layout="s4", recipe="demo", command=None, seconds=1.0,
                  baselines=baselines, deaf={"miou_clean": ceiling, "frames": 10})  # fmt: skip
    return folder


def test_bench_summary_means_over_seeds_and_refuses_other_data(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from avseg.bench import summarize_benches

    a = _fake_bench(tmp_path / "s0", [("pcas", "ok", 0.30, 27.0), ("cam", "ok", 0.10, 0.0)])
    b = _fake_bench(tmp_path / "s1", [("pcas", "ok", 0.20, 13.0), ("cam", "failed", None, None)])
    c = _fake_bench(tmp_path / "s2", [("pcas", "ok", 0.25, 20.0), ("cam", "ok", 0.12, 0.0)])
    summary = summarize_benches([a, b, c])
    pcas, cam = summary["methods"]
    assert pcas["n"] == 3 and pcas["columns"]["miou_clean"]["mean"] == pytest.approx(25.0)
    assert pcas["columns"]["miou_clean"]["sd"] == pytest.approx(5.0)  # sample sd of 30, 20, 25
    assert pcas["columns"]["audio_dependence"]["values"] == [27.0, 13.0, 20.0]
    assert cam["n"] == 2 and cam["columns"]["miou_clean"]["mean"] == pytest.approx(11.0)  # the failed seed is not counted
    assert len(summary["failed"]) == 1 and "CAM" in summary["failed"][0] and "boom" in summary["failed"][0]
    assert summary["deaf_ceiling"] == pytest.approx(40.5)

    out = tmp_path / "summary"
    args = build_parser().parse_args(["bench-summary", str(a), str(b), str(c), "--out", str(out)])
    assert args.func(args) == 0
    md = (out / "summary.md").read_text()
    assert "| PCAS |  | 3 | 25.0 ± 5.0 | 50.0 ± 0.0 | +20.0 ± 7.0 |" in md
    assert "*every visible object* (deaf ceiling) | - | - | 40.5 |" in md and "## Failed rows" in md
    assert cam["thresholds"] == {"heat map": pytest.approx([0.7, 0.72])} and "- CAM: heat map 0.70, 0.72" in md  # the seeds that finished
    assert (out / "summary.json").is_file() and "bench-summary" in capsys.readouterr().out

    other = _fake_bench(tmp_path / "other", [("pcas", "ok", 0.3, 1.0)], ceiling=0.5)
    with pytest.raises(RunError, match="same test frames"):
        summarize_benches([a, other])
    with pytest.raises(RunError, match="no results.json"):
        summarize_benches([a, tmp_path / "missing"])
    # Benches of one dataset per seed (--across-data): the constants and the deaf ceiling are averaged too.
    both = summarize_benches([a, other], across_data=True)
    assert both["deaf_ceiling"] == pytest.approx(45.25) and both["deaf_ceiling_values"] == pytest.approx([40.5, 50.0])
    assert both["methods"][0]["columns"]["miou_clean"]["values"] == pytest.approx([30.0, 30.0])
    args = build_parser().parse_args(["bench-summary", str(a), str(other), "--out", str(tmp_path / "across"), "--across-data"])
    assert args.func(args) == 0
    md = (tmp_path / "across" / "summary.md").read_text()
    assert "--across-data" in md and "| *every visible object* (deaf ceiling) | 40.5, 50.0 | - | 0.0 |" in md
