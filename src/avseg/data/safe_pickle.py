"""Read AVSBench's official ``.pkl`` audio features without running code from the file.

The official files are ``pickle.dump(tensor)`` of a CPU float tensor [5, 1, 96, 64]. A plain
``pickle.load`` would execute whatever callable the file names, so this unpickler admits only the few
globals a pickled tensor needs and rebuilds storages through ``torch.load(weights_only=True)``.
Anything else is refused with an error that names the file and the refused global.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import torch

from avseg.data.errors import DataError


def _load_storage_from_bytes(data: bytes) -> object:
    # torch pickles a storage as torch.save() bytes of the legacy format; weights_only admits them.
    return torch.load(io.BytesIO(data), weights_only=True)


_ALLOWED: dict[tuple[str, str], object] = {
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
    ("collections", "OrderedDict"): __import__("collections").OrderedDict,
}


class _TensorOnlyUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase, path: Path) -> None:
        super().__init__(file)
        self._path = path

    def find_class(self, module: str, name: str) -> object:
        allowed = _ALLOWED.get((module, name))
        if allowed is None:
            raise DataError(
                self._path,
                f"refused to unpickle global '{module}.{name}': only tensor data is admitted "
                "(the file may be malicious or not an AVSBench audio_log_mel feature file)",
            )
        return allowed

    def persistent_load(self, pid: object) -> object:
        raise DataError(self._path, "refused persistent id in pickle: only plain pickled tensors are admitted")


MAX_BYTES = 64 * 2**20  # an official [5, 1, 96, 64] feature file is about 120 KB


def load_tensor_pickle(path: Path, max_bytes: int = MAX_BYTES) -> torch.Tensor:
    """Load a pickled tensor (AVSBench ``audio_log_mel/*.pkl``) admitting tensor data only.

    Returns:
        the tensor, e.g. (5, 1, 96, 64) float32 for official S4/MS3 files. Its shape is what the file
        says: callers check it before touching the data (zero strides can make a large view of a tiny
        storage).
    Raises:
        DataError naming the file when it is missing, empty, larger than ``max_bytes``, not a pickle, refers
        to any global other than torch's tensor rebuild functions, or does not hold a tensor.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    size = path.stat().st_size
    if size > max_bytes:
        raise DataError(path, f"file is {size} bytes, more than the {max_bytes} a feature pickle may have (refused)")
    data = path.read_bytes()
    if not data:
        raise DataError(path, "file is 0 bytes")
    try:
        obj = _TensorOnlyUnpickler(io.BytesIO(data), path).load()
    except DataError:
        raise
    except Exception as exc:  # any parse failure of an untrusted file becomes a named error
        raise DataError(path, f"not a readable tensor pickle ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, torch.Tensor):
        raise DataError(path, f"expected a pickled tensor, found {type(obj).__name__}")
    return obj
