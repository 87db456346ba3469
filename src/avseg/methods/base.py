"""What a method is: a config dataclass, an ordered list of stages, and a way to load its predictor.

Each stage reads and writes named artifacts inside the run folder (checkpoints, pseudo-mask folders,
manifests); a stage whose ``done`` marker exists is skipped, so ``avseg train --resume`` continues from the
first unfinished stage and a stage that was interrupted resumes from its own checkpoints.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from avseg.fileio import write_text_atomic

log = logging.getLogger("avseg")


@dataclass
class StageContext:
    """Everything a stage may use: the run folder, the method's config, the device and resume flag."""

    run_dir: Path
    config: Any
    device: torch.device
    resume: bool = False
    summary: dict[str, Any] = field(default_factory=dict)  # stages add figures for the report

    def path(self, *parts: str) -> Path:
        return self.run_dir.joinpath(*parts)


@dataclass(frozen=True)
class Stage:
    """One step of a method. ``run`` writes its artifacts and finally ``done_marker`` (JSON summary)."""

    name: str
    run: Callable[[StageContext], dict[str, Any]]
    description: str = ""
    all_ranks: bool = False  # training stages run on every torchrun process; others on rank 0 only
    outputs: tuple[str, ...] = ()  # run-folder paths the stage writes; removed before a forced rerun

    def marker(self, run_dir: Path) -> Path:
        return run_dir / "stages" / f"{self.name}.json"

    def is_done(self, run_dir: Path) -> bool:
        return self.marker(run_dir).is_file()


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: its config schema, its stages and how to load its final model."""

    name: str
    config_cls: type
    stages: Callable[[Any], list[Stage]]
    load_predictor: Callable[[Any, Path, torch.device], nn.Module]
    output: str  # "binary" | "semantic"
    supervision: str  # "video labels", "ground-truth masks", ...
    description: str = ""


def write_marker(stage: Stage, run_dir: Path, summary: dict[str, Any]) -> None:
    write_text_atomic(stage.marker(run_dir), json.dumps(summary, indent=2, default=str))


def read_marker(stage_name: str, run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "stages" / f"{stage_name}.json"
    return json.loads(path.read_text()) if path.is_file() else None
