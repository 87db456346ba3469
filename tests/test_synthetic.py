"""The synthetic generator: official layouts, determinism, exact masks, audio that matches the masks."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from avseg.data import layout as L
from avseg.data.synthetic import (
    CLASS_STYLES,
    SAMPLE_RATE,
    SYNTH_CLASSES,
    SynthConfig,
    generate,
    object_shape_mask,
    plan_video,
    render_video,
    split_counts,
)

SIZE = 64


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def all_files(root: Path) -> dict[Path, bytes]:
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def expected_files(root: Path, layout: str) -> set[Path]:
    """Every file the dataset should hold, built only from the metadata and layout.py's path rules."""
    rows = read_rows(L.metadata_path(root, layout))
    paths = {L.metadata_path(root, layout), root / "synth_info.json"}
    for r in rows:
        if layout == "s4":
            name, cat, split = r["name"], r["category"], r["split"]
            paths |= {L.s4_frame(root, split, cat, name, k) for k in range(1, 6)}
            paths |= {L.s4_mask(root, split, cat, name, k) for k in L.s4_mask_frames(split)}
            paths.add(L.s4_wav(root, split, cat, name))
        elif layout == "ms3":
            vid, split = r["video_id"], r["split"]
            paths |= {L.ms3_frame(root, vid, k) for k in range(1, 6)}
            paths |= {L.ms3_mask(root, split, vid, k) for k in range(1, 6)}
            paths.add(L.ms3_wav(root, split, vid))
        else:
            uid, split, label = r["uid"], r["split"], r["label"]
            paths |= {L.avss_frame(root, label, uid, i) for i in range(L.FRAMES_PER_VIDEO[label])}
            paths |= {L.avss_semantic(root, label, uid, i) for i in L.avss_mask_frames(label, split)}
            paths |= {L.avss_rgb(root, label, uid, i) for i in L.avss_mask_frames(label, split)}
            paths.add(L.avss_wav(root, label, uid))
    if layout == "avss":
        paths.add(L.label2idx_path(root))
    return {p.relative_to(root) for p in paths}


def load_mask(path: Path) -> np.ndarray:
    return np.array(Image.open(path))


# A config with many switches and silences so that 6-8 videos surely hold empty-GT frames.
SWITCHY = SynthConfig(num_classes=6, max_sources=3, distractors=(1, 2), switch_prob=0.7, silence_prob=0.5)


@pytest.fixture(scope="module")
def s4(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "s4"
    generate("s4", root, num_videos=6, seed=3, size=SIZE)
    return root


@pytest.fixture(scope="module")
def ms3(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "ms3"
    generate("ms3", root, num_videos=8, seed=5, size=SIZE, config=SWITCHY)
    return root


@pytest.fixture(scope="module")
def avss(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "avss"
    generate("avss", root, num_videos=6, seed=7, size=SIZE, config=SWITCHY)
    return root


# --- config and splits -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_classes": 0},
        {"num_classes": len(SYNTH_CLASSES) + 1},
        {"distractors": (2, 1)},
        {"num_classes": 3, "max_sources": 2, "distractors": (1, 2)},  # 2 + 2 objects need 4 classes
        {"snr_db": float("nan")},
        {"scale_range": (0.5, 0.2)},
        {"switch_prob": 1.5},
        {"silence_prob": -0.1},
        {"split_fractions": (0.5, 0.2, 0.2)},
        {"drift": 0.5},
    ],
)
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        SynthConfig(**kwargs)


def test_split_counts():
    assert split_counts(3, (0.6, 0.2, 0.2)) == (1, 1, 1)
    assert split_counts(10, (0.6, 0.2, 0.2)) == (6, 2, 2)
    assert split_counts(100, (0.6, 0.2, 0.2)) == (60, 20, 20)
    assert split_counts(4, (0.1, 0.45, 0.45)) == (1, 1, 2)
    assert split_counts(1, (0.6, 0.2, 0.2)) == (1, 0, 0)
    assert split_counts(5, (1.0, 0.0, 0.0)) == (5, 0, 0)


def test_generate_refuses_existing_dataset(s4):
    with pytest.raises(FileExistsError, match="s4_meta_data.csv"):
        generate("s4", s4, num_videos=1, size=SIZE)
    with pytest.raises(ValueError, match="layout"):
        generate("s5", s4.parent / "x", num_videos=1)


# --- S4 ----------------------------------------------------------------------------------------------
def test_s4_layout_counts_and_metadata(s4):
    rows = read_rows(L.metadata_path(s4, "s4"))
    assert list(rows[0]) == ["name", "start", "category", "split"]
    assert [sum(r["split"] == s for r in rows) for s in L.SPLITS] == [4, 1, 1]
    assert {r["category"] for r in rows} <= set(SYNTH_CLASSES[:6])
    assert set(all_files(s4)) == expected_files(s4, "s4")
    info = json.loads((s4 / "synth_info.json").read_text())
    assert info["seed"] == 3 and [c["name"] for c in info["classes"]] == list(SYNTH_CLASSES[:6])
    frame = Image.open(L.s4_frame(s4, rows[0]["split"], rows[0]["category"], rows[0]["name"], 1))
    assert frame.size == (SIZE, SIZE) and frame.mode == "RGB"
    with sf.SoundFile(L.s4_wav(s4, rows[0]["split"], rows[0]["category"], rows[0]["name"])) as f:
        assert (f.samplerate, f.channels, f.frames, f.subtype) == (SAMPLE_RATE, 1, 5 * SAMPLE_RATE, "PCM_16")


def test_s4_deterministic(s4, tmp_path):
    again = tmp_path / "again"
    generate("s4", again, num_videos=6, seed=3, size=SIZE)
    assert all_files(again) == all_files(s4)
    other = tmp_path / "other"
    generate("s4", other, num_videos=6, seed=4, size=SIZE)
    assert all_files(other) != all_files(s4)


def test_workers_give_the_same_bytes(s4, tmp_path):
    parallel = tmp_path / "parallel"
    generate("s4", parallel, num_videos=6, seed=3, size=SIZE, workers=2)
    assert all_files(parallel) == all_files(s4)


def test_s4_masks_are_exactly_the_visible_sounding_object(s4):
    """Re-plan each video and check the written mask against an independent occlusion computation:
    the sounding object's full shape minus the shapes of every object drawn in front of it; and check
    that the frame shows the sounding object's (shaded) colour on exactly those pixels."""
    cfg = SynthConfig()
    for index, row in enumerate(read_rows(L.metadata_path(s4, "s4"))):
        name, cat, split = row["name"], row["category"], row["split"]
        plan = plan_video("s4", index, 3, SIZE, cfg, split)
        assert plan.name == name
        (j,) = np.flatnonzero(plan.sounding[0])
        assert plan.sounding[:, j].all() and SYNTH_CLASSES[plan.objects[j].cls] == cat
        assert len(plan.objects) >= 2  # at least one silent distractor of another class
        assert len({o.cls for o in plan.objects}) == len(plan.objects)
        frames, _ = render_video(plan)
        for k in range(1, 6):
            frame = np.array(Image.open(L.s4_frame(s4, split, cat, name, k))).astype(np.float64)
            assert np.array_equal(frame, frames[k - 1])
            expected = object_shape_mask(plan.objects[j], k - 1, SIZE)
            for front in plan.objects[j + 1 :]:
                expected &= ~object_shape_mask(front, k - 1, SIZE)
            assert expected.any()  # the S4 source is visible in every frame
            colour = plan.objects[j].colour * 255.0
            pixels = frame[expected]  # (N, 3)
            shade = pixels @ colour / (colour @ colour)
            assert np.all(np.abs(pixels - shade[:, None] * colour[None, :]) <= 1.5)
            assert shade.min() >= 0.6 - 0.01 and shade.max() <= 1.0 + 0.01
            if k in L.s4_mask_frames(split):
                mask = load_mask(L.s4_mask(s4, split, cat, name, k))
                assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
                assert np.array_equal(mask != 0, expected)


def test_no_occlusion_keeps_objects_whole():
    cfg = SynthConfig(occlusion=False, distractors=(2, 2), scale_range=(0.3, 0.4))
    for index in range(3):
        plan = plan_video("ms3", index, 0, SIZE, cfg, "train")
        _, owner = render_video(plan)
        for j, obj in enumerate(plan.objects):
            for t in range(plan.num_frames):
                assert np.array_equal(owner[t] == j, object_shape_mask(obj, t, SIZE))


# --- MS3 ---------------------------------------------------------------------------------------------
def test_ms3_layout_and_metadata(ms3):
    rows = read_rows(L.metadata_path(ms3, "ms3"))
    assert list(rows[0]) == ["video_id", "split", "labels"]
    assert [sum(r["split"] == s for r in rows) for s in L.SPLITS] == [4, 2, 2]
    assert set(all_files(ms3)) == expected_files(ms3, "ms3")
    for index, r in enumerate(rows):
        plan = plan_video("ms3", index, 5, SIZE, SWITCHY, r["split"])
        assert r["labels"].split(";") == [SYNTH_CLASSES[c] for c in plan.sounding_classes()]
        assert len(plan.objects) > len(plan.sounding_classes())  # silent distractors present


def test_ms3_empty_masks_and_audio_energy(ms3):
    """Empty-GT seconds exist, and their audio (noise only) is clearly quieter than sounding seconds."""
    empty_seen = 0
    checked = 0
    for index, r in enumerate(read_rows(L.metadata_path(ms3, "ms3"))):
        vid, split = r["video_id"], r["split"]
        masks = [load_mask(L.ms3_mask(ms3, split, vid, k)) != 0 for k in range(1, 6)]
        plan = plan_video("ms3", index, 5, SIZE, SWITCHY, split)
        _, owner = render_video(plan)
        for t, mask in enumerate(masks):
            assert np.array_equal(mask, np.isin(owner[t], np.flatnonzero(plan.sounding[t])))
            assert mask.any() == plan.sounding[t].any()  # a sounding source is never fully hidden
        audio, sr = sf.read(L.ms3_wav(ms3, split, vid), dtype="float32")
        assert sr == SAMPLE_RATE and audio.shape == (5 * SAMPLE_RATE,)
        rms = np.sqrt((audio.reshape(5, SAMPLE_RATE) ** 2).mean(axis=1))
        silent = [t for t in range(5) if not masks[t].any()]
        sounding = [t for t in range(5) if masks[t].any()]
        empty_seen += len(silent)
        if silent and sounding:
            checked += 1
            assert rms[sounding].min() > 1.5 * rms[silent].max()
    assert empty_seen > 0 and checked > 0


# --- AVSS --------------------------------------------------------------------------------------------
def test_avss_layout_label_maps_and_palette(avss):
    rows = read_rows(L.metadata_path(avss, "avss"))
    assert list(rows[0]) == ["vid", "uid", "s_min", "s_sec", "a_obj", "split", "label"]
    assert {r["label"] for r in rows} == set(L.AVSS_LABELS)
    assert set(all_files(avss)) == expected_files(avss, "avss")
    label2idx = json.loads(L.label2idx_path(avss).read_text())
    assert label2idx == {"background": 0, **{n: i + 1 for i, n in enumerate(SYNTH_CLASSES[:6])}}
    palette = np.array(L.voc_palette(256), np.uint8)
    for r in rows:
        uid, split, label = r["uid"], r["split"], r["label"]
        assert uid.startswith(r["vid"])
        seen: set[int] = set()
        for i in L.avss_mask_frames(label, split):
            semantic = np.array(Image.open(L.avss_semantic(avss, label, uid, i)))
            assert Image.open(L.avss_semantic(avss, label, uid, i)).mode == "L"
            assert semantic.dtype == np.uint8 and semantic.max() <= 6
            rgb = np.array(Image.open(L.avss_rgb(avss, label, uid, i)).convert("RGB"))
            assert np.array_equal(rgb, palette[semantic])
            seen |= set(np.unique(semantic).tolist()) - {0}
        names = r["a_obj"].split(";")
        assert {label2idx[n] for n in names} >= seen
        if label == "v1s":
            assert len(names) == 1 and seen == {label2idx[names[0]]}
        frame = Image.open(L.avss_frame(avss, label, uid, 0))
        assert frame.format == "JPEG" and frame.size == (SIZE, SIZE)
        info = sf.info(str(L.avss_wav(avss, label, uid)))
        assert info.frames == L.FRAMES_PER_VIDEO[label] * SAMPLE_RATE


def test_avss_has_empty_frames_and_v2_has_ten(avss):
    rows = read_rows(L.metadata_path(avss, "avss"))
    empty = 0
    for r in rows:
        if r["label"] == "v1s":
            continue
        frames = L.FRAMES_PER_VIDEO[r["label"]]
        assert L.avss_frame(avss, r["label"], r["uid"], frames - 1).exists()
        assert not L.avss_frame(avss, r["label"], r["uid"], frames).exists()
        for i in range(frames):
            empty += not np.array(Image.open(L.avss_semantic(avss, r["label"], r["uid"], i))).any()
    assert empty > 0


def test_every_class_has_a_distinct_look():
    looks = {(s.shape, s.colour) for s in CLASS_STYLES}
    assert len(looks) == len(CLASS_STYLES) and len({s.shape for s in CLASS_STYLES}) == len(CLASS_STYLES)
