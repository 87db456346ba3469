"""Audio decoding and front-ends (log-mel, log-STFT, VGGish examples, frozen aisfx embeddings), pure torch."""

from __future__ import annotations

from avseg.audio.decode import AudioError, decode_audio_stream, load_audio
from avseg.audio.frontends import (
    FRONTENDS,
    FrontendSpec,
    aisfx_embeddings,
    aisfx_log_mel,
    compute_features,
    feature_shape,
    fit_length,
    frame_windows,
    log_mel,
    log_stft,
    quiet_seconds,
    rms,
    vggish_examples,
)
from avseg.audio.resample import resample

__all__ = [
    "FRONTENDS",
    "AudioError",
    "FrontendSpec",
    "aisfx_embeddings",
    "aisfx_log_mel",
    "compute_features",
    "decode_audio_stream",
    "feature_shape",
    "fit_length",
    "frame_windows",
    "load_audio",
    "log_mel",
    "log_stft",
    "quiet_seconds",
    "resample",
    "rms",
    "vggish_examples",
]
