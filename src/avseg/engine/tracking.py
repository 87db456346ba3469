"""Run folders (dinov2-style): resolved config, git revision, environment, JSON-lines metrics, logging.

A run folder holds ``config.yaml``, ``git.txt``, ``env.json``, ``train.log`` and one ``metrics.jsonl``
per training stage, so every number can be traced back to the code and settings that produced it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, TextIO

import torch

from avseg.config import dump_yaml
from avseg.engine import distributed
from avseg.fileio import write_text_atomic

log = logging.getLogger(__name__)

_PACKAGE_DIR = Path(__file__).resolve().parents[1]


def git_revision(where: Path = _PACKAGE_DIR) -> str:
    """``<sha>`` or ``<sha> (dirty)`` of the checkout holding ``where``; ``unknown`` outside git."""
    try:
        sha = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if sha.returncode != 0:
            return "unknown"
        status = subprocess.run(
            ["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    dirty = status.returncode != 0 or bool(status.stdout.strip())
    return sha.stdout.strip() + (" (dirty)" if dirty else "")


def environment() -> dict[str, Any]:
    """Versions and machine facts worth keeping beside results."""
    import numpy

    cuda = torch.cuda.is_available()
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "cuda": torch.version.cuda,
        "cuda_available": cuda,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "argv": list(sys.argv),
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
    }


def prepare_run_dir(out: Path, config: Any) -> Path:
    """Create ``out`` and write ``config.yaml`` (resolved), ``git.txt`` and ``env.json``.

    ``config`` is a dict or a config dataclass. Writes on rank 0 only and does not synchronise (it may be
    called on rank 0 alone); other ranks that need the files must ``barrier()`` first.
    """
    out = Path(out)
    if distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)
        dump_yaml(config, out / "config.yaml")
        write_text_atomic(out / "git.txt", git_revision() + "\n", durable=True)
        write_text_atomic(out / "env.json", json.dumps(environment(), indent=2) + "\n", durable=True)
    return out


class JsonlWriter:
    """Append one JSON object per line, flushed at once so a crash loses at most the current line."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: TextIO | None = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            raise ValueError(f"{self.path}: writer is closed")
        self._file.write(json.dumps(record, default=_plain) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "JsonlWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _plain(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """All records of a JSON-lines file; a torn last line (killed writer) is ignored."""
    records = []
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}: line {i + 1} is not JSON") from None
    return records


def truncate_jsonl(path: Path, max_step: int) -> None:
    """Drop records with ``step > max_step`` (written after the checkpoint a resumed run starts from)."""
    path = Path(path)
    if not path.is_file():
        return
    kept = [r for r in read_jsonl(path) if int(r.get("step", 0)) <= max_step]
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept), durable=True)


class _TqdmHandler(logging.StreamHandler):
    """Writes through tqdm so log lines do not break an active progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # logging must never raise
            self.handleError(record)


_HANDLER_TAG = "_avseg_handler"


def setup_logging(out: Path | None = None, *, level: int = logging.INFO) -> None:
    """Configure the root logger: INFO to stderr and ``out/train.log`` on rank 0, WARNING elsewhere.

    Idempotent: handlers installed by an earlier call are replaced (e.g. one call per stage).
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _HANDLER_TAG, False):
            root.removeHandler(handler)
            handler.close()
    main = distributed.is_main()
    root.setLevel(level if main else logging.WARNING)
    fmt = logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s" if main else
        f"%(asctime)s rank{distributed.rank()} %(levelname)s %(name)s: %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
    )
    handlers: list[logging.Handler] = [_TqdmHandler(sys.stderr)]
    if out is not None and main:
        Path(out).mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(Path(out) / "train.log", encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(fmt)
        setattr(handler, _HANDLER_TAG, True)
        root.addHandler(handler)
