"""Audio decoding and front-ends, each checked against an independent numpy/scipy reference."""

from __future__ import annotations

import importlib.util
import math
import re
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch
from scipy import signal

from avseg.audio import (
    FRONTENDS,
    AudioError,
    aisfx_log_mel,
    compute_features,
    decode_audio_stream,
    feature_shape,
    frame_windows,
    load_audio,
    log_mel,
    log_stft,
    resample,
    vggish_examples,
)

from fakes import MP4_CASES, SR, sine, wav_bytes, write_mp4, write_stereo_wav

RNG = np.random.default_rng(0)
MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"


def _sweep(sr: int, seconds: float, f_hi: float, f_lo: float = 50.0) -> np.ndarray:
    t = np.arange(round(sr * seconds)) / sr
    return signal.chirp(t, f_lo, seconds, f_hi)


def _noise(n: int) -> np.ndarray:
    return RNG.uniform(-0.9, 0.9, n)


# ---------------------------------------------------------------------------------------------
# Independent references (written from the published formulas, numpy/scipy only)
# ---------------------------------------------------------------------------------------------


def _ref_vggish_log_mel(x: np.ndarray) -> np.ndarray:
    """VGGish mel_features.log_mel_spectrogram at 16 kHz: (frames, 64)."""
    win, hop, nfft = 400, 160, 512
    n_frames = 1 + (len(x) - win) // hop
    frames = np.stack([x[i * hop : i * hop + win] for i in range(n_frames)])
    hann = 0.5 - 0.5 * np.cos(2 * np.pi / win * np.arange(win))  # periodic Hann
    spec = np.abs(np.fft.rfft(frames * hann, nfft))

    def hz_to_mel(f):
        return 1127.0 * np.log(1.0 + f / 700.0)

    bins_mel = hz_to_mel(np.linspace(0.0, 8000.0, spec.shape[1]))
    edges = np.linspace(hz_to_mel(125.0), hz_to_mel(7500.0), 66)
    mel_w = np.empty((spec.shape[1], 64))
    for i in range(64):
        lo, c, hi = edges[i : i + 3]
        mel_w[:, i] = np.maximum(0.0, np.minimum((bins_mel - lo) / (c - lo), (hi - bins_mel) / (hi - c)))
    mel_w[0, :] = 0.0
    return np.log(spec @ mel_w + 0.01)


def _ref_log_mel(x: np.ndarray, sr: int, n_fft: int, hop: int, n_mels: int, eps: float) -> np.ndarray:
    """torchaudio MelSpectrogram semantics in numpy/scipy: (n_mels, frames)."""
    _, _, z = signal.stft(
        np.pad(x, n_fft // 2, mode="reflect"),
        window=signal.get_window("hann", n_fft),  # periodic Hann
        nperseg=n_fft,
        noverlap=n_fft - hop,
        boundary=None,
        padded=False,
        detrend=False,
        scaling="spectrum",
    )
    power = np.abs(z * signal.get_window("hann", n_fft).sum()) ** 2  # undo scipy's 1/sum(w) scaling
    freqs = np.linspace(0, sr // 2, n_fft // 2 + 1)
    mel = np.linspace(2595 * np.log10(1 + 0 / 700), 2595 * np.log10(1 + (sr / 2) / 700), n_mels + 2)
    f_pts = 700 * (10 ** (mel / 2595) - 1)
    fb = np.zeros((len(freqs), n_mels))
    for m in range(n_mels):
        lo, c, hi = f_pts[m : m + 3]
        fb[:, m] = np.maximum(0, np.minimum((freqs - lo) / (c - lo), (hi - freqs) / (hi - c)))
    return np.log(fb.T @ power + eps)


# ---------------------------------------------------------------------------------------------
# Resampling
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("orig,new", [(44100, 16000), (16000, 8000), (8000, 16000), (22050, 16000), (48000, 16000)])
def test_resample_matches_resample_poly_in_pass_band(orig: int, new: int) -> None:
    x = _sweep(orig, 1.0, 0.8 * min(orig, new) / 2)
    ours = resample(torch.from_numpy(x), orig, new).numpy()
    g = np.gcd(orig, new)
    ref = signal.resample_poly(x, new // g, orig // g)
    exact = _sweep(new, 1.0, 0.8 * min(orig, new) / 2)  # the band-limited sweep sampled at the new rate
    assert ours.shape == ref.shape == (new,)
    inner = slice(new // 10, -new // 10)  # edges depend on each method's zero padding
    assert np.abs(ours[inner] - ref[inner]).max() < 5e-3  # resample_poly's own pass-band ripple
    assert np.abs(ours[inner] - exact[inner]).max() < 1e-3


def test_resample_stop_band_and_shapes() -> None:
    sr = 48000
    t = np.arange(sr) / sr
    tone = torch.from_numpy(np.sin(2 * np.pi * 9000 * t))  # above the 8 kHz Nyquist of 16 kHz
    y = resample(tone, sr, 16000)[2000:-2000]
    assert 20 * np.log10(y.pow(2).mean().sqrt().item() / np.sqrt(0.5)) < -80
    # batched (..., S), odd lengths, ceil(S * new / orig), float32 preserved, identity when equal rates
    x = torch.randn(2, 3, 1001)
    assert resample(x, 44100, 16000).shape == (2, 3, 364)
    assert resample(x, 8000, 16000).dtype == torch.float32
    assert resample(x, 16000, 16000) is x
    ones = resample(torch.ones(4000, dtype=torch.float64), 22050, 16000)
    assert torch.allclose(ones[200:-200], torch.ones(1, dtype=torch.float64), atol=1e-4)  # unit DC gain


# ---------------------------------------------------------------------------------------------
# VGGish
# ---------------------------------------------------------------------------------------------


def test_vggish_examples_match_reference() -> None:
    x = 0.5 * _sweep(16000, 3.3, 7000) + 0.1 * _noise(round(16000 * 3.3))
    ours = vggish_examples(torch.from_numpy(x), 16000)
    ref = _ref_vggish_log_mel(x)
    n = ref.shape[0] // 96
    assert ours.shape == (n, 1, 96, 64) == (3, 1, 96, 64)
    np.testing.assert_allclose(ours.numpy(), ref[: n * 96].reshape(n, 1, 96, 64), atol=1e-9)
    ours32 = vggish_examples(torch.from_numpy(x).float(), 16000)
    assert ours32.dtype == torch.float32
    np.testing.assert_allclose(ours32.numpy(), ref[: n * 96].reshape(n, 1, 96, 64), atol=2e-3)


def test_vggish_examples_repeat_pad_and_resample() -> None:
    x = torch.from_numpy(_noise(16000 * 2 + 333))
    two = vggish_examples(x, 16000)
    five = vggish_examples(x, 16000, num_examples=5)
    assert two.shape == (2, 1, 96, 64) and five.shape == (5, 1, 96, 64)
    assert torch.equal(five[:2], two) and all(torch.equal(five[i], two[1]) for i in (2, 3, 4))
    assert torch.equal(vggish_examples(x, 16000, num_examples=1), two[:1])
    short = torch.from_numpy(_noise(5000))  # shorter than one example: zero-padded
    padded = torch.cat([short, torch.zeros(15600 - 5000, dtype=short.dtype)])
    assert torch.equal(vggish_examples(short, 16000), vggish_examples(padded, 16000))
    assert vggish_examples(short, 16000).shape == (1, 1, 96, 64)
    assert torch.allclose(vggish_examples(short, 16000)[0, 0, -1], torch.tensor(np.log(0.01), dtype=torch.float64))
    # other rates go through resample() first
    x44 = torch.from_numpy(_noise(44100 * 2))
    assert torch.equal(vggish_examples(x44, 44100), vggish_examples(resample(x44, 44100, 16000), 16000))
    with pytest.raises(ValueError, match="mono"):
        vggish_examples(torch.zeros(2, 16000), 16000)


# ---------------------------------------------------------------------------------------------
# WS-AVS log-mel and EZ-VSL log-STFT
# ---------------------------------------------------------------------------------------------


def test_log_mel_matches_numpy_reference() -> None:
    x = 0.5 * _sweep(8000, 3.0, 3800) + 0.1 * _noise(24000)
    ours = log_mel(torch.from_numpy(x))
    assert ours.shape == (1, 128, 129)
    ref = _ref_log_mel(x, 8000, 512, 187, 128, 1e-6)
    np.testing.assert_allclose(ours[0].numpy(), ref, atol=1e-8)
    np.testing.assert_allclose(log_mel(torch.from_numpy(x).float())[0].numpy(), ref, atol=2e-3)
    # batched and odd lengths: frames = 1 + S // hop
    xb = torch.randn(2, 3, 4001)
    assert log_mel(xb).shape == (2, 3, 1, 128, 1 + 4001 // 187)
    assert torch.allclose(log_mel(xb)[1, 2], log_mel(xb[1, 2]), atol=1e-5)
    with pytest.raises(ValueError, match="samples"):
        log_mel(torch.zeros(200))


def test_log_stft_matches_scipy_spectrogram() -> None:
    x = 0.5 * _sweep(16000, 3.0, 7500) + 0.2 * _noise(48000) + 0.3  # DC offset exercises the detrend
    _, _, ref = signal.spectrogram(x, 16000, nperseg=512, noverlap=512 - 238)
    ref = np.log(ref + 1e-7)
    ours = log_stft(torch.from_numpy(x))
    assert ours.shape == (1, 257, 200) == (1, *ref.shape)
    np.testing.assert_allclose(ours[0].numpy(), ref, atol=1e-9)
    np.testing.assert_allclose(log_stft(torch.from_numpy(x).float())[0].numpy(), ref, atol=1e-2)
    xb = torch.randn(3, 1234)
    assert log_stft(xb).shape == (3, 1, 257, 1 + (1234 - 512) // 238)
    with pytest.raises(ValueError, match="512"):
        log_stft(torch.zeros(300))


# ---------------------------------------------------------------------------------------------
# Per-frame windows and the registry
# ---------------------------------------------------------------------------------------------


def test_frame_windows_centred_and_looped() -> None:
    wave = torch.arange(1.0, 11.0)  # 5 s at 2 Hz, no zero sample
    w = frame_windows(wave, sample_rate=2, num_frames=5, window_seconds=3.0)
    # frame t: 6 samples starting at 2t - 2 (centred on sample 2t + 1 = t + 0.5 s); outside the clip:
    # silence. The first frame never hears the last second, nor the last frame the first.
    assert w.tolist() == [
        [0, 0, 1, 2, 3, 4],
        [1, 2, 3, 4, 5, 6],
        [3, 4, 5, 6, 7, 8],
        [5, 6, 7, 8, 9, 10],
        [7, 8, 9, 10, 0, 0],
    ]
    # a clip shorter than a window is tiled
    short = frame_windows(torch.arange(3.0), 2, num_frames=2, window_seconds=2.0)
    assert short.tolist() == [[2, 0, 1, 2], [1, 2, 0, 1]]
    # odd rate: start = floor(((2t + 1) * 3 - 6) / 2) = 3t - 2
    odd = frame_windows(torch.arange(1.0, 10.0), 3, num_frames=3, window_seconds=2.0)
    assert odd[:, :3].tolist() == [[0, 0, 1], [2, 3, 4], [5, 6, 7]]
    assert odd[2, 3:].tolist() == [8, 9, 0]
    assert frame_windows(np.arange(10.0), 2, 5).shape == (5, 6)  # numpy input


def test_frame_windows_inside_keeps_every_window_in_the_clip() -> None:
    wave = torch.arange(1.0, 11.0)  # 5 s at 2 Hz, no zero sample
    w = frame_windows(wave, sample_rate=2, num_frames=5, window_seconds=3.0, mode="inside")
    # the centred windows of frames 2-4, and those of frames 1 and 5 moved inside the clip: no silence
    assert w.tolist() == [
        [1, 2, 3, 4, 5, 6],
        [1, 2, 3, 4, 5, 6],
        [3, 4, 5, 6, 7, 8],
        [5, 6, 7, 8, 9, 10],
        [5, 6, 7, 8, 9, 10],
    ]
    centred = frame_windows(wave, 2, 5, 3.0)
    assert torch.equal(w[1:4], centred[1:4]) and (w != 0).all()
    # a clip shorter than a window is tiled, as "centred" does
    short = torch.arange(3.0)
    assert torch.equal(frame_windows(short, 2, 2, 2.0, mode="inside"), frame_windows(short, 2, 2, 2.0))


def test_frame_windows_clip_mode() -> None:
    wave = torch.arange(10.0)
    w = frame_windows(wave, 2, num_frames=3, mode="clip")  # 3 s clip: cut
    assert w.tolist() == [list(range(6))] * 3
    w = frame_windows(wave, 2, num_frames=7, mode="clip")  # 7 s clip: looped
    assert w.tolist() == [list(range(10)) + [0, 1, 2, 3]] * 7
    assert frame_windows(wave, 2, 2, mode="clip", clip_seconds=1.5).tolist() == [[0, 1, 2]] * 2
    with pytest.raises(ValueError, match="mode"):
        frame_windows(wave, 2, 2, mode="middle")


@pytest.mark.parametrize("name", sorted(FRONTENDS))
def test_every_frontend_shapes(name: str) -> None:
    if name == "aisfx-embed" and importlib.util.find_spec("aisfx") is None:
        pytest.skip("aisfx (the embedding network's weights) not installed")
    spec = FRONTENDS[name]
    fshape = feature_shape(name)
    expected = {"vggish": (96, 64), "wsavs-logmel": (128, 129), "ezvsl-stft": (257, 200), "aisfx-logmel": (96, 100), "aisfx-embed": (512, 1)}
    assert fshape == expected[name]
    windows = torch.randn(5, spec.window_samples) * 0.1
    out = spec.fn(windows)
    assert out.shape == (5, 1, *fshape) and torch.isfinite(out).all()
    # odd lengths, other rates, numpy input and clips shorter than a window all give (T, 1, F, W)
    for sr, seconds in [(44100, 5.0), (16000, 4.37), (8000, 0.3), (22050, 1.0)]:
        clip = _noise(round(sr * seconds)).astype(np.float32)
        feats = compute_features(name, clip, sr, num_frames=5)
        assert feats.shape == (5, 1, *fshape) and feats.dtype == torch.float32
    assert torch.isfinite(feats).all()


def test_compute_features_clip_mode() -> None:
    clip = torch.from_numpy(_noise(16000 * 5)).float()
    vgg = compute_features("vggish", clip, 16000, num_frames=5, mode="clip")
    assert torch.equal(vgg, vggish_examples(clip, 16000, num_examples=5))  # the official .pkl layout
    mel = compute_features("wsavs-logmel", clip, 16000, num_frames=5, mode="clip")
    assert mel.shape == (5, 1, 128, 1 + 40000 // 187)
    assert torch.equal(mel[0], mel[4])  # every frame sees the whole clip
    centred = compute_features("ezvsl-stft", clip, 16000, num_frames=5)
    assert torch.allclose(centred[2], log_stft(clip[16000:64000]), atol=1e-5)  # frame 2: 1.0-4.0 s
    with pytest.raises(ValueError, match="front-end"):
        compute_features("nope", clip, 16000, 5)


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------


def _write_aac(path: Path, x: np.ndarray, sr: int) -> None:
    """x: (C, S) float32; AAC in whatever container the suffix names, written by PyAV."""
    layout = "stereo" if x.shape[0] == 2 else "mono"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=sr, layout=layout)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(x, dtype=np.float32), format="fltp", layout=layout)
        frame.rate = sr
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def _peak_hz(a: np.ndarray, sr: int) -> float:
    return float(np.argmax(np.abs(np.fft.rfft(a))) * sr / len(a))


def test_load_audio_wav_flac_stereo_to_mono(tmp_path: Path) -> None:
    left, right = RNG.uniform(-0.5, 0.5, (2, 16001)).astype(np.float32)
    sf.write(tmp_path / "a.wav", np.stack([left, right], 1), 16000, subtype="FLOAT")
    audio, sr = load_audio(tmp_path / "a.wav")
    assert sr == 16000 and audio.dtype == np.float32 and audio.shape == (16001,)
    np.testing.assert_allclose(audio, (left + right) / 2, atol=1e-7)
    sf.write(tmp_path / "a.flac", np.stack([left, right], 1), 16000, subtype="PCM_16")
    audio, _ = load_audio(tmp_path / "a.flac")
    np.testing.assert_allclose(audio, (left + right) / 2, atol=1e-4)
    audio8k, sr8k = load_audio(tmp_path / "a.wav", sample_rate=8000)
    assert sr8k == 8000 and audio8k.shape == (8001,)
    np.testing.assert_allclose(audio8k, resample(torch.from_numpy((left + right) / 2), 16000, 8000), atol=1e-6)
    sf.write(tmp_path / "loud.wav", np.full(100, 1.5, np.float32), 16000, subtype="FLOAT")
    assert load_audio(tmp_path / "loud.wav")[0].max() == 1.0  # contract: within [-1, 1]


@pytest.mark.parametrize("suffix", [".m4a", ".mp4", ".mkv"])
def test_load_audio_pyav_containers(tmp_path: Path, suffix: str) -> None:
    sr = 16000
    t = np.arange(2 * sr) / sr
    x = np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.3 * np.sin(2 * np.pi * 440 * t)])
    path = tmp_path / f"clip{suffix}"
    _write_aac(path, x, sr)
    audio, rate = load_audio(path)
    assert rate == sr and audio.dtype == np.float32
    assert 2 * sr <= audio.size <= 2 * sr + 3 * 1024  # AAC adds priming / padding frames
    assert abs(_peak_hz(audio, sr) - 440) < 2
    assert 0.35 < np.abs(audio).max() < 0.45  # channels averaged: (0.5 + 0.3) / 2
    audio8k, rate8k = load_audio(path, sample_rate=8000)
    assert rate8k == 8000 and abs(audio8k.size - audio.size / 2) <= 1
    streamed = np.concatenate(list(decode_audio_stream(path, 8000, chunk_seconds=0.5)))
    np.testing.assert_allclose(streamed, audio8k, atol=1e-5)


def test_load_audio_falls_back_to_pyav(tmp_path: Path) -> None:
    # AAC data behind a .wav name: libsndfile refuses it, PyAV reads it
    t = np.arange(16000) / 16000
    _write_aac(tmp_path / "real.m4a", np.sin(2 * np.pi * 1000 * t)[None] * 0.5, 16000)
    (tmp_path / "misnamed.wav").write_bytes((tmp_path / "real.m4a").read_bytes())
    audio, sr = load_audio(tmp_path / "misnamed.wav")
    assert sr == 16000 and abs(_peak_hz(audio, sr) - 1000) < 2


def _video_only(path: Path) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for _ in range(3):
            frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def test_load_audio_errors_name_the_file(tmp_path: Path) -> None:
    cases: dict[str, str] = {}
    cases["missing.wav"] = "does not exist"
    (tmp_path / "empty.wav").write_bytes(b"")
    cases["empty.wav"] = "0 bytes"
    (tmp_path / "garbage.wav").write_bytes(RNG.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    cases["garbage.wav"] = "corrupt"
    (tmp_path / "garbage.mp4").write_bytes(RNG.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    cases["garbage.mp4"] = "corrupt"
    _video_only(tmp_path / "silent.mp4")
    cases["silent.mp4"] = "has no audio track"
    sf.write(tmp_path / "nosamples.wav", np.zeros((0,), np.float32), 16000)
    cases["nosamples.wav"] = "zero samples"
    bad = np.zeros(32000, np.float32)
    bad[20000] = np.nan
    sf.write(tmp_path / "nan.wav", bad, 16000, subtype="FLOAT")
    cases["nan.wav"] = r"NaN/Inf samples \(first at 1.250 s\)"
    inf = np.zeros(100, np.float32)
    inf[3] = np.inf
    sf.write(tmp_path / "inf.wav", inf, 16000, subtype="FLOAT")
    cases["inf.wav"] = "NaN/Inf"
    for name, problem in cases.items():
        path = tmp_path / name
        with pytest.raises(AudioError, match=problem) as info:
            load_audio(path)
        assert str(path) in str(info.value), name
        assert isinstance(info.value, ValueError)
        with pytest.raises(AudioError, match=problem):
            list(decode_audio_stream(path, 16000, chunk_seconds=1.0))


@pytest.mark.parametrize("sample_rate", [None, 16000, 8000])
def test_decode_audio_stream_equals_load_audio(tmp_path: Path, sample_rate: int | None) -> None:
    x = (0.4 * _sweep(22050, 7.3, 9000) + 0.1 * _noise(round(22050 * 7.3))).astype(np.float32)
    sf.write(tmp_path / "long.wav", x, 22050, subtype="FLOAT")  # several 65536-sample read blocks
    whole, rate = load_audio(tmp_path / "long.wav", sample_rate)
    chunks = list(decode_audio_stream(tmp_path / "long.wav", sample_rate, chunk_seconds=2.0))
    assert [c.size for c in chunks[:-1]] == [2 * rate] * (len(chunks) - 1) and 0 < chunks[-1].size <= 2 * rate
    streamed = np.concatenate(chunks)
    assert streamed.shape == whole.shape and streamed.dtype == np.float32
    np.testing.assert_allclose(streamed, whole, atol=1e-5)


@pytest.mark.media
def test_load_audio_real_avsbench_video() -> None:
    videos = sorted((MEDIA / "videos").glob("*.mp4"))
    if not videos:
        pytest.skip("shared media absent")
    audio, sr = load_audio(videos[0], sample_rate=16000)
    assert sr == 16000 and audio.size > 16000 and np.abs(audio).max() > 0.001
    feats = compute_features("vggish", audio, sr, num_frames=2, mode="clip")
    assert feats.shape == (2, 1, 96, 64) and torch.isfinite(feats).all()


# --- aisfx front-ends -------------------------------------------------------------------------------------
HAS_AISFX = importlib.util.find_spec("aisfx") is not None


def _essentia_reference(x: np.ndarray) -> np.ndarray:
    """aisfx's Essentia spectrogram transcribed from Essentia's C++ (streaming FrameCutter, Windowing 'hann',
    Spectrum, MelBands htkMel / warping / unit_sum / power, shift_scale_log) in plain loops -> (96, frames)."""
    n, hop, nb, sr = 2048, 1024, 96, 44100
    frames, start = [], -((n + 1) // 2)  # startFromZero=False: the first frame is centred on sample 0
    while True:
        frame = np.zeros(n)
        a, b = max(start, 0), min(start + n, x.size)
        frame[a - start : b - start] = x[a:b]
        frames.append(frame)
        if start + n >= x.size and start + n // 2 >= x.size:  # last frame: its centre reached the end
            break
        start += hop
    window = np.array([0.5 - 0.5 * math.cos(2 * math.pi * i / (n - 1)) for i in range(n)])
    hz2mel = lambda f: 2595.0 * math.log10(1 + f / 700.0)  # noqa: E731
    step = hz2mel(sr / 2) / (nb + 1)
    edges = [700.0 * (10 ** (i * step / 2595.0) - 1) for i in range(nb + 2)]
    scale = (sr / 2) / (n // 2)
    weights = np.zeros((nb, n // 2 + 1))
    for i in range(nb):
        for j in range(int(edges[i] / scale + 0.5), int(edges[i + 2] / scale + 0.5)):
            f = j * scale
            if edges[i] <= f < edges[i + 1]:
                weights[i, j] = (hz2mel(f) - hz2mel(edges[i])) / (hz2mel(edges[i + 1]) - hz2mel(edges[i]))
            elif edges[i + 1] <= f < edges[i + 2]:
                weights[i, j] = (hz2mel(edges[i + 2]) - hz2mel(f)) / (hz2mel(edges[i + 2]) - hz2mel(edges[i + 1]))
        weights[i] /= weights[i].sum()
    power = np.stack([np.abs(np.fft.rfft(f * window)) ** 2 for f in frames], axis=1)  # (1025, frames)
    return np.log10(1 + 1e4 * (weights @ power)) / 9.457798957824707


def test_aisfx_log_mel_window_is_one_block() -> None:
    # 99 hops: 100 frames, the block aisfx embeds, and exactly Essentia's frame count for that length
    assert FRONTENDS["aisfx-logmel"].window_samples == 99 * 1024
    assert feature_shape("aisfx-logmel") == (96, 100)
    assert tuple(aisfx_log_mel(torch.zeros(2, 3, 4096)).shape) == (2, 3, 1, 96, 5)


def test_aisfx_log_mel_of_an_impulse_by_hand() -> None:
    # A unit impulse has a flat power spectrum w(p)^2 in every frame that holds it (p = its position in the
    # frame), so every unit-sum band equals w(p)^2: frame k (starting at 1024 (k - 1)) is
    # log10(1 + 1e4 w(p)^2) / 9.4578 in all 96 bands. This pins the centring (frames 1 and 2 hear sample
    # 1536, frame 0 does not), the symmetric Hann (w(512) = 0.5 - 0.5 cos(2 pi 512 / 2047) = 0.500384, not 0.5),
    # the unit-sum bands and the log scaling.
    x = torch.zeros(99 * 1024, dtype=torch.float64)
    x[1536] = 1.0
    out = aisfx_log_mel(x)[0]  # (96, 100)
    w = lambda p: 0.5 - 0.5 * math.cos(2 * math.pi * p / 2047)  # noqa: E731
    expected = lambda p: math.log10(1 + 1e4 * w(p) ** 2) / 9.457798957824707  # noqa: E731
    assert torch.allclose(out[:, 1], torch.full((96,), expected(1536), dtype=torch.float64), atol=1e-9)
    assert torch.allclose(out[:, 2], torch.full((96,), expected(512), dtype=torch.float64), atol=1e-9)
    assert abs(expected(512) - math.log10(1 + 1e4 * 0.25) / 9.457798957824707) > 5e-5  # periodic Hann differs
    assert out[:, 0].abs().max() == 0 and out[:, 3:].abs().max() == 0


def test_aisfx_mel_bands_are_linear_in_mel_with_essentia_bin_ranges() -> None:
    from avseg.audio.frontends import _essentia_mel_fbank

    fbank = _essentia_mel_fbank(1025, 44100, 96, 0.0, 22050.0)  # (1025, 96)
    assert torch.allclose(fbank.sum(0), torch.ones(96, dtype=torch.float64))
    # Band 0 spans 0-51.6 Hz; Essentia keeps bins int(0 + .5) = 0 to int(51.6 / 21.53 + .5) = 2 (exclusive):
    # bin 0 (0 Hz) weighs 0, so bin 1 holds it all (a triangle linear in Hz over 3 bins would not).
    assert fbank[1, 0] == 1.0 and fbank[:, 0].sum() == 1.0


def test_aisfx_log_mel_matches_essentia_transcription() -> None:
    t = np.arange(99 * 1024) / 44100
    x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * RNG.standard_normal(t.size)
    x[:3000] = 0
    ref = _essentia_reference(x)
    ours = aisfx_log_mel(torch.from_numpy(x))[0].numpy()
    assert ours.shape == ref.shape == (96, 100)
    np.testing.assert_allclose(ours, ref, atol=1e-9)


@pytest.mark.skipif(not HAS_AISFX, reason="aisfx not installed")
def test_aisfx_embed_frontend_is_the_frozen_pretrained_encoder_on_aisfx_log_mel() -> None:
    from avseg.audio.aisfx import frozen_aisfx
    from avseg.models.zoo import AUDIO_ENCODERS

    wave = _sweep(16000, 3.0, 4000).astype(np.float32)
    emb = compute_features("aisfx-embed", wave, 16000, 3)
    assert tuple(emb.shape) == (3, 1, 512, 1) and emb.dtype == torch.float32
    assert feature_shape("aisfx-embed") == (512, 1)
    model = AUDIO_ENCODERS["aisfx"](weights="aisfx").eval()
    with torch.no_grad():
        expected = model(compute_features("aisfx-logmel", wave, 16000, 3))
    torch.testing.assert_close(emb[:, 0, :, 0], expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(compute_features("aisfx-embed", wave, 16000, 3), emb)  # deterministic
    assert frozen_aisfx() is frozen_aisfx()  # loaded once per process
    assert not any(p.requires_grad for p in frozen_aisfx().parameters())
    # loading it draws nothing from torch's random stream (a run's randomness must not depend on when it loads)
    frozen_aisfx.cache_clear()
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    frozen_aisfx()
    torch.testing.assert_close(torch.rand(3), expected_draw, rtol=0, atol=0)


# --- bad audio input --------------------------------------------------------------------------------------------
def test_bad_input_matrix_wav_resampled_and_stereo_averaged(tmp_path: Path) -> None:
    """Wrong sample rates are resampled (band-limited sinc), multi-channel audio is averaged: documented."""
    from avseg.audio import compute_features

    (tmp_path / "a16.wav").write_bytes(wav_bytes(sine(sr=SR)))
    (tmp_path / "a44.wav").write_bytes(wav_bytes(sine(sr=44100), sr=44100))
    write_stereo_wav(tmp_path / "st.wav")
    a16, _ = load_audio(tmp_path / "a16.wav", 8000)
    a44, sr = load_audio(tmp_path / "a44.wav", 8000)
    assert sr == 8000 and a44.shape == a16.shape
    f16, f44 = (compute_features("wsavs-logmel", a, 8000, 5) for a in (a16, a44))
    assert f16.shape == f44.shape == (5, 1, 128, 129)
    peak = lambda f: int(f[2, 0].mean(-1).argmax())  # noqa: E731 - the 440 Hz mel band
    assert peak(f16) == peak(f44)
    st, _ = load_audio(tmp_path / "st.wav")
    np.testing.assert_allclose(st, sine() * 0.25, atol=1e-4)  # (w + (-w / 2)) / 2


@pytest.mark.parametrize("case", list(MP4_CASES))
def test_bad_input_matrix_mp4_audio(case: str, tmp_path: Path) -> None:
    mutate, regex = MP4_CASES[case]
    path = write_mp4(tmp_path / "clip.mp4", audio=mutate is not None)
    if mutate is not None:
        assert load_audio(path)[0].size > SR  # intact, it decodes
        mutate(path)
    with pytest.raises(AudioError) as exc:
        load_audio(path, 16000)
    assert str(path) in str(exc.value) and re.search(regex, str(exc.value)), str(exc.value)


def test_quiet_seconds_relative_to_the_loudest_second() -> None:
    """Second t is quiet when its RMS is more than ``db`` below the loudest second's; seconds past the clip's
    end hold nothing; an all-zero clip is quiet throughout."""
    from avseg.audio import quiet_seconds

    sr = 1000
    t = np.arange(sr) / sr
    tone = 0.5 * np.sin(2 * np.pi * 50 * t)
    level = lambda db: tone * 10 ** (db / 20)  # noqa: E731
    wave = np.concatenate([level(0), level(-12), level(-3), level(-7)]).astype(np.float32)
    assert quiet_seconds(wave, sr, 4, 6.0).tolist() == [False, True, False, True]
    assert quiet_seconds(wave, sr, 4, 8.0).tolist() == [False, True, False, False]
    assert quiet_seconds(wave, sr, 6, 6.0).tolist() == [False, True, False, True, True, True]  # past the end: nothing sounds
    assert quiet_seconds(wave[: sr + sr // 2], sr, 2, 6.0).tolist() == [False, True]  # the half second left is at -12 dB
    assert quiet_seconds(np.zeros(3 * sr, np.float32), sr, 3, 6.0).all()
    with pytest.raises(ValueError, match="db must be > 0"):
        quiet_seconds(wave, sr, 4, 0.0)
    with pytest.raises(ValueError, match="seconds must be >= 1"):
        quiet_seconds(wave, sr, 0, 6.0)
