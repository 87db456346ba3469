"""PCAS: the AST's prompt insertion, the ViT wrapper, the three contrastive losses, pseudo-label selection,
the C-label dense CRF, each config switch, and every stage end to end through the runner on tiny synthetic
AVSS, MS3 and S4 data (32 px, a few videos, a couple of steps: the numbers mean nothing).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from avseg.data import layout as L
from avseg.data.avsbench import collate_videos
from avseg.data.index import index_videos
from avseg.data.synthetic import generate
from avseg.losses.pcas import cmc_loss, cmcc_loss, cmpc_loss, cmpc_targets
from avseg.methods.pcas.config import IGNORE
from avseg.methods.pcas.stages import build_model, num_classes
from avseg.metrics.classification import average_precision
from avseg.models.ast import AST_CONFIGS, ASTConfig, ASTEncoder, build_ast, frame_segments, sequence_layout
from avseg.models.vit import VIT_CONFIGS, build_vit
from avseg.pseudo.crf import dense_crf_multi
from avseg.runner import RECIPES, build_config, evaluate_run, run_method

TINY_TRAIN = {"epochs": 1, "batch_size": 2, "max_steps": 2, "log_every": 1, "workers": 0}
TINY = [f"{stage}.{k}={v}" for stage in ("look_listen_train", "segment_train") for k, v in TINY_TRAIN.items()]
TINY += ["visual=vit_cpu", "visual_weights=none", "audio=ast_cpu", "embed_dim=16", "seg_channels=16", "cmcc_crops=2", "train_frames=null"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pcas-data")
    out = {}
    for layout, videos in (("avss", 6), ("ms3", 5), ("s4", 5)):
        generate(layout, root / layout, num_videos=videos, seed=1, size=32)
        out[layout] = root / layout
    return out


def config(layout: str, root: Path, *extra: str):
    return build_config("pcas", "pcas/demo", str(root), layout, image_size=32, overrides=TINY + list(extra))


def a_batch(cfg, split: str = "train", n: int = 2):
    from avseg.methods.common import make_dataset

    ds = make_dataset(cfg.data, split)
    return collate_videos([ds[i] for i in range(min(n, len(ds)))])


# --- AST and temporal visual prompts -------------------------------------------------------------------
def test_sequence_layout_puts_prompt_t_right_before_segment_t() -> None:
    lay = sequence_layout(4, 6, prompts=True)
    assert lay.length == 4 * 7
    assert torch.equal(lay.segment_start, lay.prompt_index + 1)
    assert torch.equal(lay.prompt_index, torch.tensor([0, 7, 14, 21]))
    plain = sequence_layout(4, 6, prompts=False)
    assert plain.prompt_index.numel() == 0 and torch.equal(plain.segment_start, torch.tensor([0, 6, 12, 18])) and plain.length == 24


def test_ast_inserts_prompts_before_their_segments_and_reads_a_sem_there() -> None:
    torch.manual_seed(0)
    cfg = ASTConfig(embed_dim=8, depth=0, num_heads=2, patch_freq=4, patch_time=2, mlp_ratio=1.0)
    ast = ASTEncoder(cfg, prompt_dim=5, spec_norm="none").eval()
    b, t = 2, 3
    segments = torch.randn(b, t, 1, 8, 4)  # 2 x 2 = 4 tokens per segment
    valid = torch.ones(b, t, dtype=torch.bool)
    prompts = torch.randn(b, t, 5)
    with torch.no_grad():
        out = ast(segments, valid, prompts)
        patches, n_f, n_t = ast.patch_tokens(segments, valid)  # (B, T, S, D) with position embeddings
        expected_prompts = ast.prompt_proj(prompts) + ast.prompt_type + ast.time_embed[0, torch.arange(t) * n_t][None]
    s = patches.shape[2]
    assert (n_f, n_t, s) == (2, 2, 4)
    lay = out.layout
    # With no blocks, the output is the LayerNorm of the input sequence: check what sits where.
    norm = ast.norm
    for i in range(t):
        p = int(lay.prompt_index[i])
        assert int(lay.segment_start[i]) == p + 1
        assert torch.allclose(out.tokens[:, p], norm(expected_prompts[:, i]), atol=1e-5)
        assert torch.allclose(out.tokens[:, p + 1 : p + 1 + s], norm(patches[:, i]), atol=1e-5)
        assert torch.allclose(out.sem[:, i], out.tokens[:, p])  # a_sem_t is read at prompt t
    # Plain AST: a_sem_t = mean of segment t's output tokens.
    with torch.no_grad():
        plain = ast(segments, valid)
    assert plain.tokens.shape[1] == t * s
    assert torch.allclose(plain.sem[:, 1], plain.tokens[:, s : 2 * s].mean(1), atol=1e-6)


def test_ast_prompt_changes_only_through_attention_and_padding_is_masked() -> None:
    torch.manual_seed(0)
    ast = build_ast("ast_cpu", prompt_dim=6, spec_norm="clip").eval()
    segments = torch.randn(1, 3, 1, 64, 16)
    valid = torch.tensor([[True, True, False]])
    prompts = torch.randn(1, 3, 6)
    with torch.no_grad():
        base = ast(segments, valid, prompts).sem
        changed = prompts.clone()
        changed[0, 1] += 1.0
        assert not torch.allclose(ast(segments, valid, changed).sem[0, 1], base[0, 1])
        # Whatever the padded segment holds (audio or prompt), the valid outputs do not change.
        noisy, noisy_prompts = segments.clone(), prompts.clone()
        noisy[0, 2] = torch.randn_like(noisy[0, 2]) * 10
        noisy_prompts[0, 2] = 5.0
        again = ast(noisy, valid, noisy_prompts).sem
    assert torch.allclose(again[0, :2], base[0, :2], atol=1e-5)


def test_frame_segments_centre_keeps_each_frames_own_second() -> None:
    audio = torch.arange(129.0).view(1, 1, 1, 1, 129).expand(2, 3, 1, 4, 129)
    centre = frame_segments(audio, "centre", window_seconds=3.0)
    assert centre.shape[-1] == 43 and float(centre[0, 0, 0, 0, 0]) == 43.0
    assert frame_segments(audio, "window", 3.0) is audio


def test_ast_loads_vit_weights(tmp_path: Path) -> None:
    import safetensors.torch

    vit = build_vit("vit_cpu")
    path = tmp_path / "vit.safetensors"
    # vit_cpu has 8 px patches; the AST initialised from it must use the same patch size and width.
    safetensors.torch.save_file({k: v.contiguous() for k, v in vit.vit.state_dict().items()}, str(path))
    AST_CONFIGS["test_ast_from_vit"] = ASTConfig(embed_dim=96, depth=4, num_heads=4, patch_freq=8, patch_time=8, mlp_ratio=2.0)
    try:
        ast = build_ast("test_ast_from_vit", prompt_dim=None, weights_path=path, weights_format="vit")
    finally:
        del AST_CONFIGS["test_ast_from_vit"]
    assert torch.equal(ast.blocks[2].attn.qkv.weight, vit.vit.blocks[2].attn.qkv.weight)
    assert torch.allclose(ast.patch_embed.weight, vit.vit.patch_embed.proj.weight.mean(1, keepdim=True))


# --- ViT -----------------------------------------------------------------------------------------------
def test_vit_wrapper_shapes_and_local_weights(tmp_path: Path) -> None:
    import safetensors.torch

    torch.manual_seed(0)
    a = build_vit("vit_cpu").eval()
    out = a(torch.randn(2, 3, 32, 48))
    assert out.cls.shape == (2, 96) and out.patches.shape == (2, 96, 4, 6)
    path = tmp_path / "vit.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in a.vit.state_dict().items()}, str(path))
    b = build_vit("vit_cpu", weights_path=path).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(a(x).patches, b(x).patches)
    with pytest.raises(ValueError, match="multiple of the ViT patch size"):
        a(torch.randn(1, 3, 30, 32))
    with pytest.raises(FileNotFoundError):
        build_vit("vit_cpu", weights_path=tmp_path / "missing.pth")
    assert {"vit_b16", "vit_s16", "vit_cpu"} <= set(VIT_CONFIGS)


# --- losses --------------------------------------------------------------------------------------------
def test_cmc_pulls_shared_labels_together() -> None:
    torch.manual_seed(0)
    labels = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    centres = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    aligned = cmc_loss(centres, centres, centres, labels)
    mixed = cmc_loss(centres, centres.flip(0), torch.randn(4, 3), labels)
    assert aligned < mixed
    feats = torch.randn(4, 3, requires_grad=True)
    cmc_loss(feats, feats, feats, labels).backward()
    assert torch.isfinite(feats.grad).all()


def test_cmpc_thresholds_and_directions() -> None:
    sim = torch.tensor([[[0.9, 0.1], [0.5, -0.3]]])  # min-max: 1.0, 0.33, 0.67, 0.0
    pos, neg = cmpc_targets(sim, 0.7, 0.25)
    assert pos.tolist() == [[[True, False], [False, False]]] and neg.tolist() == [[[False, False], [False, True]]]
    audio = torch.tensor([[1.0, 0.0]])
    patches = torch.tensor([[[[1.0, 0.0], [0.5, 0.0]], [[0.0, 1.0], [0.7, 1.0]]]])  # (1, 2, 2, 2): cos 1, 0, .58 (ignored), 0
    assert float(cmpc_loss(patches, audio)) == pytest.approx(0.0, abs=1e-6)  # positive aligned, negative orthogonal
    bad = patches.clone().requires_grad_(True)
    loss = cmpc_loss(bad, -audio)
    loss.backward()
    assert float(loss.detach()) > 0 and torch.isfinite(bad.grad).all()
    assert float(cmpc_loss(patches, audio, frame_mask=torch.tensor([False]))) == 0.0


def test_cmcc_is_zero_without_positives_and_prefers_foreground_crops() -> None:
    g = torch.tensor([[1.0, 0.0]])
    crops = torch.tensor([[[1.0, 0.1], [0.0, 1.0]]])
    pos, neg = torch.tensor([[True, False]]), torch.tensor([[False, True]])
    good = cmcc_loss(g, crops, pos, neg)
    swapped = cmcc_loss(g, crops, neg, pos)
    assert good < swapped
    assert float(cmcc_loss(g, crops, torch.zeros_like(pos), neg)) == 0.0


# --- pseudo labels and CRF -----------------------------------------------------------------------------
def test_sounding_classes_are_within_video_labels(data: dict[str, Path]) -> None:
    spec, cfg = config("avss", data["avss"])
    model = build_model(cfg, num_classes(cfg))
    batch = a_batch(cfg)
    enc = model.encode(batch)
    k = model.num_classes
    probs = torch.full((enc.labels.shape[0], k), 0.9)
    on = model.sounding(enc, probs)
    assert torch.equal(on, enc.labels > 0.5)  # everything sounds, but only labelled classes count
    quiet = model.sounding(enc, torch.full_like(probs, 0.1))
    assert not quiet.any()  # "background": nothing sounds -> nothing selected
    model.empty_audio = "top1"
    try:
        top = model.sounding(enc, torch.full_like(probs, 0.1))
    finally:
        model.empty_audio = "background"
    assert torch.equal(top.sum(1), torch.ones(len(top), dtype=torch.long)) and not (top & (enc.labels < 0.5)).any()


def test_pseudo_labels_hold_class_ids_ignore_and_background(data: dict[str, Path]) -> None:
    spec, cfg = config("avss", data["avss"])
    model = build_model(cfg, num_classes(cfg)).eval()
    batch = a_batch(cfg, n=3)
    out = model.pseudo_labels(batch)
    b, t = batch.frames.shape[:2]
    assert out.shape == (b, t, 2, 32, 32)
    ids = out[:, :, 0]
    allowed = {0, IGNORE, *range(1, model.num_classes + 1)}
    assert set(ids.unique().long().tolist()) <= allowed
    assert (ids[~batch.valid] == 0).all()  # padding is background
    for v in range(b):  # only labelled classes appear
        present = set(ids[v].unique().long().tolist()) - {0, IGNORE}
        assert present <= {int(c) + 1 for c in torch.nonzero(batch.labels[v]).flatten()}


def test_dense_crf_multi_keeps_a_distribution_and_smooths() -> None:
    rng = np.random.default_rng(0)
    image = np.zeros((24, 24, 3), np.uint8)
    image[:, 12:] = 200
    truth = np.zeros((24, 24), np.int64)
    truth[:, 12:] = 2
    probs = np.full((3, 24, 24), 0.1, np.float32)
    probs[truth, np.arange(24)[:, None], np.arange(24)[None]] = 0.8
    noisy = probs.copy()
    flips = rng.random((24, 24)) < 0.1
    noisy[:, flips] = noisy[::-1][:, flips]  # swap class 0 and 2 on 10% of the pixels
    out = dense_crf_multi(image, noisy, iterations=5)
    assert out.shape == (3, 24, 24) and np.allclose(out.sum(0), 1.0, atol=1e-4)
    assert (out.argmax(0) == truth).mean() > (noisy.argmax(0) == truth).mean()


def test_average_precision() -> None:
    assert average_precision(np.array([0.9, 0.8, 0.1]), np.array([1, 0, 1])) == pytest.approx((1 + 2 / 3) / 2)
    assert np.isnan(average_precision(np.array([0.1, 0.2]), np.array([0, 0])))


# --- switches: forward + backward of every variant ----------------------------------------------------
SWITCHES = {
    "full": [],
    "no-tvp": ["tvp=false"],
    "no-cmc": ["cmc=false"],
    "no-cmpc": ["cmpc=false"],
    "no-cmcc": ["cmcc=false"],
    "cnn-tiny": ["visual=tiny", "visual_level=2"],
    "cnn-conv-head": ["visual=tiny", "visual_level=2", "seg_head=conv", "cam_source=cls", "tvp_detach=true"],
}


@pytest.mark.parametrize("name", list(SWITCHES))
def test_each_switch_trains(name: str, data: dict[str, Path]) -> None:
    torch.manual_seed(0)
    spec, cfg = config("avss", data["avss"], "fine_losses_after=0", "cmcc_fg_fraction=0.0", "cmcc_bg_fraction=0.0", *SWITCHES[name])
    model = build_model(cfg, num_classes(cfg)).train()
    batch = a_batch(cfg)
    out = model(batch)
    expected = {"cmc": cfg.cmc, "cmpc": cfg.cmpc, "cmcc": cfg.cmcc}
    for key, on in expected.items():
        assert (key in out) == on, f"{name}: {key} present={key in out}, expected {on}"
    assert {"cls_audio", "cls_visual", "cls_sem", "loss"} <= set(out)
    out["loss"].backward()
    grads = [p.grad for n, p in model.named_parameters() if n.startswith("audio.prompt_proj")]
    assert (grads[0] is not None) == cfg.tvp  # prompts only exist with TVP
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_head_only_segment_training_keeps_encoders_frozen_and_in_eval_mode(data: dict[str, Path]) -> None:
    spec, cfg = config("avss", data["avss"], "visual=tiny", "visual_level=2", "segment_joint=false")
    model = build_model(cfg, num_classes(cfg))
    model.freeze(keep_training=("seg_head",))
    model.train()
    assert model.training and model.seg_head.training and not model.visual.training and not model.audio.training
    before = {k: v.clone() for k, v in model.visual.state_dict().items()}
    batch = a_batch(cfg)
    batch.pseudo_masks = torch.zeros(batch.masks.shape)
    batch.has_pseudo = batch.valid.clone()
    model.mode = "segment"
    out = model(batch)
    assert set(out) == {"seg", "loss"}
    out["loss"].backward()
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("seg_head."))
    assert any(p.grad is not None for p in model.seg_head.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.visual.state_dict().items())  # BatchNorm/GN stats untouched


# --- every stage through the runner --------------------------------------------------------------------
def _check_run(run: Path, root: Path, layout: str) -> None:
    for stage in ("look-listen", "pseudo-labels", "segment"):
        assert (run / "stages" / f"{stage}.json").is_file()
    report = json.loads((run / "look-listen" / "audio_classification.json").read_text())
    assert {"video", "frame"} <= set(report) and report["video"]["frames"] > 0
    manifest = json.loads((run / "pseudo" / "manifest.json").read_text())
    assert "quality" in manifest and 0.0 <= manifest["quality"]["ignored_fraction"] <= 1.0
    k = len(json.loads((root / "label2idx.json").read_text())) - 1 if layout == "avss" else None
    for r in index_videos(root, layout, "train"):
        for n in r.frame_numbers:
            png = run / "pseudo" / "labels" / L.prediction_relpath(layout, r.split, r.category, r.video_id, n)
            ids = np.asarray(Image.open(png))
            assert ids.shape == (32, 32)
            if k is not None:
                assert set(np.unique(ids).tolist()) <= {0, IGNORE, *range(1, k + 1)}


# Per layout a different variant of the segment stage: head only (the demo recipe), joint with the
# look-listen losses, and a CNN with the FPN head and the hard audio gate.
E2E = {
    "avss": [],
    "ms3": ["segment_joint=true"],
    "s4": ["visual=tiny", "visual_level=2", "segment_joint=true", "audio_gate=hard", "empty_audio=top1"],
}


@pytest.mark.parametrize("layout", list(E2E))
def test_every_stage_end_to_end(layout: str, data: dict[str, Path], tmp_path: Path) -> None:
    root = data[layout]
    spec, cfg = config(layout, root, "fine_losses_after=0", "cmcc_fg_fraction=0.0", "crf=true", *E2E[layout])
    run = tmp_path / "run"
    summaries = run_method(spec, cfg, run)
    assert set(summaries) == {"look-listen", "pseudo-labels", "segment"}
    seg_metrics = [json.loads(line) for line in (run / "segment" / "metrics.jsonl").read_text().splitlines()]
    assert ("cls_audio" in seg_metrics[-1]) == cfg.segment_joint and "seg" in seg_metrics[-1]
    _check_run(run, root, layout)
    pred = tmp_path / "pred"
    result = evaluate_run(run, "test", "clean", device="cpu", save_pred=pred)
    assert result["frames"] > 0 and 0.0 <= result["miou"] <= 1.0
    pngs = sorted(pred.rglob("*.png"))
    assert pngs
    if layout == "avss":
        assert "per_class_iou" in result
        k = len(json.loads((root / "label2idx.json").read_text())) - 1
        assert all(np.asarray(Image.open(p)).max() <= k for p in pngs)  # class ids, background 0
        official = evaluate_run(run, "test", "avsbench", device="cpu")
        assert "miou_no_bg" in official
        # --binary: the foreground probability against the union of the sounding objects, in a file of its own;
        # its probability PNGs score the same with avseg score --binary.
        binary_pred = tmp_path / "pred-binary"
        binary = evaluate_run(run, "test", "clean", device="cpu", save_pred=binary_pred, binary=True)
        assert result["scoring"] == "semantic" and binary["scoring"] == "binary" and "per_class_iou" not in binary
        assert (run / "eval" / "test-clean-binary.json").is_file()
        assert json.loads((run / "eval" / "test-clean.json").read_text())["scoring"] == "semantic"
        from avseg.scoring import score_predictions

        rescored = score_predictions(root, "avss", "test", binary_pred, "clean", binary=True)
        assert rescored["scoring"] == "binary" and rescored["miou"] == pytest.approx(binary["miou"], abs=1 / 255)
        # The run records its vocabulary: it loads and names its classes with the dataset gone.
        import shutil

        import yaml

        from avseg.inference.predictor import Predictor

        moved = Path(shutil.copytree(run, tmp_path / "moved"))
        saved = yaml.safe_load((moved / "config.yaml").read_text())
        label2idx = json.loads((root / "label2idx.json").read_text())
        names = [n for n, _ in sorted(label2idx.items(), key=lambda kv: kv[1])]
        assert saved["data"]["classes"] == names[1:] and Path(saved["data"]["root"]).is_absolute()
        saved["data"]["root"] = str(tmp_path / "no-such-dataset")
        (moved / "config.yaml").write_text(yaml.safe_dump(saved))
        assert Predictor.from_run(moved, device="cpu").class_names == ["background", *names[1:]]
    # the predictor's output shapes on one batch
    predictor = spec.load_predictor(cfg, run, torch.device("cpu"))
    batch = a_batch(cfg, "test")
    out = predictor.predict(batch)
    b, t = batch.frames.shape[:2]
    if layout == "avss":
        assert out.shape == (b, t, k + 1, 32, 32) and torch.allclose(out.sum(2), torch.ones(b, t, 32, 32), atol=1e-4)
    else:
        assert out.shape == (b, t, 32, 32) and out.min() >= 0 and out.max() <= 1


def test_cli_train_and_eval(data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from avseg.cli import main

    run = tmp_path / "run"
    args = ["train", "--method", "pcas", "--config", "pcas/demo", "--data", str(data["ms3"]), "--layout", "ms3", "--out", str(run),
            "--device", "cpu", "--image-size", "32", "--epochs", "1", "--batch-size", "2", "--max-steps", "1"]  # fmt: skip
    for item in ("visual=tiny", "visual_weights=none", "embed_dim=16", "seg_channels=16", "cmcc_crops=1", "audio=ast_cpu", "look_listen_train.workers=0", "segment_train.workers=0"):
        args += ["--set", item]
    assert main(args) == 0
    capsys.readouterr()
    assert main(["eval", "--run", str(run), "--split", "test", "--device", "cpu", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["method"] == "pcas" and result["layout"] == "ms3"


# --- recipes -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("recipe", sorted((RECIPES / "pcas").glob("*.yaml")), ids=lambda p: p.stem)
def test_pcas_recipes_build(recipe: Path, tmp_path: Path) -> None:
    from avseg.config import load_yaml

    layout = load_yaml(recipe)["data"]["layout"]
    spec, cfg = build_config("pcas", f"pcas/{recipe.stem}", str(tmp_path), layout)
    assert [s.name for s in spec.stages(cfg)] == ["look-listen", "pseudo-labels", "segment"]


def test_bad_config_values_are_rejected(tmp_path: Path) -> None:
    from avseg.config import ConfigError

    for bad in ("cmpc_low=0.8", "visual=vit_nope", "audio_gate=maybe", "empty_audio=loud", "seg_head=fpn"):
        with pytest.raises(ConfigError):
            build_config("pcas", None, str(tmp_path), "avss", overrides=["visual=vit_cpu", bad])
    with pytest.raises(ConfigError, match="multiple of the ViT patch size"):
        build_config("pcas", None, str(tmp_path), "avss", image_size=36, overrides=["visual=vit_cpu"])


@pytest.mark.parametrize("tvp", [False, True])
def test_tvp_probe_swaps_only_the_prompts(tvp: bool, data: dict[str, Path], tmp_path: Path) -> None:
    """benchmarks/pcas_tvp_probe.py: without prompts its three conditions must agree exactly."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "pcas_tvp_probe.py"
    module_spec = importlib.util.spec_from_file_location("pcas_tvp_probe", path)
    probe = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(probe)
    spec, cfg = config("ms3", data["ms3"], f"tvp={str(tvp).lower()}")
    run = tmp_path / "run"
    run_method(spec, cfg, run, only=["look-listen"])
    result = probe.probe(run, "train", torch.device("cpu"))  # the tiny test split has one video
    assert result["tvp"] is tvp and result["videos"] > 1
    rows = [result[c] for c in ("own", "other video", "grey")]
    if not tvp:
        assert rows[0] == rows[1] == rows[2]
    assert all(0.0 <= r["frame"]["map"] <= 1.0 for r in rows)
    assert "| run | tvp |" in probe.table([result])


def test_binary_prediction_is_a_probability_when_the_hard_gate_silences_every_class(data: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """1 - P(background) came out as -5e-7 here (rounding), and the metrics refused it."""
    spec, cfg = config("s4", data["s4"], "audio_gate=hard")
    model = build_model(cfg, num_classes(cfg)).eval()
    model.mode = "segment"
    monkeypatch.setattr(model, "audio_probs", lambda enc: torch.zeros(enc.labels.shape))
    batch = a_batch(cfg, "test")
    fg = model.predict(batch)
    assert fg.shape == batch.masks.shape and torch.equal(fg, torch.zeros_like(fg))
    monkeypatch.setattr(model, "audio_probs", lambda enc: torch.ones(enc.labels.shape))
    fg = model.predict(batch)
    assert fg.min() >= 0.0 and fg.max() <= 1.0 and fg.max() > 0


def test_binary_dense_crf_is_the_two_label_case_of_the_multi_label_one() -> None:
    """pseudo.crf.dense_crf (WS-AVS) and dense_crf_multi share one mean field: for two labels built from the
    same unaries they agree, and both clean a noisy mask along an image edge."""
    from avseg.pseudo.crf import dense_crf

    rng = np.random.default_rng(1)
    image = np.zeros((24, 24, 3), np.uint8)
    image[:, 12:] = 200
    truth = np.zeros((24, 24), bool)
    truth[:, 12:] = True
    prob = np.where(truth, 0.8, 0.2).astype(np.float32)
    flips = rng.random((24, 24)) < 0.1
    prob[flips] = 1.0 - prob[flips]
    mask = dense_crf(image, prob, threshold=0.5, sharpness=8.0)
    assert set(np.unique(mask)) <= {0.0, 1.0}
    assert (mask.astype(bool) == truth).mean() > ((prob > 0.5) == truth).mean()
    fg = 1.0 / (1.0 + np.exp(-(prob - 0.5) * 8.0))
    fg = np.clip(fg, 1e-4, 1 - 1e-4)
    multi = dense_crf_multi(image, np.stack([1 - fg, fg]).astype(np.float32))
    assert np.array_equal(multi[1] > 0.5, mask.astype(bool))  # 24 px: no resampling, the same unaries


def test_crf_refine_mask_moves_a_mask_to_the_object_edges() -> None:
    """WS-AVS-AV's pseudo-mask CRF on a uniform red disc over a noisy grey background: a mask that covers two
    thirds of the disc and leaks onto the background becomes the disc; one that covers less than half of it
    is erased (the unnormalised pairwise terms make the CRF a vote among pixels of similar colour: the mass of
    the disc's pixels outweighs the unary); an empty mask stays empty."""
    from avseg.pseudo.crf import crf_refine_mask

    rng = np.random.default_rng(3)
    image = (rng.random((64, 64, 3)) * 80 + 60).astype(np.uint8)
    yy, xx = np.mgrid[:64, :64]
    disc = (yy - 32) ** 2 + (xx - 32) ** 2 <= 14**2
    image[disc] = (210, 30, 30)
    leak = (abs(yy - 32) < 3) & (xx >= 48) & (xx < 56)
    most = ((disc & (xx < 36)) | leak).astype(np.float32)
    iou = lambda m: (m.astype(bool) & disc).sum() / (m.astype(bool) | disc).sum()  # noqa: E731
    out = crf_refine_mask(image, most, confidence=0.7)
    assert out.dtype == np.float32 and set(np.unique(out)) <= {0.0, 1.0}
    assert iou(most) < 0.65 and iou(out) > 0.95
    assert not crf_refine_mask(image, (disc & (xx < 30)).astype(np.float32), confidence=0.7).any()
    assert not crf_refine_mask(image, np.zeros((64, 64), np.float32)).any()
    with pytest.raises(ValueError, match="confidence must be in"):
        crf_refine_mask(image, most, confidence=0.5)


def test_dense_crf_mean_field_equals_the_textbook_kernels() -> None:
    """The mean field builds its kernel in place (|Ii - Ij|^2 from a Gram matrix, exponents floored at -80 so no
    weight is a subnormal float, the grid's terms cached): the marginals equal those of the kernels written out
    directly (pairwise differences, exp without a floor) on a coloured image with a noisy unary."""
    from avseg.pseudo.crf import _mean_field

    rng = np.random.default_rng(2)
    gh, gw = 20, 24
    image = (rng.random((gh, gw, 3)) * 60).astype(np.uint8)
    image[4:14, 6:18] = (220, 40, 30)
    probs = torch.from_numpy(rng.dirichlet(np.ones(3), size=(gh, gw)).transpose(2, 0, 1).astype(np.float32))
    sxy_b, srgb, w_b, sxy_g, w_g, iterations = 20.0, 13.0, 5.0, 1.5, 3.0, 5
    q = _mean_field(image, probs, iterations, sxy_b, srgb, w_b, sxy_g, w_g)

    img = torch.from_numpy(image.astype(np.float64)).reshape(-1, 3)
    ys, xs = torch.meshgrid(torch.arange(gh, dtype=torch.float64), torch.arange(gw, dtype=torch.float64), indexing="ij")
    pos = torch.stack([ys.reshape(-1), xs.reshape(-1)], dim=1)
    d_pos = ((pos[:, None] - pos[None]) ** 2).sum(-1)
    d_rgb = ((img[:, None] - img[None]) ** 2).sum(-1)
    kernel = w_b * torch.exp(-d_pos / (2 * sxy_b**2) - d_rgb / (2 * srgb**2)) + w_g * torch.exp(-d_pos / (2 * sxy_g**2))
    kernel.fill_diagonal_(0.0)
    unary = -torch.log(probs.double().reshape(3, -1).T.clamp(1e-5, 1.0))
    ref = torch.softmax(-unary, dim=1)
    for _ in range(iterations):
        message = kernel @ ref
        ref = torch.softmax(-(unary + message.sum(dim=1, keepdim=True) - message), dim=1)
    assert torch.allclose(q.double(), ref, atol=1e-3)  # float32 against float64: 5e-5 measured; a dropped term moves it by far more
    assert (q.argmax(1) != probs.reshape(3, -1).T.argmax(1)).any()  # the pairwise terms changed labels


def test_batched_mean_field_and_crf_refine_masks_equal_one_inference_at_a_time() -> None:
    """Several unaries on one frame share the kernel: each inference's marginals are those it has alone (the
    batch must not mix them), and ``crf_refine_masks`` gives each mask what ``crf_refine_mask`` gives it (an
    empty one stays empty)."""
    from avseg.pseudo.crf import _mean_field, crf_refine_mask, crf_refine_masks

    rng = np.random.default_rng(4)
    gh, gw = 18, 22
    image = (rng.random((gh, gw, 3)) * 60).astype(np.uint8)
    image[3:12, 5:15] = (30, 200, 40)
    probs = torch.from_numpy(rng.dirichlet(np.ones(2), size=(3, gh, gw)).transpose(0, 3, 1, 2).astype(np.float32))  # (3, 2, gh, gw)
    batched = _mean_field(image, probs, 5, 20.0, 13.0, 5.0, 1.5, 3.0)  # (P, 3, 2)
    assert batched.shape == (gh * gw, 3, 2)
    for b in range(3):
        alone = _mean_field(image, probs[b], 5, 20.0, 13.0, 5.0, 1.5, 3.0)
        assert torch.equal(batched[:, b], alone)  # the same products: written masks do not depend on what else the frame refines
    assert not torch.allclose(batched[:, 0], batched[:, 1], atol=1e-2)
    fast = _mean_field(image, probs, 5, 20.0, 13.0, 5.0, 1.5, 3.0, one_product=True)
    assert torch.allclose(fast, batched, atol=1e-3)  # one product for the batch: 4e-5 measured; mixing inferences moves them by far more

    frame = (rng.random((64, 64, 3)) * 80 + 60).astype(np.uint8)
    yy, xx = np.mgrid[:64, :64]
    disc = (yy - 30) ** 2 + (xx - 34) ** 2 <= 13**2
    frame[disc] = (40, 40, 220)
    masks = np.stack([disc & (xx < 38), np.zeros_like(disc), disc & (xx < 28), (yy > 40) & (xx < 20)]).astype(np.float32)
    out = crf_refine_masks(frame, masks, 0.75)
    assert out.shape == masks.shape and out.dtype == np.float32
    for k in range(len(masks)):
        assert np.array_equal(out[k], crf_refine_mask(frame, masks[k], 0.75)), k
    assert out[0].any() and not out[1].any()
    assert (crf_refine_masks(frame, masks, 0.75, one_product=True) != out).mean() < 1e-3
    with pytest.raises(ValueError, match=r"\(K, H, W\)"):
        crf_refine_masks(frame, masks[0], 0.75)


@pytest.mark.parametrize("segment_audio", ["bias", "none"])
def test_segment_head_hears_the_audio(segment_audio: str, data: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``segment_audio: bias`` the segmentation logits (training and inference) depend on what the audio
    head hears: a class it calls silent loses log(1e-4) against background; the image-only head does not move."""
    spec, cfg = config("s4", data["s4"], f"segment_audio={segment_audio}", "audio_gate=none")
    model = build_model(cfg, num_classes(cfg)).eval()
    model.mode = "segment"
    batch = a_batch(cfg, "test")
    with torch.no_grad():
        enc = model.encode(batch)
        k = enc.labels.shape[1]
        monkeypatch.setattr(model, "audio_probs", lambda enc: torch.ones(enc.labels.shape[0], k))
        loud = model.segment_logits(enc)
        silent_first = torch.ones(enc.labels.shape[0], k)
        silent_first[:, 0] = 0.0
        monkeypatch.setattr(model, "audio_probs", lambda enc: silent_first)
        quiet = model.segment_logits(enc)
    diff = quiet - loud
    if segment_audio == "none":
        assert torch.equal(diff, torch.zeros_like(diff))
    else:
        assert torch.allclose(diff[:, 1], torch.full_like(diff[:, 1], float(np.log(1e-4))), atol=1e-4)
        assert torch.equal(diff[:, 0], torch.zeros_like(diff[:, 0])) and torch.equal(diff[:, 2:], torch.zeros_like(diff[:, 2:]))
