"""Shared file I/O: atomic writes, temporary-file cleanup, hashing, and unwrapping wrapped models.

Every writer writes a temporary file ``.<name>.*.tmp`` in the destination folder and renames it over the
destination with ``os.replace``. A reader (or a crashed, re-run writer) therefore sees either the old file
or the complete new one, never a truncated one: the loaders report 0-byte or undecodable files as errors,
so partial files must not exist. The temporary file lives in the same folder because a rename is only
atomic within one file system. Parent folders are created as needed. ``durable=True`` also fsyncs the data
and the folder, so the rename survives a power cut (checkpoints, run configs); the many small files of a
dataset or a pseudo-mask folder skip that cost.

This module is the bottom layer with :mod:`avseg.types`: it imports nothing from avseg.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from torch import nn

# mkstemp creates 0600 files; give the final file the permissions a plain open() would have. The umask
# can only be read by setting it, so read it once at import (before any threads start).
_UMASK = os.umask(0)
os.umask(_UMASK)

__all__ = [
    "atomic_path",
    "atomic_write_bytes",
    "write_text_atomic",
    "remove_stale_temporaries",
    "file_sha256",
    "unwrap_model",
]


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: Path | str, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds it replaces ``path`` atomically.

    The temporary file is removed whatever interrupted the block. ``durable``: fsync the file before the
    rename and the folder after it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as f:  # data on disk before the rename makes it visible
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
        if durable:
            _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: Path | str, data: bytes, durable: bool = False) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, then ``os.replace``)."""
    with atomic_path(path, durable=durable) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: Path | str, text: str, encoding: str = "utf-8", durable: bool = False) -> None:
    """Write text atomically; newlines are written as given (no platform translation)."""
    atomic_write_bytes(path, text.encode(encoding), durable=durable)


def remove_stale_temporaries(*folders: Path, recursive: bool = False) -> list[Path]:
    """Delete temporaries of :func:`atomic_path` left by a killed process (``.<name>.*.tmp``) in ``folders``.

    Missing folders are skipped; ``recursive`` also searches their subfolders. Returns the files removed.
    """
    stale: list[Path] = []
    for folder in map(Path, folders):
        if folder.is_dir():
            stale += [p for p in (folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp")) if p.is_file()]
    for p in stale:
        p.unlink()
    return stale


def file_sha256(path: Path | str) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks (checkpoints can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside DDP and/or torch.compile wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model
