"""Audio decoding and front-ends (log-mel, log-STFT, VGGish examples, frozen aisfx embeddings), pure torch."""

from __future__ import annotations

from avseg.audio.frontends import (
    FRONTENDS,
    AudioError,
    FrontendSpec,
    aisfx_embeddings,
    aisfx_log_mel,
    compute_features,
    decode_audio_stream,
    feature_shape,
    fit_length,
    frame_windows,
    load_audio,
    log_mel,
    log_stft,
    resample,
    rms,
    vggish_examples,
)

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
    "resample",
    "rms",
    "vggish_examples",
]
