"""The real-media composite builder: S4 layout, masks from polygons, negatives, splits by image, errors."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image, ImageDraw
from scipy.ndimage import binary_dilation

from avseg.data import layout as L
from avseg.data.composite import build_composite, read_media

SIZE = 64


def find_media() -> Path | None:
    """AVSEG_MEDIA, else <repo>/../shared/media (the shared development media folder)."""
    env = os.environ.get("AVSEG_MEDIA")
    candidate = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "media"
    return candidate if (candidate / "classes.txt").is_file() else None


@pytest.fixture(scope="module")
def media() -> Path:
    found = find_media()
    if found is None:
        pytest.skip("media folder not found (set AVSEG_MEDIA or provide <repo>/../shared/media)")
    return found


@pytest.fixture(scope="module")
def built(media, tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("composite") / "s4"
    counts = build_composite(media, root, seed=0, negatives=0.2, size=SIZE)
    return root, counts


def read_rows(root: Path) -> list[dict]:
    with open(L.metadata_path(root, "s4"), newline="") as f:
        return list(csv.DictReader(f))


def all_files(root: Path) -> dict[Path, bytes]:
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- on the shared media -----------------------------------------------------------------------------
@pytest.mark.media
def test_layout_counts_and_categories(built):
    root, counts = built
    rows = read_rows(root)
    assert list(rows[0]) == ["name", "start", "category", "split"]
    assert counts["videos"] == len(rows) == counts["positives"] + counts["negatives"]
    assert counts["negatives"] == round(0.2 * counts["positives"]) > 0
    assert [counts[s] for s in L.SPLITS] == [sum(r["split"] == s for r in rows) for s in L.SPLITS]
    assert all(counts["images"][s] >= 1 for s in L.SPLITS)
    assert all(" " not in r["category"] for r in rows)
    expected = {L.metadata_path(root, "s4"), root / "composite_info.json"}
    for r in rows:
        name, cat, split = r["name"], r["category"], r["split"]
        expected |= {L.s4_frame(root, split, cat, name, k) for k in range(1, 6)}
        expected |= {L.s4_mask(root, split, cat, name, k) for k in L.s4_mask_frames(split)}
        expected.add(L.s4_wav(root, split, cat, name))
    assert set(all_files(root)) == {p.relative_to(root) for p in expected}


@pytest.mark.media
def test_splits_are_disjoint_by_image(built):
    root, _ = built
    records = json.loads((root / "composite_info.json").read_text())["videos"]
    splits_of_image: dict[str, set[str]] = {}
    for rec in records:
        splits_of_image.setdefault(rec["image"], set()).add(rec["split"])
    assert all(len(s) == 1 for s in splits_of_image.values())


@pytest.mark.media
def test_masks_follow_polygons_and_negatives_are_empty(built, media):
    root, counts = built
    folder = read_media(media)
    records = {rec["name"]: rec for rec in json.loads((root / "composite_info.json").read_text())["videos"]}
    assert counts["empty_positive_masks"] == 0
    for r in read_rows(root):
        rec = records[r["name"]]
        assert rec["class"].replace(" ", "_") == r["category"]
        masks = [
            np.array(Image.open(L.s4_mask(root, r["split"], r["category"], r["name"], k)))
            for k in L.s4_mask_frames(r["split"])
        ]
        assert all(m.dtype == np.uint8 and set(np.unique(m)) <= {0, 255} for m in masks)
        if not rec["positive"]:
            assert not any(m.any() for m in masks)
            continue
        assert all(m.any() for m in masks)
        # Reference without jitter: the polygons' union at the photo's size, box-averaged to SIZE (pixel
        # coverage). The jitter (zoom <= 3 %, shift inside the zoom margin) moves any point by < 3 px
        # here, so every mask pixel lies near a covered pixel and every fully covered pixel near a mask
        # pixel, whatever nearest-neighbour sampling did to slivers.
        image_id = Path(rec["image"]).stem
        cls = folder.classes.index(rec["class"])
        width, height = Image.open(folder.images[image_id]).size
        reference = Image.new("L", (width, height), 0)
        draw = ImageDraw.Draw(reference)
        for c, poly in folder.objects[image_id]:
            if c == cls:
                draw.polygon([(x * width, y * height) for x, y in poly], fill=255)
        coverage = np.array(reference.resize((SIZE, SIZE), Image.BOX))
        got = masks[0] > 0
        assert not (got & ~binary_dilation(coverage > 0, iterations=3)).any(), r["name"]
        assert not ((coverage == 255) & ~binary_dilation(got, iterations=3)).any(), r["name"]


@pytest.mark.media
def test_audio_is_the_looped_recording(built, media):
    root, _ = built
    for rec in json.loads((root / "composite_info.json").read_text())["videos"][:6]:
        wav_path = L.s4_wav(root, rec["split"], rec["class"].replace(" ", "_"), rec["name"])
        audio, sr = sf.read(wav_path, dtype="int16")
        source, source_sr = sf.read(media / rec["sound"], dtype="int16")
        assert sr == source_sr == 16000 and audio.shape == (5 * 16000,)
        assert np.array_equal(audio, np.resize(source, audio.shape))


@pytest.mark.media
def test_deterministic(media, tmp_path):
    first = build_composite(media, tmp_path / "a", seed=1, size=32)
    second = build_composite(media, tmp_path / "b", seed=1, size=32)
    assert first == second
    assert all_files(tmp_path / "a") == all_files(tmp_path / "b")


# --- on a tiny fake media folder (runs everywhere) ---------------------------------------------------
def make_media(root: Path, label_text: str = "0 0.1 0.1 0.9 0.1 0.5 0.9\n") -> Path:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "sounds" / "dog").mkdir(parents=True)
    (root / "classes.txt").write_text("dog\ncell phone\n")
    for image_id in ("a", "b", "c"):
        Image.new("RGB", (40, 30), (10, 200, 30)).save(root / "images" / f"{image_id}.jpg")
        (root / "labels" / f"{image_id}.txt").write_text(label_text)
    sf.write(root / "sounds" / "dog" / "bark.wav", 0.1 * np.sin(np.arange(8000) / 5.0), 16000, subtype="PCM_16")
    return root


def test_fake_media_builds(tmp_path):
    media = make_media(tmp_path / "media")
    counts = build_composite(media, tmp_path / "out", size=32)
    assert counts["videos"] == 3 and counts["negatives"] == 0
    assert all(counts[s] == 1 for s in L.SPLITS)


def test_malformed_label_line_names_the_file(tmp_path):
    media = make_media(tmp_path / "media")
    (media / "labels" / "b.txt").write_text("0 0.1 0.1 0.9 0.1 0.5 0.9\n0 0.1 0.2 0.3\n")
    with pytest.raises(ValueError, match=r"b\.txt, line 2"):
        build_composite(media, tmp_path / "out", size=32)
    (media / "labels" / "b.txt").write_text("dog 0.1 0.1 0.9 0.1 0.5 0.9\n")
    with pytest.raises(ValueError, match=r"b\.txt, line 1: class id"):
        build_composite(media, tmp_path / "out", size=32)
    (media / "labels" / "b.txt").write_text("7 0.1 0.1 0.9 0.1 0.5 0.9\n")
    with pytest.raises(ValueError, match=r"b\.txt.*outside"):
        build_composite(media, tmp_path / "out", size=32)
    assert not (tmp_path / "out" / "s4_meta_data.csv").exists()


def test_missing_sound_folder_is_named(tmp_path):
    media = make_media(tmp_path / "media")
    (media / "sounds.csv").write_text(
        "path,class,source,licence,duration_s\nsounds/cell phone/ring.wav,cell phone,x,y,1.0\n"
    )
    with pytest.raises(ValueError, match="cell phone is missing"):
        build_composite(media, tmp_path / "out", size=32)
    (media / "sounds.csv").unlink()
    for wav in (media / "sounds" / "dog").iterdir():
        wav.unlink()
    (media / "sounds" / "dog").rmdir()
    (media / "sounds").rmdir()
    with pytest.raises(ValueError, match="sounds is missing"):
        build_composite(media, tmp_path / "out", size=32)


def test_refuses_existing_dataset(tmp_path):
    media = make_media(tmp_path / "media")
    build_composite(media, tmp_path / "out", size=32)
    with pytest.raises(FileExistsError):
        build_composite(media, tmp_path / "out", size=32)
