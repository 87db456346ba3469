"""The one training engine: loop (trainer), checkpoints, distributed helpers, run folders."""

from __future__ import annotations

from avseg.engine.checkpoint import load_model_weights, read_metadata, save_model_weights
from avseg.engine.tracking import JsonlWriter, prepare_run_dir, read_jsonl, setup_logging
from avseg.engine.trainer import FitResult, NonFiniteLossError, fit

__all__ = [
    "FitResult",
    "JsonlWriter",
    "NonFiniteLossError",
    "fit",
    "load_model_weights",
    "prepare_run_dir",
    "read_jsonl",
    "read_metadata",
    "save_model_weights",
    "setup_logging",
]
