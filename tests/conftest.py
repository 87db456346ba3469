from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Tests share two cores with everything else: one intra-op thread keeps them predictable.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]


def media_dir() -> Path | None:
    """The shared real-media folder (../shared/media beside the checkout, or $AVSEG_MEDIA)."""
    env = os.environ.get("AVSEG_MEDIA")
    path = Path(env) if env else REPO.parent / "shared" / "media"
    return path if (path / "classes.txt").is_file() else None


@pytest.fixture
def media() -> Path:
    path = media_dir()
    if path is None:
        pytest.skip("real media folder ../shared/media not present")
    return path


@pytest.fixture
def fake_s4(tmp_path: Path) -> Path:
    from fakes import write_fake_s4

    return write_fake_s4(tmp_path / "Single-source")


@pytest.fixture
def fake_ms3(tmp_path: Path) -> Path:
    from fakes import write_fake_ms3

    return write_fake_ms3(tmp_path / "Multi-sources")


@pytest.fixture
def fake_avss(tmp_path: Path) -> Path:
    from fakes import write_fake_avss

    return write_fake_avss(tmp_path / "AVSS")


@pytest.fixture(scope="session")
def synth_s4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 synthetic S4 videos at 32 px (seed 0), shared by the whole session: read-only."""
    from avseg.data.synthetic import generate

    root = tmp_path_factory.mktemp("synth") / "s4"
    generate("s4", root, num_videos=8, seed=0, size=32)
    return root


@pytest.fixture(scope="session")
def synth_s4_16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 synthetic S4 videos at 32 px (seed 0): 10 training videos, batches of 4, 4 and 2. Read-only."""
    from avseg.data.synthetic import generate

    root = tmp_path_factory.mktemp("synth16") / "s4"
    generate("s4", root, num_videos=16, seed=0, size=32)  # 10 training videos: batches of 4, 4 and 2
    return root


@pytest.fixture(scope="session")
def ws_avs_run(synth_s4_16: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """WS-AVS (demo recipe as shipped) trained for one epoch on ``synth_s4_16`` at 32 px, every stage.

    Shared by the whole session: tests that write into a run folder copy it first (``fakes.copy_run``).
    """
    from avseg.cli import main

    run = tmp_path_factory.mktemp("runs") / "ws-avs"
    args = ["train", "--method", "ws-avs", "--config", "ws-avs/demo", "--data", str(synth_s4_16), "--layout", "s4", "--out", str(run)]
    assert main(args + ["--epochs", "1", "--image-size", "32", "--batch-size", "4", "--device", "cpu"]) == 0
    return run


@pytest.fixture(scope="session")
def tiny_ws_run(synth_s4: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """WS-AVS (demo recipe, log-mel audio) trained for one epoch on ``synth_s4`` at 32 px: seconds on 2 cores.

    Shared by the whole session: tests that write into a run folder copy it first.
    """
    from avseg.cli import main

    from fakes import LOGMEL_AUDIO

    root = tmp_path_factory.mktemp("tiny-ws-run")
    argv = ["train", "--method", "ws-avs", "--config", "ws-avs/demo", "--data", str(synth_s4), "--layout", "s4",
            "--out", str(root / "run"), "--epochs", "1", "--image-size", "32", "--batch-size", "4", "--device", "cpu",
            *(arg for o in LOGMEL_AUDIO for arg in ("--set", o))]  # fmt: skip
    assert main(argv) == 0
    return root / "run"
