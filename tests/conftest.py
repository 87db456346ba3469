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
def tiny_ws_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """WS-AVS (demo recipe, log-mel audio) trained for one epoch on 8 synthetic S4 videos at 32 px: seconds on 2 cores.

    Shared by the whole session: tests that write into a run folder copy it first.
    """
    from avseg.cli import main
    from avseg.data.synthetic import generate

    root = tmp_path_factory.mktemp("tiny-ws-run")
    generate("s4", root / "data", num_videos=8, size=32)
    argv = ["train", "--method", "ws-avs", "--config", "ws-avs/demo", "--data", str(root / "data"), "--layout", "s4",
            "--out", str(root / "run"), "--epochs", "1", "--image-size", "32", "--batch-size", "4", "--device", "cpu",
            # a spectrogram front-end (the demo recipe hears aisfx embeddings): features of silence are flat
            "--set", "data.audio_frontend=wsavs-logmel", "--set", "audio=small"]  # fmt: skip
    assert main(argv) == 0
    return root / "run"
