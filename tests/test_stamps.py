"""The cut-out composite generator (avseg.data.stamps).

Most tests run on a tiny fake stamp folder written here (RGBA PNGs + generated sounds), so the generator
logic is tested everywhere; the tests marked by ``tuxpaint`` read the real Debian package
tuxpaint-stamps-default and skip when it is not installed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from avseg.cli import main
from avseg.data import layout as L
from avseg.data.avsbench import read_mask
from avseg.data.errors import DataError
from avseg.data.index import index_videos
from avseg.data.stamps import (
    CURATED_STAMPS,
    DEFAULT_STAMPS_DIR,
    EXCLUDED_STAMPS,
    SAMPLE_RATE,
    StampsConfig,
    generate,
    load_video_plan,
    object_sound,
    ownership_maps,
    read_stamps_info,
    scan_stamps,
)
from avseg.data.validate import validate_dataset

SIZE = 32
FAKE_CLASSES = ["fakebell", "fakecow", "fakedog"]


def _rgba(shape: str, colour: tuple[int, int, int], size: tuple[int, int]) -> np.ndarray:
    """(h, w, 4) uint8 cut-out with a transparent margin and a soft (anti-aliased) edge."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    u, v = (xx + 0.5) / w * 2 - 1, (yy + 0.5) / h * 2 - 1
    if shape == "disc":
        d = 1 - np.hypot(u, v) / 0.9
    elif shape == "square":
        d = 1 - np.maximum(np.abs(u), np.abs(v)) / 0.8
    else:  # triangle
        d = np.minimum(0.8 - v, np.minimum(v + 0.8 - 2 * np.abs(u), 1)) / 0.8
    alpha = np.clip(d * 12, 0, 1)
    rgb = np.broadcast_to(np.array(colour, np.uint8), (h, w, 3)).copy()
    rgb[::4] //= 2  # some texture
    return np.dstack([rgb, (alpha * 255).astype(np.uint8)])


def _tone(freq: float, seconds: float, sr: int = 22050) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t) * np.minimum(1, 10 * t)).astype(np.float32)


def write_fake_stamps(root: Path) -> Path:
    """3 usable stamps in two folders, plus one of each problem the scanner must report."""
    animals, tools = root / "animals", root / "tools"
    animals.mkdir(parents=True)
    tools.mkdir(parents=True)
    Image.fromarray(_rgba("disc", (150, 90, 40), (40, 30))).save(animals / "fakedog.png")
    sf.write(animals / "fakedog.ogg", _tone(300, 0.5), 22050, format="OGG", subtype="VORBIS")
    sf.write(animals / "fakedog_desc_fr.ogg", _tone(150, 0.3), 22050, format="OGG", subtype="VORBIS")  # ignored
    (animals / "fakedog.txt").write_text("A fake dog.\n")
    Image.fromarray(_rgba("square", (230, 230, 230), (30, 40))).save(animals / "fakecow.png")
    rng = np.random.default_rng(0)
    moo = (0.3 * rng.standard_normal(int(1.2 * SAMPLE_RATE)) * (np.arange(int(1.2 * SAMPLE_RATE)) % 4000 < 2500)).astype(np.float32)
    sf.write(animals / "fakecow.wav", moo, SAMPLE_RATE)
    Image.fromarray(_rgba("triangle", (200, 180, 20), (36, 36))).save(tools / "fakebell.png")
    sf.write(tools / "fakebell.wav", _tone(1200, 0.3, 44100), 44100)
    # problems
    Image.fromarray(np.full((20, 20, 3), 128, np.uint8)).save(tools / "flat.png")  # no alpha
    sf.write(tools / "flat.wav", _tone(500, 0.3), 22050)
    Image.fromarray(_rgba("disc", (10, 10, 10), (20, 20))).save(tools / "quiet.png")
    sf.write(tools / "quiet.wav", np.zeros(8000, np.float32), SAMPLE_RATE)  # digital silence
    Image.fromarray(_rgba("disc", (10, 200, 10), (20, 20))).save(tools / "broken.png")
    (tools / "broken.ogg").write_bytes(b"OggS this is not a vorbis stream" * 4)  # undecodable
    Image.fromarray(_rgba("square", (10, 10, 200), (20, 20))).save(tools / "mute.png")  # no sound at all
    sf.write(tools / "orphan.wav", _tone(700, 0.3), 22050)  # a sound without an image
    Image.fromarray(_rgba("triangle", (90, 90, 90), (24, 24))).save(tools / "twin.png")
    sf.write(tools / "twin.wav", moo, SAMPLE_RATE)  # the same recording as fakecow
    return root


def write_fake_backgrounds(root: Path, n: int = 4) -> Path:
    root.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(n):
        base = rng.integers(0, 255, (6, 8, 3)).astype(np.uint8)
        Image.fromarray(base).resize((80, 60), Image.BILINEAR).save(root / f"photo{i}.jpg", quality=90)
    (root / "bad.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    return root


@pytest.fixture(scope="module")
def fake_stamps(tmp_path_factory) -> Path:
    return write_fake_stamps(tmp_path_factory.mktemp("stamps"))


@pytest.fixture(scope="module")
def fake_backgrounds(tmp_path_factory) -> Path:
    return write_fake_backgrounds(tmp_path_factory.mktemp("bg") / "photos")


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- the curated table (no package needed) ---------------------------------------------------------------
def test_curated_table_is_consistent():
    names = [c.name for c in CURATED_STAMPS]
    assert len(names) == len(set(names))
    assert not set(names) & set(EXCLUDED_STAMPS)
    for c in CURATED_STAMPS:
        assert c.group.replace("_", "").isalpha() and c.group.islower(), c
        assert c.note, c
    assert all(reason for reason in EXCLUDED_STAMPS.values())


# --- the fake stamp folder -------------------------------------------------------------------------------
def test_scan_reports_every_unusable_stamp(fake_stamps: Path):
    cat = scan_stamps(fake_stamps)
    assert [s.name for s in cat.stamps] == FAKE_CLASSES
    assert {s.name: s.group for s in cat.stamps} == {"fakebell": "tools", "fakecow": "animals", "fakedog": "animals"}
    kinds = {p["stamp"]: p["kind"] for p in cat.problems}
    assert kinds == {
        "flat": "no_alpha", "quiet": "silent_sound", "broken": "undecodable_sound", "orphan": "no_image",
        "twin": "duplicate_sound",
    }  # fmt: skip
    files = {p["stamp"]: p["file"] for p in cat.problems}
    assert files["broken"].endswith("broken.ogg") and files["flat"].endswith("flat.png")
    assert cat.no_sound == ["mute"]
    # a folder of one's own (no curated stamp in it): its stamps are used, and listed as uncurated
    assert cat.uncurated == FAKE_CLASSES and not any(s.curated for s in cat.stamps) and cat.missing_curated
    dog = cat.by_name()["fakedog"]
    assert dog.sound == "animals/fakedog.ogg"  # not the description
    assert dog.rgba.shape[2] == 4 and dog.rgba[..., 3].max() == 255
    assert dog.rgba[0].any() and dog.rgba[:, 0, 3].any()  # cropped to the alpha's bounding box
    assert abs(dog.audio.size / SAMPLE_RATE - 0.5) < 0.05  # resampled to 16 kHz, silence trimmed


def test_missing_stamp_folder_says_how_to_install(tmp_path: Path, capsys):
    with pytest.raises(FileNotFoundError, match="tuxpaint-stamps-default"):
        scan_stamps(tmp_path / "nope")
    rc = main(["data", "stamps", "--layout", "s4", "--out", str(tmp_path / "d"), "--videos", "2",
               "--stamps", str(tmp_path / "nope")])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert str(tmp_path / "nope") in err and "apt-get install tuxpaint-stamps-default" in err


@pytest.mark.parametrize("layout", L.LAYOUTS)
def test_generate_validates_and_reports(layout: str, fake_stamps: Path, fake_backgrounds: Path, tmp_path: Path):
    root = tmp_path / layout
    counts = generate(layout, root, num_videos=6, seed=1, size=SIZE, stamps=fake_stamps, backgrounds=fake_backgrounds)
    report = validate_dataset(root, layout)
    assert report["problems"] == [], report["problems"]
    assert counts["videos"] == 6 and counts["classes"] == 3 and counts["stamps_used"] == 3
    assert set(counts["stamps_unusable"]) == {"flat", "quiet", "broken", "orphan", "twin"}
    assert counts["stamps_unusable"]["quiet"].startswith("silent_sound")
    assert counts["images_without_sound"] == 1
    assert list(counts["backgrounds_unusable"]) == [str(fake_backgrounds / "bad.jpg")]
    assert counts["backgrounds"] == {"train": 2, "val": 1, "test": 1}
    info = read_stamps_info(root)
    assert info["classes"] == FAKE_CLASSES and len(info["videos"]) == 6
    assert info["report"]["images_without_sound"] == ["mute"]
    if layout == "avss":
        label2idx = json.loads(L.label2idx_path(root).read_text())
        assert list(label2idx) == ["background", *FAKE_CLASSES]
    if layout in ("ms3", "avss"):  # changing and silent seconds exist over a few videos
        sounding = [[len(row) for row in v["sounding"]] for v in info["videos"] if v["label"] != "v1s"]
        assert any(len(set(s)) > 1 for s in sounding) or any(0 in s for s in sounding)


def test_same_arguments_same_bytes(fake_stamps: Path, fake_backgrounds: Path, tmp_path: Path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate("ms3", a, num_videos=5, seed=4, size=SIZE, stamps=fake_stamps, backgrounds=fake_backgrounds)
    generate("ms3", b, num_videos=5, seed=4, size=SIZE, stamps=fake_stamps, backgrounds=fake_backgrounds)
    generate("ms3", c, num_videos=5, seed=5, size=SIZE, stamps=fake_stamps, backgrounds=fake_backgrounds)
    files_a = all_files(a)
    assert files_a == all_files(b)
    assert files_a != all_files(c)
    # textures instead of photos: deterministic too, and the info says so
    generate("s4", tmp_path / "t1", num_videos=3, seed=0, size=SIZE, stamps=fake_stamps)
    generate("s4", tmp_path / "t2", num_videos=3, seed=0, size=SIZE, stamps=fake_stamps)
    assert all_files(tmp_path / "t1") == all_files(tmp_path / "t2")
    assert all(v["background"]["kind"] == "texture" for v in read_stamps_info(tmp_path / "t1")["videos"])


def test_splits_share_stamps_not_backgrounds(fake_stamps: Path, fake_backgrounds: Path, tmp_path: Path):
    root = tmp_path / "s4"
    generate("s4", root, num_videos=15, seed=2, size=SIZE, stamps=fake_stamps, backgrounds=fake_backgrounds)
    info = read_stamps_info(root)
    pools = info["background_pools"]
    assert not set(pools["test"]) & (set(pools["train"]) | set(pools["val"]))
    assert not set(pools["train"]) & set(pools["val"])
    categories: dict[str, set[str]] = {s: set() for s in L.SPLITS}
    compositions: dict[str, set] = {s: set() for s in L.SPLITS}
    for v in info["videos"]:
        assert v["background"]["image"] in pools[v["split"]]
        categories[v["split"]].add(info["classes"][v["objects"][v["sounding"][0][0]]["cls"]])
        compositions[v["split"]].add((v["background"]["image"], tuple(sorted(o["stamp"] for o in v["objects"]))))
        classes = [o["cls"] for o in v["objects"]]
        assert len(classes) == len(set(classes))  # every object of a video has its own class
    for split in L.SPLITS:  # 9 / 3 / 3 videos, 3 classes: every split sees every class
        assert categories[split] == set(FAKE_CLASSES), (split, categories)
    assert not compositions["train"] & compositions["test"] and not compositions["train"] & compositions["val"]


def test_coarse_grouping(fake_stamps: Path, tmp_path: Path):
    root = tmp_path / "avss"
    counts = generate("avss", root, num_videos=6, seed=0, size=SIZE, stamps=fake_stamps, config=StampsConfig(grouping="coarse"))
    assert counts["classes"] == 2
    assert json.loads(L.label2idx_path(root).read_text()) == {"background": 0, "animals": 1, "tools": 2}
    info = read_stamps_info(root)
    for v in info["videos"]:
        assert len({o["cls"] for o in v["objects"]}) == len(v["objects"]) <= 2
        for o in v["objects"]:
            assert info["classes"][o["cls"]] == info["groups"][o["stamp"]]


def test_ownership_maps_give_the_written_masks(fake_stamps: Path, fake_backgrounds: Path, tmp_path: Path):
    root = tmp_path / "ms3"
    generate("ms3", root, num_videos=4, seed=3, size=SIZE, stamps=fake_stamps, backgrounds=fake_backgrounds)
    cfg = StampsConfig()
    for split in L.SPLITS:
        for record in index_videos(root, "ms3", split):
            owner, plan = ownership_maps(root, record.video_id)
            assert owner.shape == (5, SIZE, SIZE) and owner.dtype == np.int8
            for t, path in enumerate(record.mask_paths):
                expected = np.isin(owner[t], np.flatnonzero(plan.sounding[t]))
                assert np.array_equal(read_mask(path, "ms3") != 0, expected), (record.video_id, t)
            visible = [(owner == j).sum(axis=(1, 2)) for j in range(len(plan.objects))]
            assert all(v.min() > 0 for v in visible)  # no object is ever fully hidden
            # the wav is the gated tracks plus background noise, ``snr_db`` under a source
            wav, sr = sf.read(record.audio_path, dtype="float32")
            assert sr == SAMPLE_RATE and wav.shape == (5 * SAMPLE_RATE,)
            tracks = [object_sound(root, record.video_id, j, gated=True) for j in range(len(plan.objects))]
            residual = wav - np.sum(tracks, axis=0)
            noise_rms = cfg.source_rms * 10 ** (-cfg.snr_db / 20)
            assert abs(residual.std() / noise_rms - 1) < 0.2
            for j in range(len(plan.objects)):
                full = object_sound(root, record.video_id, j)
                per_second = np.sqrt((full.reshape(5, SAMPLE_RATE) ** 2).mean(axis=1))
                assert per_second.min() > 0.1 * full.std()  # audible in every second, also a distractor
                silent = ~plan.sounding[:, j]
                assert not tracks[j].reshape(5, SAMPLE_RATE)[silent].any()


def test_rerender_checks_the_stamp_files(fake_stamps: Path, tmp_path: Path):
    stamps = tmp_path / "stamps"
    shutil.copytree(fake_stamps, stamps)
    root = tmp_path / "s4"
    generate("s4", root, num_videos=3, seed=0, size=SIZE, stamps=stamps)
    video = load_video_plan(root, read_stamps_info(root)["videos"][0]["name"])
    ownership_maps(root, video.name)  # fine as built
    moved = tmp_path / "moved"
    shutil.move(str(stamps), moved)
    with pytest.raises(DataError, match="not found"):
        ownership_maps(root, video.name)
    ownership_maps(root, video.name, stamps_dir=moved)
    stamp = video.objects[0].stamp
    png = next(moved.rglob(f"{stamp}.png"))
    Image.fromarray(_rgba("disc", (1, 2, 3), (25, 25))).save(png)
    with pytest.raises(DataError, match="differs from the file") as exc:
        ownership_maps(root, video.name, stamps_dir=moved)
    assert str(png) in str(exc.value)
    with pytest.raises(DataError, match="has no video"):
        load_video_plan(root, "no_such_video")


def test_background_folder_errors(fake_stamps: Path, tmp_path: Path):
    one = tmp_path / "one"
    one.mkdir()
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(one / "only.png")
    with pytest.raises(ValueError, match="1 usable background image"):
        generate("s4", tmp_path / "d", num_videos=5, size=SIZE, stamps=fake_stamps, backgrounds=one)
    with pytest.raises(FileNotFoundError, match="background folder"):
        generate("s4", tmp_path / "e", num_videos=5, size=SIZE, stamps=fake_stamps, backgrounds=tmp_path / "none")


def test_cli_stamps_then_validate(fake_stamps: Path, fake_backgrounds: Path, tmp_path: Path, capsys):
    root = tmp_path / "ms3"
    argv = ["data", "stamps", "--layout", "ms3", "--out", str(root), "--videos", "4", "--size", str(SIZE),
            "--stamps", str(fake_stamps), "--backgrounds", str(fake_backgrounds), "--grouping", "stamp", "--json"]  # fmt: skip
    assert main(argv) == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts["videos"] == 4 and "broken" in counts["stamps_unusable"]
    assert main(["data", "validate", str(root), "--layout", "ms3"]) == 0
    assert "no problems found" in capsys.readouterr().out
    assert main(argv) == 2  # never overwrites
    assert str(L.metadata_path(root, "ms3")) in capsys.readouterr().err


# --- the real package --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tuxpaint() -> Path:
    if not DEFAULT_STAMPS_DIR.is_dir():
        pytest.skip(f"{DEFAULT_STAMPS_DIR} not found: install the Debian package tuxpaint-stamps-default")
    return DEFAULT_STAMPS_DIR


def test_tuxpaint_catalogue_is_the_curated_table(tuxpaint: Path):
    cat = scan_stamps(tuxpaint)
    used = {s.name for s in cat.stamps}
    unusable = {p["stamp"]: p["kind"] for p in cat.problems}
    curated = {c.name for c in CURATED_STAMPS}
    assert used | {n for n in unusable if n in curated} == curated - set(cat.missing_curated)
    assert cat.uncurated == []  # every stamp with a sound is in one of the two tables
    assert all(s.curated for s in cat.stamps) and len(used) >= 60
    # what the package (Debian 12's version) cannot deliver is reported, not dropped
    for name, kind in {"nandou": "silent_sound", "giraffe": "silent_sound", "beaver": "duplicate_sound",
                       "mosquito": "no_image"}.items():  # fmt: skip
        if name in unusable or name in used:
            assert unusable.get(name) == kind, (name, unusable.get(name))
    assert set(cat.excluded) <= set(EXCLUDED_STAMPS)
    for stamp in cat.stamps:  # photo cut-outs of a sensible size, sounds of 0.1-11 s
        assert min(stamp.rgba.shape[:2]) >= 16 and 0.1 <= stamp.audio.size / SAMPLE_RATE <= 11


def test_tuxpaint_generate_avss(tuxpaint: Path, tmp_path: Path):
    root = tmp_path / "avss"
    counts = generate("avss", root, num_videos=3, seed=0, size=48, stamps=tuxpaint)
    assert validate_dataset(root, "avss")["problems"] == []
    assert counts["classes"] == counts["stamps_used"] >= 60
    owner, plan = ownership_maps(root, read_stamps_info(root)["videos"][0]["name"])
    assert owner.shape == (plan.num_frames, 48, 48)


def test_listening_swap_on_stamps_data(fake_stamps: Path, fake_backgrounds: Path, tmp_path: Path):
    """stamps_info.json replays every video for ``avseg listen``: the soundtrack of the unchanged plan is the
    written wav, the swap object is visible, silent and of another class, and an oracle that follows the
    sound scores swap IoU 1 and matches the deaf ceiling of the data."""
    import torch

    from avseg.config import DataConfig
    from avseg.data.stamps import replay_video
    from avseg.listening import Soundtracks, deaf_ceiling, listen, swap_plan, synth_info, synth_videos
    from avseg.methods.common import make_dataset

    from fakes import sound_following_oracle

    root = tmp_path / "s4"
    generate("s4", root, num_videos=10, seed=5, size=SIZE, stamps=fake_stamps, backgrounds=fake_backgrounds)
    data = DataConfig(root=str(root), layout="s4", image_size=SIZE, audio_frontend="wsavs-logmel")

    def factory():
        return make_dataset(data, "test")

    ds = factory()
    info = synth_info(root, "s4")
    assert info is not None and info["generator"] == "avseg.data.stamps"
    videos = synth_videos(ds, info, seed=0)
    swaps = 0
    for record in ds.records:
        plan, _, soundtrack = replay_video(root, record.video_id)
        wav, _ = sf.read(record.audio_path, dtype="float32")
        assert np.abs(soundtrack(plan) - wav).max() < 1e-4  # the 16-bit wav of the same mix
        video = videos[record.video_id]
        for t, j in enumerate(video.swap):
            if j is not None:
                swaps += 1
                assert not plan.sounding[t, j] and video.target(t).any()
                assert plan.objects[j].cls not in {plan.objects[k].cls for k in np.flatnonzero(plan.sounding[t])}
        if any(j is not None for j in video.swap):
            assert not np.allclose(video.soundtrack(swap_plan(plan, video.swap)), wav, atol=1e-3)
    assert swaps > 0

    (tmp_path / "work").mkdir()
    tracks = Soundtracks(ds, 0, videos, tmp_path / "work")
    oracle = sound_following_oracle(ds, videos, tracks)

    result, examples = listen(oracle, factory, torch.device("cpu"), seed=0)
    assert "swap" in result["conditions"] and result["synthetic"]
    assert result["swap_iou"] == 1.0 and result["miou_own"] == 1.0 and result["fpr_silence"] == 0.0
    assert examples and set(result["swap_objects"]) == {r.video_id for r in ds.records}
    assert {c for v in result["swap_objects"].values() for c in v if c is not None} <= set(info["classes"])
    ceiling = deaf_ceiling(root, "s4")
    assert ceiling is not None and ceiling["miou_clean"] == pytest.approx(result["deaf_ceiling"])


def test_bench_with_the_stamps_recipes(fake_stamps: Path, fake_backgrounds: Path, tmp_path: Path):
    """``avseg bench --recipe stamps`` finds a recipe for every method that ships one (cam, ez-vsl, supervised)
    and scores them on a stamp composite with the listening columns and the data's deaf ceiling."""
    from avseg.bench import run_bench
    from avseg.runner import RECIPES

    shipped = sorted(p.parent.name for p in RECIPES.glob("*/stamps.yaml"))
    assert {"cam", "ez-vsl", "supervised"} <= set(shipped)
    root = tmp_path / "s4"
    generate("s4", root, num_videos=10, seed=3, size=SIZE, stamps=fake_stamps, backgrounds=fake_backgrounds)
    quick = {"epochs": 1, "max_steps": 2, "batch_size": 2, "device": "cpu"}
    rows = run_bench(root, "s4", shipped, tmp_path / "bench", recipe="stamps", quick=quick, image_size=SIZE, device="cpu", grid_rows=2)
    assert [r.status for r in rows] == ["ok"] * len(shipped), [r.error for r in rows]
    for row in rows:
        assert row.swap_iou is not None and row.fpr_silence is not None and row.audio_dependence is not None
    assert {r.method: r.audio_dependence for r in rows}["cam"] == 0.0  # no audio input: deaf by construction
    assert "deaf ceiling" in (tmp_path / "bench" / "results.md").read_text()
