"""The listening evaluation: metrics on hand-computed arrays, the soundtrack conditions, the loop and the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from avseg.metrics.listening import (
    ListeningAccumulator,
    audio_dependence,
    foreground_probs,
    format_table,
    frame_fpr,
    frame_iou,
    g_miou,
)


# --- metrics on hand-computed arrays ----------------------------------------------------------------
def test_frame_fpr_counts_pixels_strictly_above_half() -> None:
    probs = np.zeros((3, 2, 2), np.float32)
    probs[1, 0, 0] = 0.5  # not > 0.5
    probs[1, 1, 1] = 0.51
    probs[2] = 1.0
    assert frame_fpr(probs).tolist() == [0.0, 0.25, 1.0]
    with pytest.raises(ValueError, match="probabilities"):
        frame_fpr(np.full((1, 2, 2), 2.0, np.float32))


def test_frame_iou_clean_branches() -> None:
    probs = np.zeros((3, 2, 2), np.float32)
    target = np.zeros((3, 2, 2), np.uint8)
    probs[0, 0, :] = 0.9  # 2 predicted, 1 of them in a 2-pixel target: IoU 1/3
    target[0, 0, 0] = target[0, 1, 0] = 1
    probs[1, 0, 0] = 0.9  # empty target, non-empty prediction: 0; frame 2: both empty: 1
    np.testing.assert_allclose(frame_iou(probs, target), [1 / 3, 0.0, 1.0])


def test_scalar_definitions() -> None:
    assert audio_dependence(0.5, 0.25) == pytest.approx(25.0)
    assert audio_dependence(0.3, 0.3) == 0.0
    # harmonic mean of 0.6 and 1 - (0.1 + 0.3) / 2 = 0.8
    assert g_miou(0.6, 0.1, 0.3) == pytest.approx(2 * 0.6 * 0.8 / 1.4)
    assert g_miou(0.0, 1.0, 1.0) == 0.0


def test_foreground_probs_of_semantic_outputs_is_one_minus_background() -> None:
    sem = np.zeros((1, 3, 1, 2), np.float32)
    sem[0, :, 0, 0] = [0.7, 0.2, 0.1]
    sem[0, :, 0, 1] = [0.1, 0.5, 0.4]
    np.testing.assert_allclose(foreground_probs(sem), [[[0.3, 0.9]]], atol=1e-6)
    binary = np.full((2, 1, 2), 0.25, np.float32)
    assert foreground_probs(binary) is not None and np.array_equal(foreground_probs(binary), binary)


def test_accumulator_by_hand() -> None:
    gt = np.zeros((2, 2, 2), np.uint8)
    gt[0, 0, 0] = 1  # frame 1: one pixel; frame 2: empty
    own = np.zeros((2, 2, 2), np.float32)
    own[0, 0, 0] = 1.0  # IoU 1, and empty on the empty frame: 1 -> mIoU 1
    other = np.zeros((2, 2, 2), np.float32)
    other[0, 0, :] = 1.0  # IoU 1/2, and 0 on the empty frame (1 pixel marked) -> mIoU 1/4
    other[1, 1, 1] = 1.0
    silence = np.zeros((2, 2, 2), np.float32)
    silence[0] = 1.0  # FPR 1 and 0 -> 0.5
    noise = np.zeros((2, 2, 2), np.float32)  # FPR 0
    target = np.zeros((1, 2, 2), np.uint8)
    target[0, 1, :] = 1
    swap = np.zeros((1, 2, 2), np.float32)
    swap[0, 1, 0] = 1.0  # IoU 1/2
    acc = ListeningAccumulator()
    acc.update("own", own, gt)
    acc.update("other", other, gt)
    acc.update("silence", silence)
    acc.update("noise", noise)
    acc.update("swap", swap, target=target)
    acc.update_deaf(np.ones((2, 2, 2), bool), gt)  # IoU 1/4 and 0 -> 1/8
    s = acc.compute()
    assert s["miou_own"] == pytest.approx(1.0)
    assert s["miou_other"] == pytest.approx(0.25)
    assert s["audio_dependence"] == pytest.approx(75.0)
    assert s["fpr_own"] == pytest.approx(1 / 8)
    assert s["fpr_other"] == pytest.approx((2 / 4 + 1 / 4) / 2)
    assert s["fpr_silence"] == pytest.approx(0.5)
    assert s["fpr_noise"] == 0.0
    assert s["g_miou"] == pytest.approx(2 * 1.0 * 0.75 / 1.75)
    assert s["swap_iou"] == pytest.approx(0.5)
    assert s["swap_frames"] == 1
    assert s["deaf_ceiling"] == pytest.approx(1 / 8)
    with pytest.raises(ValueError, match="target"):
        acc.update("swap", swap)
    with pytest.raises(ValueError, match="unknown listening condition"):
        acc.update("loud", swap)
    assert "| run |" in format_table({"x": s})


def test_accumulator_without_measurements_reports_none() -> None:
    acc = ListeningAccumulator()
    acc.update("silence", np.zeros((1, 2, 2), np.float32))
    s = acc.compute()
    assert s["fpr_silence"] == 0.0
    assert s["miou_own"] is None and s["g_miou"] is None and s["swap_iou"] is None and s["deaf_ceiling"] is None


# --- the loop on tiny synthetic data ------------------------------------------------------------------
def _data_cfg(run: Path):
    from avseg.runner import load_run

    return load_run(run)[1].data


def _factory(run: Path):
    from avseg.methods.common import make_dataset

    data = _data_cfg(run)
    return lambda: make_dataset(data, "test")


def _deaf(batch) -> torch.Tensor:
    """Marks the bright pixels of each frame, whatever it hears: (B, T, H, W)."""
    return (batch.frames.mean(dim=2) > 0).float()


def _listens_to_energy(batch) -> torch.Tensor:
    """Marks the whole frame when the frame's audio features vary at all, nothing when they are flat."""
    b, t = batch.frames.shape[:2]
    varies = batch.audio.flatten(2).std(dim=2) > 1e-6  # (B, T)
    return varies[:, :, None, None].float().expand(b, t, *batch.frames.shape[-2:])


def test_deaf_model_has_audio_dependence_exactly_zero(tiny_ws_run: Path) -> None:
    from avseg.listening import listen

    result, examples = listen(_deaf, _factory(tiny_ws_run), torch.device("cpu"), seed=0)
    assert result["synthetic"] and result["conditions"] == ["own", "silence", "noise", "other", "swap"]
    assert result["audio_dependence"] == 0.0
    assert result["miou_own"] == result["miou_other"]
    assert result["fpr_silence"] == result["fpr_noise"] == result["fpr_other"] == result["fpr_own"]
    assert all(result[f"prob_change_{c}"] == 0.0 for c in ("silence", "noise", "other", "swap"))
    assert result["swap_frames"] > 0 and 0.0 < result["deaf_ceiling"] <= 1.0
    assert examples and examples[0].frame.dtype == np.uint8 and examples[0].target.any()


def test_a_model_that_hears_silence_marks_nothing_in_silence(tiny_ws_run: Path) -> None:
    from avseg.listening import listen

    result, _ = listen(_listens_to_energy, _factory(tiny_ws_run), torch.device("cpu"), seed=0)
    assert result["fpr_silence"] == 0.0
    assert result["fpr_noise"] == 1.0 and result["fpr_own"] == 1.0
    assert result["prob_change_silence"] == 1.0 and result["prob_change_noise"] == 0.0


def test_silence_features_equal_the_features_of_zeros(tiny_ws_run: Path, tmp_path: Path) -> None:
    from avseg.audio import FRONTENDS, compute_features, load_audio
    from avseg.listening import Soundtracks

    ds = _factory(tiny_ws_run)()
    tracks = Soundtracks(ds, 0, None, tmp_path)
    record = ds.records[0]
    t = len(record.frame_paths)
    own, _ = ds.audio_features(record, t)
    ds.audio_transform = tracks.transform("silence")
    silent, _ = ds.audio_features(record, t)
    wave, sr = load_audio(record.audio_path, FRONTENDS[ds.audio_frontend].sample_rate)
    expected = compute_features(ds.audio_frontend, np.zeros_like(wave), sr, t, mode=ds.audio_window)
    assert torch.equal(silent, expected)
    assert not torch.equal(own, silent)
    # noise: the clip's RMS, seeded; other: another video's sound, of another category
    noise = tracks.noise(record, wave, sr)
    assert noise.shape == wave.shape
    assert np.sqrt(np.mean(noise.astype(np.float64) ** 2)) == pytest.approx(np.sqrt(np.mean(wave.astype(np.float64) ** 2)), rel=0.05)
    assert np.array_equal(noise, Soundtracks(ds, 0, None, tmp_path).noise(record, wave, sr))
    other = ds.records[tracks.others[0]]
    assert other.video_id != record.video_id and other.category != record.category
    assert tracks.other(record, wave, sr).shape == wave.shape


def test_swap_target_is_visible_silent_and_heard_alone(tiny_ws_run: Path, tmp_path: Path) -> None:
    from avseg.data.synthetic import synth_audio
    from avseg.listening import Soundtracks, swap_plan, synth_info, synth_videos

    ds = _factory(tiny_ws_run)()
    synth = synth_videos(ds, synth_info(ds.root, ds.layout), seed=0)
    tracks = Soundtracks(ds, 0, synth, tmp_path)
    swaps = 0
    for record in ds.records:
        video = synth[record.video_id]
        plan = video.plan
        for t, j in enumerate(video.swap):
            if j is None:
                continue
            swaps += 1
            assert not plan.sounding[t, j]  # silent in that second
            assert video.target(t).any()  # visible at the evaluated size
            assert plan.objects[j].cls not in {plan.objects[k].cls for k in np.flatnonzero(plan.sounding[t])}
        swapped = swap_plan(plan, video.swap)
        assert swapped.sounding.sum(axis=1).max() <= 1 and not np.array_equal(swapped.sounding, plan.sounding)
        own = synth_audio(plan)
        assert not np.allclose(synth_audio(swapped), own)
        wave = np.zeros(len(own), np.float32)
        heard = tracks.swap(record, wave, 16000)
        assert heard.shape == wave.shape and not np.allclose(heard, own, atol=1e-3)
    assert swaps > 0


def test_listen_run_is_reproducible_and_writes_json_and_picture(tiny_ws_run: Path, tmp_path: Path) -> None:
    from avseg.listening import listen_run, read_listen

    run = tmp_path / "run"
    shutil.copytree(tiny_ws_run, run)
    first = listen_run(run, device="cpu")
    text1 = (run / "eval" / "listen-test.json").read_text()
    second = listen_run(run, device="cpu")
    text2 = (run / "eval" / "listen-test.json").read_text()
    a, b = json.loads(text1), json.loads(text2)
    a.pop("seconds"), b.pop("seconds")
    assert a == b
    assert first["audio_dependence"] == second["audio_dependence"]
    assert (run / "eval" / "listen-test.png").stat().st_size > 0
    assert read_listen(run)["method"] == "ws-avs"
    other_seed = listen_run(run, device="cpu", seed=1)
    assert set(other_seed) == set(first)


def test_durations_do_not_follow_wall_clock_steps(tiny_ws_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A listen on this machine once reported 38799 s for a 6-minute pass: the VM's wall clock stepped
    # while it ran. Durations (listen, eval, stages, bench, demo) are read from the monotonic clock.
    import itertools
    import time

    from avseg.listening import listen_run
    from avseg.runner import evaluate_run

    steps = itertools.count()
    monkeypatch.setattr(time, "time", lambda: 1.7e9 + 36000.0 * next(steps))  # +10 h at every reading
    run = tmp_path / "run"
    shutil.copytree(tiny_ws_run, run)
    assert 0 <= listen_run(run, device="cpu")["seconds"] < 600
    assert 0 <= evaluate_run(run, "test", "clean", device="cpu")["seconds"] < 600


def test_cli_listen_prints_a_table_and_json(tiny_ws_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from avseg.cli import main

    run = tmp_path / "run"
    shutil.copytree(tiny_ws_run, run)
    assert main(["listen", "--run", str(run), "--device", "cpu", "--max-videos", "1"]) == 0
    out = capsys.readouterr().out
    assert "audio dependence" in out and "deaf ceiling" in out and "swap IoU" in out
    assert main(["listen", "--run", str(run), "--device", "cpu", "--json", "--seed", "3"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["seed"] == 3 and result["videos"] >= 1 and "fpr_silence" in result
    assert main(["eval", "--run", str(run), "--device", "cpu", "--listen", "--json"]) == 0
    both = json.loads(capsys.readouterr().out)
    assert "miou" in both and "audio_dependence" in both["listen"]


def test_real_layout_data_has_every_condition_but_the_swap(fake_s4: Path) -> None:
    from avseg.data.avsbench import AVSBenchDataset
    from avseg.listening import deaf_ceiling, listen

    def factory() -> AVSBenchDataset:
        return AVSBenchDataset(fake_s4, "s4", "test", image_size=16)

    result, examples = listen(_deaf, factory, torch.device("cpu"))
    assert not result["synthetic"] and result["conditions"] == ["own", "silence", "noise", "other"]
    assert result["swap_iou"] is None and result["deaf_ceiling"] is None and examples == []
    assert result["audio_dependence"] == 0.0 and result["fpr_silence"] is not None
    assert result["other_pairs"] == {"vidD": "vidH", "vidH": "vidD"}  # the other category
    assert deaf_ceiling(fake_s4, "s4") is None


def test_deaf_ceiling_of_the_data_matches_the_loop_at_the_same_size(tiny_ws_run: Path) -> None:
    from avseg.listening import deaf_ceiling, listen

    data = _data_cfg(tiny_ws_run)
    result, _ = listen(_deaf, _factory(tiny_ws_run), torch.device("cpu"))
    ceiling = deaf_ceiling(Path(data.root), "s4")
    assert ceiling is not None and ceiling["frames"] == result["deaf_frames"]
    assert ceiling["miou_clean"] == pytest.approx(result["deaf_ceiling"])  # the data are at the run's 32 px


def test_deaf_ceiling_per_category_adds_up_to_the_split(tmp_path: Path) -> None:
    """AVSS by subset: the clean mIoU is a mean over frames, so the subsets' ceilings weighted by their
    frames give the split's; a category with no video gives None."""
    from avseg.data.synthetic import generate
    from avseg.listening import deaf_ceiling

    root = tmp_path / "avss"
    generate("avss", root, num_videos=12, seed=0, size=32)
    whole = deaf_ceiling(root, "avss", "train")  # 8 training videos: every subset
    parts = [deaf_ceiling(root, "avss", "train", category=c) for c in ("v1s", "v1m", "v2")]
    assert whole is not None and all(p is not None for p in parts)
    assert sum(p["frames"] for p in parts) == whole["frames"]  # type: ignore[index]
    assert sum(p["frames"] * p["miou_clean"] for p in parts) / whole["frames"] == pytest.approx(whole["miou_clean"])  # type: ignore[index]
    assert deaf_ceiling(root, "avss", "train", category="v3") is None


def test_an_oracle_that_follows_the_sound_scores_full_marks(tiny_ws_run: Path, tmp_path: Path) -> None:
    """A fake model that recognises the exact features it hears: its own sound -> the ground truth, the swap
    sound -> the swap object, anything else -> nothing. End to end: swap IoU 1, FPR 0 in silence and noise,
    audio dependence = 100 (S4: no frame has an empty ground truth), G-mIoU 1."""
    from avseg.listening import Soundtracks, listen, synth_info, synth_videos

    from fakes import sound_following_oracle

    ds = _factory(tiny_ws_run)()
    synth = synth_videos(ds, synth_info(ds.root, ds.layout), seed=0)
    tracks = Soundtracks(ds, 0, synth, tmp_path)
    oracle = sound_following_oracle(ds, synth, tracks)

    result, _ = listen(oracle, _factory(tiny_ws_run), torch.device("cpu"), seed=0)
    assert result["swap_iou"] == 1.0 and result["miou_own"] == 1.0
    assert result["fpr_silence"] == result["fpr_noise"] == result["fpr_other"] == 0.0
    assert result["audio_dependence"] == pytest.approx(100.0) and result["g_miou"] == 1.0
