"""torchrun with 2 CPU processes (gloo) equals one process at the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
import torch.distributed as dist

SCRIPT = Path(__file__).with_name("ddp_script.py")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="gloo backend not available"),
]


def _run(cmd: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}"


def test_two_processes_match_one_process(tmp_path: Path):
    # The contrastive term gathers negatives across processes with torch.distributed.nn.functional:
    # equal weights prove the gathered gradients equal the single-process ones.
    args = ["--epochs", "2", "--batch", "4", "--videos", "16", "--contrastive", "--noise", "0.05"]
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
          str(SCRIPT), "--out", str(tmp_path / "ddp"), *args])
    _run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "single"), *args])

    ddp = safetensors.torch.load_file(str(tmp_path / "ddp" / "last.safetensors"))
    single = safetensors.torch.load_file(str(tmp_path / "single" / "last.safetensors"))
    init = {k: v for k, v in _initial_weights().items()}
    assert ddp.keys() == single.keys()
    for key in ddp:
        assert not torch.equal(ddp[key], init[key]), f"{key} did not train"
        torch.testing.assert_close(ddp[key], single[key], rtol=1e-5, atol=1e-6, msg=f"{key} differs")


def _initial_weights() -> dict[str, torch.Tensor]:
    import importlib.util

    spec = importlib.util.spec_from_file_location("avseg_toy_script_ddp", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    return module.ToyModel(contrastive=True).state_dict()
