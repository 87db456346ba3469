"""Errors of the data layer: every message names the file and what was wrong with it."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """A dataset file is missing, unreadable or not what the layout expects."""

    def __init__(self, path: Path | str, problem: str | None = None) -> None:
        if problem is None:  # rebuilt from its message (e.g. re-raised from a DataLoader worker)
            path, _, problem = str(path).partition(": ")
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")

    def __reduce__(self) -> tuple:
        return (DataError, (self.path, self.problem))
