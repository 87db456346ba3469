"""Tiny fake datasets in the official AVSBench layouts (as described in docs/avsbench-format), for tests.

S4: 2 categories x (2 train, 1 val, 1 test) videos, 5 PNG frames each, train masks only ``_1``, one
all-black mask; MS3 and AVSS likewise in their own layouts (AVSS: one v1s, one v1m, one v2 video per split,
71-entry label2idx.json, uint8 class maps and palette RGB maps). Frames are 32x32 unless told otherwise.

Also the broken and hostile files of the bad-input tests (pickles with a payload, truncated files, small
MP4s) and ``copy_run`` for tests that write into a copy of a session-wide run folder.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
from pathlib import Path

import av
import numpy as np
import soundfile as sf
from PIL import Image

from avseg.data import layout as L

SR = 16000


def _frame(rng: np.random.Generator, size: int) -> np.ndarray:
    return rng.integers(0, 255, size=(size, size, 3), dtype=np.uint8)


def _mask(size: int, k: int, empty: bool = False) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    if not empty:
        m[size // 4 : size // 2 + k, size // 4 : size // 2] = 255
    return m


def _wav(path: Path, seconds: float = 5.0, freq: float = 440.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(SR * seconds)) / SR
    sf.write(str(path), (0.3 * np.sin(2 * math.pi * freq * t)).astype(np.float32), SR, subtype="PCM_16")


def _png(path: Path, arr: np.ndarray, palette: list[int] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr)
    if palette is not None:
        img = img.convert("P")
        img.putpalette(palette)
    img.save(path)


S4_VIDEOS = [  # (name, category, split)
    ("vidA", "dog_barking", "train"), ("vidB", "dog_barking", "train"), ("vidC", "dog_barking", "val"),
    ("vidD", "dog_barking", "test"), ("vidE", "male_speech", "train"), ("vidF", "male_speech", "train"),
    ("vidG", "male_speech", "val"), ("vidH", "male_speech", "test"),
]  # fmt: skip


def write_fake_s4(root: Path, size: int = 32, header: bool = True) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    lines = ["name,start,category,split"] if header else []
    for name, cat, split in S4_VIDEOS:
        lines.append(f"{name},0,{cat},{split}")
        for k in range(1, 6):
            _png(L.s4_frame(root, split, cat, name, k), _frame(rng, size))
        for k in L.s4_mask_frames(split):
            _png(L.s4_mask(root, split, cat, name, k), _mask(size, k, empty=(name == "vidD" and k == 2)))
        _wav(L.s4_wav(root, split, cat, name))
    (root / "s4_meta_data.csv").write_text("\n".join(lines) + "\n")
    return root


MS3_VIDEOS = [("m1", "train"), ("m2", "train"), ("m3", "val"), ("m4", "test")]


def write_fake_ms3(root: Path, size: int = 32, with_labels: bool = False) -> Path:
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    lines = ["video_id,split" + (",labels" if with_labels else "")]
    for i, (vid, split) in enumerate(MS3_VIDEOS):
        lines.append(f"{vid},{split}" + (",a;b" if with_labels and i % 2 == 0 else ",a" if with_labels else ""))
        for k in range(1, 6):
            _png(L.ms3_frame(root, vid, k), _frame(rng, size))
            _png(L.ms3_mask(root, split, vid, k), _mask(size, k, empty=(vid == "m4" and k == 5)))
        _wav(L.ms3_wav(root, split, vid))
    (root / "ms3_meta_data.csv").write_text("\n".join(lines) + "\n")
    return root


AVSS_VIDEOS = [  # (uid, label, split)
    ("s_tr", "v1s", "train"), ("m_tr", "v1m", "train"), ("x_tr", "v2", "train"),
    ("s_te", "v1s", "test"), ("m_te", "v1m", "test"), ("x_te", "v2", "test"),
    ("s_va", "v1s", "val"),
]  # fmt: skip


def write_fake_avss(root: Path, size: int = 32) -> Path:
    rng = np.random.default_rng(2)
    root.mkdir(parents=True, exist_ok=True)
    (root / "label2idx.json").write_text(json.dumps({name: i for i, name in enumerate(L.AVSS_CLASSES)}))
    palette = [c for rgb in L.voc_palette(256) for c in rgb]
    lines = ["vid,uid,s_min,s_sec,a_obj,split,label"]
    for j, (uid, label, split) in enumerate(AVSS_VIDEOS):
        lines.append(f"v{j},{uid},0,0,dog,{split},{label}")
        n = L.FRAMES_PER_VIDEO[label]
        for i in range(n):
            frame = _frame(rng, size)
            path = L.avss_frame(root, label, uid, i)
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(frame).save(path, quality=90)
        for i in L.avss_mask_frames(label, split):
            sem = np.zeros((size, size), np.uint8)
            sem[2:10, 2:10] = 17  # dog
            if label != "v1s":
                sem[15:25, 15:25] = 71 - 1 if i % 2 else 41  # woman / man
            _png(L.avss_semantic(root, label, uid, i), sem)
            _png(L.avss_rgb(root, label, uid, i), sem, palette=palette)
        _wav(L.avss_wav(root, label, uid), seconds=float(n))
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    return root


# --- broken and hostile files (the bad-input tests) -------------------------------------------------------------
class Payload:
    """A pickle that would create ``marker`` when unpickled by ``pickle.load`` / ``torch.load(weights_only=False)``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class ExecPayload(Payload):
    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def png_bytes(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def wav_bytes(wave: np.ndarray, sr: int = SR, subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, sr, format="WAV", subtype=subtype)
    return buf.getvalue()


def sine(seconds: float = 5.0, sr: int = SR, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (0.3 * np.sin(2 * math.pi * freq * t)).astype(np.float32)


def truncate(path: Path, fraction: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def write_stereo_wav(path: Path) -> None:
    w = sine()
    path.write_bytes(wav_bytes(np.stack([w, -w * 0.5], axis=1)))


def write_mp4(path: Path, seconds: float = 2.0, audio: bool = True, size: int = 32, fps: int = 5) -> Path:
    """A small MP4 (MPEG-4 Part 2 video, AAC mono audio) written with PyAV."""
    with av.open(str(path), "w", format="mp4") as container:
        video = container.add_stream("mpeg4", rate=fps)
        video.width, video.height, video.pix_fmt = size, size, "yuv420p"
        sound = None
        if audio:
            sound = container.add_stream("aac", rate=SR)
            sound.layout = "mono"
        for i in range(int(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), (40 * i) % 255, np.uint8), format="rgb24")
            for packet in video.encode(frame):
                container.mux(packet)
        if sound is not None:
            wave = sine(seconds)
            for start in range(0, wave.size, 1024):
                frame = av.AudioFrame.from_ndarray(wave[None, start : start + 1024], format="fltp", layout="mono")
                frame.sample_rate, frame.pts = SR, start
                for packet in sound.encode(frame):
                    container.mux(packet)
            for packet in sound.encode(None):
                container.mux(packet)
        for packet in video.encode(None):
            container.mux(packet)
    return path


MP4_CASES = {
    "zero-bytes": (lambda p: p.write_bytes(b""), r"is 0 bytes"),
    "truncated-moov-at-end": (lambda p: truncate(p, 0.95), r"is truncated: its 'moov' box"),
    "truncated-mdat": (lambda p: truncate(p, 0.5), r"is truncated: its 'mdat' box"),
    "text": (lambda p: p.write_text("not a video at all"), r"unreadable or corrupt"),
    "no-audio-track": (None, r"has no audio track"),
}


def copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


# The spectrogram audio of the tests that need one (ws-avs/demo hears aisfx embeddings): features of silence
# are flat, and the features do not depend on the CPU thread count.
LOGMEL_AUDIO = ("data.audio_frontend=wsavs-logmel", "audio=small")


def sound_following_oracle(dataset, videos: dict, tracks):
    """A fake model that recognises the exact features it hears: its own sound -> the ground truth, the swap
    sound -> the swap object (``videos``: listening.synth_videos), anything else -> nothing."""
    import torch

    heard = {}
    for record in dataset.records:
        t = len(record.frame_paths)
        dataset.audio_transform = None
        own = dataset.audio_features(record, t)[0]
        dataset.audio_transform = tracks.transform("swap")
        heard[record.video_id] = (own, dataset.audio_features(record, t)[0])
    dataset.audio_transform = None

    def oracle(batch) -> torch.Tensor:
        out = torch.zeros(batch.masks.shape, dtype=torch.float32)
        for b, vid in enumerate(batch.video_ids):
            own, swap = heard[vid]
            if torch.equal(batch.audio[b], own):
                out[b] = (batch.masks[b] > 0).float()
            elif torch.equal(batch.audio[b], swap):
                for t, j in enumerate(videos[vid].swap):
                    if j is not None:
                        out[b, t] = torch.from_numpy(videos[vid].target(t)).float()
        return out

    return oracle
