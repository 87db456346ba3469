"""score_predictions on tiny S4 / MS3 / AVSS datasets written in the official layouts (2x2 masks)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from avseg.cli import main
from avseg.data import layout as L
from avseg.data.index import index_videos
from avseg.scoring import ScoringError, score_predictions

approx = pytest.approx


def F(p: float, r: float) -> float:
    return 1.3 * p * r / (0.3 * p + r)


def png(path: Path, array: np.ndarray, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(np.asarray(array, dtype=np.uint8))
    if mode == "P":
        img = Image.frombytes("P", img.size, img.tobytes())
        img.putpalette([v for rgb in L.voc_palette() for v in rgb])
    img.save(path)


def score_s4(s4: tuple[Path, Path], protocol: str, **kwargs) -> dict:
    return score_predictions(s4[0], "s4", "test", s4[1], protocol, **kwargs)


def score_avss(avss: tuple[Path, Path], protocol: str) -> dict:
    return score_predictions(avss[0], "avss", "test", avss[1], protocol)


FG = np.array([[1, 0], [0, 0]])  # every binary GT frame: one foreground pixel
EMPTY = np.zeros((2, 2), int)


# --- S4 -----------------------------------------------------------------------------------------------
def write_s4(root: Path, test_videos: tuple[str, ...] = ("vidA", "vidB")) -> dict[tuple[str, int], np.ndarray]:
    """S4 with test videos (frames 1..5 annotated) and one train video (frame 1 only); vidB frame 3 has
    an empty mask. Returns the GT of the test frames."""
    rows = ["name,start,category,split"]
    cats = {v: ("dog_barking" if i % 2 == 0 else "cat_meowing") for i, v in enumerate(test_videos)}
    gts = {}
    for vid, cat in cats.items():
        rows.append(f"{vid},0,{cat},test")
        for k in range(1, 6):
            gt = EMPTY if (vid == "vidB" and k == 3) else FG
            png(L.s4_mask(root, "test", cat, vid, k), gt * 255)
            gts[(vid, k)] = gt
    rows.append("vidT,0,dog_barking,train")
    png(L.s4_mask(root, "train", "dog_barking", "vidT", 1), FG * 255)
    L.metadata_path(root, "s4").write_text("\n".join(rows) + "\n")
    return gts


def s4_pred_path(pred: Path, vid: str, k: int) -> Path:
    cat = "dog_barking" if vid in ("vidA", "v0", "v2", "v4") else "cat_meowing"
    return pred / L.prediction_relpath("s4", "test", cat, vid, k)


def write_s4_predictions(pred: Path) -> None:
    """Perfect (probability 1 on the foreground pixel) except:
    vidA 2: both top pixels at 1 -> IoU 1/2, F curve for t > 0: F(1/2, 1) = 13/23
    vidB 3 (empty GT): one pixel at 128/255 > 0.5 -> clean IoU 0, avsbench IoU 3/4; not in the clean or
        avsbench F, F = 0 in per-frame-max (as any silent frame)
    vidB 1: a 4x4 file whose bilinear resize to 2x2 gives exactly the GT."""
    for vid in ("vidA", "vidB"):
        for k in range(1, 6):
            png(s4_pred_path(pred, vid, k), FG * 255)
    png(s4_pred_path(pred, "vidA", 2), np.array([[255, 255], [0, 0]]))
    png(s4_pred_path(pred, "vidB", 3), np.array([[0, 0], [0, 128]]))
    big = np.zeros((4, 4)); big[:2, :2] = 255  # noqa: E702
    png(s4_pred_path(pred, "vidB", 1), big)


@pytest.fixture()
def s4(tmp_path: Path) -> tuple[Path, Path]:
    root, pred = tmp_path / "s4", tmp_path / "pred"
    write_s4(root)
    write_s4_predictions(pred)
    return root, pred


def test_s4_perfect_predictions(tmp_path: Path):
    root, pred = tmp_path / "s4", tmp_path / "pred"
    gts = write_s4(root)
    for (vid, k), gt in gts.items():
        png(s4_pred_path(pred, vid, k), gt * 255)
    for protocol in ("clean", "avsbench", "per-frame-max"):
        out = score_predictions(root, "s4", "test", pred, protocol)
        # per-frame-max: the silent frame vidB 3 is an official one-frame batch with F = 0 even when its
        # (empty) prediction is perfect: 9 of 10 frames score 1
        assert out["miou"] == approx(1.0, abs=1e-6) and out["fscore"] == approx(0.9 if protocol == "per-frame-max" else 1.0)
        assert out["frames"] == 10 and out["videos"] == 2 and out["layout"] == "s4" and out["split"] == "test"
        assert out["protocol"] == protocol and out["resized"] == 0
    # train: only frame 1 of vidT has ground truth
    png(pred / L.prediction_relpath("s4", "train", "dog_barking", "vidT", 1), FG * 255)
    out = score_predictions(root, "s4", "train", pred, "clean")
    assert out["frames"] == 1 and out["miou"] == 1.0


def test_s4_clean(s4):
    out = score_s4(s4, "clean")
    # per-frame IoU in canonical order: A 1, 1/2, 1, 1, 1; B 1, 1, 0, 1, 1
    assert out["miou"] == approx(8.5 / 10)
    # 9 non-empty frames, t > 0: tp 9, predicted 10, positives 9 -> F(9/10, 1); same mask at 0.5
    assert out["fscore"] == approx(F(0.9, 1)) and out["fscore_at_0.5"] == approx(F(0.9, 1))
    assert out["fscore_frames"] == 9 and out["resized"] == 1
    json.dumps(out)  # the CLI prints it


def test_s4_avsbench_depends_on_batch_frames(s4):
    eps = 1e-7
    ious = [1 / (1 + eps), 1 / (2 + eps), 1 / (1 + eps), 1 / (1 + eps), 1 / (1 + eps),
            1 / (1 + eps), 1 / (1 + eps), 3 / (4 + eps), 1 / (1 + eps), 1 / (1 + eps)]  # fmt: skip
    out20 = score_s4(s4, "avsbench")  # one batch of 10 frames
    assert out20["batches"] == 1 and out20["batch_frames"] == 20
    assert out20["miou"] == approx(np.mean(ious))
    assert out20["fscore"] == approx((8 + 13 / 23) / 9)  # mean curve over 9 frames, best for t > 0
    out5 = score_s4(s4, "avsbench", batch_frames=5)  # one batch per video
    assert out5["miou"] == approx((np.mean(ious[:5]) + np.mean(ious[5:])) / 2)
    assert out5["fscore"] == approx(((4 + 13 / 23) / 5 + 1) / 2)
    out3 = score_s4(s4, "avsbench", batch_frames=3)  # [A1-3] [A4 A5 B1] [B2-4] [B5]
    assert out3["batches"] == 4
    assert out3["miou"] == approx(np.mean([np.mean(ious[0:3]), np.mean(ious[3:6]), np.mean(ious[6:9]), ious[9]]))
    assert out3["miou"] == approx(0.9375, rel=1e-6) and out20["miou"] == approx(0.925, rel=1e-6)
    clean = [score_s4(s4, "clean", batch_frames=b)["miou"] for b in (1, 3, 20)]
    assert clean == approx([0.85] * 3)


def test_s4_per_frame_max(s4):
    out = score_s4(s4, "per-frame-max")
    assert out["miou"] == approx(0.925, rel=1e-6)
    # one frame per batch: eight frames F = 1, vidA frame 2 F 13/23, and vidB frame 3 (silent: empty
    # ground truth) F = 0 as the official Eval_Fmeasure gives it; the mean runs over all 10 frames
    assert out["fscore"] == approx((8 + 13 / 23 + 0) / 10)
    assert out["frames"] == 10 and out["fscore_frames"] == 9
    assert out["fscore"] == approx(score_s4(s4, "avsbench", batch_frames=1)["fscore"])


def test_missing_predictions_are_all_listed(s4):
    root, pred = s4
    gone = [s4_pred_path(pred, "vidA", 4), s4_pred_path(pred, "vidB", 2), s4_pred_path(pred, "vidB", 5)]
    for p in gone:
        p.unlink()
    with pytest.raises(ScoringError) as info:
        score_predictions(root, "s4", "test", pred, "clean")
    message = str(info.value)
    assert "3 prediction file(s) missing" in message
    assert all(str(p) in message for p in gone) and "more" not in message
    assert info.value.missing == gone


def test_missing_predictions_beyond_twenty(tmp_path: Path):
    root, pred = tmp_path / "s4", tmp_path / "pred"
    write_s4(root, test_videos=("v0", "v1", "v2", "v3", "v4"))  # 25 annotated frames
    pred.mkdir()
    with pytest.raises(ScoringError, match=r"25 prediction file\(s\) missing") as info:
        score_predictions(root, "s4", "test", pred)
    message = str(info.value)
    assert "... and 5 more" in message and len(info.value.missing) == 25
    assert str(s4_pred_path(pred, "v0", 1)) in message and str(s4_pred_path(pred, "v4", 5)) not in message
    with pytest.raises(ScoringError, match="prediction folder not found"):
        score_predictions(root, "s4", "test", tmp_path / "nowhere")


def test_bad_predictions_name_the_file(s4):
    root, pred = s4
    bad = s4_pred_path(pred, "vidA", 1)
    Image.fromarray(np.array([[[255, 0, 0]] * 2] * 2, dtype=np.uint8)).save(bad)  # coloured RGB
    with pytest.raises(ScoringError, match="mode RGB") as info:
        score_predictions(root, "s4", "test", pred)
    assert str(bad) in str(info.value)
    bad.write_bytes(b"")
    with pytest.raises(ScoringError, match="0 bytes"):
        score_predictions(root, "s4", "test", pred)
    bad.write_bytes(b"not a png")
    with pytest.raises(ScoringError, match="not a readable image"):
        score_predictions(root, "s4", "test", pred)
    with pytest.raises(ScoringError, match="protocol"):
        score_predictions(root, "s4", "test", pred, "official")


# --- MS3 ----------------------------------------------------------------------------------------------
def test_ms3(tmp_path: Path):
    root, pred = tmp_path / "ms3", tmp_path / "pred"
    L.metadata_path(root, "ms3").parent.mkdir(parents=True, exist_ok=True)
    L.metadata_path(root, "ms3").write_text("video_id,split\nm1,test\nm2,val\nm3,test\n")
    for vid, split in (("m1", "test"), ("m2", "val"), ("m3", "test")):
        for k in range(1, 6):
            png(L.ms3_mask(root, split, vid, k), FG * 255)
            png(pred / L.prediction_relpath("ms3", split, "", vid, k), FG * 255)
    out = score_predictions(root, "ms3", "test", pred, "clean")
    assert out["frames"] == 10 and out["videos"] == 2 and out["miou"] == 1.0 and out["fscore"] == approx(1.0)
    # m3 frame 5 predicts nothing: IoU 0; F counts t > 0: tp 9, predicted 9, positives 10 -> F(1, 9/10)
    png(pred / L.prediction_relpath("ms3", "test", "", "m3", 5), EMPTY)
    out = score_predictions(root, "ms3", "test", pred, "clean")
    assert out["miou"] == approx(0.9) and out["fscore"] == approx(F(1, 0.9))
    # avsbench, batches of 4: [m1 1-4] [m1 5, m3 1-3] [m3 4, 5]: last batch F = max((1 + 0)/2 ...) = 1/2
    out = score_predictions(root, "ms3", "test", pred, "avsbench", batch_frames=4)
    assert out["batches"] == 3
    assert out["miou"] == approx((1 + 1 + 0.5) / 3, rel=1e-6) and out["fscore"] == approx((1 + 1 + 0.5) / 3)


# --- AVSS ---------------------------------------------------------------------------------------------
SEM_GT = np.array([[0, 1], [2, 0]])


@pytest.fixture()
def avss(tmp_path: Path) -> tuple[Path, Path]:
    """One v1s test video (5 annotated frames, GT 0 1 / 2 0), one v2 train video (ignored).
    Predictions perfect except frame 4: 0 1 / 1 0; frame 0 written as a palette PNG, frame 1 as 4x4."""
    root, pred = tmp_path / "avss", tmp_path / "pred"
    root.mkdir()
    L.label2idx_path(root).write_text(json.dumps({"background": 0, "dog": 1, "cat": 2}))
    L.metadata_path(root, "avss").write_text(
        "vid,uid,s_min,s_sec,a_obj,split,label\nyt1,u1,0,0,dog,test,v1s\nyt2,u2,0,0,cat,train,v2\n"
    )
    for i in range(5):
        png(L.avss_semantic(root, "v1s", "u1", i), SEM_GT, mode="P")
        png(pred / L.prediction_relpath("avss", "test", "v1s", "u1", i), SEM_GT, mode="P" if i == 0 else "L")
    for i in range(10):
        png(L.avss_semantic(root, "v2", "u2", i), SEM_GT, mode="P")
    png(pred / L.prediction_relpath("avss", "test", "v1s", "u1", 4), np.array([[0, 1], [1, 0]]))
    png(pred / L.prediction_relpath("avss", "test", "v1s", "u1", 1), np.kron(SEM_GT, np.ones((2, 2))))
    return root, pred


def test_avss_perfect(avss):
    root, pred = avss
    png(pred / L.prediction_relpath("avss", "test", "v1s", "u1", 4), SEM_GT)
    for protocol in ("clean", "avsbench"):
        out = score_predictions(root, "avss", "test", pred, protocol)
        assert out["miou"] == approx(1.0) and out["fscore"] == approx(1.0) and out["frames"] == 5
        assert out["resized"] == 1  # nearest resize of the 4x4 file restores the GT exactly


def test_avss_avsbench(avss):
    out = score_avss(avss, "avsbench")
    # frame 4: c0 IoU 1; c1 I 1 P 2 G 1 -> 1/2, F(1/2, 1) = 13/23; c2 I 0 U 1 -> 0 (counted), F 0
    miou_pc = [1, (4 + 0.5) / 5, 4 / 5]
    f_pc = [1, (4 + 13 / 23) / 5, 4 / 5]
    assert out["miou"] == approx(np.mean(miou_pc)) and out["fscore"] == approx(np.mean(f_pc))
    assert out["miou_no_bg"] == approx(np.mean(miou_pc[1:])) and out["fscore_no_bg"] == approx(np.mean(f_pc[1:]))
    assert "padded" in out["note"]


def test_avss_clean(avss):
    out = score_avss(avss, "clean")
    # TP [10, 5, 4], FP [0, 1, 0], FN [0, 0, 1]: IoU [1, 5/6, 4/5]; F [1, F(5/6, 1), F(1, 4/5)]
    assert out["per_class_iou"] == approx({0: 1.0, 1: 5 / 6, 2: 4 / 5})
    assert out["miou"] == approx((5 / 6 + 4 / 5) / 2) and out["miou_all"] == approx((1 + 5 / 6 + 4 / 5) / 3)
    assert out["fscore"] == approx((F(5 / 6, 1) + F(1, 0.8)) / 2)
    json.dumps(out)


def test_avss_rejects(avss):
    root, pred = avss
    with pytest.raises(ScoringError, match="not available for avss"):
        score_predictions(root, "avss", "test", pred, "per-frame-max")
    bad = pred / L.prediction_relpath("avss", "test", "v1s", "u1", 2)
    png(bad, np.array([[0, 7], [0, 0]]))
    with pytest.raises(ScoringError, match="out of range") as info:
        score_predictions(root, "avss", "test", pred)
    assert str(bad) in str(info.value)


# --- a broken prediction folder ---------------------------------------------------------------------------------
def test_bad_input_matrix_prediction_folder(fake_s4: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pred = tmp_path / "pred"
    paths = []
    for rec in index_videos(fake_s4, "s4", "test"):
        for k, mask in zip(rec.frame_numbers, rec.mask_paths):
            out = pred / L.prediction_relpath("s4", "test", rec.category, rec.video_id, k)
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(mask, out)
            paths.append(out)
    paths[1].unlink()
    paths[7].unlink()
    capsys.readouterr()
    assert main(["score", "--data", str(fake_s4), "--layout", "s4", "--split", "test", "--pred", str(pred)]) == 2
    err = capsys.readouterr().err
    assert "2 prediction file(s) missing" in err and str(paths[1]) in err and str(paths[7]) in err
    shutil.copy(paths[0], paths[1])
    shutil.copy(paths[0], paths[7])
    paths[4].write_bytes(b"")
    assert main(["score", "--data", str(fake_s4), "--layout", "s4", "--split", "test", "--pred", str(pred)]) == 2
    assert f"{paths[4]}: prediction is 0 bytes" in capsys.readouterr().err
