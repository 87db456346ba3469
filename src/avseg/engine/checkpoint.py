"""Checkpoints: model weights as safetensors + JSON sidecar, training state for exact resume.

Files a training run keeps in its folder:

- ``last.safetensors`` / ``best.safetensors``: model weights only (the artifacts later stages load),
  each with a ``.json`` sidecar (step, epoch, metrics, settings, caller metadata).
- ``train_state.pt``: everything needed to continue bit-for-bit (model, optimizer, scheduler, scaler,
  epoch, step, position in the epoch, RNG states of every rank). It holds only tensors and plain Python
  containers so it loads with ``torch.load(weights_only=True)``: no pickle of arbitrary objects.

Every write goes to a temporary file in the same folder followed by ``os.replace``, so a crash (even
SIGKILL) leaves either the old or the new file, never a torn one.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import safetensors.torch
import torch
from torch import Tensor, nn

from avseg.fileio import atomic_path, unwrap_model, write_text_atomic

LAST = "last.safetensors"
BEST = "best.safetensors"
STATE = "train_state.pt"
METADATA_KEY = "avseg_metadata"  # the sidecar's JSON also lives in the safetensors header
STATE_FORMAT = 1

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP, torch.compile


class CheckpointError(RuntimeError, ValueError):
    """A checkpoint file cannot be used (unreadable, not what avseg writes, or refused as unsafe); the
    message names the file. A ValueError too, so command-line entry points report it in one line."""


def sidecar_path(path: Path) -> Path:
    """``last.safetensors`` -> ``last.json``."""
    return Path(path).with_suffix(".json")


def strip_prefixes(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Remove DDP (``module.``) and torch.compile (``_orig_mod.``) key prefixes."""
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in _WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix) :], True
        out[key] = value
    return out


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (np.generic,)):
        return obj.item()
    if isinstance(obj, Tensor) and obj.numel() == 1:
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def save_model_weights(model: nn.Module, path: Path, metadata: dict | None = None) -> Path:
    """Write the model's state dict (wrapper prefixes stripped) to ``path`` plus a JSON sidecar.

    Tensors are copied to CPU; tensors sharing storage (tied weights) are cloned because safetensors
    refuses shared storage.
    """
    path = Path(path)
    state = strip_prefixes(unwrap_model(model).state_dict())
    tensors: dict[str, Tensor] = {}
    seen: set[int] = set()
    for key, value in state.items():
        value = value.detach().to("cpu").contiguous()
        ptr = value.untyped_storage().data_ptr()
        if value.numel() and ptr in seen:
            value = value.clone()
        seen.add(value.untyped_storage().data_ptr())
        tensors[key] = value
    meta_json = json.dumps(metadata or {}, default=_json_default, sort_keys=True)
    with atomic_path(path, durable=True) as tmp:
        safetensors.torch.save_file(tensors, str(tmp), metadata={METADATA_KEY: meta_json})
    write_text_atomic(sidecar_path(path), json.dumps(metadata or {}, default=_json_default, indent=2) + "\n", durable=True)
    return path


def read_metadata(path: Path) -> dict:
    """The metadata saved with a weights file: the copy in the safetensors header (written atomically with
    the weights, so it always describes them), else the JSON sidecar (weights written by other tools).

    A crash between the two writes of :func:`save_model_weights` can leave a sidecar one save behind; the
    header never is.
    """
    path = Path(path)
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except Exception as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({type(exc).__name__}: {exc})") from exc
    text, source = header.get(METADATA_KEY), path
    if text is None:
        side = sidecar_path(path)
        if not side.is_file():
            return {}
        text, source = side.read_text(encoding="utf-8"), side
    try:
        meta = json.loads(text)
    except ValueError as exc:
        raise CheckpointError(f"{source}: checkpoint metadata is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise CheckpointError(f"{source}: checkpoint metadata must be a JSON object, found {type(meta).__name__}")
    return meta


def load_model_weights(model: nn.Module, path: Path, *, strict: bool = True) -> dict:
    """Load weights written by :func:`save_model_weights` (or any safetensors state dict) into ``model``.

    DDP / torch.compile prefixes are stripped from the file's keys and the target is unwrapped, so any
    combination loads. Returns the file's metadata. Mismatched keys raise an error naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    target = unwrap_model(model)
    device = next((p.device for p in target.parameters()), torch.device("cpu"))
    try:
        # safetensors holds raw tensors and a JSON header: nothing in it can run code.
        state = strip_prefixes(safetensors.torch.load_file(str(path), device=str(device)))
    except Exception as exc:
        hint = " (a pickled .pt/.pth checkpoint is never loaded here: weights files are safetensors)" if _is_pickle_or_zip(path) else ""
        raise CheckpointError(f"{path} is not a readable safetensors weights file{hint}: {type(exc).__name__}: {exc}") from exc
    result = target.load_state_dict(state, strict=False)
    problems = []
    if result.missing_keys:
        problems.append(f"missing keys {result.missing_keys[:10]}")
    if result.unexpected_keys:
        problems.append(f"unexpected keys {result.unexpected_keys[:10]}")
    if strict and problems:
        raise RuntimeError(f"{path} does not match {type(target).__name__}: " + "; ".join(problems))
    return read_metadata(path)


# ---- RNG state as plain containers (weights_only-loadable) ----


def capture_rng_state() -> dict[str, Any]:
    """Python, numpy, torch CPU and CUDA RNG states as tensors / lists."""
    version, internal, gauss = random.getstate()
    # the legacy (default) form: a (name, keys, pos, has_gauss, cached_gaussian) tuple
    np_state = cast("tuple[str, np.ndarray, int, int, float]", np.random.get_state())
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": {
            "name": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
        "cuda": [s for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_initialized() else [],
    }
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(x) for x in internal), gauss))
    npst = state["numpy"]
    np.random.set_state(
        (npst["name"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"], npst["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def rng_isolated() -> Iterator[None]:
    """Run a block (e.g. evaluation) without disturbing the training RNG streams."""
    state = capture_rng_state()
    try:
        yield
    finally:
        restore_rng_state(state)


# ---- training state ----


def save_training_state(path: Path, state: dict[str, Any]) -> None:
    """Atomically write a training-state dict (tensors and plain containers only)."""
    with atomic_path(Path(path), durable=True) as tmp:
        torch.save({"format": STATE_FORMAT, **state}, tmp)


def _is_pickle_or_zip(path: Path) -> bool:
    """Whether a file starts like a pickle (protocol 2+) or a zip archive (torch.save's format)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head[:1] == b"\x80" or head[:4] == b"PK\x03\x04"


_GENERIC_ADVICE = ("Weights only load failed", "Please file an issue", "Check the documentation")


def _unpickling_reason(error: Exception) -> str:
    """The line of torch's weights-only error that says what was refused, without its generic advice."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(_GENERIC_ADVICE)]
    return (useful or lines or ["unreadable pickle"])[0]


def load_training_state(path: Path) -> dict[str, Any]:
    """Read a training state with ``weights_only=True`` (no arbitrary unpickling).

    Raises:
        CheckpointError naming the file: unreadable or truncated, refused because it needs a global outside
        torch's weights-only allow-list (a pickle that would run code: nothing in it was executed), or not
        an avseg training state.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"refused to load training state {path}: it is not a plain tensors-and-containers file ({_unpickling_reason(exc)}). "
            "It was read with torch.load(weights_only=True); nothing from the file was executed."
        ) from None
    except Exception as exc:  # truncated zip, not a torch file, ...: re-raised with the file named
        raise CheckpointError(f"cannot read training state {path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path} is not an avseg training state (format {STATE_FORMAT})")
    return state
