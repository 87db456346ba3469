"""Reference methods (avs-ws, cam, ez-vsl, c2am) and ws-avs-av: each trains for a couple of steps on tiny
synthetic data through the runner, and its outputs (files, shapes, ranges) are checked. Plus the pieces
with exact answers: the threshold calibration, class pooling, connected components, the audio selection,
and the recipes (valid, and in sync with ws-avs where they share its settings)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from avseg.config import load_yaml
from avseg.methods import METHODS
from avseg.runner import RECIPES, build_config, evaluate_run, load_run, run_method

SIZE = 32
HAVE_EFFICIENTNET = importlib.util.find_spec("efficientnet_lite_pytorch") is not None

# Every binary-mask method of the registry (PCAS, semantic, has tests/test_pcas.py), with its tiny models.
BINARY_METHODS = [name for name, spec in METHODS.items() if spec.output == "binary"]
TINY = {name: list(spec.tiny) + (["ogl=false"] if name == "ez-vsl" and not HAVE_EFFICIENTNET else []) for name, spec in METHODS.items()}
QUICK = {"epochs": 1, "max_steps": 2, "batch_size": 2, "device": "cpu"}
HEATMAP_METHODS = {"cam", "ez-vsl", "c2am"}


def train_tiny(method: str, root: Path, run_dir: Path, layout: str = "s4", extra: tuple[str, ...] = ()) -> dict:
    spec, cfg = build_config(method, f"{method}/demo", str(root), layout, QUICK, SIZE, [*TINY[method], *extra])
    return run_method(spec, cfg, run_dir)


@pytest.mark.parametrize("name", list(METHODS))
def test_registry_contract(name: str, synth_s4: Path) -> None:
    """What every MethodSpec promises: its file is named as its key, its final stage is one of its stages,
    its reuse source is registered, and its tiny overrides (and its shipped recipes) build a valid config."""
    import avseg.methods as methods_package

    spec = METHODS[name]
    assert spec.name == name and spec.output in ("binary", "semantic") and spec.display and spec.tiny
    module = Path(methods_package.__file__).parent / name.replace("-", "_")
    assert module.with_suffix(".py").is_file() or (module / "__init__.py").is_file()  # a module or a package
    assert spec.reuses is None or spec.reuses in METHODS
    assert all(layout in ("s4", "ms3") and len(figures) == 2 for layout, figures in spec.paper.items())
    layout = "s4" if spec.output == "binary" else "avss"
    _, cfg = build_config(name, f"{name}/demo", str(synth_s4), layout, QUICK, SIZE, TINY[name])
    stages = [s.name for s in spec.stages(cfg)]
    assert spec.final_stage in stages and spec.pseudo_stages(cfg) == stages[: stages.index(spec.final_stage)]


@pytest.mark.parametrize("method", BINARY_METHODS)
def test_method_trains_and_predicts(method: str, synth_s4: Path, tmp_path: Path) -> None:
    from avseg.data.avsbench import collate_videos
    from avseg.methods.common import make_dataset

    run_dir = tmp_path / method
    summaries = train_tiny(method, synth_s4, run_dir)
    spec, cfg = load_run(run_dir)
    assert [s.name for s in spec.stages(cfg)] == list(summaries)
    for stage in spec.stages(cfg):
        assert stage.is_done(run_dir), stage.name
    assert (run_dir / "config.yaml").is_file()

    predictor = spec.load_predictor(cfg, run_dir, torch.device("cpu"))
    test = make_dataset(cfg.data, "test")
    batch = collate_videos([test[0], test[1]])
    probs = predictor.predict(batch)
    assert probs.shape == (2, 5, SIZE, SIZE)
    assert torch.isfinite(probs).all() and probs.min() >= 0 and probs.max() <= 1
    if method in HEATMAP_METHODS:
        heat = predictor.heatmap(batch)
        assert heat.shape == probs.shape and heat.min() >= 0 and heat.max() <= 1
        # the documented rule: mask = heat map > threshold, and predict() > 0.5 is exactly that mask
        threshold = cfg.c2am_threshold if method == "c2am" else predictor.threshold  # the recipe's, or chosen on validation
        assert torch.equal(probs > 0.5, heat > threshold)

    result = evaluate_run(run_dir, "test", "clean", device="cpu")
    assert 0.0 <= result["miou"] <= 1.0 and 0.0 <= result["fscore"] <= 1.0
    assert (run_dir / "eval" / "test-clean.json").is_file()


def test_ws_avs_av_pseudo_masks_are_audio_selected(synth_s4: Path, tmp_path: Path) -> None:
    from avseg.data.avsbench import read_probability_png
    from avseg.data.index import index_videos
    from avseg.data.layout import prediction_relpath

    run_dir = tmp_path / "ws-avs-av"
    summaries = train_tiny("ws-avs-av", synth_s4, run_dir, extra=("pseudo_crf=false", "pseudo_crf_from=config"))  # the CRF may grow a mask past Eq. 6
    assert list(summaries) == ["c2am", "activation-maps", "saliency", "av-model", "pseudo-masks", "segmenter"]
    pseudo = summaries["pseudo-masks"]
    assert set(pseudo["quality"]) >= {"miou", "fscore"} and set(pseudo["quality_eq6"]) >= {"miou", "fscore"}
    assert 0.0 <= pseudo["area_kept"] <= pseudo["area_eq6"] <= 1.0
    assert (run_dir / "pseudo" / "manifest.json").is_file() and (run_dir / "pseudo" / "contact_sheet.png").is_file()
    for record in index_videos(synth_s4, "s4", "train"):
        for k in record.frame_numbers:
            rel = prediction_relpath("s4", "train", record.category, record.video_id, k)
            kept = read_probability_png(run_dir / "pseudo" / "masks" / rel) > 0.5
            eq6 = read_probability_png(run_dir / "pseudo" / "eq6" / rel) > 0.5
            assert (run_dir / "pseudo" / "av-maps" / rel).is_file()
            assert not (kept & ~eq6).any()  # the selection only removes regions
    # `avseg pseudo --from activation-maps` reruns what reads the maps; the audio-visual model reads only
    # frames and audio (Stage.reads), so it is kept, and the segmenter (outside the pseudo stages) goes stale.
    from avseg.cli import main

    def written() -> dict[str, int]:
        return {p.stem: p.stat().st_mtime_ns for p in (run_dir / "stages").glob("*.json")}

    before, av_weights = written(), (run_dir / "av-model" / "last.safetensors").stat().st_mtime_ns
    time.sleep(0.01)
    assert main(["pseudo", "--run", str(run_dir), "--from", "activation-maps"]) == 0
    after = written()
    assert after["c2am"] == before["c2am"] and after["av-model"] == before["av-model"]
    assert (run_dir / "av-model" / "last.safetensors").stat().st_mtime_ns == av_weights
    for name in ("activation-maps", "saliency", "pseudo-masks", "segmenter"):
        assert after[name] > before[name], f"{name} was not rerun / marked stale"
    assert load_yaml(run_dir / "stages" / "segmenter.json")["stale"] is True
    # --force reruns every pseudo stage, the audio-visual model included
    time.sleep(0.01)
    assert main(["pseudo", "--run", str(run_dir), "--force"]) == 0
    assert written()["av-model"] > after["av-model"]


def test_sweep_selection_scores_each_threshold() -> None:
    """Constructed frames whose best selection threshold is known, for both selection modes."""
    from avseg.methods.common import best_threshold
    from avseg.methods.ws_avs_av import sweep_selection

    sim = torch.linspace(0, 1, 20).view(1, 1, 20).expand(2, 20, 20).contiguous()  # columns 0..1, left to right
    eq6 = torch.ones(2, 20, 20, dtype=torch.bool)
    eq6[1, :, :10] = False  # frame 1's Eq. 6 mask: the right half only
    gts = sim > 0.72  # the 6 rightmost columns (14/19 = 0.737 ... 1)
    grid = (0.5, 0.6, 0.7, 0.75, 0.8)
    sweep = sweep_selection(eq6, sim, None, gts, "pixels", False, grid)
    # pixels: t = 0.7 keeps columns 14-19 in both frames (= the GT), 0.75 columns 15-19, 0.5 columns 10-19
    assert sweep[0.7] == pytest.approx(2.0) and sweep[0.75] == pytest.approx(2 * 5 / 6) and sweep[0.5] == pytest.approx(2 * 6 / 10)
    assert best_threshold({t: v / 2 for t, v in sweep.items()}) == 0.7
    # components (no proposals): frame 0 is one region, mean sim 0.5; frame 1 one region, mean 145/190 = 0.763
    comp = sweep_selection(eq6, sim, None, gts, "components", False, (0.45, 0.6, 0.8))
    iou0, iou1 = 6 / 20, 6 / 10
    assert comp[0.45] == pytest.approx(iou0 + iou1) and comp[0.6] == pytest.approx(iou1) and comp[0.8] == pytest.approx(0.0)


def load_selection_inputs(run_dir: Path) -> tuple:
    """A ws-avs-av run's config and what its audio selection reads besides the audio-visual models: the C2AM
    net, the training frames' polarity (flip) and the saliency net (eval mode, on the CPU)."""
    from avseg.engine.checkpoint import load_model_weights
    from avseg.methods import ws_avs
    from avseg.models.zoo import VISUAL_ENCODERS

    _, cfg = load_run(run_dir)
    saliency = ws_avs.SaliencyNet(VISUAL_ENCODERS[cfg.saliency_visual](weights="none"))
    load_model_weights(saliency, run_dir / "saliency" / "last.safetensors")
    flip = json.loads((run_dir / "pseudo" / "maps" / ws_avs.POLARITY_FILE).read_text())["flip"]
    return cfg, ws_avs.load_c2am(cfg, run_dir, torch.device("cpu")), flip, saliency.eval()


def test_ws_avs_av_threshold_chosen_on_validation(synth_s4: Path, tmp_path: Path) -> None:
    """av_threshold_from: val: the pseudo-masks stage scores the selection on validation for every grid value,
    keeps the best, and selects the training frames' masks with it. The validation pipeline is the training
    one: run on the training split, its sweep at the chosen value is the written pseudo masks' quality."""
    from avseg.methods import ws_avs_av
    from avseg.methods.common import THRESHOLD_GRID

    run_dir = tmp_path / "ws-avs-av"
    summaries = train_tiny("ws-avs-av", synth_s4, run_dir, extra=("av_threshold_from=val", "av_threshold=0.6", "av_models=1", "pseudo_crf_from=config"))
    pseudo = summaries["pseudo-masks"]
    choice = pseudo["av_threshold_choice"]
    assert choice["split"] == "val" and choice["frames"] > 0 and choice["threshold"] in THRESHOLD_GRID and choice["threshold"] >= 0.5
    assert list(choice["sweep"]) == [f"{t:.2f}" for t in THRESHOLD_GRID if t >= 0.5]  # the default grid starts at the midpoint
    assert pseudo["av_threshold"] == choice["threshold"] and pseudo["av_threshold_from"] == "val"
    assert choice["sweep"][f"{choice['threshold']:.2f}"] == max(choice["sweep"].values()) == pytest.approx(choice["miou"], abs=1e-5)

    cfg, c2am, flip, saliency = load_selection_inputs(run_dir)
    device = torch.device("cpu")
    av_model = ws_avs_av.load_av_net(cfg, run_dir / "av-model" / "last.safetensors", device)
    on_train = ws_avs_av.choose_av_threshold(cfg, c2am, flip, saliency, av_model, device, split="train")
    assert on_train["frames"] == pseudo["quality"]["frames"]
    assert len(set(on_train["sweep"].values())) > 1  # the threshold matters on these maps
    assert on_train["sweep"][f"{choice['threshold']:.2f}"] == pytest.approx(pseudo["quality"]["miou"], abs=1e-4)
    with pytest.raises(Exception, match="av_threshold_from: expected one of"):
        train_tiny("ws-avs-av", synth_s4, tmp_path / "bad", extra=("av_threshold_from=test",))
    with pytest.raises(Exception, match=r"av_threshold_grid must be in \(0, 1\), got 1.5"):
        train_tiny("ws-avs-av", synth_s4, tmp_path / "bad", extra=("av_threshold_from=val", "av_threshold_grid=[0.5,1.5]"))


def test_ws_avs_av_keeps_best_of_several_av_models(synth_s4: Path, tmp_path: Path) -> None:
    """av_models: 3 trains three audio-visual models (the first exactly the single model of the same seed, the
    others other draws), scores each on validation as a single one would be, and writes the training frames'
    pseudo masks with the best model at its own best threshold."""
    from avseg.methods import ws_avs_av

    single, several = tmp_path / "one", tmp_path / "three"
    train_tiny("ws-avs-av", synth_s4, single, extra=("av_threshold_from=val", "av_models=1", "pseudo_crf_from=config"))
    summaries = train_tiny("ws-avs-av", synth_s4, several, extra=("av_threshold_from=val", "av_models=3", "av_combine=best", "pseudo_crf_from=config"))  # ws-avs-av/demo before session 17
    weights = [several / "av-model" / "last.safetensors", several / "av-model" / "draw-1" / "last.safetensors", several / "av-model" / "draw-2" / "last.safetensors"]
    assert weights[0].read_bytes() == (single / "av-model" / "last.safetensors").read_bytes()
    assert len({w.read_bytes() for w in weights}) == 3
    draws = summaries["av-model"]["draws"]
    assert [d["seed"] for d in draws] == [0, ws_avs_av.DRAW_SEED_STEP, 2 * ws_avs_av.DRAW_SEED_STEP]

    pseudo = summaries["pseudo-masks"]
    models = pseudo["av_model_choice"]
    chosen = models["chosen"]
    assert models["checkpoints"] == [str(w) for w in weights] and pseudo["av_checkpoint"] == str(weights[chosen])
    assert models["miou"][chosen] == max(models["miou"]) == pseudo["av_threshold_choice"]["miou"]
    assert pseudo["av_threshold"] == models["thresholds"][chosen]

    cfg, c2am, flip, saliency = load_selection_inputs(several)
    device = torch.device("cpu")
    for k, path in enumerate(weights):  # each model's score is the single-model choice with it
        av_model = ws_avs_av.load_av_net(cfg, path, device)
        on_val = ws_avs_av.choose_av_threshold(cfg, c2am, flip, saliency, av_model, device, grid=cfg.av_threshold_grid)
        assert (on_val["miou"], on_val["threshold"]) == (pytest.approx(models["miou"][k], abs=1e-6), models["thresholds"][k])
        if k == chosen:  # the written masks are this model's at its threshold
            on_train = ws_avs_av.choose_av_threshold(cfg, c2am, flip, saliency, av_model, device, split="train")
            assert on_train["sweep"][f"{pseudo['av_threshold']:.2f}"] == pytest.approx(pseudo["quality"]["miou"], abs=1e-4)
    with pytest.raises(Exception, match="av_models: 2 with av_combine: best needs av_threshold_from: val"):
        train_tiny("ws-avs-av", synth_s4, tmp_path / "bad", extra=("av_models=2", "av_threshold_from=config", "pseudo_crf_from=config", "av_combine=best"))
    with pytest.raises(Exception, match="av_models must be >= 1, got 0"):
        train_tiny("ws-avs-av", synth_s4, tmp_path / "bad", extra=("av_models=0",))


def test_ws_avs_av_averages_several_av_models(synth_s4: Path, tmp_path: Path) -> None:
    """av_combine: mean selects with the mean of the audio-visual models' maps: the validation choice scores
    that mean (beside each model alone, recorded), and the training frames' pseudo masks are the mean map's
    selection at the threshold chosen for it."""
    from avseg.bench import MODEL_CHOICE, chosen_thresholds
    from avseg.methods import ws_avs_av

    run_dir = tmp_path / "mean"
    summaries = train_tiny("ws-avs-av", synth_s4, run_dir, extra=("av_threshold_from=val", "av_models=3", "av_combine=mean"))
    pseudo = summaries["pseudo-masks"]
    models = pseudo["av_model_choice"]
    weights = [run_dir / "av-model" / "last.safetensors", run_dir / "av-model" / "draw-1" / "last.safetensors", run_dir / "av-model" / "draw-2" / "last.safetensors"]
    assert models["combine"] == "mean" and models["chosen"] is None and len(models["miou"]) == 3
    assert pseudo["av_checkpoint"] == models["checkpoints"] == [str(w) for w in weights]
    chosen = chosen_thresholds(summaries)
    assert MODEL_CHOICE not in chosen and chosen["av_threshold"]["value"] == pseudo["av_threshold"]

    cfg, c2am, flip, saliency = load_selection_inputs(run_dir)
    device = torch.device("cpu")
    nets = [ws_avs_av.load_av_net(cfg, path, device) for path in weights]
    ensemble = ws_avs_av.AVEnsemble(nets)
    on_val = ws_avs_av.choose_av_threshold(cfg, c2am, flip, saliency, ensemble, device, grid=cfg.av_threshold_grid)
    choice = pseudo["av_threshold_choice"]
    assert (on_val["miou"], on_val["threshold"]) == (pytest.approx(choice["miou"], abs=1e-6), choice["threshold"]) and pseudo["av_threshold"] == choice["threshold"]
    singles = ws_avs_av.choose_av_thresholds(cfg, c2am, flip, saliency, nets, device, grid=cfg.av_threshold_grid)
    assert [c["miou"] for c in singles] == pytest.approx(models["miou"], abs=1e-6)
    on_train = ws_avs_av.choose_av_threshold(cfg, c2am, flip, saliency, ensemble, device, split="train")
    assert on_train["sweep"][f"{pseudo['av_threshold']:.2f}"] == pytest.approx(pseudo["quality"]["miou"], abs=1e-4)
    maps = [torch.rand(1, 2, 4, 4) for _ in range(3)]
    assert torch.allclose(ws_avs_av.mean_map(maps), (maps[0] + maps[1] + maps[2]) / 3)
    # the mean needs no validation split (a configured threshold selects from it) and is the only other mode
    build_config("ws-avs-av", "ws-avs-av/demo", str(synth_s4), "s4", QUICK, SIZE, [*TINY["ws-avs-av"], "av_threshold_from=config", "pseudo_crf_from=config", "av_silence_from=config", "refinement_from=config", "av_models=2", "av_combine=mean"])
    with pytest.raises(Exception, match="av_combine"):
        build_config("ws-avs-av", "ws-avs-av/demo", str(synth_s4), "s4", QUICK, SIZE, [*TINY["ws-avs-av"], "av_combine=median"])


def test_ws_avs_av_chooses_eq6_or_c2am_alone_on_validation(synth_s4: Path, tmp_path: Path) -> None:
    """refinement_from: val scores every candidate twice on validation, on Eq. 6 with the saliency map and on
    the C2AM mask alone (A > c2am_alone_threshold, as refinement: c2am selects), keeps the better base, and
    writes the training frames' pseudo masks from it."""
    import dataclasses

    from avseg.bench import BASE_CHOICE, chosen_thresholds
    from avseg.methods import ws_avs_av

    run_dir = tmp_path / "both"
    summaries = train_tiny("ws-avs-av", synth_s4, run_dir, extra=("av_threshold_from=val", "av_models=1", "refinement_from=val", "c2am_alone_threshold=0.4", "pseudo_crf=false", "pseudo_crf_from=config"))
    pseudo = summaries["pseudo-masks"]
    bases = pseudo["refinement_choice"]
    assert set(bases["miou"]) == {"saliency", "c2am"} and bases["c2am_alone_threshold"] == 0.4
    kept = bases["chosen"]
    assert bases["miou"][kept] == max(bases["miou"].values()) == pseudo["av_threshold_choice"]["miou"]
    assert pseudo["av_threshold"] == bases["thresholds"][kept]
    assert chosen_thresholds(summaries)[BASE_CHOICE]["value"] == float(kept == "c2am")

    cfg, c2am, flip, saliency = load_selection_inputs(run_dir)
    assert pseudo["refinement"] == kept and pseudo["threshold"] == (0.4 if kept == "c2am" else cfg.c2am_threshold)
    device = torch.device("cpu")
    av_model = ws_avs_av.load_av_net(cfg, run_dir / "av-model" / "last.safetensors", device)
    with_eq6, with_alone = ws_avs_av.choose_av_thresholds(cfg, c2am, flip, saliency, [av_model], device, grid=cfg.av_threshold_grid, alone=0.4)
    assert with_eq6 == ws_avs_av.choose_av_threshold(cfg, c2am, flip, saliency, av_model, device, grid=cfg.av_threshold_grid)
    alone_cfg = dataclasses.replace(cfg, refinement="c2am", c2am_threshold=0.4, refinement_from="config")  # the C2AM-alone base is that recipe's
    assert with_alone == ws_avs_av.choose_av_threshold(alone_cfg, c2am, flip, None, av_model, device, grid=cfg.av_threshold_grid)
    assert with_eq6["sweep"] != with_alone["sweep"]
    assert {"saliency": with_eq6["miou"], "c2am": with_alone["miou"]} == pytest.approx(bases["miou"], abs=1e-6)
    # the written masks are the kept base's selection at its threshold
    on_train = ws_avs_av.choose_av_thresholds(cfg, c2am, flip, saliency, [av_model], device, split="train", alone=0.4)[int(kept == "c2am")]
    assert on_train["sweep"][f"{pseudo['av_threshold']:.2f}"] == pytest.approx(pseudo["quality"]["miou"], abs=1e-4)
    with pytest.raises(Exception, match="refinement_from: val needs refinement: saliency and av_threshold_from: val"):
        train_tiny("ws-avs-av", synth_s4, tmp_path / "bad", extra=("refinement_from=val", "av_threshold_from=config", "pseudo_crf_from=config"))
    with pytest.raises(Exception, match="refinement_from: val needs refinement: saliency"):
        train_tiny("ws-avs-av", synth_s4, tmp_path / "bad", extra=("refinement_from=val", "refinement=c2am", "av_threshold_from=val"))
    with pytest.raises(Exception, match=r"c2am_alone_threshold must be in \(0, 1\), got 1.0"):
        train_tiny("ws-avs-av", synth_s4, tmp_path / "bad", extra=("c2am_alone_threshold=1.0",))


def test_ws_avs_av_empties_pseudo_masks_of_quiet_seconds(tmp_path: Path) -> None:
    """av_silence_db: a training frame whose second is more than av_silence_db below the clip's loudest second
    gets an empty pseudo mask. On synthetic MS3 (silent seconds hold only the background noise, 10 dB below a
    source) those are exactly the frames where nothing sounds. av_silence_from: val keeps or empties them by
    the validation score of the two."""
    from avseg.audio import load_audio, quiet_seconds
    from avseg.bench import SILENCE_CHOICE, chosen_thresholds
    from avseg.data.avsbench import read_probability_png
    from avseg.data.synthetic import generate
    from avseg.engine.evaluate import prediction_relpath
    from avseg.methods import ws_avs_av
    from avseg.methods.common import make_dataset

    root = tmp_path / "ms3"
    generate("ms3", root, num_videos=10, seed=0, size=32)  # 8 of the 30 training frames silent
    run_dir = tmp_path / "gated"
    summaries = train_tiny("ws-avs-av", root, run_dir, layout="ms3", extra=("av_threshold_from=val", "av_models=1", "av_silence_db=6", "av_silence_from=config"))
    pseudo = summaries["pseudo-masks"]
    _, cfg = load_run(run_dir)
    train = make_dataset(cfg.data, "train")
    quiet_frames = sounding_frames = 0
    for record, (_, masks) in ((r, train.decode_raw(i)) for i, r in enumerate(train.records)):
        wave, rate = load_audio(record.audio_path)
        quiet = quiet_seconds(wave, rate, len(record.frame_paths), 6.0)
        for t, k in enumerate(record.frame_numbers):
            written = read_probability_png(run_dir / "pseudo" / "masks" / prediction_relpath("ms3", record.split, record.category, record.video_id, k))
            gt = masks[t]
            assert gt is not None  # synthetic MS3 training frames all have a mask
            if quiet[t]:
                quiet_frames += 1
                assert not written.any() and not gt.any()  # emptied, and indeed nothing sounds there
            else:
                sounding_frames += 1
    assert pseudo["av_silence_db"] == 6 and pseudo["silent_frames"] == quiet_frames > 0 and sounding_frames > 0

    # av_silence_from: val scores the masks with the quiet frames kept and emptied, and writes the better
    run_dir = tmp_path / "chosen"
    summaries = train_tiny("ws-avs-av", root, run_dir, layout="ms3", extra=("av_threshold_from=val", "av_models=1", "av_silence_db=6", "av_silence_from=val", "pseudo_crf=false", "pseudo_crf_from=config"))
    pseudo = summaries["pseudo-masks"]
    choice = pseudo["silence_choice"]
    cfg, c2am, flip, saliency = load_selection_inputs(run_dir)
    device = torch.device("cpu")
    av_model = ws_avs_av.load_av_net(cfg, run_dir / "av-model" / "last.safetensors", device)
    kept, emptied = ws_avs_av.choose_av_thresholds(cfg, c2am, flip, saliency, [av_model], device, grid=cfg.av_threshold_grid, silence=[False, True])
    assert choice["miou"] == pytest.approx({"kept": kept["miou"], "emptied": emptied["miou"]}, abs=1e-6)
    assert choice["emptied"] == (emptied["miou"] > kept["miou"]) and pseudo["av_silence_db"] == (6 if choice["emptied"] else None)
    assert pseudo["silent_frames"] == (quiet_frames if choice["emptied"] else 0)
    assert chosen_thresholds(summaries)[SILENCE_CHOICE] == {"value": float(choice["emptied"]), "val_miou": max(choice["miou"].values())}
    on_train = ws_avs_av.choose_av_thresholds(cfg, c2am, flip, saliency, [av_model], device, split="train", silence=[choice["emptied"]])[0]
    assert on_train["sweep"][f"{pseudo['av_threshold']:.2f}"] == pytest.approx(pseudo["quality"]["miou"], abs=1e-4)
    with pytest.raises(Exception, match=r"av_silence_db must be in \(0, 60\]"):
        train_tiny("ws-avs-av", root, tmp_path / "bad", layout="ms3", extra=("av_silence_db=-3",))
    with pytest.raises(Exception, match="av_silence_from: val needs av_silence_db"):
        train_tiny("ws-avs-av", root, tmp_path / "bad", layout="ms3", extra=("av_silence_db=null", "av_silence_from=val"))


def test_ez_vsl_ogl_mixes_object_map(synth_s4: Path, tmp_path: Path) -> None:
    if not HAVE_EFFICIENTNET:
        pytest.skip("efficientnet-lite-pytorch not installed")
    from avseg.data.avsbench import collate_videos
    from avseg.methods.common import make_dataset

    run_dir = tmp_path / "ez-vsl"
    train_tiny("ez-vsl", synth_s4, run_dir, extra=("ogl=true",))  # off in ez-vsl/demo (silent distractors)
    spec, cfg = load_run(run_dir)
    assert cfg.ogl
    predictor = spec.load_predictor(cfg, run_dir, torch.device("cpu"))
    assert predictor.object_encoder is not None
    assert not any(p.requires_grad for p in predictor.object_encoder.parameters())
    batch = collate_videos([make_dataset(cfg.data, "test")[0]])
    with_ogl = predictor.heatmap(batch)
    assert torch.allclose(predictor.av_map(batch), predictor.av_map(batch))
    predictor.ogl_alpha = 0.0
    assert not torch.allclose(with_ogl, predictor.heatmap(batch))


# --- exact pieces ---------------------------------------------------------------------------------------
def test_calibrate_moves_threshold_to_half() -> None:
    from avseg.methods.cam import calibrate

    m = torch.linspace(0, 1, 101).view(1, 1, 101)
    for t in (0.2, 0.3, 0.5, 0.7):
        c = calibrate(m, t)
        assert torch.equal(c > 0.5, m > t)
        assert c.min() == 0 and c.max() == 1
        assert (c.flatten().diff() >= 0).all()  # monotone: the F-score sweep keeps the map's order
    with pytest.raises(ValueError):
        calibrate(m, 1.0)


def test_minmax_normalize() -> None:
    from avseg.methods.cam import minmax_normalize

    x = torch.tensor([[[1.0, 3.0], [2.0, 5.0]], [[2.0, 2.0], [2.0, 2.0]]])
    y = minmax_normalize(x)
    assert torch.allclose(y[0], torch.tensor([[0.0, 0.5], [0.25, 1.0]]))
    assert torch.equal(y[1], torch.zeros(2, 2))  # a constant map: nothing stands out


def test_pool_scores() -> None:
    from avseg.methods.avs_ws import pool_scores

    logits = torch.arange(10.0).view(1, 1, 2, 5)  # values 0..9
    assert pool_scores(logits, "max").item() == 9.0
    assert pool_scores(logits, "topk", topk_fraction=0.2).item() == pytest.approx(8.5)  # mean of 9, 8
    lse = pool_scores(logits, "lse", lse_r=50.0).item()
    assert 8.9 < lse <= 9.0  # large r -> max
    assert pool_scores(logits, "lse", lse_r=1e-3).item() == pytest.approx(4.5, abs=0.01)  # small r -> mean


def test_cam_selected_classes_never_empty() -> None:
    from avseg.methods.cam import CAMNet
    from avseg.models.zoo import VISUAL_ENCODERS

    net = CAMNet(VISUAL_ENCODERS["tiny"](), num_classes=3, level=2)
    logits = torch.tensor([[-5.0, -1.0, -3.0], [2.0, 1.0, -1.0]])
    labels = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    assert net.selected_classes(logits, labels).tolist() == [[False, True, False], [True, True, False]]
    net.cam_class = "labelled"
    assert net.selected_classes(logits, labels).tolist() == [[False, False, True], [True, False, False]]


def test_connected_components_and_selection() -> None:
    from avseg.methods.ws_avs_av import connected_components, select_by_audio

    masks = torch.zeros(2, 6, 6, dtype=torch.bool)
    masks[0, 0:2, 0:2] = True  # component a (silent)
    masks[0, 4:6, 3:6] = True  # component b (sounding) ...
    masks[0, 3, 5] = True  # ... extended upwards
    masks[0, 2, 2] = True  # touches a diagonally: 8-connectivity joins it to a
    masks[1, 1:3, 1:3] = True
    labels = connected_components(masks)
    assert labels[0, 0, 0] == labels[0, 2, 2] != labels[0, 4, 4] == labels[0, 3, 5]
    assert len(labels[0][masks[0]].unique()) == 2 and (labels[~masks] == 0).all()

    sim = torch.zeros(2, 6, 6)
    sim[0, 3:, 3:] = 0.9
    sim[1] = 0.1
    kept = select_by_audio(masks, sim, "components", 0.5, keep_best=True)
    assert kept[0].sum() == 7 and kept[0, 4, 4] and not kept[0, 0, 0]
    assert torch.equal(kept[1], masks[1])  # nothing passes: the best component is kept
    assert not select_by_audio(masks, sim, "components", 0.5, keep_best=False)[1].any()
    # proposals: components of another mask; what belongs to a rejected one is cut out of the masks
    eq6 = torch.ones(2, 6, 6, dtype=torch.bool)  # an Eq. 6 mask that merged everything into one region
    assert select_by_audio(eq6, sim, "components", 0.5, keep_best=True).all()  # one region: nothing to select
    cut = select_by_audio(eq6, sim, "components", 0.5, keep_best=True, proposals=masks)
    a = masks[0] & (labels[0] == labels[0, 0, 0])
    assert not cut[0][a].any() and cut[0][masks[0] & ~a].all()  # silent component a removed, b kept
    assert not cut[0, 1, 3] and not cut[0, 2, 0]  # nearer a (1 step) than b (2 and 3 steps): a's territory
    assert cut[0, 2, 5] and cut[0, 2, 4]  # 1 step from b's (3, 5), 3 and 2 steps from a
    assert cut[0, 3, 3]  # 1 step from both (2, 2) and (4, 3): a tie goes to the accepted proposal
    assert cut[1].all()  # frame 1's only proposal is its best: kept
    # a rejected core inside a wider Eq. 6 blob takes the whole blob with it (no ring left behind)
    blob = torch.zeros(1, 7, 7, dtype=torch.bool)
    blob[0, 1:6, 1:6] = True
    core = torch.zeros_like(blob)
    core[0, 3, 3] = True
    far = torch.zeros_like(blob)
    far[0, 0, 6] = True  # the frame's best proposal, outside the blob
    both = core | far
    score = torch.zeros(1, 7, 7)
    score[0, 0, 6] = 1.0
    assert not select_by_audio(blob, score, "components", 0.5, keep_best=True, proposals=both).any()
    # pixels that no proposal reaches stay
    assert torch.equal(select_by_audio(blob, score, "components", 0.5, keep_best=True, proposals=far), blob)
    pixels = select_by_audio(masks, sim, "pixels", 0.5)
    assert torch.equal(pixels, masks & (sim > 0.5))
    assert not select_by_audio(torch.zeros(1, 4, 4, dtype=torch.bool), torch.rand(1, 4, 4)).any()


# --- recipes --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", BINARY_METHODS)
@pytest.mark.parametrize("recipe", ["demo", "s4", "ms3"])
def test_recipes_validate(method: str, recipe: str) -> None:
    spec, cfg = build_config(method, f"{method}/{recipe}", "/nonexistent/data")
    assert spec.name == method
    assert cfg.data.layout == ("s4" if recipe == "demo" else recipe)


@pytest.mark.parametrize("recipe", ["demo", "s4", "ms3"])
def test_recipes_in_sync_with_ws_avs(recipe: str) -> None:
    """ws-avs-av and c2am must run WS-AVS's own settings, or the bench compares different pipelines."""
    ws = load_yaml(RECIPES / "ws-avs" / f"{recipe}.yaml")
    av = load_yaml(RECIPES / "ws-avs-av" / f"{recipe}.yaml")
    for key, value in ws.items():
        if key != "method":
            assert av.get(key) == value, f"ws-avs-av/{recipe}.yaml: {key} differs from ws-avs/{recipe}.yaml"
    c2am = load_yaml(RECIPES / "c2am" / f"{recipe}.yaml")
    for key, value in c2am.items():
        if key == "data":  # C2AM reads no audio: only the image settings must agree
            image = {k: v for k, v in value.items() if k not in ("audio_frontend", "audio_window")}
            assert {k: ws["data"].get(k) for k in image} == image, f"c2am/{recipe}.yaml: data differs from ws-avs/{recipe}.yaml"
        elif key != "method":
            assert ws.get(key, value) == value, f"c2am/{recipe}.yaml: {key} differs from ws-avs/{recipe}.yaml"
    for key in ("c2am_visual", "c2am_weights", "c2am_level", "c2am_border", "c2am_threshold", "c2am_train", "crf"):
        assert ws.get(key) == c2am.get(key), f"c2am/{recipe}.yaml: {key} differs from ws-avs/{recipe}.yaml"
    if recipe == "demo":  # the audio-visual model of ws-avs-av is the EZ-VSL demo model
        ez = load_yaml(RECIPES / "ez-vsl" / "demo.yaml")
        pairs = {"av_visual": "visual", "av_visual_weights": "visual_weights", "av_audio": "audio", "av_audio_weights": "audio_weights",
                 "av_embed_dim": "embed_dim", "av_tau": "tau", "av_train_frames": "train_frames", "av_train": "train"}  # fmt: skip
        for ours, theirs in pairs.items():
            assert av[ours] == ez[theirs], f"ws-avs-av/demo.yaml: {ours} differs from ez-vsl/demo.yaml {theirs}"
        assert av["av_levels"] == [ez["level"]]


@pytest.mark.parametrize(("method", "differs"), [("cam", {}), ("ez-vsl", {"level": 2})])
def test_stamps_recipes_are_the_demo_settings(method: str, differs: dict) -> None:
    """<method>/stamps.yaml says it is <method>/demo.yaml except the keys named here (measured on the stamp composite)."""
    demo = load_yaml(RECIPES / method / "demo.yaml")
    stamps = load_yaml(RECIPES / method / "stamps.yaml")
    assert stamps == {**demo, **differs}, f"{method}/stamps.yaml: differs from {method}/demo.yaml beyond {sorted(differs)}"


def test_heat_maps_threshold_mask_matches_metrics(synth_s4: Path, tmp_path: Path) -> None:
    """Binary metrics on predict() equal the metrics of the documented mask (heat map > threshold)."""
    from avseg.engine.evaluate import iterate_outputs
    from avseg.methods.common import make_dataset
    from avseg.metrics.binary import BinaryAccumulator

    run_dir = tmp_path / "cam"
    train_tiny("cam", synth_s4, run_dir)
    spec, cfg = load_run(run_dir)
    predictor = spec.load_predictor(cfg, run_dir, torch.device("cpu"))
    data = make_dataset(cfg.data, "test", audio=False)
    a, b = BinaryAccumulator(), BinaryAccumulator()
    for fo in iterate_outputs(predictor.heatmap, data, torch.device("cpu")):
        if fo.gt is not None:
            a.update((fo.output > predictor.threshold).astype(np.float32)[None], fo.gt[None])
    for fo in iterate_outputs(predictor.predict, data, torch.device("cpu")):
        if fo.gt is not None:
            b.update(fo.output[None], fo.gt[None])
    assert a.compute()["miou"] == pytest.approx(b.compute()["miou"])
    assert a.compute()["fscore_at_0.5"] == pytest.approx(b.compute()["fscore_at_0.5"])


def test_sweep_thresholds_scores_each_mask_with_the_clean_protocol() -> None:
    """sweep_thresholds gives, per threshold, the clean mIoU of ``map > t`` (empty ground truth: 1 if the mask is
    empty, else 0), and choose_threshold's rule keeps the best (ties: nearest 0.5)."""
    from avseg.methods.common import best_threshold, sweep_thresholds
    from avseg.metrics.binary import frame_iou_clean

    rng = np.random.default_rng(0)
    gts = torch.zeros(3, 16, 16, dtype=torch.bool)
    gts[0, 4:10, 4:10] = True
    gts[1, 0:3, :] = True  # frame 2 has an empty ground truth
    maps = torch.from_numpy(rng.uniform(0.0, 0.58, size=(3, 16, 16))).float()
    maps[gts] = 0.72  # objects at 0.72, background below 0.58: any t in [0.58, 0.72) separates them
    maps[2, 0, 0] = 0.9  # one bright pixel where nothing sounds
    sweep = sweep_thresholds(maps, gts, grid=(0.3, 0.5, 0.6, 0.65, 0.7, 0.8, 0.95))
    for t, miou in sweep.items():
        assert miou == pytest.approx(float(frame_iou_clean((maps > t).float(), gts).mean()))
    assert sweep[0.6] == sweep[0.65] == sweep[0.7] == pytest.approx(2 / 3)  # frame 3 marks its bright pixel
    assert sweep[0.95] == pytest.approx(1 / 3) and sweep[0.3] < sweep[0.5] < sweep[0.6]
    assert best_threshold(sweep) == 0.6  # 0.6, 0.65 and 0.7 tie: the one nearest 0.5
    with pytest.raises(ValueError, match="shape"):
        sweep_thresholds(maps, gts[:2])


@pytest.mark.parametrize("method", ["cam", "ez-vsl"])
def test_threshold_chosen_on_validation(method: str, synth_s4: Path, tmp_path: Path) -> None:
    """threshold_from: val adds the threshold stage: it keeps the grid value with the best validation mIoU, the
    predictor binarises at it, and evaluating the run on validation reproduces the stage's figure."""
    from avseg.methods.common import THRESHOLD_GRID

    run_dir = tmp_path / method
    summaries = train_tiny(method, synth_s4, run_dir, extra=("threshold_from=val",))
    assert list(summaries)[-1] == "threshold"
    marker = json.loads((run_dir / "stages" / "threshold.json").read_text())
    assert marker["threshold"] in THRESHOLD_GRID and marker["split"] == "val" and marker["frames"] > 0
    assert marker["sweep"][f"{marker['threshold']:.2f}"] == max(marker["sweep"].values()) == pytest.approx(marker["miou"], abs=1e-5)
    spec, cfg = load_run(run_dir)
    predictor = spec.load_predictor(cfg, run_dir, torch.device("cpu"))
    assert predictor.threshold == marker["threshold"]
    assert evaluate_run(run_dir, split="val")["miou"] == pytest.approx(marker["miou"], abs=1e-3)
    from avseg.methods.common import choose_threshold

    in_pairs = choose_threshold(predictor.heatmap, cfg.data, torch.device("cpu"), audio=method == "ez-vsl", chunk=2)  # scored 2 frames at a time
    assert in_pairs["threshold"] == marker["threshold"] and in_pairs["frames"] == marker["frames"] > 2
    assert in_pairs["sweep"] == pytest.approx(marker["sweep"], abs=2e-5)
    (run_dir / "stages" / "threshold.json").unlink()
    with pytest.raises(FileNotFoundError, match="threshold.json is missing"):
        spec.load_predictor(cfg, run_dir, torch.device("cpu"))
    with pytest.raises(ValueError, match="needs the run folder"):
        spec.load_predictor(cfg, None, torch.device("cpu"), weights=run_dir / "x.safetensors")
    with pytest.raises(Exception, match="threshold_from: expected one of"):
        train_tiny(method, synth_s4, tmp_path / "bad", extra=("threshold_from=test",))


def test_resume_with_other_settings_says_which_finished_stages_are_kept(synth_s4: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """`train --resume --set ...` skips finished stages whatever the settings while config.yaml takes the new
    ones: the change is logged and appended to config-changes.json with the stages kept; a new stage runs."""
    from avseg.runner import reconfigure

    run_dir = tmp_path / "cam"
    train_tiny("cam", synth_s4, run_dir)
    assert not (run_dir / "config-changes.json").exists()
    spec, cfg = load_run(run_dir)
    run_method(spec, cfg, run_dir, resume=True)  # same settings: nothing to say
    assert not (run_dir / "config-changes.json").exists()
    # a run written before a setting existed (its config.yaml lacks the key): at the default, no change either
    text = (run_dir / "config.yaml").read_text()
    assert "\ncam_class: predicted\n" in text and cfg.cam_class == "predicted"
    (run_dir / "config.yaml").write_text(text.replace("\ncam_class: predicted\n", "\n"))
    run_method(spec, cfg, run_dir, resume=True)
    assert not (run_dir / "config-changes.json").exists()
    lr = cfg.train.lr
    cfg = reconfigure(spec, cfg, None, ["train.lr=0.123", "threshold_from=config"])
    with caplog.at_level("WARNING", logger="avseg"):
        summaries = run_method(spec, cfg, run_dir, resume=True)
    message = " ".join(r.getMessage() for r in caplog.records)
    assert "settings changed on --resume" in message and f"train.lr: {lr!r} -> 0.123" in message and "classifier" in message
    history = json.loads((run_dir / "config-changes.json").read_text())
    assert history == [{"changed": {"threshold_from": ["val", "config"], "train.lr": [lr, 0.123]}, "stages_kept": ["classifier"]}]
    assert list(summaries) == ["classifier"] and summaries["classifier"]["stage"] == "classifier"  # kept, not retrained
    assert load_run(run_dir)[1].train.lr == 0.123  # config.yaml says the new value; config-changes.json says what was kept


def test_ws_avs_av_pseudo_crf_refines_every_written_pseudo_mask(synth_s4: Path, tmp_path: Path) -> None:
    """pseudo_crf: true refines each base's audio-selected masks with a dense CRF on the frame before they are
    written: a run with it writes crf_refine_mask(frame, mask) of the masks the same run without it writes
    (every earlier stage is identical), or the mask as selected where the CRF would empty it; records their
    quality before the CRF, and trains on them."""
    from avseg.data.avsbench import read_probability_png
    from avseg.engine.evaluate import iterate_outputs
    from avseg.methods import ws_avs_av
    from avseg.methods.common import make_dataset
    from avseg.methods.ws_avs_av import crf_pseudo_mask
    from avseg.pseudo.crf import crf_refine_mask
    from avseg.visualize import denormalize

    common = ("av_threshold_from=val", "av_models=1", "c2am_alone_threshold=0.4", "refinement_from=segmenter", "pseudo_crf_from=config")
    plain, refined = tmp_path / "plain", tmp_path / "crf"
    base = train_tiny("ws-avs-av", synth_s4, plain, extra=(*common, "pseudo_crf=false", "pseudo_crf_from=config"))
    summaries = train_tiny("ws-avs-av", synth_s4, refined, extra=(*common, "pseudo_crf=true", "pseudo_crf_confidence=0.8"))
    pseudo = summaries["pseudo-masks"]
    assert {k: pseudo["pseudo_crf"][k] for k in ("confidence", "quality_before")} == {"confidence": 0.8, "quality_before": base["pseudo-masks"]["quality"]}
    assert pseudo["c2am_alone"]["quality_before_crf"] == base["pseudo-masks"]["c2am_alone"]["quality"]
    assert base["pseudo-masks"]["pseudo_crf"] is None
    _, cfg = load_run(plain)
    changed = restored = 0
    for folder in ("masks", f"{ws_avs_av.ALONE_DIR}/masks"):
        train = make_dataset(cfg.data, "train", audio=False, pseudo_dir=plain / "pseudo" / folder)
        for fo in iterate_outputs(lambda batch: batch.pseudo_masks, train, torch.device("cpu")):
            rel = fo.relpath(cfg.data.layout)
            crf = crf_refine_mask(denormalize(fo.frame), fo.output, 0.8)
            expected = crf if crf.any() else fo.output > 0.5  # never emptied by the CRF
            assert np.array_equal(crf_pseudo_mask(denormalize(fo.frame), fo.output, 0.8) > 0.5, expected > 0.5)
            written = read_probability_png(refined / "pseudo" / folder / rel)
            assert np.array_equal(written > 0.5, expected > 0.5), (folder, rel)
            changed += int(not np.array_equal(written > 0.5, fo.output > 0.5))
            restored += int(bool((fo.output > 0.5).any()) and not crf.any())
    assert changed > 0 and restored > 0  # the CRF moved some mask and would have emptied another
    assert summaries["segmenter"]["refinement_choice"]["chosen"] in ("saliency", "c2am")
    with pytest.raises(Exception, match="pseudo_crf_confidence must be in"):
        train_tiny("ws-avs-av", synth_s4, tmp_path / "bad", extra=("pseudo_crf_confidence=0.5",))


def test_ws_avs_av_pseudo_crf_from_val_chooses_the_threshold_the_crf_scores_best(synth_s4: Path, tmp_path: Path) -> None:
    """pseudo_crf_from: val re-chooses av_threshold on validation with the CRF applied to every candidate: the
    recorded sweep's best value (ties: nearest 0.5) is used, and the masks written are those a run with that
    threshold fixed (the same earlier stages, the CRF on) writes."""
    common = ("av_threshold_from=val", "av_models=1", "refinement_from=config", "pseudo_crf=true", "av_select=components")
    grid = [0.3, 0.5, 0.7, 0.9]
    chosen_run = tmp_path / "val"
    summaries = train_tiny("ws-avs-av", synth_s4, chosen_run, extra=(*common, "pseudo_crf_from=val", f"pseudo_crf_grid={grid}"))
    pseudo = summaries["pseudo-masks"]
    choice = pseudo["pseudo_crf"]["threshold_choice"]["masks"]
    assert pseudo["pseudo_crf"]["from"] == "val" and set(pseudo["pseudo_crf"]["threshold_choice"]) == {"masks"}
    sweep = {float(t): v for t, v in choice["sweep"].items()}
    assert sorted(sweep) == grid and choice["frames"] > 0 and choice["before_crf"] == pseudo["av_threshold_choice"]["threshold"]
    best = max(sweep, key=lambda t: (sweep[t], -abs(t - 0.5)))
    assert choice["threshold"] == best == pseudo["av_threshold"] and round(choice["miou"], 5) == sweep[best]
    assert len(set(sweep.values())) > 1  # the threshold matters after the CRF
    before = pseudo["av_threshold_choice"]["sweep"]  # the same candidates scored without the CRF
    assert any(abs(sweep[t] - before[f"{t:.2f}"]) > 1e-3 for t in (0.5, 0.7, 0.9))

    fixed_run = tmp_path / "fixed"
    train_tiny("ws-avs-av", synth_s4, fixed_run, extra=(*common, "pseudo_crf_from=config", f"av_threshold_grid=[{best}]"))

    def files(folder: Path) -> dict[str, bytes]:
        return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.png"))}

    written = files(chosen_run / "pseudo" / "masks")
    assert len(written) == pseudo["frames"] and written == files(fixed_run / "pseudo" / "masks")
    with pytest.raises(Exception, match="pseudo_crf_from: val needs pseudo_crf: true"):
        train_tiny("ws-avs-av", synth_s4, tmp_path / "bad", extra=("av_threshold_from=val", "pseudo_crf=false", "pseudo_crf_from=val"))


def test_ws_avs_av_keeps_the_segmenter_that_scores_better_on_validation(synth_s4: Path, tmp_path: Path) -> None:
    """refinement_from: segmenter writes the pseudo masks of both bases (Eq. 6 with the saliency map ->
    pseudo/masks, the C2AM mask alone -> pseudo/c2am-alone/masks, each as the run configured for that base alone
    writes them), trains a segmenter on each (each as that run trains it) and copies the one with the better
    best validation mIoU to segmenter/, which every later command loads."""
    from safetensors.torch import load_file

    from avseg.bench import BASE_CHOICE, chosen_thresholds
    from avseg.methods import ws_avs_av

    common = ("av_threshold_from=val", "av_models=1", "c2am_alone_threshold=0.4")
    run_dir = tmp_path / "both"
    summaries = train_tiny("ws-avs-av", synth_s4, run_dir, extra=(*common, "refinement_from=segmenter"))
    eq6_run, alone_run = tmp_path / "eq6", tmp_path / "alone"
    train_tiny("ws-avs-av", synth_s4, eq6_run, extra=(*common, "refinement_from=config"))
    train_tiny("ws-avs-av", synth_s4, alone_run, extra=(*common, "refinement_from=config", "refinement=c2am", "c2am_threshold=0.4"))

    def files(folder: Path) -> dict[str, bytes]:
        return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.png"))}

    pseudo, seg = summaries["pseudo-masks"], summaries["segmenter"]
    assert pseudo["refinement_choice"]["chosen"] is None and pseudo["refinement_choice"]["decided_by"] == "segmenter"
    both_masks, alone_masks = files(run_dir / "pseudo" / "masks"), files(run_dir / "pseudo" / ws_avs_av.ALONE_DIR / "masks")
    assert len(both_masks) == pseudo["frames"] and both_masks == files(eq6_run / "pseudo" / "masks")
    assert alone_masks == files(alone_run / "pseudo" / "masks") and alone_masks != both_masks
    alone = json.loads((alone_run / "stages" / "pseudo-masks.json").read_text())
    assert pseudo["c2am_alone"]["av_threshold"] == alone["av_threshold"] and pseudo["c2am_alone"]["quality"] == alone["quality"]
    # each candidate is the segmenter its base's own run trains; the better on validation is the run's final model
    for name, other in (("saliency", eq6_run), ("c2am", alone_run)):
        folder = Path(seg["refinement_choice"]["folders"][name])
        ours, theirs = load_file(folder / "best.safetensors"), load_file(other / "segmenter" / "best.safetensors")  # the headers name each run
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
        assert seg["refinement_choice"]["val_miou"][name] == json.loads((other / "stages" / "segmenter.json").read_text())["best"]
    scores = seg["refinement_choice"]["val_miou"]
    kept = seg["refinement_choice"]["chosen"]
    assert scores[kept] == max(scores.values()) and (kept == "saliency" or scores["c2am"] > scores["saliency"])
    kept_folder = Path(seg["refinement_choice"]["folders"][kept])
    for name in ("best.safetensors", "last.safetensors", "metrics.jsonl"):
        assert (run_dir / "segmenter" / name).read_bytes() == (kept_folder / name).read_bytes()
    assert chosen_thresholds(summaries)[BASE_CHOICE] == {"value": float(kept == "c2am"), "val_miou": scores[kept]}
    with pytest.raises(Exception, match="refinement_from: segmenter needs select_best: true"):
        train_tiny("ws-avs-av", synth_s4, tmp_path / "bad", extra=(*common, "refinement_from=segmenter", "select_best=false"))
    with pytest.raises(Exception, match="refinement_from: segmenter needs refinement: saliency and av_threshold_from: val"):
        train_tiny("ws-avs-av", synth_s4, tmp_path / "bad", extra=("refinement_from=segmenter", "av_threshold_from=config", "pseudo_crf_from=config"))


@pytest.mark.parametrize("method", ["ws-avs", "supervised"])
def test_crf_inference_refines_each_valid_frame_with_a_dense_crf(method: str, tiny_ws_run: Path, synth_s4: Path, tmp_path: Path) -> None:
    """crf_inference: true (WS-AVS, WS-AVS-AV, the supervised reference) returns, for every valid frame, the
    foreground marginal of the two-label dense CRF whose unary is the plain model's probability map; padding
    frames keep the plain output; the same weights load either way."""
    from avseg.data.avsbench import collate_videos
    from avseg.methods.common import make_dataset
    from avseg.methods.ws_avs import crf_foreground
    from avseg.pseudo.crf import dense_crf_multi
    from avseg.visualize import denormalize

    run_dir = tiny_ws_run
    if method == "supervised":
        run_dir = tmp_path / "supervised"
        train_tiny("supervised", synth_s4, run_dir)
    spec, cfg = load_run(run_dir)
    assert spec.name == method and cfg.crf_inference is False
    plain = spec.load_predictor(cfg, run_dir, torch.device("cpu"))
    refined = spec.load_predictor(dataclasses.replace(cfg, crf_inference=True), run_dir, torch.device("cpu"))
    test = make_dataset(cfg.data, "test")
    batch = collate_videos([test[0], test[1]])
    batch = dataclasses.replace(batch, valid=batch.valid.clone())
    batch.valid[1, 3:] = False  # as AVSS pads a short video
    p, q = plain.predict(batch), refined.predict(batch)
    assert torch.equal(q[1, 3:], p[1, 3:]) and not torch.equal(q, p)
    assert torch.equal(q, crf_foreground(batch.frames, p, batch.valid))
    expected = dense_crf_multi(denormalize(batch.frames[0, 2].numpy()), np.stack([1 - p[0, 2].numpy(), p[0, 2].numpy()]))[1]
    assert np.allclose(q[0, 2].numpy(), expected, atol=1e-6)
