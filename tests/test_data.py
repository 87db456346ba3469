from __future__ import annotations

import io
import json
import logging
import os
import pickle
import re
import resource
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from avseg.audio.decode import AudioError
from avseg.cli import main
from avseg.data import layout as L
from avseg.data.avsbench import AVSBenchDataset, collate_videos, read_mask
from avseg.data.errors import DataError
from avseg.data.index import avss_classes, class_names, index_videos, read_metadata
from avseg.data.safe_pickle import load_tensor_pickle
from avseg.data.validate import validate_dataset

from fakes import SR, ExecPayload, Payload, png_bytes, sine, truncate, wav_bytes, write_stereo_wav


def test_palette_matches_format_doc() -> None:
    pal = L.voc_palette(5)
    assert pal == [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128)]


def test_s4_index_paths_and_masks(fake_s4: Path) -> None:
    train = index_videos(fake_s4, "s4", "train")
    assert [r.video_id for r in train] == ["vidA", "vidB", "vidE", "vidF"]  # metadata order
    r = train[0]
    assert r.frame_numbers == (1, 2, 3, 4, 5)
    assert r.frame_paths[0].name == "vidA_1.png"
    assert r.mask_paths[0] is not None and all(p is None for p in r.mask_paths[1:])  # frame 1 only
    test = index_videos(fake_s4, "s4", "test")
    assert all(p is not None for p in test[0].mask_paths)
    assert class_names(fake_s4, "s4") == list(L.S4_CATEGORIES)


def test_s4_headerless_csv(tmp_path: Path) -> None:
    from fakes import write_fake_s4

    root = write_fake_s4(tmp_path / "s4", header=False)
    assert len(index_videos(root, "s4", "train")) == 4


def test_ms3_frame_names_and_labels(tmp_path: Path) -> None:
    from fakes import write_fake_ms3

    root = write_fake_ms3(tmp_path / "ms3")
    recs = index_videos(root, "ms3", "train")
    assert recs[0].frame_paths[2].name == "m1.mp4_3.png"
    assert recs[0].frame_paths[2].parent.name == "m1"  # no split level for frames
    assert class_names(root, "ms3") == ["sounding"]
    root2 = write_fake_ms3(tmp_path / "ms3b", with_labels=True)
    assert class_names(root2, "ms3") == ["a", "b"]


def test_avss_index_padding_and_labels(fake_avss: Path) -> None:
    recs = {r.video_id: r for r in index_videos(fake_avss, "avss", "train")}
    assert recs["s_tr"].frame_numbers == (0, 1, 2, 3, 4)
    assert recs["s_tr"].mask_paths[0] is not None and recs["s_tr"].mask_paths[1] is None  # v1s train
    assert len(recs["x_tr"].frame_paths) == 10
    ds = AVSBenchDataset(fake_avss, "avss", "train", image_size=16, audio_frontend=None, pad_to=10)
    assert ds.num_classes == 70 and ds.num_semantic_classes == 71
    batch = collate_videos([ds[0], ds[1], ds[2]])
    assert batch.frames.shape == (3, 10, 3, 16, 16)
    assert batch.valid[0].tolist() == [True] * 5 + [False] * 5
    assert batch.has_mask[0].tolist() == [True] + [False] * 9
    assert batch.frame_ids[0] == [0, 1, 2, 3, 4, -1, -1, -1, -1, -1]
    dog = L.AVSS_CLASSES.index("dog") - 1
    assert batch.labels[0, dog] == 1 and batch.labels[0].sum() == 1
    assert batch.labels[1].sum() == 3  # dog + man + woman over the v1m video's maps
    assert set(batch.masks[1].unique().tolist()) <= {0, 17, 41, 70}


def test_s4_dataset_item_shapes(fake_s4: Path) -> None:
    ds = AVSBenchDataset(fake_s4, "s4", "test", image_size=24, audio_frontend=None)
    s = ds[0]
    assert s.frames.shape == (5, 3, 24, 24) and s.masks.shape == (5, 24, 24)
    assert s.has_mask.all() and s.masks.dtype == torch.int64
    assert set(s.masks.unique().tolist()) <= {0, 1}
    assert s.labels[L.S4_CATEGORIES.index("dog_barking")] == 1
    assert s.masks[1].sum() == 0  # the all-black mask of vidD frame 2


def test_augmentation_aligned_and_reproducible(fake_s4: Path, tmp_path: Path) -> None:
    ds = AVSBenchDataset(fake_s4, "s4", "test", image_size=24, audio_frontend=None, augment=True, seed=3)
    a, b = ds[0], ds[0]
    assert torch.equal(a.frames, b.frames)
    differs = []
    for epoch in range(1, 6):
        ds.set_epoch(epoch)
        differs.append(not torch.equal(a.frames, ds[0].frames))
    assert any(differs)  # the geometry changes with the epoch


def test_pseudo_masks_follow_geometry(fake_s4: Path, tmp_path: Path) -> None:
    from PIL import Image

    pseudo = tmp_path / "pseudo"
    for r in index_videos(fake_s4, "s4", "train"):
        for k, mp in zip(r.frame_numbers, r.frame_paths):
            p = pseudo / L.prediction_relpath("s4", "train", r.category, r.video_id, k)
            p.parent.mkdir(parents=True, exist_ok=True)
            # the pseudo mask equals the GT of frame 1, so both must transform identically
            gt = Image.open(r.mask_paths[0])
            gt.save(p)
    ds = AVSBenchDataset(fake_s4, "s4", "train", image_size=24, audio_frontend=None, augment=True, pseudo_dir=pseudo)
    for epoch in range(3):
        ds.set_epoch(epoch)
        s = ds[0]
        pm, gt = s.pseudo_masks[0] > 0.5, s.masks[0].bool()
        # bilinear (pseudo) vs nearest (GT) resizing may differ on the boundary only
        assert (pm & gt).sum() / (pm | gt).sum() > 0.8
        assert not torch.equal(gt, gt.flip(-1))  # the check would see a missing flip


def test_pseudo_labels_are_resized_without_blending_class_ids(fake_s4: Path, tmp_path: Path) -> None:
    """PCAS pseudo labels (class ids, 255 = ignore) under crop augmentation: nearest neighbour, exactly the GT's geometry."""
    from PIL import Image

    pseudo = tmp_path / "pseudo"
    for r in index_videos(fake_s4, "s4", "train"):
        gt = np.asarray(Image.open(r.mask_paths[0]).convert("L")) > 0
        ids = np.where(gt, 3, 0).astype(np.uint8)
        ids[:2] = 255  # an ignore band
        for k in r.frame_numbers:
            p = pseudo / L.prediction_relpath("s4", "train", r.category, r.video_id, k)
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(ids).save(p)
    for labels, exact in ((True, True), (False, False)):
        ds = AVSBenchDataset(fake_s4, "s4", "train", image_size=24, audio_frontend=None, augment=True, pseudo_dir=pseudo, pseudo_labels=labels)
        for epoch in range(3):
            ds.set_epoch(epoch)
            s = ds[0]
            values = set(torch.unique(torch.round(s.pseudo_masks[0] * 255)).int().tolist())
            assert (values <= {0, 3, 255}) == exact, values  # bilinear resizing blends 0, 3 and 255
            if labels:
                assert torch.equal(s.pseudo_masks[0] == 3 / 255, s.masks[0].bool() & (s.pseudo_masks[0] != 1.0))


def test_metadata_problems_named(tmp_path: Path) -> None:
    from fakes import write_fake_s4

    root = write_fake_s4(tmp_path / "s4")
    csv = root / "s4_meta_data.csv"
    text = csv.read_text()
    csv.write_text(text + "../evil,0,dog_barking,train\nvidA,0,dog_barking,train\nvidZ,0,dog_barking,holdout\nbad,row\n")
    with pytest.raises(DataError) as exc:
        read_metadata(root, "s4")
    assert "s4_meta_data.csv" in str(exc.value)
    report = validate_dataset(root, "s4")
    problems = " | ".join(p["problem"] for p in report["problems"])
    assert "path traversal" in problems and "duplicate video id 'vidA'" in problems
    assert "unknown split 'holdout'" in problems and "expected 4 columns" in problems


def test_malformed_label2idx(fake_avss: Path) -> None:
    (fake_avss / "label2idx.json").write_text("{not json")
    with pytest.raises(DataError, match="label2idx.json: malformed JSON"):
        class_names(fake_avss, "avss")


@pytest.mark.parametrize("layout", ["s4", "ms3", "avss"])
def test_validate_clean_and_broken(layout: str, tmp_path: Path) -> None:
    from fakes import write_fake_avss, write_fake_ms3, write_fake_s4

    root = {"s4": write_fake_s4, "ms3": write_fake_ms3, "avss": write_fake_avss}[layout](tmp_path / layout)
    report = validate_dataset(root, layout)
    assert report["problems"] == []
    train = index_videos(root, layout, "train")
    expected_masks = sum(p is not None for r in train for p in r.mask_paths)
    assert report["splits"]["train"] == {"videos": len(train), "frames": sum(len(r.frame_paths) for r in train), "masks": expected_masks}
    # Break three files: delete a frame, truncate another, empty a wav. All three are reported.
    rec = train[0]
    rec.frame_paths[1].unlink()
    data = rec.frame_paths[2].read_bytes()
    rec.frame_paths[2].write_bytes(data[: len(data) // 3])
    rec.audio_path.write_bytes(b"")
    report = validate_dataset(root, layout)
    paths = {p["path"]: p["problem"] for p in report["problems"]}
    assert paths[str(rec.frame_paths[1])] == "frame not found"
    assert "not a readable image" in paths[str(rec.frame_paths[2])]
    assert paths[str(rec.audio_path)] == "audio file is 0 bytes"


def test_validate_mask_size_mismatch(fake_s4: Path) -> None:
    from PIL import Image

    rec = index_videos(fake_s4, "s4", "val")[0]
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(rec.mask_paths[0])
    report = validate_dataset(fake_s4, "s4")
    assert any("mask is 12x10, its frames are 32x32" in p["problem"] for p in report["problems"])


def test_read_mask_palette_and_rgb(tmp_path: Path) -> None:
    from PIL import Image

    arr = np.array([[0, 3], [3, 0]], np.uint8)
    img = Image.fromarray(arr).convert("P")
    img.putpalette([c for rgb in L.voc_palette(256) for c in rgb])
    img.save(tmp_path / "p.png")
    assert read_mask(tmp_path / "p.png", "s4").tolist() == [[0, 1], [1, 0]]
    assert read_mask(tmp_path / "p.png", "avss", 71).tolist() == [[0, 3], [3, 0]]
    with pytest.raises(DataError, match="out of range"):
        read_mask(tmp_path / "p.png", "avss", 3)


def test_safe_pickle_reads_official_style_tensor(tmp_path: Path) -> None:
    t = torch.randn(5, 1, 96, 64)
    path = tmp_path / "feat.pkl"
    with open(path, "wb") as f:
        pickle.dump(t, f)  # how AVSBench wrote its audio_log_mel files
    assert torch.equal(load_tensor_pickle(path), t)


class _Evil:
    def __reduce__(self):  # noqa: D105
        return (os.system, ("touch PWNED_BY_PICKLE",))


def test_safe_pickle_refuses_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(DataError) as exc:
        load_tensor_pickle(path)
    assert "evil.pkl" in str(exc.value) and "refused to unpickle global" in str(exc.value)
    assert "system" in str(exc.value)
    assert not (tmp_path / "PWNED_BY_PICKLE").exists()
    (tmp_path / "empty.pkl").write_bytes(b"")
    with pytest.raises(DataError, match="0 bytes"):
        load_tensor_pickle(tmp_path / "empty.pkl")
    (tmp_path / "list.pkl").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(DataError, match="expected a pickled tensor"):
        load_tensor_pickle(tmp_path / "list.pkl")


def test_sample_frames(fake_s4: Path) -> None:
    ds = AVSBenchDataset(fake_s4, "s4", "test", image_size=16, audio_frontend=None, sample_frames=2, augment=True)
    s = ds[0]
    assert s.frames.shape[0] == 2 and len(s.frame_ids) == 2 and s.frame_ids[0] < s.frame_ids[1]
    full = AVSBenchDataset(fake_s4, "s4", "test", image_size=16, audio_frontend=None, augment=True)[0]
    i = s.frame_ids[0] - 1
    assert torch.equal(s.frames[0], full.frames[i])  # same geometry as the full video
    with pytest.raises(ValueError, match="sample_frames"):
        AVSBenchDataset(fake_s4, "s4", "test", audio_frontend=None, sample_frames=6)


def test_masked_frames(fake_s4: Path, fake_ms3: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # S4 train: only frame 1 has a mask, so an item is that frame alone, with the full video's geometry
    full = AVSBenchDataset(fake_s4, "s4", "train", image_size=16, audio_frontend=None, augment=True)
    masked = AVSBenchDataset(fake_s4, "s4", "train", image_size=16, audio_frontend=None, augment=True, masked_frames=True)
    assert len(masked) == len(full)
    for i in range(len(full)):
        f, m = full[i], masked[i]
        assert f.has_mask.tolist() == [True, False, False, False, False]
        assert m.frames.shape[0] == 1 and m.frame_ids == [1] and bool(m.has_mask[0]) and bool(m.valid[0])
        assert torch.equal(m.frames[0], f.frames[0]) and torch.equal(m.masks[0], f.masks[0])
    batch = collate_videos([masked[0], masked[1]])
    assert batch.frames.shape[:2] == (2, 1)
    # MS3 train has a mask on every frame: nothing is dropped
    ms3 = AVSBenchDataset(fake_ms3, "ms3", "train", image_size=16, audio_frontend=None, masked_frames=True)[0]
    assert ms3.frames.shape[0] == 5 and bool(ms3.has_mask.all())
    with pytest.raises(ValueError, match="exclude each other"):
        AVSBenchDataset(fake_s4, "s4", "train", audio_frontend=None, masked_frames=True, sample_frames=1)

    # a video without any mask has nothing to train on: refused, naming the video and its folder
    import dataclasses

    from avseg.data import avsbench

    records = index_videos(fake_s4, "s4", "train")
    stripped = [records[0], dataclasses.replace(records[1], mask_paths=(None,) * len(records[1].mask_paths)), *records[2:]]
    monkeypatch.setattr(avsbench, "index_videos", lambda root, layout, split: stripped)
    with pytest.raises(DataError, match=f"video {records[1].video_id} of split 'train' has no ground-truth mask") as exc:
        AVSBenchDataset(fake_s4, "s4", "train", audio_frontend=None, masked_frames=True)
    assert str(records[1].frame_paths[0].parent) in str(exc.value)


# --- memo of costly audio features ------------------------------------------------------------------------
def _counting_frontend(monkeypatch: pytest.MonkeyPatch, memoise: bool = True) -> list[int]:
    """Register front-end 'counting' (16 kHz, 1 s windows -> (T, 1, 4, 1) means); returns its call log."""
    from avseg.audio import FRONTENDS, FrontendSpec

    calls: list[int] = []

    def fn(windows: torch.Tensor) -> torch.Tensor:
        calls.append(windows.shape[0])
        return windows.reshape(windows.shape[0], 1, 4, -1).mean(-1, keepdim=True)

    monkeypatch.setitem(FRONTENDS, "counting", FrontendSpec("counting", 16000, 1.0, fn, memoise=memoise))
    return calls


def test_memoised_frontend_is_computed_once_per_clip(fake_s4: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _counting_frontend(monkeypatch)
    ds = AVSBenchDataset(fake_s4, "s4", "train", image_size=16, audio_frontend="counting")
    first = ds[0].audio
    assert len(calls) == 1
    ds.set_epoch(3)
    again = ds[0].audio
    assert len(calls) == 1 and torch.equal(first, again)  # later epochs reuse it
    again.add_(1.0)  # a caller changing its copy does not change the memo
    assert torch.equal(ds[0].audio, first)
    ds[1]
    assert len(calls) == 2
    # not memoised: front-ends without the flag, and any audio_transform (the listening conditions)
    plain = _counting_frontend(monkeypatch, memoise=False)
    ds = AVSBenchDataset(fake_s4, "s4", "train", image_size=16, audio_frontend="counting")
    ds[0], ds[0]
    assert len(plain) == 2
    calls = _counting_frontend(monkeypatch)
    ds = AVSBenchDataset(fake_s4, "s4", "train", image_size=16, audio_frontend="counting", audio_transform=lambda r, w, sr: w * 0)
    ds[0], ds[0]
    assert len(calls) == 2


def test_memo_key_holds_the_negative_audio_plan(fake_s4: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _counting_frontend(monkeypatch)
    ds = AVSBenchDataset(fake_s4, "s4", "train", image_size=16, audio_frontend="counting", augment=True)
    record = ds.records[0]
    t = len(record.frame_paths)
    own = ds.audio_features(record, t)[0]
    silent = ds.audio_features(record, t, ("silence", 123))[0]
    assert len(calls) == 2 and not torch.equal(own, silent) and silent.abs().max() == 0
    assert torch.equal(ds.audio_features(record, t, ("silence", 456))[0], silent)  # the seed is unused
    assert torch.equal(ds.audio_features(record, t)[0], own) and len(calls) == 2
    other = ds.audio_features(record, t, ("other", 1))[0]
    assert len(calls) == 3 and torch.equal(ds.audio_features(record, t, ("other", 1))[0], other) and len(calls) == 3
    ds.audio_features(record, t, ("noise", 7)), ds.audio_features(record, t, ("noise", 7))
    assert len(calls) == 5  # a fresh noise seed every epoch: never kept
    # through __getitem__ with negative training on: each epoch's plan is honoured
    ds.set_negative_audio(0.5, ("silence", "other"))
    for epoch in range(4):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            kind, helper = ds.negative_plan(i)
            expected = ds.audio_features(ds.records[i], t, (kind, helper))[0]
            assert torch.equal(ds[i].audio, expected)


# --- files that must not run code or exhaust memory -------------------------------------------------------------
@pytest.mark.parametrize("payload", [Payload, ExecPayload], ids=["os.system", "builtins.exec"])
def test_malicious_pkl_through_the_loader_is_refused(payload: type, fake_s4: Path, tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    rec = index_videos(fake_s4, "s4", "train")[0]
    rec.pkl_path.parent.mkdir(parents=True, exist_ok=True)
    rec.pkl_path.write_bytes(pickle.dumps(payload(marker), protocol=2))
    ds = AVSBenchDataset(fake_s4, "s4", "train", image_size=16, audio_frontend="pkl")
    with pytest.raises(DataError) as exc:
        ds[0]
    assert exc.value.path == str(rec.pkl_path)
    assert "refused to unpickle global" in exc.value.problem
    assert not marker.exists(), "the pickle's payload ran"
    # The validator lists it as well (the .pkl is optional, but a present one must be safe).
    report = validate_dataset(fake_s4, "s4")
    assert any(p["path"] == str(rec.pkl_path) and "refused to unpickle" in p["problem"] for p in report["problems"])
    assert not marker.exists()


def _zero_stride_tensor_pickle(rows: int) -> bytes:
    """A tensor pickle describing (rows, 1, 96, 64) floats over a storage of one float (all strides 0)."""

    class HugeView:
        def __reduce__(self):
            storage = torch.zeros(1).untyped_storage()
            return (torch._utils._rebuild_tensor_v2, (torch.storage.TypedStorage(wrap_storage=storage, dtype=torch.float32, _internal=True), 0, (rows, 1, 96, 64), (0, 0, 0, 0), False, OrderedDict()))

    return pickle.dumps(HugeView(), protocol=4)


def test_pkl_with_a_huge_zero_stride_view_does_not_exhaust_memory(fake_s4: Path) -> None:
    rows = 200_000  # 4.9 GB as float32 if the whole view were converted
    rec = index_videos(fake_s4, "s4", "train")[0]
    rec.pkl_path.parent.mkdir(parents=True, exist_ok=True)
    rec.pkl_path.write_bytes(_zero_stride_tensor_pickle(rows))
    ds = AVSBenchDataset(fake_s4, "s4", "train", image_size=16, audio_frontend="pkl")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    sample = ds[0]
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert sample.audio.shape == (5, 1, 96, 64)
    assert grown_mb < 500, f"peak memory grew by {grown_mb:.0f} MB"


def sample_index(ds: AVSBenchDataset, video: str) -> int:
    return [r.video_id for r in ds.records].index(video)


# --- the bad-input matrix ------------------------------------------------------------------------------
# Each case breaks one file of the fake S4 dataset. ``loader``: the error the training loader raises (a
# regex on the message, which must also name the file), or None when the input is accepted (documented,
# logged handling). ``validate``: ("problem" | "warning" | None, regex) for ``avseg data validate``.
def _grey_mask(path: Path) -> None:
    arr = np.zeros((32, 32), np.uint8)
    arr[4:20, 4:20] = 128
    arr[20:24, 20:24] = 7
    path.write_bytes(png_bytes(arr))


def _nan(path: Path) -> None:
    w = sine()
    w[SR * 2] = np.nan
    path.write_bytes(wav_bytes(w, subtype="FLOAT"))


def _inf(path: Path) -> None:
    w = sine()
    w[100] = np.inf
    path.write_bytes(wav_bytes(w, subtype="FLOAT"))


FRAME_CASES = {
    "png-zero-bytes": (lambda p: p.write_bytes(b""), r"frame is 0 bytes", ("problem", r"frame is 0 bytes")),
    "png-truncated": (lambda p: truncate(p), r"frame is not a readable image", ("problem", r"not a readable image")),
    "png-text": (lambda p: p.write_text("this is not an image"), r"frame is not a readable image", ("problem", r"not a readable image")),
    "png-holding-a-wav": (lambda p: p.write_bytes(wav_bytes(sine(0.1))), r"frame is not a readable image", ("problem", r"not a readable image")),
    "png-missing": (lambda p: p.unlink(), r"frame not found", ("problem", r"frame not found")),
    "png-other-size": (lambda p: p.write_bytes(png_bytes(np.zeros((40, 48, 3), np.uint8))), r"frame is 48x40, the first frame of video \w+ is 32x32", ("problem", r"frame is 48x40, other frames of the video are 32x32")),
    "jpeg-named-png": (lambda p: p.write_bytes(png_bytes(np.zeros((32, 32, 3), np.uint8), "JPEG")), None, ("warning", r"file is a JPEG image named \.png")),
}
MASK_CASES = {
    "mask-zero-bytes": (lambda p: p.write_bytes(b""), r"mask is 0 bytes", ("problem", r"mask is 0 bytes")),
    "mask-truncated": (lambda p: truncate(p), r"mask is not a readable image", ("problem", r"mask is not a readable image")),
    "mask-text": (lambda p: p.write_text("nope"), r"mask is not a readable image", ("problem", r"mask is not a readable image")),
    "mask-wrong-size": (lambda p: p.write_bytes(png_bytes(np.zeros((10, 12), np.uint8))), r"mask is 12x10 but its frame is 32x32", ("problem", r"mask is 12x10, its frames are 32x32")),
    "mask-grey-values": (_grey_mask, None, ("warning", r"grey mask holds values other than 0/255")),
}
WAV_CASES = {
    "wav-zero-bytes": (lambda p: p.write_bytes(b""), r"audio file .* is 0 bytes", ("problem", r"audio file is 0 bytes")),
    "wav-truncated": (lambda p: truncate(p), r"is truncated: its 'data' chunk declares 160000 bytes but only \d+ follow", ("problem", r"audio is truncated")),
    "wav-header-only": (lambda p: truncate(p, 44 / p.stat().st_size), r"is truncated", ("problem", r"audio is truncated")),
    "wav-holding-a-png": (lambda p: p.write_bytes(png_bytes(np.zeros((8, 8, 3), np.uint8))), r"(unreadable or corrupt|has no audio track)", ("problem", r"(unreadable or corrupt|no audio track)")),
    "wav-missing": (lambda p: p.unlink(), r"does not exist", ("problem", r"audio file not found")),
    "wav-nan": (_nan, r"NaN/Inf samples \(first at 2.000 s\)", ("problem", r"NaN/Inf samples")),
    "wav-inf": (_inf, r"NaN/Inf samples", ("problem", r"NaN/Inf samples")),
    "wav-all-zero": (lambda p: p.write_bytes(wav_bytes(np.zeros(SR * 5, np.float32))), None, ("warning", r"audio is all zeros \(silent\)")),
    "wav-44.1kHz": (lambda p: p.write_bytes(wav_bytes(sine(sr=44100), sr=44100)), None, (None, "")),
    "wav-stereo": (write_stereo_wav, None, (None, "")),
}
MATRIX = {**{k: ("frame",) + v for k, v in FRAME_CASES.items()}, **{k: ("mask",) + v for k, v in MASK_CASES.items()},
          **{k: ("wav",) + v for k, v in WAV_CASES.items()}}  # fmt: skip


def _target(rec, kind: str, slot: int = 2) -> Path:
    return {"frame": rec.frame_paths[slot], "mask": rec.mask_paths[slot], "wav": rec.audio_path}[kind]


@pytest.mark.parametrize("case", list(MATRIX))
def test_bad_input_matrix_loader(case: str, fake_s4: Path, caplog: pytest.LogCaptureFixture) -> None:
    kind, mutate, loader_error, _ = MATRIX[case]
    rec = index_videos(fake_s4, "s4", "val")[0]  # val: every frame has a mask
    path = _target(rec, kind)
    mutate(path)
    ds = AVSBenchDataset(fake_s4, "s4", "val", image_size=16, audio_frontend="wsavs-logmel")
    i = sample_index(ds, rec.video_id)
    if loader_error is None:
        with caplog.at_level(logging.WARNING):
            sample = ds[i]
        assert torch.isfinite(sample.audio).all() and sample.frames.shape == (5, 3, 16, 16)
        if case == "wav-all-zero":
            assert any("all zeros (silent)" in r.getMessage() and str(path) in r.getMessage() for r in caplog.records)
            caplog.clear()
            ds[i]
            assert not any("all zeros" in r.getMessage() for r in caplog.records), "warned twice for one file"
        if case == "mask-grey-values":
            assert set(sample.masks[2].unique().tolist()) == {0, 1}  # != 0, as the official loaders
        return
    with pytest.raises((DataError, AudioError)) as exc:
        ds[i]
    assert str(path) in str(exc.value), f"the error does not name {path}: {exc.value}"
    assert re.search(loader_error, str(exc.value)), str(exc.value)
    assert ds[sample_index(ds, index_videos(fake_s4, "s4", "val")[1].video_id)].frames.shape[0] == 5  # others load


def test_bad_input_matrix_validate_lists_everything_in_one_pass(fake_s4: Path, capsys: pytest.CaptureFixture) -> None:
    """Every case above at once (each on its own file) plus metadata and .pkl problems: all listed."""
    videos = {r.video_id: r for split in L.SPLITS for r in index_videos(fake_s4, "s4", split)}
    frame_videos = ["vidA", "vidB", "vidC", "vidD", "vidE", "vidF", "vidG"]  # frame k=3 of each
    mask_slots = [("vidH", 1), ("vidH", 2), ("vidH", 3), ("vidH", 4), ("vidC", 4)]
    wav_videos = ["vidA", "vidB", "vidC", "vidD", "vidE", "vidF", "vidG", "vidH"]
    expected: list[tuple[str, str, str]] = []  # (kind, path, regex)
    for (case, (mutate, _, (kind, regex))), vid in zip(FRAME_CASES.items(), frame_videos):
        path = videos[vid].frame_paths[2]
        mutate(path)
        expected.append((kind, str(path), regex))
    for (case, (mutate, _, (kind, regex))), (vid, k) in zip(MASK_CASES.items(), mask_slots):
        path = videos[vid].mask_paths[k]
        mutate(path)
        expected.append((kind, str(path), regex))
    wav_cases = [c for c in WAV_CASES if c not in ("wav-44.1kHz", "wav-stereo")]
    for case, vid in zip(wav_cases, wav_videos):
        mutate, _, (kind, regex) = WAV_CASES[case]
        path = videos[vid].audio_path
        mutate(path)
        expected.append((kind, str(path), regex))
    marker = fake_s4 / "PWNED"
    for vid, data, regex in [("vidA", pickle.dumps(Payload(marker), protocol=2), "refused to unpickle global"),
                             ("vidB", pickle.dumps(torch.zeros(5, 1, 96, 63)), r"expected a \[T, 1, 96, 64\] tensor"),
                             ("vidC", b"", "0 bytes")]:  # fmt: skip
        pkl = videos[vid].pkl_path
        pkl.parent.mkdir(parents=True, exist_ok=True)
        pkl.write_bytes(data)
        expected.append(("problem", str(pkl), regex))
    csv = L.metadata_path(fake_s4, "s4")
    rows = {"../evil,0,dog_barking,train": r"line 10: video id '\.\./evil' is not a plain file name",
            "/etc/passwd,0,dog_barking,train": r"line 11: video id '/etc/passwd' is not a plain file name",
            "vidA,0,dog_barking,train": r"line 12: duplicate video id 'vidA' \(first on line 2\)",
            "vidZ,0,dog_barking,holdout": r"line 13: unknown split 'holdout'",
            "short,row": r"line 14: expected 4 columns",
            "vidY,0,../../etc,train": r"line 15: category '\.\./\.\./etc' is not a plain file name",
            "vid\tX,0,dog_barking,test": r"line 16: video id .* holds control characters",
            "..\\win,0,dog_barking,val": r"line 17: video id .* is not a plain file name"}  # fmt: skip
    csv.write_text(csv.read_text() + "\n".join(rows) + "\n")
    expected += [("problem", str(csv), regex) for regex in rows.values()]

    capsys.readouterr()
    assert main(["data", "validate", str(fake_s4), "--layout", "s4", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    for kind, path, regex in expected:
        if kind is None:
            continue
        listed = [p["problem"] for p in report["problems" if kind == "problem" else "warnings"] if p["path"] == path]
        assert any(re.search(regex, problem) for problem in listed), f"{kind} {regex!r} for {path} not listed: {listed}"
    # Nothing else is reported: every problem is one of the cases (no noise that would hide them).
    expected_paths = {path for kind, path, _ in expected if kind == "problem"}
    assert {p["path"] for p in report["problems"]} == expected_paths
    assert not marker.exists()
    assert main(["data", "validate", str(fake_s4), "--layout", "s4"]) == 1
    text = capsys.readouterr().out
    assert f"{len(report['problems'])} problem(s):" in text


def test_bad_input_matrix_avss_jpg_semantic_maps_and_label2idx(fake_avss: Path) -> None:
    recs = {r.video_id: r for r in index_videos(fake_avss, "avss", "train")}
    zero, cut, text = recs["s_tr"].frame_paths[1], recs["m_tr"].frame_paths[2], recs["x_tr"].frame_paths[3]
    zero.write_bytes(b"")
    truncate(cut)
    text.write_text("GIF89a? no")
    out_of_range = recs["m_tr"].mask_paths[0]
    sem = np.zeros((32, 32), np.uint8)
    sem[0, 0] = 200
    out_of_range.write_bytes(png_bytes(sem))
    rgb = recs["x_tr"].mask_paths[1]
    rgb.write_bytes(png_bytes(np.zeros((32, 32, 3), np.uint8)))
    negative = recs["s_tr"].mask_paths[0]  # a 32-bit TIFF behind the .png name: read by content
    buf = io.BytesIO()
    Image.fromarray(np.full((32, 32), -3, np.int32), mode="I").save(buf, format="TIFF")
    negative.write_bytes(buf.getvalue())
    expected = {str(zero): "frame is 0 bytes", str(cut): "frame is not a readable image", str(text): "frame is not a readable image",
                str(out_of_range): r"class index 200 out of range \(label2idx has 71 classes\)",
                str(rgb): "semantic map must be a single-channel class-index PNG", str(negative): "class index -3 is negative"}  # fmt: skip
    ds = AVSBenchDataset(fake_avss, "avss", "train", image_size=16, audio_frontend=None, pad_to=10)
    for i, rec in enumerate(ds.records):
        with pytest.raises(DataError) as exc:
            ds[i]
        assert exc.value.path in expected and re.search(expected[exc.value.path], exc.value.problem)
    report = validate_dataset(fake_avss, "avss")
    listed = {p["path"]: p["problem"] for p in report["problems"]}
    for path, regex in expected.items():
        assert re.search(regex, listed.get(path, "")), (path, listed.get(path))
    assert set(listed) == set(expected)


LABEL2IDX = {
    "not-json": ("{not json", r"malformed JSON"),
    "empty-file": ("", r"malformed JSON"),
    "a-list": (json.dumps(["background", "dog"]), r"non-empty JSON object"),
    "empty-object": ("{}", r"non-empty JSON object"),
    "string-index": (json.dumps({"background": "0", "dog": 1}), r"map a class name \(string\) to an integer"),
    "bool-index": (json.dumps({"background": False, "dog": True}), r"integer index"),
    "gap": (json.dumps({"background": 0, "dog": 2}), r"without gaps or repeats"),
    "repeat": (json.dumps({"background": 0, "dog": 0}), r"without gaps or repeats"),
    "deeply-nested": ("[" * 100_000 + "]" * 100_000, r"malformed JSON"),
    "not-utf8": (b"\xff\xfe{", r"malformed JSON"),
}


@pytest.mark.parametrize("case", list(LABEL2IDX))
def test_bad_input_matrix_label2idx(case: str, fake_avss: Path, capsys: pytest.CaptureFixture) -> None:
    text, regex = LABEL2IDX[case]
    path = L.label2idx_path(fake_avss)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(DataError) as exc:
        avss_classes(fake_avss)
    assert exc.value.path == str(path) and re.search(regex, exc.value.problem), exc.value.problem
    with pytest.raises(DataError, match="label2idx.json"):
        AVSBenchDataset(fake_avss, "avss", "train", audio_frontend=None)
    report = validate_dataset(fake_avss, "avss")
    assert any(p["path"] == str(path) and re.search(regex, p["problem"]) for p in report["problems"])


METADATA = {  # layout -> case -> (csv text, regex); every problem names the CSV and the line
    "s4": {
        "missing-columns": ("name,start,category,split\nvidA,0,dog_barking\n", r"line 2: expected 4 columns"),
        "unknown-split": ("vidA,0,dog_barking,trian\n", r"line 1: unknown split 'trian'"),  # not taken for a header
        "duplicate-id": ("vidA,0,dog_barking,train\nvidA,0,dog_barking,val\n", r"line 2: duplicate video id 'vidA' \(first on line 1\)"),
        "traversal": ("name,start,category,split\n\n\n../../x,0,dog_barking,train\n", r"line 4: video id '\.\./\.\./x' is not a plain file name"),
        "absolute": ("/abs/path,0,dog_barking,train\n", r"is not a plain file name \(refused: path traversal\)"),
        "category-traversal": ("vidA,0,..,train\n", r"category '\.\.' is not a plain file name"),
        "nul-byte": ("vi\x00dA,0,dog_barking,train\n", r"holds control characters"),
        "quoted-newline": ('"vid\nA",0,dog_barking,train\n', r"holds control characters"),
        "too-long": ("v" * 300 + ",0,dog_barking,train\n", r"longer than 200 bytes"),
        "huge-field": ("vidA,0,dog_barking,train," + "x" * 200_000 + "\n", r"not valid CSV \(field larger than field limit"),
        "empty": ("\n\n", r"metadata file is empty"),
        "not-utf8": (b"vid\xffA,0,dog,train\n", r"unreadable metadata"),
    },
    "ms3": {
        "no-split-column": ("video_id,subset\nm1,train\n", r"line 1: header has no 'split' column"),
        "missing-columns": ("video_id,split,labels\nm1\n", r"line 2: expected 3 columns"),
        "unknown-split": ("video_id,split\nm1,testing\n", r"line 2: unknown split 'testing'"),
    },
    "avss": {
        "missing-columns": ("vid,uid,split\n", r"line 1: expected 7 columns"),
        "unknown-label": ("vid,uid,s_min,s_sec,a_obj,split,label\nv0,s_tr,0,0,dog,train,v3\n", r"line 2: label 'v3' is not one of"),
        "traversal": ("vid,uid,s_min,s_sec,a_obj,split,label\nv0,../s_tr,0,0,dog,train,v1s\n", r"line 2: video id '\.\./s_tr' is not a plain"),
    },
}


@pytest.mark.parametrize("layout,case", [(lay, c) for lay, cases in METADATA.items() for c in cases])
def test_bad_input_matrix_metadata(layout: str, case: str, tmp_path: Path) -> None:
    from fakes import write_fake_avss, write_fake_ms3, write_fake_s4

    root = {"s4": write_fake_s4, "ms3": write_fake_ms3, "avss": write_fake_avss}[layout](tmp_path / layout)
    text, regex = METADATA[layout][case]
    csv = L.metadata_path(root, layout)
    csv.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(DataError) as exc:
        read_metadata(root, layout)
    assert exc.value.path == str(csv) and re.search(regex, exc.value.problem), exc.value.problem
    with pytest.raises(DataError, match=re.escape(str(csv))):
        for split in L.SPLITS:
            AVSBenchDataset(root, layout, split, audio_frontend=None)
    report = validate_dataset(root, layout)
    assert any(p["path"] == str(csv) and re.search(regex, p["problem"]) for p in report["problems"]), report["problems"]


def test_loader_errors_name_the_file_from_dataloader_workers(fake_s4: Path) -> None:
    from torch.utils.data import DataLoader

    from avseg.data.avsbench import collate_videos

    rec = index_videos(fake_s4, "s4", "train")[0]
    rec.frame_paths[3].write_bytes(b"")
    ds = AVSBenchDataset(fake_s4, "s4", "train", image_size=16, audio_frontend=None)
    with pytest.raises(Exception) as exc:
        list(DataLoader(ds, batch_size=2, num_workers=1, collate_fn=collate_videos))
    assert str(rec.frame_paths[3]) in str(exc.value) and "frame is 0 bytes" in str(exc.value)
