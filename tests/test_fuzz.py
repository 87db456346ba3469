"""Property-based fuzzing (hypothesis), bounded to run in CI in well under a minute.

Metrics: random shapes and values give results in [0, 1], never NaN, and the clean protocols do not depend on
how the frames are split into updates. Loaders: random bytes as CSV / PNG / JPEG / WAV / MP4 / JSON / pickle
files and random metadata rows only ever raise DataError / AudioError (ValueError subclasses) naming the
file, never another exception type, never a path outside the dataset folder, and never hang.
"""

from __future__ import annotations

import csv
import io
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from avseg.audio.decode import AudioError, decode_audio_stream, load_audio
from avseg.data import layout as L
from avseg.data.avsbench import read_frame, read_mask, read_probability_png
from avseg.data.errors import DataError
from avseg.data.index import avss_classes, index_videos, read_metadata
from avseg.data.safe_pickle import load_tensor_pickle
from avseg.data.validate import validate_dataset
from avseg.metrics import (
    BinaryAccumulator,
    SemanticAccumulator,
    auc_from_cious,
    avsbench_batch_fscore,
    avsbench_batch_miou,
    avsbench_frame_iou,
    ciou,
    frame_iou_clean,
    per_frame_max_fscore,
)

# CI runs a fixed, derandomised set of examples (same every run, about 20 s on two cores). For a deeper
# search: AVSEG_FUZZ_SCALE=20 pytest tests/test_fuzz.py (20x the examples, random each run).
SCALE = int(os.environ.get("AVSEG_FUZZ_SCALE", "1"))
FUZZ = settings(max_examples=60 * SCALE, deadline=None, derandomize=SCALE == 1, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip
FUZZ_FILES = settings(FUZZ, max_examples=40 * SCALE)
SLOW_EXAMPLE = 10.0  # seconds; a decoder taking longer on a few hundred bytes is treated as a hang


# --- metrics ----------------------------------------------------------------------------------------------
# Probabilities with the awkward values: exact 0, 1 and the 0.5 threshold, subnormals, values next to 1.
prob_values = st.one_of(st.floats(0.0, 1.0, width=32), st.sampled_from([0.0, 0.5, 1.0, np.nextafter(np.float32(0.5), 1), 1e-45, 1 - 2**-24]))


@st.composite
def binary_frames(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    n, h, w = draw(st.integers(1, 6)), draw(st.integers(1, 9)), draw(st.integers(1, 9))
    probs = draw(arrays(np.float32, (n, h, w), elements=prob_values))
    gt = draw(arrays(np.uint8, (n, h, w), elements=st.sampled_from([0, 0, 1, 255, 7])))
    return probs, gt


def splits(n: int) -> st.SearchStrategy[list[int]]:
    """Cut points of 0..n into consecutive chunks."""
    return st.lists(st.integers(1, max(1, n - 1)), max_size=4, unique=True).map(lambda cuts: sorted(c for c in cuts if 0 < c < n))


def in_unit(x: float) -> bool:
    return np.isfinite(x) and 0.0 <= x <= 1.0


@FUZZ
@given(binary_frames())
def test_binary_metric_functions_in_unit_interval(frames: tuple[np.ndarray, np.ndarray]) -> None:
    probs, gt = frames
    for values in (avsbench_frame_iou(probs, gt), frame_iou_clean(probs, gt)):
        assert values.shape == (probs.shape[0],) and all(in_unit(v) for v in values)
    for value in (avsbench_batch_miou(probs, gt), avsbench_batch_fscore(probs, gt), per_frame_max_fscore(probs, gt)):
        assert in_unit(value), value
    # torch input gives the same numbers
    assert avsbench_batch_fscore(torch.from_numpy(probs), torch.from_numpy(gt)) == avsbench_batch_fscore(probs, gt)


@FUZZ
@given(binary_frames(), st.data())
def test_binary_accumulators_do_not_depend_on_update_chunks(frames: tuple[np.ndarray, np.ndarray], data: st.DataObject) -> None:
    probs, gt = frames
    cuts = data.draw(splits(probs.shape[0]))
    batch_frames = data.draw(st.integers(1, 4))
    for protocol in ("clean", "per-frame-max", "avsbench"):
        whole = BinaryAccumulator(protocol, batch_frames=batch_frames)
        whole.update(probs, gt)
        chunked = BinaryAccumulator(protocol, batch_frames=batch_frames)
        for a, b in zip([0, *cuts], [*cuts, probs.shape[0]]):
            chunked.update(probs[a:b], gt[a:b])
        x, y = whole.compute(), chunked.compute()
        assert in_unit(x["miou"]) and in_unit(x["fscore"]), x
        assert x["frames"] == y["frames"] == probs.shape[0]
        assert x["miou"] == pytest.approx(y["miou"], rel=1e-12, abs=1e-15)
        assert x["fscore"] == pytest.approx(y["fscore"], rel=1e-12, abs=1e-15)
        if protocol == "clean":
            assert x["fscore"] == y["fscore"] and x["fscore_at_0.5"] == y["fscore_at_0.5"]  # integer counts: exact
            assert in_unit(x["fscore_at_0.5"]) and in_unit(x["fscore_threshold"])


@FUZZ
@given(binary_frames(), st.integers(1, 5))
def test_clean_protocol_is_batch_independent_across_orderings(frames: tuple[np.ndarray, np.ndarray], seed: int) -> None:
    """Clean numbers are dataset-level: permuting the frames does not change them (avsbench's can)."""
    probs, gt = frames
    order = np.random.default_rng(seed).permutation(probs.shape[0])
    a, b = BinaryAccumulator("clean"), BinaryAccumulator("clean")
    a.update(probs, gt)
    b.update(probs[order], gt[order])
    x, y = a.compute(), b.compute()
    assert x["fscore"] == y["fscore"] and x["miou"] == pytest.approx(y["miou"], rel=1e-12, abs=1e-15)


@FUZZ
@given(st.integers(1, 4), st.integers(1, 6), st.integers(1, 6), st.sampled_from([np.nan, np.inf, -0.5, 1.5, -np.inf]))
def test_binary_metrics_refuse_values_outside_probabilities(n: int, h: int, w: int, bad: float) -> None:
    probs = np.full((n, h, w), 0.3, np.float32)
    probs[-1, -1, -1] = bad
    gt = np.ones((n, h, w), np.uint8)
    with pytest.raises(ValueError, match="probabilities"):
        avsbench_batch_miou(probs, gt)
    with pytest.raises(ValueError, match="probabilities"):
        BinaryAccumulator("clean").update(probs, gt)


@st.composite
def semantic_frames(draw: st.DrawFn) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    c = draw(st.integers(2, 6))
    n, h, w = draw(st.integers(1, 5)), draw(st.integers(1, 8)), draw(st.integers(1, 8))
    pred = draw(arrays(np.int64, (n, h, w), elements=st.integers(0, c - 1)))
    gt = draw(arrays(np.int64, (n, h, w), elements=st.integers(0, c - 1)))
    valid = draw(arrays(np.bool_, (n,)))
    return c, pred, gt, valid


@FUZZ
@given(semantic_frames(), st.data())
def test_semantic_metrics_in_unit_interval_and_clean_chunk_independent(frames: tuple, data: st.DataObject) -> None:
    c, pred, gt, valid = frames
    cuts = data.draw(splits(pred.shape[0]))
    for protocol in ("clean", "avsbench"):
        whole = SemanticAccumulator(c, protocol)
        whole.update(pred, gt, valid)
        chunked = SemanticAccumulator(c, protocol)
        for a, b in zip([0, *cuts], [*cuts, pred.shape[0]]):
            chunked.update(pred[a:b], gt[a:b], valid[a:b])
        if protocol == "clean" and not valid.any():
            with pytest.raises(ValueError, match="no frames"):
                whole.compute()
            continue
        x, y = whole.compute(), chunked.compute()
        for key in ("miou", "fscore", "miou_all", "fscore_all"):
            assert in_unit(x[key]), (key, x[key])
            assert x[key] == pytest.approx(y[key], rel=1e-12, abs=1e-15)
        if protocol == "clean":
            assert x == y  # one confusion matrix of integer counts: exactly the same
            assert all(in_unit(v) for v in x["per_class_iou"].values())


@FUZZ
@given(arrays(np.float64, st.tuples(st.integers(1, 8), st.integers(1, 8)), elements=st.floats(-1e6, 1e6) | st.sampled_from([np.inf, -np.inf, 0.0])),
       st.data())
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # median of [inf, -inf] is NaN
def test_localisation_metrics_in_unit_interval(heatmap: np.ndarray, data: st.DataObject) -> None:
    gt = data.draw(arrays(np.uint8, heatmap.shape, elements=st.integers(0, 1)))
    value = ciou(heatmap, gt)
    assert in_unit(value)
    assert in_unit(auc_from_cious([value, *data.draw(st.lists(st.floats(0, 1), max_size=5))]))


# --- loaders ----------------------------------------------------------------------------------------------
def _timed(fn, *args, **kwargs):
    start = time.monotonic()
    try:
        return fn(*args, **kwargs)
    finally:
        assert time.monotonic() - start < SLOW_EXAMPLE, f"{fn.__name__} took too long (a hang?)"


def _named(exc: BaseException, path: Path) -> None:
    assert isinstance(exc, ValueError)
    assert str(path) in str(exc), f"error does not name {path}: {exc}"


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _image_bytes(fmt: str) -> bytes:
    arr = np.random.default_rng(0).integers(0, 255, (12, 10, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def _wav_bytes() -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(np.arange(4000) / 5)).astype(np.float32), 8000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


VALID = {"png": _image_bytes("PNG"), "jpg": _image_bytes("JPEG"), "wav": _wav_bytes()}


def _mutated(valid: bytes) -> st.SearchStrategy[bytes]:
    """Random bytes, a valid file cut anywhere, or a valid file with a few bytes overwritten."""
    cut = st.integers(0, len(valid) - 1).map(lambda n: valid[:n])
    flips = st.lists(st.tuples(st.integers(0, len(valid) - 1), st.integers(0, 255)), min_size=1, max_size=6).map(
        lambda edits: bytes(_apply(valid, edits)))
    return st.one_of(st.binary(max_size=600), cut, flips)


def _apply(data: bytes, edits: list[tuple[int, int]]) -> bytearray:
    out = bytearray(data)
    for i, v in edits:
        out[i] = v
    return out


@FUZZ_FILES
@given(kind=st.sampled_from(["png", "jpg"]), data=st.data())
def test_image_readers_on_random_bytes(kind: str, scratch: Path, data: st.DataObject) -> None:
    payload = data.draw(_mutated(VALID[kind]))
    path = scratch / f"x.{kind}"
    path.write_bytes(payload)
    for reader in (read_frame, lambda p: read_mask(p, "s4"), lambda p: read_mask(p, "avss", 71), read_probability_png):
        try:
            out = _timed(reader, path)
        except DataError as exc:
            _named(exc, path)
            continue
        assert isinstance(out, np.ndarray) and out.ndim in (2, 3)


@FUZZ_FILES
@given(kind=st.sampled_from(["png", "jpg", "wav"]), data=st.data())
def test_truncated_files_fail_or_decode_completely(kind: str, scratch: Path, data: st.DataObject) -> None:
    """A file cut short is an error, or (only the trailer missing) decodes to exactly the original."""
    valid = VALID[kind]
    n = data.draw(st.integers(0, len(valid) - 1))
    path = scratch / f"cut.{kind}"
    path.write_bytes(valid)
    full = read_frame(path) if kind != "wav" else load_audio(path)[0]
    path.write_bytes(valid[:n])
    try:
        out = read_frame(path) if kind != "wav" else load_audio(path)[0]
    except (DataError, AudioError) as exc:
        _named(exc, path)
        return
    assert out.shape == full.shape and np.array_equal(out, full), f"cut at {n} of {len(valid)} bytes decoded to other data"


@FUZZ_FILES
@given(suffix=st.sampled_from([".wav", ".mp4", ".flac"]), data=st.data())
def test_audio_decoding_on_random_bytes(suffix: str, scratch: Path, data: st.DataObject) -> None:
    payload = data.draw(_mutated(VALID["wav"]))
    path = scratch / f"a{suffix}"
    path.write_bytes(payload)
    for decode in (lambda p: load_audio(p, 16000)[0], lambda p: np.concatenate(list(decode_audio_stream(p, 16000, chunk_seconds=0.1)))):
        try:
            wave = _timed(decode, path)
        except AudioError as exc:
            _named(exc, path)
            continue
        assert wave.ndim == 1 and wave.size > 0 and np.isfinite(wave).all() and np.abs(wave).max() <= 1.0


@FUZZ_FILES
@given(payload=st.one_of(st.binary(max_size=400), st.text(max_size=200).map(str.encode),
                 st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
                              lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
                              max_leaves=12).map(lambda v: __import__("json").dumps(v).encode())))
def test_label2idx_on_random_content(scratch: Path, payload: bytes) -> None:
    root = scratch / "avss_json"
    root.mkdir(exist_ok=True)
    path = L.label2idx_path(root)
    path.write_bytes(payload)
    try:
        names = _timed(avss_classes, root)
    except DataError as exc:
        _named(exc, path)
        return
    assert len(names) >= 1 and all(isinstance(n, str) for n in names)


@FUZZ_FILES
@given(payload=st.one_of(st.binary(max_size=400), st.sampled_from([b"\x80\x02", b"\x80\x04\x95", b"cos\nsystem\n(S'x'\ntR."]).flatmap(
    lambda head: st.binary(max_size=200).map(lambda tail: head + tail))))
def test_tensor_pickle_reader_on_random_bytes(scratch: Path, payload: bytes) -> None:
    path = scratch / "f.pkl"
    path.write_bytes(payload)
    try:
        out = _timed(load_tensor_pickle, path)
    except DataError as exc:
        _named(exc, path)
        return
    assert isinstance(out, torch.Tensor)


# Metadata: cells drawn from everything that could break a path or a parser.
NASTY = ["..", ".", "/", "../x", "a/b", "/abs", "\\", "..\\x", "C:\\x", "~", "$HOME", "a\x00b", "a\nb", "\t", " ", "",
         "train", "val", "test", "holdout", "dog_barking", "v1s", "v1m", "v2", "name", "split", "x" * 250, "é", "😀"]
cells = st.one_of(st.sampled_from(NASTY), st.text(max_size=10))


@st.composite
def metadata_csv(draw: st.DrawFn, layout: str) -> str:
    width = {"s4": 4, "ms3": 3, "avss": 7}[layout]
    rows = []
    if draw(st.booleans()) or layout != "s4":
        header = {"s4": ["name", "start", "category", "split"], "ms3": ["video_id", "split", "labels"],
                  "avss": ["vid", "uid", "s_min", "s_sec", "a_obj", "split", "label"]}[layout]  # fmt: skip
        rows.append(draw(st.just(header) | st.lists(cells, min_size=1, max_size=8)))
    for _ in range(draw(st.integers(0, 6))):
        n = draw(st.sampled_from([width, width, width, 1, width + 2]))
        rows.append(draw(st.lists(cells, min_size=n, max_size=n)))
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    return buf.getvalue()


def _inside(path: Path, root: Path) -> bool:
    normal = Path(os.path.normpath(path))
    return normal.is_relative_to(root) and ".." not in normal.relative_to(root).parts


@FUZZ_FILES
@given(layout=st.sampled_from(["s4", "ms3", "avss"]), data=st.data())
def test_metadata_parsing_on_random_rows_and_bytes(layout: str, scratch: Path, data: st.DataObject) -> None:
    root = scratch / f"meta_{layout}"
    root.mkdir(exist_ok=True)
    if layout == "avss":
        L.label2idx_path(root).write_text('{"background": 0, "dog": 1}')
    path = L.metadata_path(root, layout)
    payload = data.draw(st.one_of(metadata_csv(layout).map(lambda t: t.encode("utf-8", "surrogatepass")), st.binary(max_size=300)))
    path.write_bytes(payload)
    try:
        rows = _timed(read_metadata, root, layout)
    except DataError as exc:
        _named(exc, path)
        rows = None
    if rows is not None:
        for split in L.SPLITS:
            for rec in index_videos(root, layout, split, rows=rows):
                for p in (*rec.frame_paths, *[m for m in rec.mask_paths if m is not None], rec.audio_path, rec.pkl_path):
                    if p is not None:
                        assert _inside(p, root.resolve() if root.is_absolute() else root), f"{p} escapes {root}"
    report = _timed(validate_dataset, root, layout)  # never raises, whatever the CSV holds
    assert all({"path", "problem"} <= set(p) for p in report["problems"])
    if rows is None:
        assert any(p["path"] == str(path) for p in report["problems"])
