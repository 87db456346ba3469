"""The training engine on a toy AVBatch task: learning, exact resume, SIGKILL, NaN, checkpoints, run folders."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import pickle
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image
from torch import nn

from avseg.cli import main
from avseg.config import TrainSettings
from avseg.engine import NonFiniteLossError, fit, load_model_weights, prepare_run_dir, read_jsonl, read_metadata, save_model_weights, setup_logging
from avseg.engine.checkpoint import STATE, CheckpointError, load_training_state
from avseg.engine.checkpoint import read_metadata as read_weights_metadata
from avseg.engine.distributed import EpochSampler
from avseg.engine.tracking import git_revision
from avseg.engine.trainer import lr_factor
from avseg.fileio import atomic_path

from fakes import SR, Payload, truncate

SCRIPT = Path(__file__).with_name("ddp_script.py")


def _load_toy():
    spec = importlib.util.spec_from_file_location("avseg_toy_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


toy = _load_toy()


def settings(**kw) -> TrainSettings:
    base = dict(epochs=3, lr=0.05, batch_size=4, optimizer="adamw", schedule="cosine", warmup_steps=2,
                grad_clip=1.0, seed=0, device="cpu", log_every=1, progress="off")
    return TrainSettings(**{**base, **kw})


def model(seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    return toy.ToyModel(**kw)


def rng_eating_eval(m: nn.Module) -> dict[str, float]:
    """Accuracy on the clean toy set; also draws from every global RNG, which must not leak into training."""
    random.random(), np.random.rand(), torch.rand(3)
    batch = toy.collate([toy.ToyAV()[i] for i in range(16)])
    with torch.no_grad():
        acc = ((m(batch)["logits"] > 0).float() == batch.labels).float().mean().item()
    return {"acc": acc, "neg_acc": -acc}


def weights(path: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(path))


def assert_identical(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), f"{key} differs"


def train_records(out: Path) -> list[tuple]:
    return [(r["step"], r["epoch"], r["lr"], r["loss"], r["bce"])
            for r in read_jsonl(out / "metrics.jsonl") if r["kind"] == "train"]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_toy_training_learns_and_writes_run_files(tmp_path: Path):
    data = toy.ToyAV(noise=0.05)
    out = tmp_path / "run"
    result = fit(model(), data, settings(epochs=6), out, collate_fn=toy.collate, evaluate=rng_eating_eval,
                 best_key="acc", desc="toy")
    records = read_jsonl(out / "metrics.jsonl")
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in train] == list(range(1, 25))
    assert np.mean([r["loss"] for r in train[-4:]]) < 0.6 * np.mean([r["loss"] for r in train[:4]])
    assert {"step", "epoch", "lr", "loss", "bce", "time", "sec_per_step"} <= set(train[0])
    assert [r["epoch"] for r in evals] == [1, 2, 3, 4, 5, 6] and "acc" in evals[0]
    assert data.epochs_seen == [0, 1, 2, 3, 4, 5]
    assert result.steps == 24 and result.metrics["acc"] == evals[-1]["acc"]
    assert result.best == max(r["acc"] for r in evals) and result.train_loss is not None
    for name in ("last.safetensors", "last.json", "best.safetensors", "best.json", STATE):
        assert (out / name).is_file(), name
    assert result.last_checkpoint == out / "last.safetensors" and result.best_checkpoint == out / "best.safetensors"
    assert read_metadata(out / "best.safetensors")["best_key"] == "acc"
    fresh = model(seed=5)
    meta = load_model_weights(fresh, out / "last.safetensors")
    assert meta["step"] == 24 and meta["desc"] == "toy"
    assert rng_eating_eval(fresh)["acc"] == result.metrics["acc"]


@pytest.mark.parametrize("interruption", ["max_steps", "crash"])
def test_resume_is_bit_exact(tmp_path: Path, interruption: str):
    kw = dict(collate_fn=toy.collate, evaluate=rng_eating_eval, best_key="acc", desc="toy")
    full = fit(model(dropout=0.2), toy.ToyAV(noise=0.05), settings(), tmp_path / "a", **kw)

    b = tmp_path / "b"
    if interruption == "max_steps":  # stop mid-epoch 2 (4 steps per epoch)
        part = fit(model(dropout=0.2), toy.ToyAV(noise=0.05), settings(max_steps=6), b, **kw)
        assert part.steps == 6
    else:  # forward call 7 raises; the step checkpoint of step 6 is the resume point
        with pytest.raises(RuntimeError, match="simulated crash"):
            fit(model(dropout=0.2, crash_at_call=7), toy.ToyAV(noise=0.05), settings(checkpoint_every_steps=3), b, **kw)
    state = load_training_state(b / STATE)
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (6, 1, 2)

    # A different initialisation proves the weights come from the checkpoint.
    resumed = fit(model(seed=99, dropout=0.2), toy.ToyAV(noise=0.05), settings(), b, resume=True, **kw)
    assert resumed.steps == 12 and resumed.metrics == full.metrics
    # The max_steps stop evaluates at step 6 (mid-epoch), which must not become the best checkpoint.
    assert (resumed.best, resumed.best_step) == (full.best, full.best_step)
    assert_identical(tmp_path / "a" / "best.safetensors", b / "best.safetensors")
    assert_identical(tmp_path / "a" / "last.safetensors", b / "last.safetensors")
    assert train_records(tmp_path / "a") == train_records(b)  # also: lines after the checkpoint were dropped

    # Resuming a finished run does nothing; starting over in a used folder is refused.
    before = sha(b / "last.safetensors")
    again = fit(model(), toy.ToyAV(noise=0.05), settings(), b, resume=True, **kw)
    assert again.steps == 12 and again.train_loss is None and sha(b / "last.safetensors") == before
    with pytest.raises(FileExistsError, match="resume=True"):
        fit(model(), toy.ToyAV(), settings(), b, collate_fn=toy.collate)


def test_resume_after_sigkill(tmp_path: Path):
    """A real training process killed with SIGKILL mid-epoch resumes to the same final weights."""
    run = tmp_path / "killed"
    args = ["--epochs", "3", "--dropout", "0.2", "--noise", "0.05", "--checkpoint-every", "1"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--out", str(run), "--sleep", "0.25", *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if (run / STATE).is_file() and load_training_state(run / STATE)["step"] >= 5:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"training ended before it could be killed:\n{proc.stdout.read().decode()}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    state = load_training_state(run / STATE)
    assert 5 <= state["step"] < 12 and state["batch_in_epoch"] > 0  # mid-epoch 2 or 3

    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(run), "--resume", *args],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    toy.main(["--out", str(tmp_path / "reference"), *args])  # uninterrupted, in this process
    assert_identical(tmp_path / "reference" / "last.safetensors", run / "last.safetensors")


def test_nan_loss_stops_with_step_and_stage_and_keeps_checkpoint(tmp_path: Path):
    out = tmp_path / "run"
    fit(model(), toy.ToyAV(), settings(max_steps=4), out, collate_fn=toy.collate, desc="stage-x")
    files = ("last.safetensors", "last.json", STATE)
    before = {name: sha(out / name) for name in files}
    with pytest.raises(NonFiniteLossError, match=r"stage-x: non-finite loss \(nan\) at step 5"):
        fit(model(nan_at_call=1), toy.ToyAV(), settings(checkpoint_every_steps=1), out,
            collate_fn=toy.collate, resume=True, desc="stage-x")
    assert {name: sha(out / name) for name in files} == before

    fresh = tmp_path / "fresh"  # from scratch: step checkpoints at 2, NaN at step 3
    with pytest.raises(NonFiniteLossError, match=r"stage-y: non-finite loss .* at step 3 "):
        fit(model(nan_at_call=3), toy.ToyAV(), settings(checkpoint_every_steps=2), fresh,
            collate_fn=toy.collate, desc="stage-y")
    assert load_training_state(fresh / STATE)["step"] == 2
    assert all(torch.isfinite(w).all() for w in weights(fresh / "last.safetensors").values())


def test_bf16_autocast_and_sgd_poly_run_on_cpu(tmp_path: Path):
    s = settings(epochs=1, amp="bf16", optimizer="sgd", schedule="poly", warmup_steps=0)
    result = fit(model(), toy.ToyAV(), s, tmp_path / "r", collate_fn=toy.collate)
    assert result.steps == 4 and np.isfinite(result.train_loss)


def test_param_groups_lr_scale_and_frozen_parts(tmp_path: Path):
    m = model()
    m.audio.requires_grad_(False)  # a frozen, unused part
    frozen = m.audio.weight.detach().clone()
    lrs = []

    def groups(mod: nn.Module) -> list[dict]:
        return [{"params": mod.visual.parameters()}, {"params": mod.head.parameters(), "lr_scale": 10.0}]

    fit(m, toy.ToyAV(), settings(epochs=1, schedule="constant", warmup_steps=0), tmp_path / "r",
        collate_fn=toy.collate, param_groups=groups)
    state = load_training_state(tmp_path / "r" / STATE)
    lrs = [g["lr"] for g in state["optimizer"]["param_groups"]]
    assert lrs == pytest.approx([0.05, 0.5])
    assert torch.equal(m.audio.weight, frozen)


def test_lr_schedule_warmup_cosine_poly():
    s = settings(warmup_steps=4, schedule="cosine", min_lr_ratio=0.1)
    assert [lr_factor(i, s, 20) for i in range(4)] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert lr_factor(4, s, 20) == pytest.approx(1.0) and lr_factor(20, s, 20) == pytest.approx(0.1)
    p = settings(warmup_steps=0, schedule="poly", poly_power=1.0)
    assert lr_factor(5, p, 10) == pytest.approx(0.5)
    assert lr_factor(7, settings(warmup_steps=0, schedule="constant"), 10) == 1.0


def test_epoch_sampler_shards_global_batches_and_skips():
    one = EpochSampler(10, seed=3)
    one.set_epoch(2)
    order = list(one)
    assert sorted(order) == list(range(10))
    two = [EpochSampler(10, seed=3, rank=r, world_size=2) for r in range(2)]
    for s in two:
        s.set_epoch(2)
    shards = [list(s) for s in two]
    for i in range(2):  # global batch 4 = 2 per rank: the same videos as the single process
        assert sorted(shards[0][2 * i: 2 * i + 2] + shards[1][2 * i: 2 * i + 2]) == sorted(order[4 * i: 4 * i + 4])
    one.set_start(4)
    assert list(one) == order[4:] and len(one) == 6
    one.set_epoch(3)
    assert list(one) != order[4:]


def test_settings_validation():
    with pytest.raises(ValueError, match="amp"):
        TrainSettings(amp="fp32")
    with pytest.raises(ValueError, match="fp16 needs a CUDA"):
        TrainSettings(amp="fp16", device="cpu")
    with pytest.raises(ValueError, match="fused_optimizer"):
        TrainSettings(fused_optimizer=True, device="cpu")
    with pytest.raises(ValueError, match="lr"):
        TrainSettings(lr=0)
    with pytest.raises(ValueError, match="device"):
        TrainSettings(device="gpu")
    TrainSettings(amp="bf16", device="cpu")


def test_fit_argument_errors(tmp_path: Path):
    with pytest.raises(ValueError, match="best_key"):
        fit(model(), toy.ToyAV(), settings(), tmp_path / "a", collate_fn=toy.collate, best_key="acc")
    with pytest.raises(ValueError, match="no full batch"):
        fit(model(), toy.ToyAV(n=3), settings(), tmp_path / "b", collate_fn=toy.collate)

    class NoLoss(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))

        def forward(self, batch):
            return {"logits": self.w}

    with pytest.raises(TypeError, match="'loss'"):
        fit(NoLoss(), toy.ToyAV(), settings(), tmp_path / "c", collate_fn=toy.collate)


def test_weights_helpers_strip_wrapper_prefixes(tmp_path: Path):
    m = model()
    path = tmp_path / "w.safetensors"
    # A state dict as DDP + torch.compile would name it.
    wrapped = {f"module._orig_mod.{k}": v for k, v in m.state_dict().items()}
    safetensors.torch.save_file(wrapped, str(path))
    other = model(seed=1)
    load_model_weights(other, path)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), other.state_dict().values()))

    save_model_weights(m, tmp_path / "m.safetensors", {"note": "hi", "path": tmp_path})
    assert read_metadata(tmp_path / "m.safetensors")["note"] == "hi"
    (tmp_path / "m.json").unlink()  # the header keeps a copy of the metadata
    assert read_metadata(tmp_path / "m.safetensors")["note"] == "hi"
    with pytest.raises(RuntimeError, match="m.safetensors does not match"):
        load_model_weights(nn.Linear(2, 2), tmp_path / "m.safetensors")


def test_atomic_write_keeps_old_file_on_failure(tmp_path: Path):
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]


def test_prepare_run_dir_and_logging(tmp_path: Path):
    out = prepare_run_dir(tmp_path / "run", {"train": {"lr": 0.1}, "data": {"root": "/x"}})
    assert (out / "config.yaml").read_text().startswith("train:")
    assert (out / "git.txt").read_text().strip()
    env = json.loads((out / "env.json").read_text())
    assert {"python", "torch", "cuda", "platform", "hostname", "argv"} <= set(env)
    assert git_revision(tmp_path) == "unknown"
    setup_logging(out)
    try:
        logging.getLogger("avseg.test").info("hello run")
    finally:
        for h in list(logging.getLogger().handlers):
            if getattr(h, "_avseg_handler", False):
                logging.getLogger().removeHandler(h)
                h.close()
    assert "hello run" in (out / "train.log").read_text()


def test_worker_processes_give_the_same_run(tmp_path: Path):
    """Augmentation derives from (seed, epoch, index), so loader workers change nothing."""
    for workers in (0, 2):
        fit(model(dropout=0.2), toy.ToyAV(noise=0.05), settings(epochs=2, workers=workers), tmp_path / f"w{workers}",
            collate_fn=toy.collate)
    assert_identical(tmp_path / "w0" / "last.safetensors", tmp_path / "w2" / "last.safetensors")


def test_a_max_steps_stop_mid_epoch_never_becomes_the_best_checkpoint(tmp_path: Path):
    """The evaluation at a mid-epoch max_steps stop is reported, but best.safetensors only holds epoch ends."""
    scores = iter([0.1, 0.9, 0.2, 0.3])  # epoch-1 end, the step-6 stop, then the resumed epoch ends

    def evaluate(m: nn.Module) -> dict[str, float]:
        return {"acc": next(scores)}

    kw = dict(collate_fn=toy.collate, evaluate=evaluate, best_key="acc", desc="toy")
    out = tmp_path / "run"
    part = fit(model(), toy.ToyAV(), settings(max_steps=6), out, **kw)
    assert part.metrics["acc"] == 0.9 and (part.best, part.best_step) == (0.1, 4)
    assert read_metadata(out / "best.safetensors")["step"] == 4
    resumed = fit(model(), toy.ToyAV(), settings(), out, resume=True, **kw)
    assert (resumed.best, resumed.best_step) == (0.3, 12)


def test_resume_says_that_a_changed_lr_is_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    kw = dict(collate_fn=toy.collate, desc="toy")
    full = fit(model(), toy.ToyAV(), settings(), tmp_path / "a", **kw)
    fit(model(), toy.ToyAV(), settings(max_steps=6), tmp_path / "b", **kw)
    with caplog.at_level("WARNING", logger="avseg.engine.trainer"):
        fit(model(), toy.ToyAV(), settings(lr=0.5, grad_clip=2.0), tmp_path / "b", resume=True, **kw)
    message = " ".join(r.getMessage() for r in caplog.records)
    assert "Ignored: lr (the optimizer and LR schedule continue" in message and "grad_clip" in message
    assert "Ignored: grad_clip" not in message and "lr, grad_clip" not in message.split("Ignored:")[1]
    lrs = [r["lr"] for r in read_jsonl(tmp_path / "b" / "metrics.jsonl") if r["kind"] == "train"]
    assert lrs == [r["lr"] for r in read_jsonl(tmp_path / "a" / "metrics.jsonl") if r["kind"] == "train"]
    assert full.steps == 12


# --- checkpoints that must not run code -------------------------------------------------------------------------
def _evil_checkpoints(folder: Path, marker: Path) -> dict[str, Path]:
    """The same payload as torch.save (zip) and as a raw pickle."""
    folder.mkdir(parents=True, exist_ok=True)
    zipped, raw = folder / "evil_zip.pth", folder / "evil_raw.pth"
    torch.save({"format": 1, "model": Payload(marker), "weight": torch.zeros(2)}, zipped)
    raw.write_bytes(pickle.dumps({"format": 1, "model": Payload(marker)}, protocol=2))
    return {"zip": zipped, "raw": raw}


@pytest.mark.parametrize("kind", ["zip", "raw"])
def test_malicious_pth_given_as_weights_is_refused(kind: str, tmp_path: Path) -> None:
    from avseg.models.zoo import VISUAL_ENCODERS
    from avseg.weights import UnsafeCheckpointError, load_state_dict_file

    marker = tmp_path / "PWNED"
    path = _evil_checkpoints(tmp_path / "ckpt", marker)[kind]
    with pytest.raises(UnsafeCheckpointError, match=re.escape(str(path))) as exc:
        load_state_dict_file(path)
    assert "nothing from the file was executed" in str(exc.value)
    with pytest.raises(UnsafeCheckpointError, match=re.escape(str(path))):
        VISUAL_ENCODERS["resnet18"](weights="imagenet", weights_path=path)
    with pytest.raises(UnsafeCheckpointError, match=re.escape(str(path))):
        VISUAL_ENCODERS["efficientnet_lite0"](weights="imagenet", weights_path=path)
    # A pickle handed over where avseg expects its own safetensors weights.
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + ".*never loaded here"):
        load_model_weights(torch.nn.Linear(2, 2), path)
    assert not marker.exists(), "the checkpoint's payload ran"


@pytest.mark.parametrize("kind", ["zip", "raw"])
def test_malicious_train_state_is_refused(kind: str, tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    path = _evil_checkpoints(tmp_path / "ckpt", marker)[kind]
    with pytest.raises(CheckpointError, match=r"refused to load training state .*evil_\w+\.pth.*nothing from the file was executed"):
        load_training_state(path)
    assert isinstance(CheckpointError("x"), ValueError) and isinstance(CheckpointError("x"), RuntimeError)
    assert not marker.exists()
    truncated = tmp_path / "truncated.pt"
    torch.save({"format": 1, "x": torch.zeros(3)}, truncated)
    truncate(truncated)
    with pytest.raises(CheckpointError, match="cannot read training state .*truncated.pt"):
        load_training_state(truncated)


# --- crash safety of every writer -------------------------------------------------------------------------------
def _writers(tmp: Path) -> dict[str, tuple[Path, Callable[[], None]]]:
    from avseg.data.imageio import save_jpg_atomic, save_png_atomic, write_wav_atomic
    from avseg.engine.checkpoint import save_model_weights, save_training_state
    from avseg.engine.evaluate import save_probability_png
    from avseg.fileio import write_text_atomic
    from avseg.visualize import save_image_atomic

    img = np.zeros((8, 8, 3), np.uint8)
    return {
        "save_png_atomic (frames, masks, pseudo masks)": (tmp / "a.png", lambda: save_png_atomic(tmp / "a.png", img)),
        "save_jpg_atomic": (tmp / "a.jpg", lambda: save_jpg_atomic(tmp / "a.jpg", img)),
        "write_wav_atomic": (tmp / "a.wav", lambda: write_wav_atomic(tmp / "a.wav", np.zeros(100, np.float32), SR)),
        "write_text_atomic (markers, manifests, reports)": (tmp / "a.json", lambda: write_text_atomic(tmp / "a.json", "{}")),
        "save_probability_png (pseudo masks, predictions)": (tmp / "p.png", lambda: save_probability_png(np.zeros((4, 4)), tmp / "p.png")),
        "save_image_atomic (contact sheets, overlays)": (tmp / "s.png", lambda: save_image_atomic(Image.fromarray(img), tmp / "s.png")),
        "save_model_weights (checkpoints)": (tmp / "w.safetensors", lambda: save_model_weights(torch.nn.Linear(2, 2), tmp / "w.safetensors")),
        "save_training_state (resume state)": (tmp / STATE, lambda: save_training_state(tmp / STATE, {"x": torch.zeros(2)})),
        "write_text_atomic durable (config, git, env, metrics.jsonl rewrite)": (tmp / "c.yaml", lambda: write_text_atomic(tmp / "c.yaml", "a: 1\n", durable=True)),
    }


@pytest.mark.parametrize("name", list(_writers(Path("/nonexistent"))))
def test_every_writer_is_atomic(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash before the rename leaves the old file and no temporary (the rename is the only visible step)."""
    target, write = _writers(tmp_path)[name]
    target.write_bytes(b"old contents")

    class Crash(BaseException):
        pass

    def crash(*args, **kwargs):
        raise Crash()

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(Crash):
        write()
    monkeypatch.undo()
    assert target.read_bytes() == b"old contents"
    assert [p.name for p in tmp_path.iterdir()] == [target.name], "a temporary file was left behind"
    write()
    assert target.read_bytes() != b"old contents"


# --- training numerics through the CLI --------------------------------------------------------------------------
TINY = ["--epochs", "1", "--image-size", "32", "--batch-size", "4", "--device", "cpu"]


def _nan_on_call(monkeypatch: pytest.MonkeyPatch, cls: type, call: int) -> None:
    original = cls.forward
    calls = []

    def forward(self, batch):
        out = original(self, batch)
        calls.append(1)
        if len(calls) >= call:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(cls, "forward", forward)


def _run_expecting_divergence(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    """The CLI stops with the engine's message: raised (traceback) or printed as one line (exit 2)."""
    from avseg.engine import NonFiniteLossError

    capsys.readouterr()
    try:
        rc = main(argv)
    except NonFiniteLossError as exc:
        return str(exc)
    err = capsys.readouterr().err
    assert rc == 2, err
    return err


def test_nan_loss_through_the_cli_names_stage_and_step_and_keeps_the_checkpoint(synth_s4_16: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from avseg.methods.ws_avs import WSAVSNet

    run = tmp_path / "run"
    argv = ["train", "--method", "ws-avs", "--config", "ws-avs/demo", "--data", str(synth_s4_16), "--layout", "s4", "--out", str(run),
            *TINY, "--set", "segmenter_train.epochs=2", "--set", "segmenter_train.batch_size=8"]  # fmt: skip
    _nan_on_call(monkeypatch, WSAVSNet, call=2)  # the segmenter's step 2: its first epoch is checkpointed
    message = _run_expecting_divergence(argv, capsys)
    assert re.search(r"segmenter: non-finite loss \(nan\) at step 2 \(epoch 2, batch 1\); training stopped, last good checkpoint: .*segmenter/train_state\.pt", message), message
    last = run / "segmenter" / "last.safetensors"
    assert read_weights_metadata(last)["step"] == 1 and load_training_state(run / "segmenter" / STATE)["step"] == 1
    assert all(torch.isfinite(t).all() for t in safetensors.torch.load_file(str(last)).values())
    assert not (run / "stages" / "segmenter.json").exists()
    monkeypatch.undo()
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume"]) == 0  # the kept checkpoint continues
    assert json.loads((run / "stages" / "segmenter.json").read_text())["steps"] == 2


def test_divergent_learning_rate_through_the_cli(synth_s4_16: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """An absurd learning rate: the first update already makes the weights non-finite while its loss was
    finite. The run stops naming stage and step before anything evaluates or checkpoints those weights."""
    run = tmp_path / "run"
    argv = ["train", "--method", "supervised", "--config", "supervised/demo", "--data", str(synth_s4_16), "--layout", "s4",
            "--out", str(run), *TINY, "--set", "train.lr=1e30", "--set", "train.epochs=3", "--set", "train.batch_size=8"]  # fmt: skip
    message = _run_expecting_divergence(argv, capsys)
    # Depending on where the overflow shows first: the loss of step 2, the weights, or the evaluation after
    # epoch 1 (whose metrics refuse NaN predictions).
    assert re.search(r"supervised: (non-finite (loss \((nan|inf)\) at step 2|weights after step 1)|evaluation after step 1 \(epoch 1\) failed"
                     r"; last good checkpoint: none: probs must be probabilities in \[0, 1\] .*nan)", message), message
    assert "last good checkpoint: none" in message
    assert not (run / "segmenter" / "last.safetensors").exists() and not (run / "segmenter" / STATE).exists()


def test_binary_miou_by_groups_the_frames_with_ground_truth() -> None:
    """Per-group clean mIoU (benchmarks/frame_positions.py, benchmarks/avss_subsets.py): frames without ground
    truth are skipped, class probabilities count as 1 - P(background), and the groups weighted by their
    frames give the whole split's mIoU."""
    from avseg.data.index import VideoRecord
    from avseg.engine.evaluate import FrameOutput, binary_miou_by, evaluate_outputs

    def record(category: str) -> VideoRecord:
        return VideoRecord(f"v-{category}", "test", category, (), (), (), Path("a.wav"), None, None)

    gt = np.zeros((4, 4), np.int64)
    gt[:2, :2] = 1
    half = np.zeros((4, 4), np.float32)
    half[:2, :] = 0.9  # IoU 4 / 8
    exact = np.zeros((2, 4, 4), np.float32)
    exact[0], exact[1] = 1.0 - (gt != 0), gt != 0  # class probabilities, background first: IoU 1
    frames = [
        FrameOutput(record("a"), 0, 1, half, gt, np.zeros((3, 4, 4), np.float32)),
        FrameOutput(record("a"), 1, 2, exact, gt, np.zeros((3, 4, 4), np.float32)),
        FrameOutput(record("b"), 0, 1, half, None, np.zeros((3, 4, 4), np.float32)),  # no ground truth
        FrameOutput(record("b"), 1, 2, np.zeros((4, 4), np.float32), gt, np.zeros((3, 4, 4), np.float32)),  # IoU 0
    ]
    by_video = binary_miou_by(iter(frames), lambda fo: fo.record.category)
    assert list(by_video) == ["a", "b"]
    assert by_video["a"] == (pytest.approx(0.75), 2) and by_video["b"] == (0.0, 1)
    by_position = binary_miou_by(iter(frames), lambda fo: str(fo.t + 1))
    assert by_position == {"1": (pytest.approx(0.5), 1), "2": (pytest.approx(0.5), 2)}
    whole = evaluate_outputs(iter(frames), "s4", "clean")
    assert sum(m * n for m, n in by_video.values()) / whole["frames"] == pytest.approx(whole["miou"])
