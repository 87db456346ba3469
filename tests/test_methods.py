"""Methods end to end through the real entry point ``avseg.cli.main``: every shipped recipe, WS-AVS (both
refinements) and the supervised reference on tiny synthetic S4 / MS3 data, eval + save-pred + score,
pseudo-mask reruns, exact resume (after --max-steps and after SIGKILL) and the quick demo.

Everything runs at 32 px for 1 epoch on 8 videos (16 for the session's shared WS-AVS run, see conftest.py); the numbers mean nothing, the plumbing is what is tested.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

from avseg import runner
from avseg.cli import main
from avseg.config import ConfigError
from avseg.data import layout as L
from avseg.data.index import index_videos
from avseg.data.synthetic import generate
from avseg.engine.checkpoint import STATE

from fakes import LOGMEL_AUDIO, copy_run

RECIPES = sorted(runner.RECIPES.glob("*/*.yaml"))
PROTOCOLS = ("clean", "avsbench", "per-frame-max")
TINY = ["--epochs", "1", "--image-size", "32", "--batch-size", "4"]


def train(data: Path, run: Path, *extra: str, method: str = "ws-avs", layout: str = "s4", config: str | None = "demo") -> None:
    args = ["train", "--method", method, "--data", str(data), "--layout", layout, "--out", str(run), "--device", "cpu"]
    if config is not None:
        args += ["--config", f"{method}/{config}"]
    assert main(args + list(extra)) == 0


def eval_json(run: Path, capsys: pytest.CaptureFixture, protocol: str = "clean", *extra: str) -> dict:
    capsys.readouterr()
    assert main(["eval", "--run", str(run), "--split", "test", "--protocol", protocol, "--device", "cpu", "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def train_frames(root: Path, layout: str) -> list[Path]:
    """Relative paths (prediction layout) of every training frame."""
    return [L.prediction_relpath(layout, r.split, r.category, r.video_id, k) for r in index_videos(root, layout, "train") for k in r.frame_numbers]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(path))


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert sorted(wa) == sorted(wb)
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


# --- recipes ------------------------------------------------------------------------------------------
def test_recipes_are_shipped() -> None:
    names = {f"{p.parent.name}/{p.stem}" for p in RECIPES}
    assert {"ws-avs/s4", "ws-avs/ms3", "ws-avs/demo", "supervised/s4", "supervised/ms3", "supervised/demo"} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_recipe_builds(recipe: Path, tmp_path: Path) -> None:
    method = recipe.parent.name
    layout = runner.load_yaml(recipe)["data"]["layout"]
    spec, cfg = runner.build_config(method, f"{method}/{recipe.stem}", str(tmp_path), layout)
    assert spec.name == method and cfg.data.layout == layout and cfg.data.root == str(tmp_path)
    assert spec.stages(cfg), "a method has at least one stage"
    # The same recipe given as a file path builds the same config.
    assert runner.build_config(method, str(recipe), str(tmp_path), layout)[1] == cfg


def test_recipe_with_a_typo_key_names_key_and_file(tmp_path: Path) -> None:
    bad = tmp_path / "typo.yaml"
    text = (runner.RECIPES / "ws-avs" / "demo.yaml").read_text().replace("c2am_threshold:", "c2am_treshold:")
    bad.write_text(text)
    with pytest.raises(ConfigError, match=r"typo\.yaml.*c2am_treshold.*unknown key.*c2am_threshold"):
        runner.build_config("ws-avs", str(bad), str(tmp_path), "s4")
    nested = tmp_path / "nested.yaml"
    nested.write_text(text.replace("c2am_treshold:", "c2am_threshold:").replace("segmenter_train: {epochs", "segmenter_train: {epoch"))
    with pytest.raises(ConfigError, match=r"nested\.yaml.*segmenter_train\.epoch\b.*unknown key"):
        runner.build_config("ws-avs", str(nested), str(tmp_path), "s4")


def test_quick_flags_apply_to_every_stage_and_set_wins(tmp_path: Path) -> None:
    _, cfg = runner.build_config("ws-avs", "ws-avs/demo", str(tmp_path), "s4", quick={"epochs": 1, "batch_size": 4}, image_size=32,
                                 overrides=["segmenter_train.epochs=3"])  # fmt: skip
    assert cfg.data.image_size == 32
    assert [s.batch_size for s in cfg.train_settings().values()] == [4, 4, 4]
    assert (cfg.c2am_train.epochs, cfg.saliency_train.epochs, cfg.segmenter_train.epochs) == (1, 1, 3)


# --- data ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ms3_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "ms3"
    generate("ms3", root, num_videos=8, seed=0, size=32)
    return root


@pytest.fixture(scope="module")
def avss_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "avss"
    generate("avss", root, num_videos=12, seed=0, size=32)  # 8 training videos: 5- and 10-second ones
    return root


# --- WS-AVS end to end --------------------------------------------------------------------------------
def test_ws_avs_run_folder(ws_avs_run: Path, synth_s4_16: Path) -> None:
    for name in ("config.yaml", "git.txt", "env.json", "train.log"):
        assert (ws_avs_run / name).is_file(), name
    markers = {p.stem: json.loads(p.read_text()) for p in (ws_avs_run / "stages").glob("*.json")}
    assert sorted(markers) == sorted(["c2am", "activation-maps", "saliency", "pseudo-masks", "segmenter"])
    assert not any(m.get("truncated") or m.get("stale") for m in markers.values())
    for rel in train_frames(synth_s4_16, "s4"):
        for folder in ("maps", "initial", "saliency", "masks"):
            assert (ws_avs_run / "pseudo" / folder / rel).is_file(), f"pseudo/{folder}/{rel}"
    manifest = json.loads((ws_avs_run / "pseudo" / "manifest.json").read_text())
    quality = manifest["quality"]
    assert quality["frames"] == len(index_videos(synth_s4_16, "s4", "train"))  # S4 train: frame 1 has GT
    assert 0.0 <= quality["miou"] <= 1.0 and 0.0 <= quality["fscore"] <= 1.0
    assert manifest["refinement"] == "saliency" and manifest["saliency_checkpoint"]
    assert (ws_avs_run / "pseudo" / "contact_sheet.png").stat().st_size > 0
    assert (ws_avs_run / "segmenter" / "last.safetensors").is_file()
    saved = runner.load_yaml(ws_avs_run / "config.yaml")
    assert saved["method"] == "ws-avs" and saved["data"]["image_size"] == 32 and saved["segmenter_train"]["epochs"] == 1


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_ws_avs_eval_and_saved_predictions_score_the_same(ws_avs_run: Path, synth_s4_16: Path, protocol: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from avseg.engine.evaluate import FrameOutput, evaluate_outputs

    run = copy_run(ws_avs_run, tmp_path / "run")  # eval writes into the run folder
    pred = tmp_path / "pred"
    result = eval_json(run, capsys, protocol, "--save-pred", str(pred))
    assert 0.0 <= result["miou"] <= 1.0 and 0.0 <= result["fscore"] <= 1.0
    assert result["protocol"] == protocol and result["frames"] == 5 * len(index_videos(synth_s4_16, "s4", "test"))
    assert json.loads((run / "eval" / f"test-{protocol}.json").read_text())["miou"] == result["miou"]
    assert main(["score", "--data", str(synth_s4_16), "--layout", "s4", "--split", "test", "--pred", str(pred), "--protocol", protocol, "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["frames"] == result["frames"] and scored["resized"] == 0
    # The PNGs hold probability x 255: scoring them is scoring the evaluated outputs rounded to 1/255. (How far
    # that moves mIoU or F depends on how many pixels lie near a threshold: no fixed bound holds.)
    seen: list[FrameOutput] = []
    again = runner.evaluate_run(run, "test", protocol, device="cpu", keep=seen.append)
    assert again["miou"] == result["miou"] and again["fscore"] == result["fscore"]  # deterministic
    quantised = [dataclasses.replace(fo, output=(np.clip(fo.output, 0, 1) * 255.0 + 0.5).astype(np.uint8).astype(np.float32) / 255.0) for fo in seen]
    expected = evaluate_outputs(iter(quantised), "s4", protocol)
    assert scored["miou"] == pytest.approx(expected["miou"], abs=1e-9)
    assert scored["fscore"] == pytest.approx(expected["fscore"], abs=1e-9)


def test_eval_text_output(ws_avs_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = copy_run(ws_avs_run, tmp_path / "run")  # eval writes into the run folder
    assert main(["eval", "--run", str(run), "--device", "cpu"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("ws-avs on s4 test") and "mIoU" in line


def test_resume_and_eval_remove_temporaries_of_a_killed_process(ws_avs_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A process killed inside an atomic write leaves ``.<name>.<random>.tmp``; the next call removes it."""
    run = copy_run(ws_avs_run, tmp_path / "run")
    (run / "eval").mkdir(exist_ok=True)
    planted = [run / ".config.yaml.abc.tmp", run / "stages" / ".segmenter.json.x1.tmp", run / "eval" / ".test-clean.json.x2.tmp"]
    for path in planted:
        path.write_text("half")
    assert main(["train", "--out", str(run), "--resume"]) == 0  # every stage done: nothing retrained
    assert not planted[0].exists() and not planted[1].exists() and planted[2].exists()
    assert main(["eval", "--run", str(run), "--device", "cpu"]) == 0
    assert not planted[2].exists()
    capsys.readouterr()


def test_pseudo_rerun_from_activation_maps(ws_avs_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(ws_avs_run, run)
    before = {p.stem: p.stat().st_mtime_ns for p in (run / "stages").glob("*.json")}
    segmenter_before = json.loads((run / "stages" / "segmenter.json").read_text())
    time.sleep(0.01)
    assert main(["pseudo", "--run", str(run), "--from", "activation-maps"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert sorted(printed) == ["activation-maps", "pseudo-masks", "saliency"]
    after = {p.stem: p.stat().st_mtime_ns for p in (run / "stages").glob("*.json")}
    assert after["c2am"] == before["c2am"]  # before --from: untouched
    for name in ("activation-maps", "saliency", "pseudo-masks"):
        assert after[name] > before[name], f"{name} marker not rewritten"
    assert json.loads((run / "pseudo" / "manifest.json").read_text())["quality"]["frames"] > 0
    # The segmenter learned from the old pseudo masks: marked stale, and --resume retrains it.
    stale = json.loads((run / "stages" / "segmenter.json").read_text())
    assert stale["stale"] and stale["steps"] == segmenter_before["steps"]
    assert main(["train", "--out", str(run), "--resume"]) == 0
    retrained = json.loads((run / "stages" / "segmenter.json").read_text())
    assert not retrained.get("stale") and retrained["steps"] == segmenter_before["steps"]
    assert json.loads((run / "stages" / "c2am.json").read_text()) == json.loads((ws_avs_run / "stages" / "c2am.json").read_text())
    # Resuming a finished run does nothing.
    mtimes = {p.stem: p.stat().st_mtime_ns for p in (run / "stages").glob("*.json")}
    assert main(["train", "--out", str(run), "--resume"]) == 0
    assert {p.stem: p.stat().st_mtime_ns for p in (run / "stages").glob("*.json")} == mtimes


def test_ws_avs_official_shortcut(synth_s4: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "c2am-run"
    train(synth_s4, run, *TINY, "--set", "refinement=c2am")
    stages = sorted(p.stem for p in (run / "stages").glob("*.json"))
    assert stages == sorted(["c2am", "activation-maps", "pseudo-masks", "segmenter"])  # no saliency stage
    assert not (run / "saliency").exists()
    manifest = json.loads((run / "pseudo" / "manifest.json").read_text())
    assert manifest["refinement"] == "c2am" and manifest["saliency_checkpoint"] is None
    assert 0.0 <= manifest["quality"]["miou"] <= 1.0
    for rel in train_frames(synth_s4, "s4"):
        assert (run / "pseudo" / "masks" / rel).is_file()
    for protocol in PROTOCOLS:
        result = eval_json(run, capsys, protocol)
        assert 0.0 <= result["miou"] <= 1.0 and 0.0 <= result["fscore"] <= 1.0
    assert main(["pseudo", "--run", str(run), "--from", "activation-maps"]) == 0
    assert sorted(json.loads(capsys.readouterr().out.strip().splitlines()[-1])) == ["activation-maps", "pseudo-masks"]


def test_supervised_end_to_end(synth_s4: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "sup"
    train(synth_s4, run, *TINY, method="supervised")
    assert [p.stem for p in (run / "stages").glob("*.json")] == ["segmenter"]
    for protocol in PROTOCOLS:
        result = eval_json(run, capsys, protocol)
        assert result["method"] == "supervised" and 0.0 <= result["miou"] <= 1.0 and 0.0 <= result["fscore"] <= 1.0
    assert main(["pseudo", "--run", str(run)]) == 2  # no pseudo-mask stages
    assert "no pseudo-mask stages" in capsys.readouterr().err


def test_supervised_trains_on_all_frames_or_the_masked_ones(synth_s4: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from avseg.methods import supervised

    items: list[int] = []
    real = supervised.make_dataset

    def spy(*args: Any, **kwargs: Any) -> Any:
        ds = real(*args, **kwargs)
        items.append(ds[0].frames.shape[0])
        return ds

    monkeypatch.setattr(supervised, "make_dataset", spy)
    train(synth_s4, tmp_path / "all", *TINY, "--set", "train_frames=all", method="supervised")
    train(synth_s4, tmp_path / "masked", *TINY, method="supervised")  # supervised/demo: train_frames: masked
    assert items == [5, 1]  # S4 train: frame 1 alone carries a mask
    with pytest.raises(ConfigError, match="train_frames: expected one of"):
        runner.build_config("supervised", "supervised/demo", str(synth_s4), "s4", overrides=["train_frames=every"])


@pytest.mark.parametrize("method", ["ws-avs", "supervised"])
def test_ms3_end_to_end(method: str, ms3_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / method
    # The demo recipes are S4; --layout ms3 switches the data section.
    train(ms3_data, run, *TINY, method=method, layout="ms3")
    if method == "ws-avs":
        for rel in train_frames(ms3_data, "ms3"):
            assert (run / "pseudo" / "masks" / rel).is_file()
        quality = json.loads((run / "pseudo" / "manifest.json").read_text())["quality"]
        assert quality["frames"] == 5 * len(index_videos(ms3_data, "ms3", "train"))  # MS3 train: all frames have GT
    pred = tmp_path / "pred"
    result = eval_json(run, capsys, "clean", "--save-pred", str(pred))
    assert result["layout"] == "ms3" and 0.0 <= result["miou"] <= 1.0 and 0.0 <= result["fscore"] <= 1.0
    assert main(["score", "--data", str(ms3_data), "--layout", "ms3", "--split", "test", "--pred", str(pred), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["miou"] == pytest.approx(result["miou"], abs=1 / 255)


@pytest.mark.parametrize("method", ["ws-avs", "supervised"])
def test_binary_methods_on_avss(method: str, avss_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A binary method trains on AVSS (class maps as the union of the sounding objects, 5-second videos padded
    to 10) and is scored as binary masks; its probability PNGs score the same with ``avseg score --binary``."""
    records = index_videos(avss_data, "avss", "train")
    assert {len(r.frame_paths) for r in records} == {5, 10}
    run = tmp_path / method
    train(avss_data, run, *TINY, method=method, layout="avss")
    if method == "ws-avs":
        written = sorted(p.relative_to(run / "pseudo" / "masks") for p in (run / "pseudo" / "masks").rglob("*.png"))
        assert written == sorted(train_frames(avss_data, "avss"))  # every real training frame, no padding
    pred = tmp_path / "pred"
    result = eval_json(run, capsys, "clean", "--save-pred", str(pred))
    assert result["layout"] == "avss" and result["scoring"] == "binary" and "per_class_iou" not in result
    assert result["frames"] == sum(m is not None for r in index_videos(avss_data, "avss", "test") for m in r.mask_paths)
    assert main(["score", "--data", str(avss_data), "--layout", "avss", "--split", "test", "--pred", str(pred), "--binary", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["miou"] == pytest.approx(result["miou"], abs=1 / 255)
    # probabilities read as class maps: the error names the file and says --binary
    assert main(["score", "--data", str(avss_data), "--layout", "avss", "--split", "test", "--pred", str(pred)]) != 0
    err = capsys.readouterr().err
    assert "0.png: class index" in err and "--binary" in err
    if method == "ws-avs":  # the report says how AVSS was scored
        assert main(["report", str(run), "--device", "cpu"]) == 0
        assert "scored against the union of the sounding objects" in (run / "report.html").read_text()


def test_supervised_target_is_the_union_of_the_sounding_objects() -> None:
    """On AVSS the ground truth holds class ids: the supervised BCE + IoU train on ``mask != 0``."""
    from avseg.methods.ws_avs import WSAVSNet
    from avseg.types import AVBatch

    class Logits(torch.nn.Module):
        def __init__(self, logits: torch.Tensor) -> None:
            super().__init__()
            self.logits = logits

        def forward(self, frames: torch.Tensor, audio: torch.Tensor | None) -> Any:
            return dataclasses.make_dataclass("Out", ["logits", "visual_embeds"])(self.logits, [])

    torch.manual_seed(0)
    logits = torch.randn(2, 1, 4, 4)
    net = WSAVSNet(Logits(logits), tau=0.03, scale_by_tau=True, m2icl_weight=0.0, mask_source="gt")  # type: ignore[arg-type]
    ids = torch.zeros(1, 2, 4, 4, dtype=torch.int64)
    ids[0, 0, :2] = 3
    ids[0, 1, 2:, 2:] = 5

    def batch(masks: torch.Tensor) -> AVBatch:
        return AVBatch(frames=torch.zeros(1, 2, 3, 4, 4), audio=None, waveform=None, masks=masks, has_mask=torch.ones(1, 2, dtype=torch.bool),
                       valid=torch.ones(1, 2, dtype=torch.bool), labels=torch.zeros(1, 6), video_ids=["v"], frame_ids=[[0, 1]])  # fmt: skip

    semantic, binary = net(batch(ids)), net(batch((ids != 0).long()))
    for key in ("bce", "iou"):
        assert torch.equal(semantic[key], binary[key])


def test_avss_padding_never_reaches_the_network() -> None:
    """WS-AVS's segmenter sees only the real frames of a padded AVSS batch (BatchNorm's statistics would
    otherwise count the black padding frames); the loss does not depend on what the padding holds."""
    from avseg.methods.ws_avs import WSAVSNet
    from avseg.types import AVBatch

    seen: list[int] = []

    class Spy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

        def forward(self, frames: torch.Tensor, audio: torch.Tensor | None) -> Any:
            seen.append(frames.shape[0])
            assert audio is not None
            logits = self.w * frames.mean(1, keepdim=True)  # (N, 1, H, W)
            visual = self.w * frames[:, :2, :2, :2]  # (N, 2, 2, 2) "tokens"
            a = self.w * audio.flatten(1)[:, :2]
            return dataclasses.make_dataclass("Out", ["logits", "visual_embeds", "audio_embed"])(logits, [visual], a)

    torch.manual_seed(0)
    b, t = 3, 4
    valid = torch.ones(b, t, dtype=torch.bool)
    valid[1, 2:] = False
    frames, audio = torch.randn(b, t, 3, 4, 4), torch.randn(b, t, 1, 2, 2)
    frames[~valid], audio[~valid] = 0.0, 0.0
    pseudo = torch.rand(b, t, 4, 4)

    def batch(frames: torch.Tensor, audio: torch.Tensor) -> AVBatch:
        return AVBatch(frames=frames, audio=audio, waveform=None, masks=torch.zeros(b, t, 4, 4, dtype=torch.int64), has_mask=valid.clone(),
                       valid=valid, labels=torch.zeros(b, 2), video_ids=["a", "b", "c"], frame_ids=[[0, 1, 2, 3]] * b,
                       pseudo_masks=pseudo, has_pseudo=valid.clone())  # fmt: skip

    net = WSAVSNet(Spy(), tau=0.1, scale_by_tau=True, m2icl_weight=1.0)  # type: ignore[arg-type]
    padded = net(batch(frames, audio))
    assert seen == [int(valid.sum())]
    other_frames, other_audio = frames.clone(), audio.clone()
    other_frames[~valid], other_audio[~valid] = torch.randn(2, 3, 4, 4), torch.randn(2, 1, 2, 2)
    moved = net(batch(other_frames, other_audio))
    for key in ("bce", "m2icl", "loss"):
        assert torch.allclose(padded[key], moved[key]), key
    padded["loss"].backward()
    assert net.segmenter.w.grad is not None and torch.isfinite(net.segmenter.w.grad)


# --- resume -------------------------------------------------------------------------------------------
# batch 2 on 4 training videos: 2 steps per epoch, so --max-steps 1 stops every stage mid-epoch; the
# segmenter trains 2 epochs with a checkpoint every step so that a kill lands between checkpoints.
# A log-mel front-end: the frozen aisfx CNN of ws-avs/demo's aisfx-embed front-end is recomputed in each
# process, and its float32 embeddings depend on the CPU thread count (docs/methods.md), which is not what
# this test is about.
RESUME = ["--epochs", "1", "--image-size", "32", "--batch-size", "2", "--seed", "3",
          "--set", "segmenter_train.epochs=2", "--set", "segmenter_train.checkpoint_every_steps=1",
          *(arg for o in LOGMEL_AUDIO for arg in ("--set", o))]  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted(synth_s4: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "uninterrupted"
    train(synth_s4, run, *RESUME)
    return run


def assert_same_run(run: Path, reference: Path, capsys: pytest.CaptureFixture) -> None:
    assert_same_weights(run / "segmenter" / "last.safetensors", reference / "segmenter" / "last.safetensors")
    for stage in ("c2am", "saliency"):
        assert_same_weights(run / stage / "last.safetensors", reference / stage / "last.safetensors")
    for protocol in ("clean", "avsbench"):
        got, want = eval_json(run, capsys, protocol), eval_json(reference, capsys, protocol)
        assert (got["miou"], got["fscore"]) == (want["miou"], want["fscore"])


def test_resume_after_max_steps_equals_uninterrupted(synth_s4: Path, uninterrupted: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    train(synth_s4, run, *RESUME, "--max-steps", "1")
    markers = {p.stem: json.loads(p.read_text()) for p in (run / "stages").glob("*.json")}
    assert all(markers[s]["truncated"] and markers[s]["steps"] == 1 for s in ("c2am", "saliency", "segmenter"))
    assert "max_steps: null" in (run / "config.yaml").read_text() or "max_steps" not in (run / "config.yaml").read_text()
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["run"] == str(run)
    markers = {p.stem: json.loads(p.read_text()) for p in (run / "stages").glob("*.json")}
    assert not any(m.get("truncated") for m in markers.values())
    assert markers["segmenter"]["steps"] == 4
    assert_same_run(run, uninterrupted, capsys)


@pytest.mark.slow
def test_resume_after_sigkill_equals_uninterrupted(synth_s4: Path, uninterrupted: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "avseg.cli", "train", "--method", "ws-avs", "--config", "ws-avs/demo", "--data", str(synth_s4),
           "--layout", "s4", "--out", str(run), "--device", "cpu", *RESUME]  # fmt: skip
    # One thread like the test process, so the floating-point results are the same bit for bit.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = run / "segmenter" / "train_state.pt"
    deadline = time.monotonic() + 120
    try:
        # Kill in the segmenter stage, after its first checkpoint (the stages before it are done).
        while not (state.is_file() and (run / "stages" / "c2am.json").is_file()):
            assert proc.poll() is None, f"training ended (rc {proc.returncode}) before it could be killed"
            assert time.monotonic() < deadline, "training did not reach the segmenter stage in time"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "stages" / "segmenter.json").exists(), "killed too late: the stage had finished"
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume"]) == 0
    assert "segmenter: resumed from" in (run / "train.log").read_text()  # from its checkpoint, not from scratch
    assert json.loads((run / "stages" / "segmenter.json").read_text())["steps"] == 4
    assert_same_run(run, uninterrupted, capsys)


# --- demo ---------------------------------------------------------------------------------------------
def test_demo_quick(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "demo"
    weak = ("ws-avs", "ws-avs-av", "pcas")
    assert main(["demo", "--out", str(out), "--videos", "6", "--size", "32", "--quick", "--methods", "ws-avs,ws-avs-av,pcas,supervised"]) == 0
    printed = json.loads(capsys.readouterr().out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert printed == metrics
    assert set(metrics) == {*weak, "pseudo-masks", "supervised", "listening", "protocol", "seconds"}
    for m in (*weak, "supervised"):
        assert set(metrics[m]) == {"miou", "fscore"}
        assert set(metrics["listening"][m]) == {"audio_dependence", "fpr_silence", "fpr_noise", "swap_iou", "g_miou"}
    assert set(metrics["pseudo-masks"]) == set(weak) and metrics["protocol"] == "clean"
    values = [metrics[m][k] for m in (*weak, "supervised") for k in ("miou", "fscore")]
    values += [metrics["pseudo-masks"][m]["miou"] for m in weak]
    assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in values), values
    assert metrics["seconds"] > 0
    report = (out / "report.md").read_text()
    assert "Weak / fully supervised mIoU ratio" in report and "Quick smoke run" in report and "WS-AVS-AV" in report
    for png in ("preview.png", "overlays_test.png", "overlays_train.png", "ws-avs/pseudo/contact_sheet.png", "ws-avs-av/pseudo/contact_sheet.png",
                "listen_test.png", "listen_test_ws-avs.png", "listen_test_ws-avs-av.png"):  # fmt: skip
        assert (out / png).stat().st_size > 0, png
    # ws-avs-av took WS-AVS's image-only stages from the ws-avs run of the same demo
    for stage in ("c2am", "activation-maps", "saliency"):
        assert json.loads((out / "ws-avs-av" / "stages" / f"{stage}.json").read_text())["reused_from"] == str((out / "ws-avs").resolve())
    # A full-size demo into the same folder would mix settings: refused with a clear message.
    assert main(["demo", "--out", str(out), "--videos", "6", "--size", "32"]) == 2
    assert "other settings" in capsys.readouterr().err
    # the default runs PCAS and the supervised reference; a demo without a weak model is refused
    default = tmp_path / "default"
    assert main(["demo", "--out", str(default), "--videos", "6", "--size", "32", "--quick"]) == 0
    assert set(json.loads((default / "metrics.json").read_text())["listening"]) == {"pcas", "supervised"}
    assert (default / "listen_test.png").is_file() and not (default / "ws-avs").exists()
    assert main(["demo", "--out", str(tmp_path / "x"), "--quick", "--methods", "supervised"]) == 2
    assert "at least one of" in capsys.readouterr().err
def test_border_band_skips_the_padding_ring_of_the_feature_map() -> None:
    """An object in the centre, dark background, and a bright outer ring one feature cell wide (the
    padding artifact of a stride-8 level): the band inside the ring says "not flipped"; a band on the
    very edge would say "flipped"."""
    from avseg.methods.ws_avs import _border_excess

    amap = np.zeros((128, 128), dtype=np.float32)
    amap[40:88, 40:88] = 1.0  # the object
    amap[:8], amap[-8:], amap[:, :8], amap[:, -8:] = 1.0, 1.0, 1.0, 1.0  # the artifact ring
    assert _border_excess(amap, skip=0) > 0  # fooled
    assert _border_excess(amap, skip=8) < 0  # not fooled
    inverted = 1.0 - amap
    assert _border_excess(inverted, skip=8) > 0  # a truly inverted map is still detected
    tiny = np.random.default_rng(0).random((12, 12)).astype(np.float32)
    assert np.isfinite(_border_excess(tiny, skip=32))  # the band shrinks to fit small frames


def test_c2am_border_cells_do_not_become_object() -> None:
    """A head that lights the outermost ring of feature cells whatever the image (the padding artefact):
    the plain map marks the frame's edge as object; with ``border=1`` the ring takes the frame's median
    and only the object in the middle is above the threshold."""
    from avseg.methods.ws_avs import C2AMNet, mask_border_cells
    from avseg.models.zoo import VISUAL_ENCODERS

    fg = torch.full((2, 1, 8, 8), 0.2)
    fg[:, :, 3:5, 3:5] = 0.7  # the object
    fg[:, :, 0, :], fg[:, :, -1, :], fg[:, :, :, 0], fg[:, :, :, -1] = 0.95, 0.95, 0.95, 0.95  # the artefact
    masked = mask_border_cells(fg, 1)
    assert torch.equal(masked[:, :, 1:-1, 1:-1], fg[:, :, 1:-1, 1:-1])
    assert torch.allclose(masked[:, :, 0, :], torch.tensor(0.2))  # the median of the frame
    assert torch.equal(mask_border_cells(fg, 0), fg) and torch.equal(mask_border_cells(fg, 4), fg)  # off / nothing left

    for border, edge_marked in ((0, True), (1, False)):
        net = C2AMNet(VISUAL_ENCODERS["tiny"](weights="none"), level=2, border=border).eval()
        net.foreground = lambda frames: (frames, fg)  # type: ignore[method-assign]
        mask = net.activation(torch.zeros(2, 3, 64, 64), flip=False) > 0.5
        assert bool(mask[:, 0, :].all()) is edge_marked
        assert mask[:, 28:36, 28:36].all()  # the object is found either way
    with pytest.raises(ValueError, match="c2am_border"):
        C2AMNet(VISUAL_ENCODERS["tiny"](weights="none"), level=2, border=-1)


def test_a_run_records_its_class_vocabulary_and_refuses_another(synth_s4: Path, tmp_path: Path) -> None:
    from avseg.data.index import class_names

    spec, cfg = runner.build_config("cam", "cam/demo", str(synth_s4), "s4")
    assert cfg.data.classes is None and Path(cfg.data.root).is_absolute()
    recorded = runner.record_classes(spec, cfg)
    assert recorded.data.classes == class_names(synth_s4, "s4") and cfg.data.classes is None
    spec, other = runner.build_config("cam", "cam/demo", str(synth_s4), "s4", overrides=['data.classes=["dog", "cat"]'])
    with pytest.raises(runner.RunError, match=r"label vocabulary .* differs from the run's data.classes \(2: dog, cat\)"):
        runner.run_method(spec, other, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before the run folder is made


# --- pseudo-mask stages resume where they stopped ---------------------------------------------------------------
def _png_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


class Interrupted(Exception):
    pass


def _counting_writer(monkeypatch: pytest.MonkeyPatch, written: list[Path], fail_after: int | None = None) -> None:
    """Wrap save_probability_png: record every path written, raise after ``fail_after`` files."""
    import avseg.engine.evaluate as predict

    original = predict.save_probability_png
    users = [m for name, m in sys.modules.items() if name.startswith("avseg.") and getattr(m, "save_probability_png", None) is original]

    def save(prob: np.ndarray, path: Path) -> None:
        if fail_after is not None and len(written) >= fail_after:
            raise Interrupted(f"interrupted after {fail_after} files")
        original(prob, path)
        written.append(Path(path))

    for module in users:  # every module that imported it
        monkeypatch.setattr(module, "save_probability_png", save)


def test_activation_maps_resume_without_redoing_finished_work(synth_s4_16: Path, ws_avs_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from avseg.methods import ws_avs

    run = copy_run(ws_avs_run, tmp_path / "run")
    videos = len(index_videos(synth_s4_16, "s4", "train"))
    frames = 5 * videos  # two files (map + initial mask) per frame
    first: list[Path] = []
    _counting_writer(monkeypatch, first, fail_after=45)  # batch 1 (20 frames, 40 files) and two frames and a half more
    with pytest.raises(Interrupted):
        main(["pseudo", "--run", str(run), "--from", "activation-maps"])
    monkeypatch.undo()
    polarity = json.loads((run / "pseudo" / "maps" / "polarity.json").read_text())
    reference = json.loads((ws_avs_run / "pseudo" / "maps" / "polarity.json").read_text())
    assert polarity == reference  # stored before the first map was written
    assert not list((run / "pseudo").rglob(".*.tmp"))

    second: list[Path] = []
    _counting_writer(monkeypatch, second)
    model_calls = []
    original_activation = ws_avs.C2AMNet.activation
    monkeypatch.setattr(ws_avs.C2AMNet, "activation", lambda self, *a, **k: model_calls.append(1) or original_activation(self, *a, **k))
    monkeypatch.setattr(ws_avs, "_border_excess", lambda *a, **k: pytest.fail("the polarity was decided again on resume"))
    capsys.readouterr()
    assert main(["pseudo", "--run", str(run)]) == 0
    pseudo = run / "pseudo"
    maps_written = [p for p in second if p.is_relative_to(pseudo / "maps") or p.is_relative_to(pseudo / "initial")]
    # 45 files = 22 whole frames + the initial mask of the 23rd; each file is written exactly once.
    assert len(first) == 45 and not set(first) & set(maps_written), "files finished before the interruption were written again"
    assert len(maps_written) == 2 * frames - 45
    assert len(model_calls) == math.ceil(videos / 4) - 1, "the finished first batch ran through the model again"
    marker = json.loads((run / "stages" / "activation-maps.json").read_text())
    assert (marker["written"], marker["reused"]) == (frames - 22, 22)
    for folder in ("maps", "initial", "masks", "saliency"):
        assert _png_files(run / "pseudo" / folder) == _png_files(ws_avs_run / "pseudo" / folder), folder


def test_pseudo_masks_resume_without_redoing_finished_work(synth_s4_16: Path, ws_avs_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    run = copy_run(ws_avs_run, tmp_path / "run")
    frames = 5 * len(index_videos(synth_s4_16, "s4", "train"))
    first: list[Path] = []
    _counting_writer(monkeypatch, first, fail_after=45)  # mask + saliency per frame: 22 frames and a mask
    with pytest.raises(Interrupted):
        main(["pseudo", "--run", str(run), "--from", "pseudo-masks"])
    monkeypatch.undo()
    assert not (run / "stages" / "pseudo-masks.json").exists()
    second: list[Path] = []
    _counting_writer(monkeypatch, second)
    capsys.readouterr()
    assert main(["pseudo", "--run", str(run)]) == 0
    assert not set(first) & set(second), "files finished before the interruption were written again"
    assert len(first) + len(second) == 2 * frames  # every file written once; the 23rd frame's mask is kept
    manifest, reference = (json.loads((r / "pseudo" / "manifest.json").read_text()) for r in (run, ws_avs_run))
    assert manifest["quality"] == reference["quality"]  # the first batch's quality read back from its PNGs
    assert (manifest["reused"], manifest["written"]) == (22, frames - 22)
    for folder in ("masks", "saliency"):
        assert _png_files(run / "pseudo" / folder) == _png_files(ws_avs_run / "pseudo" / folder), folder
    # Stages before it were finished and untouched; the segmenter trained on the old masks is stale.
    assert json.loads((run / "stages" / "segmenter.json").read_text())["stale"]


# SIGKILL at random points of a whole WS-AVS run, resumed each time with --resume: every stage can be hit.
KILL_ARGS = ["--image-size", "32", "--epochs", "2", "--batch-size", "4", "--seed", "0", "--device", "cpu"]


def _count_png(folder: Path) -> int:
    return sum(1 for _ in folder.rglob("*.png")) if folder.is_dir() else 0


def _kill_points(rng: random.Random, files: int) -> list[tuple[str, Callable[[Path], bool]]]:
    """Three (name, predicate on the run folder) kill points in pipeline order, drawn from every stage;
    ``files``: PNGs each pseudo-mask stage writes."""
    k_maps, k_masks = rng.randint(1, files - 1), rng.randint(1, files - 1)
    candidates = [
        ("c2am, after its first checkpoint", lambda run: (run / "c2am" / STATE).is_file()),
        (f"activation-maps, after {k_maps} of {files} PNGs", lambda run: _count_png(run / "pseudo" / "maps") + _count_png(run / "pseudo" / "initial") >= k_maps),
        ("saliency, after its first checkpoint", lambda run: (run / "saliency" / STATE).is_file()),
        (f"pseudo-masks, after {k_masks} of {files} PNGs", lambda run: _count_png(run / "pseudo" / "masks") + _count_png(run / "pseudo" / "saliency") >= k_masks),
        ("segmenter, after its first checkpoint", lambda run: (run / "segmenter" / STATE).is_file()),
    ]
    return [candidates[i] for i in sorted(rng.sample(range(len(candidates)), 3))]


def _assert_no_torn_files(run: Path) -> None:
    for png in run.rglob("*.png"):
        if not png.name.startswith("."):
            with Image.open(png) as img:
                img.load()
    for js in run.rglob("*.json"):
        if not js.name.startswith("."):
            json.loads(js.read_text())
    for st in run.rglob("*.safetensors"):
        if not st.name.startswith("."):
            safetensors.torch.load_file(str(st))


@pytest.mark.slow
def test_sigkill_at_random_points_resumes_to_the_same_metrics(synth_s4_16: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base = ["train", "--method", "ws-avs", "--config", "ws-avs/demo", "--data", str(synth_s4_16), "--layout", "s4"]
    reference = tmp_path / "reference"
    assert main(base + ["--out", str(reference)] + KILL_ARGS) == 0

    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "avseg.cli", *base, "--out", str(run), *KILL_ARGS]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # one thread, as this process
    rng = random.Random(8)
    landed = []
    for name, reached in _kill_points(rng, files=2 * 5 * len(index_videos(synth_s4_16, "s4", "train"))):
        extra = rng.uniform(0.0, 0.05)
        proc = subprocess.Popen(cmd + (["--resume"] if landed else []), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 90
            while not reached(run):
                assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before the kill point '{name}'"
                assert time.monotonic() < deadline, f"the run did not reach '{name}' in time"
                time.sleep(0.001)
            time.sleep(extra)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
        assert proc.returncode == -signal.SIGKILL, f"not killed at '{name}' (rc {proc.returncode})"
        stages_done = sorted(p.stem for p in (run / "stages").glob("*.json"))
        landed.append((name, stages_done))
        _assert_no_torn_files(run)
    with capsys.disabled():
        print("\nkill points (planned, stage markers present when killed):", *landed, sep="\n  ")
    assert main(base + ["--out", str(run), "--resume"] + KILL_ARGS) == 0

    for stage in ("c2am", "saliency", "segmenter"):
        a, b = (safetensors.torch.load_file(str(r / stage / "last.safetensors")) for r in (run, reference))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"{stage} weights differ"
    for folder in ("maps", "initial", "masks", "saliency"):
        assert _png_files(run / "pseudo" / folder) == _png_files(reference / "pseudo" / folder), folder
    for protocol in ("clean", "avsbench"):
        results = []
        for r in (run, reference):
            capsys.readouterr()
            assert main(["eval", "--run", str(r), "--protocol", protocol, "--device", "cpu", "--json"]) == 0
            results.append(json.loads(capsys.readouterr().out))
        assert (results[0]["miou"], results[0]["fscore"]) == (results[1]["miou"], results[1]["fscore"]), protocol
