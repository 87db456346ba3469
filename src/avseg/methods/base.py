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
from typing import Any, Callable, Protocol

import torch

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
    # Earlier stages whose outputs it reads (None: every earlier stage). When one of them reruns, this one is
    # stale; a stage that reads only the data (e.g. ws-avs-av's audio-visual model) says ().
    reads: tuple[str, ...] | None = None

    def marker(self, run_dir: Path) -> Path:
        return run_dir / "stages" / f"{self.name}.json"

    def is_done(self, run_dir: Path) -> bool:
        return self.marker(run_dir).is_file()


def final_checkpoint(run_dir: Path, stage: str = "segmenter") -> Path:
    """The final weights a training stage left in its folder: ``best.safetensors`` (kept by validation), else ``last``."""
    best = run_dir / stage / "best.safetensors"
    return best if best.is_file() else run_dir / stage / "last.safetensors"


def final_weights(run_dir: Path | None, weights: Path | None, stage: str = "segmenter") -> Path:
    """``weights`` when given (a bare checkpoint), else the run's ``final_checkpoint(run_dir, stage)``."""
    if weights is not None:
        return Path(weights)
    if run_dir is None:
        raise ValueError("the final model needs a run folder or a weights file")
    return final_checkpoint(Path(run_dir), stage)


class LoadPredictor(Protocol):
    """(config, run folder, device, weights=None) -> the final model in eval mode, ``predict(batch)`` ready.

    ``weights``: a file holding the final model's weights, loaded instead of the run's final checkpoint
    (``run_dir`` may then be None). A method whose final model needs more than that one file (c2am: the
    polarity its activation-maps stage decided) raises ValueError without its run folder.
    """

    def __call__(self, cfg: Any, run_dir: Path | None, device: torch.device, weights: Path | None = None) -> Any: ...


@dataclass(frozen=True)
class MethodSpec:
    """Everything about a registered method, read by the runner, the bench, the predictor and the tests.

    Attributes:
        name: the registry key (and the module's file name, with ``_`` for ``-``).
        config_cls: the config dataclass.
        stages: config -> the ordered stages.
        final_stage: the stage that completes the final model; the stages before it make pseudo masks
            (``avseg pseudo`` reruns those).
        load_predictor: (config, run folder, device, weights=None) -> the final model, ``predict(batch)`` ready
            (see ``LoadPredictor``).
        output: "binary" (probabilities) or "semantic" (class scores).
        supervision: what the training sees ("video labels", "ground-truth masks", ...).
        description: one line for listings.
        display: the name in tables and pictures.
        paper: reported (mIoU, F) in % per layout (WS-AVS paper Table 1; its F is the per-frame-max
            protocol); empty when the paper has no row for the method.
        reuses: a method whose run's first stages are identical to this one's: the bench trains that method
            first and hands its run over (``reuse_run``), so the rows differ only in what follows.
        tiny: dotted overrides that make the method's models tiny and download-free (CPU tests).
    """

    name: str
    config_cls: type
    stages: Callable[[Any], list[Stage]]
    final_stage: str
    load_predictor: LoadPredictor  # an eval-mode nn.Module with predict(batch)
    output: str  # "binary" | "semantic"
    supervision: str
    description: str = ""
    display: str = ""
    paper: dict[str, tuple[float, float]] = field(default_factory=dict)
    reuses: str | None = None
    tiny: tuple[str, ...] = ()

    def pseudo_stages(self, cfg: Any) -> list[str]:
        """Names of the stages before ``final_stage``."""
        names = [s.name for s in self.stages(cfg)]
        return names[: names.index(self.final_stage)]


def write_marker(stage: Stage, run_dir: Path, summary: dict[str, Any]) -> None:
    write_text_atomic(stage.marker(run_dir), json.dumps(summary, indent=2, default=str))


def read_marker(stage_name: str, run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "stages" / f"{stage_name}.json"
    return json.loads(path.read_text()) if path.is_file() else None
