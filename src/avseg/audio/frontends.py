"""Pure, batched torch audio front-ends (decoding: :mod:`avseg.audio.decode`; resampling: :mod:`avseg.audio.resample`).

Shape conventions: ``S`` samples of a mono waveform, ``T`` frames of a video (one per second in
AVSBench), ``S_w`` samples of one frame's audio window, ``F x W`` a spectrogram (frequency bins x
time steps). Every front-end returns a 1-channel "image" ``(..., 1, F, W)`` so that audio encoders
can treat it like a grey-scale picture.

Nothing here needs torchaudio, librosa or scipy: decoding goes through soundfile (wav/flac/ogg) or
PyAV (any container FFmpeg reads), the maths is plain torch, and each front-end reproduces the
reference implementation named in its docstring (pinned by ``tests/test_audio.py``).

One front-end, ``aisfx-embed``, runs a frozen pretrained network: aisfx's CNN, defined beside the
front-ends in :mod:`avseg.audio.aisfx` (``avseg.models`` imports it from there for its encoder registry).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from avseg.audio.aisfx import AISFX_EMBED_DIM, frozen_aisfx
from avseg.audio.resample import resample

__all__ = [
    "FRONTENDS",
    "FrontendSpec",
    "compute_features",
    "cut_windows",
    "feature_shape",
    "fit_length",
    "frame_windows",
    "window_start",
    "aisfx_embeddings",
    "aisfx_log_mel",
    "log_mel",
    "log_stft",
    "rms",
    "vggish_examples",
]


# ----------------------------------------------------------------------------------------------
# Spectral front-ends
# ----------------------------------------------------------------------------------------------


def _as_float(wave: Tensor | np.ndarray) -> Tensor:
    if isinstance(wave, np.ndarray):
        wave = torch.from_numpy(np.ascontiguousarray(wave))
    if not wave.is_floating_point():
        wave = wave.float()
    return wave


def _frames(wave: Tensor, window_length: int, hop: int) -> Tensor:
    """(..., S) -> (..., frames, window_length) without padding: frames = 1 + (S - window) // hop."""
    if wave.shape[-1] < window_length:
        raise ValueError(f"need at least {window_length} samples, got {wave.shape[-1]}")
    return wave.unfold(-1, window_length, hop)


def _periodic_hann(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.hann_window(n, periodic=True, dtype=dtype, device=device)


# --- VGGish ------------------------------------------------------------------------------------

VGGISH_SAMPLE_RATE = 16000
_VGGISH_WINDOW = 400  # 25 ms at 16 kHz
_VGGISH_HOP = 160  # 10 ms
_VGGISH_FFT = 512  # next power of two above the window
_VGGISH_MELS = 64
_VGGISH_EXAMPLE = 96  # frames per example (0.96 s)
# Samples giving exactly one example: 1 + (S - 400) // 160 = 96 STFT frames.
VGGISH_EXAMPLE_SAMPLES = _VGGISH_WINDOW + (_VGGISH_EXAMPLE - 1) * _VGGISH_HOP  # 15600 = 0.975 s


@lru_cache(maxsize=8)
def _vggish_mel_matrix(
    num_spectrogram_bins: int = _VGGISH_FFT // 2 + 1,
    sample_rate: int = VGGISH_SAMPLE_RATE,
    num_mel_bins: int = _VGGISH_MELS,
    lower_edge_hertz: float = 125.0,
    upper_edge_hertz: float = 7500.0,
) -> Tensor:
    """VGGish ``mel_features.spectrogram_to_mel_matrix``: (bins, mels) float64.

    Triangles are linear in HTK mel (1127 ln(1 + f/700)), unlike torchaudio whose triangles are linear
    in Hz; the DC bin is zeroed.
    """

    def hz_to_mel(f: Tensor) -> Tensor:
        return 1127.0 * torch.log(1.0 + f / 700.0)

    bins_mel = hz_to_mel(torch.linspace(0.0, sample_rate / 2.0, num_spectrogram_bins, dtype=torch.float64))
    edges = torch.linspace(
        float(hz_to_mel(torch.tensor(lower_edge_hertz, dtype=torch.float64))),
        float(hz_to_mel(torch.tensor(upper_edge_hertz, dtype=torch.float64))),
        num_mel_bins + 2,
        dtype=torch.float64,
    )
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]  # (mels,)
    lower_slope = (bins_mel[:, None] - lower) / (center - lower)
    upper_slope = (upper - bins_mel[:, None]) / (upper - center)
    weights = torch.clamp(torch.minimum(lower_slope, upper_slope), min=0.0)
    weights[0, :] = 0.0
    return weights


def _vggish_log_mel(wave16k: Tensor) -> Tensor:
    """(..., S) at 16 kHz -> (..., frames, 64) VGGish log-mel, frames = 1 + (S - 400) // 160."""
    frames = _frames(wave16k, _VGGISH_WINDOW, _VGGISH_HOP)  # (..., frames, 400)
    frames = frames * _periodic_hann(_VGGISH_WINDOW, wave16k.dtype, wave16k.device)
    magnitude = torch.fft.rfft(frames, n=_VGGISH_FFT).abs()  # (..., frames, 257), zero-padded at the end
    mel = magnitude @ _vggish_mel_matrix().to(device=wave16k.device, dtype=wave16k.dtype)  # (..., frames, 64)
    return torch.log(mel + 0.01)


def vggish_examples(wave: Tensor, sample_rate: int, num_examples: int | None = None) -> Tensor:
    """VGGish input examples (``vggish_input.waveform_to_examples``), in torch.

    16 kHz; 25 ms periodic-Hann STFT frames every 10 ms without centre padding; FFT length 512;
    magnitude; 64 HTK-mel bands over 125-7500 Hz; log(mel + 0.01); non-overlapping 96-frame
    (0.96 s) examples, a trailing partial example dropped.

    Args:
        wave: (S,) mono waveform (VGGish averages channels before this).
        sample_rate: rate of ``wave``; resampled to 16 kHz with ``resample``.
        num_examples: if given, return exactly this many: extra ones are cut, missing ones are copies
            of the last (the official AVSBench preprocessing).

    Returns:
        (n, 1, 96, 64); n = num_examples if given, else the number of whole examples. A clip shorter
        than one example (15600 samples at 16 kHz) is zero-padded to one.
    """
    wave = _as_float(wave)
    if wave.dim() != 1:
        raise ValueError(f"vggish_examples expects a mono (S,) waveform, got shape {tuple(wave.shape)}")
    if num_examples is not None and num_examples < 1:
        raise ValueError(f"num_examples must be >= 1, got {num_examples}")
    wave = resample(wave, sample_rate, VGGISH_SAMPLE_RATE)
    if wave.shape[-1] < VGGISH_EXAMPLE_SAMPLES:
        wave = F.pad(wave, (0, VGGISH_EXAMPLE_SAMPLES - wave.shape[-1]))
    log_mel_frames = _vggish_log_mel(wave)  # (frames, 64)
    n = log_mel_frames.shape[0] // _VGGISH_EXAMPLE
    examples = log_mel_frames[: n * _VGGISH_EXAMPLE].reshape(n, 1, _VGGISH_EXAMPLE, _VGGISH_MELS)
    if num_examples is not None:
        if n >= num_examples:
            examples = examples[:num_examples]
        else:
            examples = torch.cat([examples, examples[-1:].expand(num_examples - n, -1, -1, -1)])
    return examples


def _vggish_windows(windows: Tensor) -> Tensor:
    """(T, S_w) 16 kHz windows -> (T, 1, 96, 64): the first VGGish example of each window."""
    if windows.shape[-1] < VGGISH_EXAMPLE_SAMPLES:
        windows = F.pad(windows, (0, VGGISH_EXAMPLE_SAMPLES - windows.shape[-1]))
    return _vggish_log_mel(windows)[..., None, :_VGGISH_EXAMPLE, :]


def _vggish_clip(wave: Tensor, num_frames: int) -> Tensor:
    """Whole 16 kHz clip (S,) -> (T, 1, 96, 64): example t for frame t, as the official AVSBench .pkl."""
    return vggish_examples(wave, VGGISH_SAMPLE_RATE, num_examples=num_frames)


# --- WS-AVS log-mel ------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _htk_mel_fbank(n_freqs: int, sample_rate: int, n_mels: int, f_min: float, f_max: float) -> Tensor:
    """torchaudio ``melscale_fbanks(..., norm=None, mel_scale="htk")``: (n_freqs, n_mels) float64.

    Band edges are equally spaced in HTK mel (2595 log10(1 + f/700)); triangles are linear in Hz.
    """
    all_freqs = torch.linspace(0, sample_rate // 2, n_freqs, dtype=torch.float64)  # torchaudio uses sr // 2

    def hz_to_mel(f: float) -> float:
        return 2595.0 * math.log10(1.0 + f / 700.0)

    m_pts = torch.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2, dtype=torch.float64)
    f_pts = 700.0 * (10.0 ** (m_pts / 2595.0) - 1.0)  # (n_mels + 2,)
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts[None, :] - all_freqs[:, None]  # (n_freqs, n_mels + 2)
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    return torch.clamp(torch.minimum(down, up), min=0.0)


def log_mel(
    wave: Tensor,
    sample_rate: int = 8000,
    n_fft: int = 512,
    hop_length: int = 187,
    n_mels: int = 128,
    f_min: float = 0.0,
    f_max: float | None = None,
    eps: float = 1e-6,
) -> Tensor:
    """WS-AVS log-mel: log(torchaudio ``MelSpectrogram`` + eps), in torch.

    Centred frames (reflect padding of n_fft // 2 on each side), periodic Hann window of n_fft, power
    spectrum, HTK mel filterbank without normalisation.

    Args:
        wave: (..., S) waveform at ``sample_rate``; S > n_fft // 2 (reflect padding needs it).
        f_max: upper band edge, default sample_rate / 2.

    Returns:
        (..., 1, n_mels, 1 + S // hop_length); 3 s at 8 kHz gives (..., 1, 128, 129).
    """
    wave = _as_float(wave)
    pad = n_fft // 2
    if wave.shape[-1] <= pad:
        raise ValueError(f"log_mel needs more than {pad} samples (reflect padding), got {wave.shape[-1]}")
    lead = wave.shape[:-1]
    x = F.pad(wave.reshape(-1, 1, wave.shape[-1]), (pad, pad), mode="reflect")[:, 0]  # (N, S + n_fft)
    frames = _frames(x, n_fft, hop_length) * _periodic_hann(n_fft, x.dtype, x.device)  # (N, W, n_fft)
    power = torch.fft.rfft(frames).abs().pow(2)  # (N, W, n_fft // 2 + 1)
    fbank = _htk_mel_fbank(n_fft // 2 + 1, int(sample_rate), n_mels, float(f_min), float(f_max or sample_rate / 2))
    mel = power @ fbank.to(device=x.device, dtype=x.dtype)  # (N, W, n_mels)
    out = torch.log(mel + eps).transpose(1, 2)  # (N, n_mels, W)
    return out.reshape(*lead, 1, n_mels, out.shape[-1])


# --- aisfx log-mel (the pretrained audio encoder's input) ------------------------------------------

AISFX_SAMPLE_RATE = 44100
AISFX_N_FFT = 2048  # 46 ms
AISFX_HOP = 1024  # 23 ms
AISFX_N_MELS = 96
AISFX_LOG_MAX = 9.457798957824707  # aisfx divides log10(1 + 1e4 * mel) by this ("original" normalisation)
AISFX_BLOCK_FRAMES = 100  # spectrogram frames per aisfx embedding block (~2.3 s)
# 99 hops = 2.2988 s: Essentia's FrameCutter then yields exactly the 100 frames of one aisfx block (frames
# centred on samples 0, 1024, ..., 101376; the last one's centre reaches the end of the window).
AISFX_WINDOW_SECONDS = (AISFX_BLOCK_FRAMES - 1) * AISFX_HOP / AISFX_SAMPLE_RATE


def _htk_mel(f: Tensor) -> Tensor:
    return 2595.0 * torch.log10(1.0 + f / 700.0)


@lru_cache(maxsize=4)
def _essentia_mel_fbank(n_freqs: int, sample_rate: int, n_mels: int, f_min: float, f_max: float) -> Tensor:
    """Essentia ``MelBands(warpingFormula='htkMel', weighting='warping', normalize='unit_sum')``: (n_freqs, n_mels) float64.

    Essentia 2.1 (melbands.cpp, triangularbands.cpp): band edges f_0..f_{n+1} equally spaced in HTK mel;
    band i weights bin j (frequency j * (sr/2) / (n_freqs - 1)) by a triangle that is linear in *mel*
    (weighting 'warping', not linear in Hz as librosa / torchaudio), over the bins
    ``int(f_i / df + 0.5) <= j < int(f_{i+2} / df + 0.5)`` only; then each band's weights sum to 1.
    """
    df = (sample_rate / 2.0) / (n_freqs - 1)
    m_min, m_max = (2595.0 * math.log10(1.0 + f / 700.0) for f in (f_min, f_max))
    mel_edges = torch.linspace(m_min, m_max, n_mels + 2, dtype=torch.float64)
    edges = 700.0 * (10.0 ** (mel_edges / 2595.0) - 1.0)  # (n_mels + 2,) Hz
    bins = torch.arange(n_freqs, dtype=torch.float64)
    freqs = bins * df
    mel = _htk_mel(freqs)[:, None]  # (n_freqs, 1)
    lo, mid, hi = edges[None, :-2], edges[None, 1:-1], edges[None, 2:]  # (1, n_mels) each
    m_lo, m_mid, m_hi = mel_edges[None, :-2], mel_edges[None, 1:-1], mel_edges[None, 2:]
    up = (mel - m_lo) / (m_mid - m_lo)
    down = (m_hi - mel) / (m_hi - m_mid)
    f = freqs[:, None]
    weights = torch.where((f >= lo) & (f < mid), up, torch.where((f >= mid) & (f < hi), down, torch.zeros_like(up)))
    first = torch.floor(lo / df + 0.5)  # Essentia's int(x + 0.5) on positive x
    last = torch.floor(hi / df + 0.5)  # exclusive
    weights = weights * ((bins[:, None] >= first) & (bins[:, None] < last))
    total = weights.sum(0, keepdim=True)
    return weights / torch.where(total > 0, total, torch.ones_like(total))


def _symmetric_hann(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Essentia's 'hann': 0.5 - 0.5 cos(2 pi i / (n - 1)), i.e. the symmetric window (not normalised)."""
    return torch.hann_window(n, periodic=False, dtype=dtype, device=device)


def aisfx_log_mel(wave: Tensor) -> Tensor:
    """The spectrogram the aisfx encoder was trained on (aisfx 0.1.2's Essentia front-end), in torch.

    Reproduces ``aisfx/spectrogram/spectrogram_essentia.py`` with aisfx's settings (checked line by line
    against Essentia's FrameCutter, Windowing, Spectrum and MelBands sources, and pinned by
    ``tests/test_audio.py``):

    - frames of 2048 samples every 1024, the first centred on sample 0 (Essentia's ``FrameCutter`` with
      ``startFromZero=False`` starts at -1024 and zero-pads);
    - symmetric Hann window, not normalised (Essentia's ``hann`` divides by n - 1);
    - power spectrum (``Spectrum`` magnitude, squared by ``MelBands(type='power')``);
    - 96 HTK mel bands over 0-22050 Hz, triangles linear in mel, unit-sum (``_essentia_mel_fbank``);
    - ``log10(1 + 10000 * mel) / 9.4578`` (``shift_scale_log`` then aisfx's "original" min-max scaling).

    aisfx's librosa alternative differs (periodic Hann, triangles linear in Hz, peak-normalised audio,
    and its (mel, time) output is blocked along the wrong axis); the weights were trained on Essentia's.
    Not reproduced: Essentia's resampler (the caller resamples) and its -100 dB dither of all-zero frames
    (log10(1 + 1e4 * 1e-10) is 0 to 6 digits).

    Args:
        wave: (..., S) waveform at 44.1 kHz.

    Returns:
        (..., 1, 96, 1 + S // 1024), the first 1 + S // 1024 of Essentia's frames (Essentia adds one more
        when S is not a multiple of 1024); a window of ``AISFX_WINDOW_SECONDS`` gives (..., 1, 96, 100).
    """
    wave = _as_float(wave)
    lead = wave.shape[:-1]
    pad = AISFX_N_FFT // 2
    x = F.pad(wave.reshape(-1, wave.shape[-1]), (pad, pad))  # (N, S + n_fft), zeros
    frames = _frames(x, AISFX_N_FFT, AISFX_HOP) * _symmetric_hann(AISFX_N_FFT, x.dtype, x.device)  # (N, W, n_fft)
    power = torch.fft.rfft(frames).abs().pow(2)  # (N, W, n_fft // 2 + 1)
    fbank = _essentia_mel_fbank(AISFX_N_FFT // 2 + 1, AISFX_SAMPLE_RATE, AISFX_N_MELS, 0.0, AISFX_SAMPLE_RATE / 2)
    mel = power @ fbank.to(device=x.device, dtype=x.dtype)  # (N, W, 96)
    out = (torch.log10(1.0 + 1e4 * mel) / AISFX_LOG_MAX).transpose(1, 2)  # (N, 96, W)
    return out.reshape(*lead, 1, AISFX_N_MELS, out.shape[-1])



# --- frozen aisfx embeddings (pretrained features computed once, like AVSBench's VGGish .pkl) -------

def aisfx_embeddings(wave: Tensor) -> Tensor:
    """Frozen pretrained aisfx embeddings of 44.1 kHz windows: ``aisfx_log_mel`` then aisfx's CNN.

    About 1.9 GFLOPs per 2.3 s window (~0.1 s on one CPU thread), so datasets memoise this front-end
    (``FrontendSpec.memoise``) and ``avseg data cache`` can store it: training then pays for it once per
    clip, not once per epoch. Needs the ``aisfx`` wheel (``pip install --no-deps aisfx==0.1.2``) for the
    weights; computed on the CPU in float32, deterministic.

    Args:
        wave: (..., S) waveform at 44.1 kHz, S >= 7 * 1024 (the CNN pools time by 8).

    Returns:
        (..., 1, 512, 1): a 1-channel "spectrogram" of height 512 and width 1, so the batch contract and
        the collate code stay those of the spectrogram front-ends; ``AUDIO_ENCODERS["embed-mlp"]`` reads it.
    """
    spec = aisfx_log_mel(wave)  # (..., 1, 96, W)
    lead = spec.shape[:-3]
    flat = spec.reshape(-1, 1, AISFX_N_MELS, spec.shape[-1]).float().cpu()  # (N, 1, 96, W)
    with torch.no_grad():
        emb = frozen_aisfx()(flat)  # (N, 512)
    return emb.reshape(*lead, 1, AISFX_EMBED_DIM, 1).to(wave.device if isinstance(wave, Tensor) else "cpu")

# --- EZ-VSL log-STFT -----------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _tukey_periodic(n: int, alpha: float = 0.25) -> Tensor:
    """scipy ``get_window(('tukey', alpha), n)``: the symmetric Tukey of n + 1 points, last dropped."""
    m = n + 1
    k = torch.arange(m, dtype=torch.float64)
    width = int(math.floor(alpha * (m - 1) / 2.0))
    w = torch.ones(m, dtype=torch.float64)
    head = k[: width + 1]
    tail = k[m - width - 1 :]
    w[: width + 1] = 0.5 * (1 + torch.cos(math.pi * (-1 + 2.0 * head / alpha / (m - 1))))
    w[m - width - 1 :] = 0.5 * (1 + torch.cos(math.pi * (-2.0 / alpha + 1 + 2.0 * tail / alpha / (m - 1))))
    return w[:n]


def log_stft(
    wave: Tensor, sample_rate: int = 16000, nperseg: int = 512, hop_length: int = 238, eps: float = 1e-7
) -> Tensor:
    """EZ-VSL spectrogram: log(scipy.signal.spectrogram(x, fs, nperseg, noverlap=nperseg-hop) + eps).

    scipy's defaults: periodic Tukey(0.25) window, per-segment mean removed ('constant' detrend), no
    padding, PSD 'density' scaling |X|^2 / (fs * sum(w^2)), one-sided with every bin except DC and
    Nyquist doubled.

    Args:
        wave: (..., S) waveform at ``sample_rate``, S >= nperseg.

    Returns:
        (..., 1, nperseg // 2 + 1, 1 + (S - nperseg) // hop_length); 3 s at 16 kHz gives
        (..., 1, 257, 200).
    """
    wave = _as_float(wave)
    frames = _frames(wave, nperseg, hop_length)  # (..., W, nperseg)
    frames = frames - frames.mean(dim=-1, keepdim=True)
    window = _tukey_periodic(nperseg).to(device=wave.device, dtype=wave.dtype)
    psd = torch.fft.rfft(frames * window).abs().pow(2) / (sample_rate * window.pow(2).sum())
    scale = torch.full((psd.shape[-1],), 2.0, dtype=psd.dtype, device=psd.device)
    scale[0] = 1.0
    if nperseg % 2 == 0:  # even FFT: the last bin is Nyquist, not doubled
        scale[-1] = 1.0
    out = torch.log(psd * scale + eps).transpose(-1, -2)  # (..., F, W)
    return out.unsqueeze(-3)


def fit_length(wave: np.ndarray, n: int) -> np.ndarray:
    """(S,) -> (n,) float32: ``wave`` cut, or looped from its start, to n samples; zeros when it is empty.

    How a replacement soundtrack (another video's, in negative-audio training and the listening evaluation)
    takes the length of the clip it replaces.
    """
    return np.resize(wave, n).astype(np.float32) if len(wave) else np.zeros(n, np.float32)


def rms(wave: np.ndarray) -> float:
    """Root mean square of a waveform (0 for an empty one), accumulated in float64."""
    return float(np.sqrt(np.mean(np.square(wave, dtype=np.float64)))) if len(wave) else 0.0


def quiet_seconds(wave: np.ndarray, sample_rate: int, seconds: int, db: float) -> np.ndarray:
    """(seconds,) bool: second t of the clip (samples [t, t + 1) s) is more than ``db`` dB below the loudest of
    the ``seconds`` seconds in RMS (a second past the clip's end holds no sample and is quiet; so is every
    second of an all-zero clip). AVSBench shows one frame per second: this is "nothing sounds in frame t"
    judged from the sound's level alone, relative to the clip, as a background that stays while the sources
    stop leaves it."""
    if seconds < 1:
        raise ValueError(f"seconds must be >= 1, got {seconds}")
    if not db > 0:
        raise ValueError(f"db must be > 0, got {db}")
    levels = np.array([rms(wave[t * sample_rate : (t + 1) * sample_rate]) for t in range(seconds)])
    loudest = float(levels.max())
    if loudest <= 0.0:
        return np.ones(seconds, dtype=bool)
    return levels < loudest * 10.0 ** (-db / 20.0)


# ----------------------------------------------------------------------------------------------
# Per-frame windows
# ----------------------------------------------------------------------------------------------


def window_start(twice_centre: int, size: int, length: int, inside: bool) -> int:
    """First sample of the ``size``-sample window centred on sample ``twice_centre / 2``: floor((2c - S_w) / 2),
    negative or past the track where the window leaves it; with ``inside`` (and a track of ``length`` >=
    ``size`` samples) clamped to [0, length - size]. The one rule for training windows (``frame_windows``)
    and for the predictor's windows at arbitrary frame times, whole or streamed."""
    start = (twice_centre - size) // 2
    if inside and length >= size:
        start = min(max(start, 0), length - size)
    return start


def frame_windows(
    wave: Tensor | np.ndarray,
    sample_rate: int,
    num_frames: int,
    window_seconds: float = 3.0,
    mode: str = "centred",
    clip_seconds: float | None = None,
) -> Tensor:
    """Cut one audio window per video frame (AVSBench: one frame per second).

    mode "centred": frame t (0-based) gets S_w = round(window_seconds * sample_rate) samples centred
        on t + 0.5 s, i.e. starting at floor(((2t + 1) * sample_rate - S_w) / 2). Where the window
        reaches past the clip's start or end it reads silence (zeros): the first frame must not hear the
        last second (looping did that, and on multi-source clips it put another second's source into the
        first frame's window). A clip shorter than one window is looped instead (spec: "looped if
        short"), as there is no clip to centre on.
    mode "inside": the "centred" window moved, where it would reach past the clip's start or end, to lie
        just inside the clip (its start clamped to [0, S - S_w]): every frame hears S_w samples of the
        clip, none of them made-up silence. With ground truth on one frame per video (S4 training: frame
        1, whose centred window is a third silence) a model trained on "centred" windows learns the
        sound of that frame's silent third and finds the object far less often in frames 2-4 (measured:
        63.0 test mIoU on frame 1, 30.1-33.6 on frames 2-5); "inside" gives every frame the same kind of
        window. Looped if shorter than one window, as "centred".
    mode "clip": the official WS-AVS behaviour, every frame gets the whole clip: the clip looped or
        cut to S_w = round(clip_seconds * sample_rate) from its start (clip_seconds defaults to
        num_frames, one second per frame); ``window_seconds`` is not used.

    Args:
        wave: (S,) mono waveform, S >= 1.

    Returns:
        (T, S_w) with T = num_frames.
    """
    wave = _as_float(wave)
    if wave.dim() != 1:
        raise ValueError(f"frame_windows expects a mono (S,) waveform, got shape {tuple(wave.shape)}")
    length = wave.shape[0]
    if length == 0:
        raise ValueError("frame_windows got an empty waveform")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if mode in ("centred", "inside"):
        size = round(window_seconds * sample_rate)
        inside = mode == "inside"
        starts = torch.tensor([window_start((2 * t + 1) * sample_rate, size, length, inside) for t in range(num_frames)], dtype=torch.int64)
        idx = starts[:, None] + torch.arange(size)[None, :]  # (T, S_w)
    elif mode == "clip":
        size = round((num_frames if clip_seconds is None else clip_seconds) * sample_rate)
        idx = torch.arange(size)[None, :].expand(num_frames, size)
    else:
        raise ValueError(f"unknown frame_windows mode {mode!r}; expected 'centred', 'inside' or 'clip'")
    if size < 1:
        raise ValueError(f"audio window of {size} samples; window/clip seconds must be positive")
    if mode == "clip":
        return wave[torch.remainder(idx, length).to(wave.device)]
    return cut_windows(wave, idx)


def cut_windows(wave: Tensor, idx: Tensor) -> Tensor:
    """Samples ``wave[idx]`` of a (S,) track for (T, S_w) sample indices that may fall outside it: silence
    there, or, for a track shorter than one window, the track looped. The one rule for training windows
    (``frame_windows``) and for the predictor's windows at arbitrary frame times."""
    length = wave.shape[0]
    if length < idx.shape[-1]:
        return wave[torch.remainder(idx, length).to(wave.device)]
    inside = (idx >= 0) & (idx < length)  # (T, S_w)
    out = wave[idx.clamp(0, length - 1).to(wave.device)]
    return out * inside.to(device=wave.device, dtype=out.dtype)


# ----------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FrontendSpec:
    """A named audio front-end.

    Attributes:
        name: registry key.
        sample_rate: rate the windows must have.
        window_seconds: per-frame window length in "centred" mode.
        fn: (T, S_w) windows -> (T, 1, F, W) features.
        clip_fn: how "clip" mode treats the whole clip, (S,) and T -> (T, 1, F, W); None: ``fn`` on
            the clip repeated for every frame.
        memoise: the features are costly to compute and small to keep (frozen pretrained embeddings):
            ``AVSBenchDataset`` keeps them in memory per clip and reuses them across epochs.
    """

    name: str
    sample_rate: int
    window_seconds: float
    fn: Callable[[Tensor], Tensor]
    clip_fn: Callable[[Tensor, int], Tensor] | None = None
    memoise: bool = False

    @property
    def window_samples(self) -> int:
        return round(self.window_seconds * self.sample_rate)


FRONTENDS: dict[str, FrontendSpec] = {
    # One VGGish example per frame. 0.975 s (15600 samples) is the shortest window giving its 96
    # STFT frames without padding (0.96 s alone gives 94). In "clip" mode, example t of the whole
    # clip goes to frame t, exactly like the official AVSBench .pkl features.
    "vggish": FrontendSpec(
        "vggish", VGGISH_SAMPLE_RATE, VGGISH_EXAMPLE_SAMPLES / VGGISH_SAMPLE_RATE, _vggish_windows, _vggish_clip
    ),
    "wsavs-logmel": FrontendSpec("wsavs-logmel", 8000, 3.0, log_mel),
    "ezvsl-stft": FrontendSpec("ezvsl-stft", 16000, 3.0, log_stft),
    # The input of the pretrained aisfx audio encoder (``audio: aisfx``, ``audio_weights: aisfx``).
    "aisfx-logmel": FrontendSpec("aisfx-logmel", AISFX_SAMPLE_RATE, AISFX_WINDOW_SECONDS, aisfx_log_mel),
    # Frozen pretrained aisfx embeddings (T, 1, 512, 1) of the same windows, for ``audio: embed-mlp``:
    # computed once per clip (memoised), as the official AVSBench recipes use frozen VGGish features.
    "aisfx-embed": FrontendSpec(
        "aisfx-embed", AISFX_SAMPLE_RATE, AISFX_WINDOW_SECONDS, aisfx_embeddings, memoise=True
    ),
}


def _spec(name: str) -> FrontendSpec:
    try:
        return FRONTENDS[name]
    except KeyError:
        raise ValueError(f"unknown audio front-end {name!r}; choose one of {sorted(FRONTENDS)}") from None


def feature_shape(name: str) -> tuple[int, int]:
    """(F, W) of one frame's features from front-end ``name`` in "centred" mode."""
    spec = _spec(name)
    with torch.no_grad():
        out = spec.fn(torch.zeros(1, spec.window_samples))
    return int(out.shape[-2]), int(out.shape[-1])


def compute_features(
    name: str,
    wave: np.ndarray | Tensor,
    sample_rate: int,
    num_frames: int,
    mode: str = "centred",
    clip_seconds: float | None = None,
) -> Tensor:
    """Resample a clip, cut per-frame windows and apply front-end ``name``.

    Args:
        name: a key of ``FRONTENDS``.
        wave: (S,) mono waveform at ``sample_rate``.
        num_frames: T, frames of the video (one per second).
        mode: "centred" (a ``window_seconds`` window centred on each frame's second), "inside" (the same
            window kept inside the clip) or "clip" (every frame sees the whole clip, see ``frame_windows``;
            for "vggish", frame t gets example t).
        clip_seconds: clip length in "clip" mode (default num_frames seconds).

    Returns:
        (T, 1, F, W) float; (F, W) = ``feature_shape(name)`` in "centred" mode. In "clip" mode W grows
        with the clip for the spectrogram front-ends.
    """
    spec = _spec(name)
    wave = _as_float(wave)
    if wave.dim() != 1:
        raise ValueError(f"compute_features expects a mono (S,) waveform, got shape {tuple(wave.shape)}")
    wave = resample(wave, sample_rate, spec.sample_rate)
    if mode == "clip" and spec.clip_fn is not None:
        whole = frame_windows(wave, spec.sample_rate, 1, mode="clip", clip_seconds=clip_seconds or num_frames)[0]
        return spec.clip_fn(whole, num_frames)
    windows = frame_windows(wave, spec.sample_rate, num_frames, spec.window_seconds, mode, clip_seconds)
    return spec.fn(windows)
