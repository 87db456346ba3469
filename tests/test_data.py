from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from avseg.data import layout as L
from avseg.data.avsbench import AVSBenchDataset, collate_videos, read_mask
from avseg.data.index import class_names, index_videos, read_metadata
from avseg.data.errors import DataError
from avseg.data.safe_pickle import load_tensor_pickle
from avseg.data.validate import validate_dataset


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
