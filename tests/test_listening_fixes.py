"""The fixes that let audio reach the masks (issue: models that listen), each pinned by a test that fails
without it: fusion reads what M2ICL contrasts, the audio embedding does not collapse, negative-audio
training empties the targets of the clips it gives another sound, and the contrast skips them as anchors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from avseg.data.avsbench import AVSBenchDataset, collate_videos
from avseg.losses.contrastive import m2icl_loss, m2icl_per_second
from avseg.models.segmenter import AVSegmenter
from avseg.models.zoo import AUDIO_ENCODERS, VISUAL_ENCODERS


def _segmenter(audio_norm: str = "batch") -> AVSegmenter:
    torch.manual_seed(0)
    return AVSegmenter(
        VISUAL_ENCODERS["tiny"](), AUDIO_ENCODERS["tiny"](), fusion_stages=(1, 2, 3), embed_dim=16,
        visual_dropout=0.0, decoder_channels=8, audio_norm=audio_norm,
    )  # fmt: skip


def test_fusion_and_decoder_read_the_contrasted_features() -> None:
    model = _segmenter().eval()
    seen: dict[str, tuple] = {}
    for s in ("1", "2", "3"):
        model.fusion[s].register_forward_hook(lambda mod, args, out, s=s: seen.__setitem__(s, (args, out)))
    decoded: list = []
    model.decoder.register_forward_hook(lambda mod, args, out: decoded.append(args[0]))
    out = model(torch.randn(3, 3, 32, 32), torch.randn(3, 1, 16, 24))
    for i, s in enumerate(("1", "2", "3")):
        (visual, audio), fused = seen[s]
        assert visual is out.visual_embeds[i]  # v^s: the tokens M2ICL contrasts
        assert audio is out.audio_embed  # a: the audio M2ICL contrasts
        assert decoded[0][int(s)] is fused  # the decoder reads z^s
    assert decoded[0][0].shape[1] == model.visual_encoder.channels[0]  # level 0 is not fused: raw


def test_audio_embeddings_stay_apart_under_the_contrast() -> None:
    """A few M2ICL steps at lr 1e-3 on tiny data: with the BatchNorm the clips of a batch keep distinct
    embeddings (mean pairwise cosine of the normalised features well below 1); it is a property of the
    normalisation (zero batch mean per dimension), not of a lucky seed."""
    model = _segmenter("batch").train()
    torch.manual_seed(1)
    frames = torch.randn(8, 3, 32, 32)
    audio = torch.randn(8, 1, 16, 24) * 0.1 + torch.linspace(0, 1, 8).view(8, 1, 1, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(15):
        out = model(frames, audio)
        loss = m2icl_loss(out.audio_embed, out.visual_embeds)
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = model(frames, audio)
    f = torch.nn.functional.normalize(out.audio_embed, dim=1)  # a, what M2ICL contrasts
    cos = f @ f.t()
    off = cos[~torch.eye(8, dtype=torch.bool)]
    assert float(off.detach().mean()) < 0.5


def test_m2icl_anchors_skip_negative_clips() -> None:
    torch.manual_seed(0)
    a = torch.randn(4, 8)
    v = [torch.randn(4, 8, 2, 2)]
    full = m2icl_loss(a, v, scale_by_tau=False)
    all_anchors = m2icl_loss(a, v, scale_by_tau=False, anchors=torch.ones(4, dtype=torch.bool))
    assert torch.allclose(full, all_anchors)
    keep = torch.tensor([True, True, False, True])
    partial = m2icl_loss(a, v, scale_by_tau=False, anchors=keep)
    # hand: the CE of anchors 0, 1, 3 only, over all 4 candidates
    import torch.nn.functional as F

    from avseg.losses.contrastive import mil_logits

    an, vn = F.normalize(a, dim=1), F.normalize(v[0], dim=1)
    s = mil_logits(an, vn) / 0.03  # (audio, visual)
    t = torch.arange(4)
    expect = F.cross_entropy(s.t()[keep], t[keep]) + F.cross_entropy(s[keep], t[keep])
    assert torch.allclose(partial, expect, atol=1e-5)
    # per second, video-major, with a (B,) mask
    per_second = m2icl_per_second(a, v, b=4, t=1, scale_by_tau=False, heard=keep)
    assert torch.allclose(per_second, expect, atol=1e-5)


def test_m2icl_per_second_ignores_avss_padding() -> None:
    """AVSS pads 5-second videos to 10: a padded second (black frame, silence) is no anchor and no negative, so
    the loss equals the contrast of the real videos of each second, and the padding's content cannot move it."""
    torch.manual_seed(0)
    b, t = 4, 3
    a = torch.randn(b * t, 8)
    v = [torch.randn(b * t, 8, 2, 2)]
    valid = torch.ones(b, t, dtype=torch.bool)
    valid[2, 1:] = False  # video 2 is one second long
    loss = m2icl_per_second(a, v, b, t, scale_by_tau=False, valid=valid)
    av, vv = a.view(b, t, -1), v[0].view(b, t, 8, 2, 2)
    real = [0, 1, 3]
    expect = torch.stack([
        m2icl_loss(av[:, 0], [vv[:, 0]], scale_by_tau=False),
        m2icl_loss(av[real, 1], [vv[real, 1]], scale_by_tau=False),
        m2icl_loss(av[real, 2], [vv[real, 2]], scale_by_tau=False),
    ]).mean()  # fmt: skip
    assert torch.allclose(loss, expect, atol=1e-5)
    moved_a, moved_v = av.clone(), vv.clone()
    moved_a[2, 1:] = torch.randn(2, 8)
    moved_v[2, 1:] = torch.randn(2, 8, 2, 2)
    moved = m2icl_per_second(moved_a.flatten(0, 1), [moved_v.flatten(0, 1)], b, t, scale_by_tau=False, valid=valid)
    assert torch.allclose(moved, loss, atol=1e-6)
    unmasked = m2icl_per_second(moved_a.flatten(0, 1), [moved_v.flatten(0, 1)], b, t, scale_by_tau=False)
    assert not torch.allclose(unmasked, loss, atol=1e-3)  # without the mask the padding takes part
    # all real: the same as no mask; a second without any real frame is left out of the mean
    assert torch.allclose(m2icl_per_second(a, v, b, t, valid=torch.ones(b, t, dtype=torch.bool)), m2icl_per_second(a, v, b, t))
    valid[:, 2] = False
    two = m2icl_per_second(a, v, b, t, scale_by_tau=False, valid=valid)
    first_two = torch.stack([m2icl_loss(av[:, 0], [vv[:, 0]], scale_by_tau=False), m2icl_loss(av[real, 1], [vv[real, 1]], scale_by_tau=False)])
    assert torch.allclose(two, first_two.mean(), atol=1e-5)


def test_negative_audio_training_empties_targets(fake_ms3: Path) -> None:
    ds = AVSBenchDataset(fake_ms3, "ms3", "train", image_size=32, audio_frontend="wsavs-logmel", augment=True, seed=0)
    own = [ds[i] for i in range(len(ds))]
    ds.set_negative_audio(0.99, ("silence",))
    neg = [ds[i] for i in range(len(ds))]
    for o, n in zip(own, neg):
        assert n.negative == "silence"
        assert int(n.masks.sum()) == 0 and float(n.labels.sum()) == 0
        assert torch.equal(n.has_mask, o.has_mask)  # trained where it would be anyway, on an empty target
        assert torch.equal(n.frames, o.frames)  # same geometry, only the sound and the targets change
        assert not torch.equal(n.audio, o.audio)
    zeros = ds.audio_frontend  # the silence goes through the front-end like any soundtrack
    from avseg.audio import compute_features

    assert torch.allclose(neg[0].audio, compute_features(zeros, np.zeros(16000 * 5, np.float32), 16000, 5))
    batch = collate_videos(neg)
    assert batch.extras["negative_audio"].all()
    # off: nothing changes; a training set without augmentation (PCAS's segment stage) gets them too
    ds.set_negative_audio(0.0)
    assert ds[0].negative == "" and torch.equal(ds[0].audio, own[0].audio)
    plain = AVSBenchDataset(fake_ms3, "ms3", "train", image_size=32, audio_frontend="wsavs-logmel", negative_audio=0.99, negative_kinds=("noise",))
    assert plain[0].negative == "noise"
    assert AVSBenchDataset(fake_ms3, "ms3", "train", image_size=32, audio_frontend="wsavs-logmel")[0].negative == ""


def test_negative_audio_kinds_and_other_soundtrack(fake_s4: Path) -> None:
    ds = AVSBenchDataset(fake_s4, "s4", "train", image_size=32, audio_frontend="wsavs-logmel", augment=True, seed=3)
    ds.set_negative_audio(0.99, ("other",))
    for i, r in enumerate(ds.records):
        kind, helper = ds.negative_plan(i)
        assert kind == "other"
        assert ds.records[helper].category != r.category  # another category's sound, never its own
    ds.set_negative_audio(0.99, ("noise",))
    kind, seed = ds.negative_plan(0)
    wave = np.full(1000, 0.5, np.float32)
    noise = ds._negative_wave(kind, seed, wave, 16000)
    assert noise.shape == wave.shape and abs(float(np.sqrt(np.mean(noise**2))) - 0.5) < 0.05  # the clip's RMS
    # the draw is per (seed, epoch, index): reproducible, and changes with the epoch
    ds.set_negative_audio(0.5)
    plan0 = [ds.negative_plan(i) for i in range(len(ds))]
    assert plan0 == [ds.negative_plan(i) for i in range(len(ds))]


def test_negative_audio_refused_without_wav_audio(fake_s4: Path) -> None:
    with pytest.raises(ValueError, match="wav front-end"):
        AVSBenchDataset(fake_s4, "s4", "train", image_size=32, audio_frontend=None, negative_audio=0.3)
    from avseg.config import TrainSettings

    with pytest.raises(ValueError, match="negative_audio"):
        TrainSettings(negative_audio=1.0)
    with pytest.raises(ValueError, match="negative_kinds"):
        TrainSettings(negative_audio=0.2, negative_kinds=("music",))


def test_eq6_floor_keeps_a_saturated_saliency_map_from_taking_the_frame() -> None:
    from avseg.methods.ws_avs import eq6_mask

    a = torch.tensor([[0.05, 0.3, 0.6, 0.95]])
    saturated = torch.ones_like(a)
    assert eq6_mask(a, saturated).all()  # the paper's rule: A > 0, every pixel
    assert eq6_mask(a, saturated, floor=0.5).tolist() == [[False, False, True, True]]
    calm = torch.tensor([[0.1, 0.9, 0.2, 0.9]])  # S: B = 1 - S = [0.9, 0.1, 0.8, 0.1]
    assert eq6_mask(a, calm).tolist() == [[False, True, False, True]]


def test_m2icl_label_negatives_drop_same_label_candidates() -> None:
    import torch.nn.functional as F

    from avseg.losses.contrastive import mil_logits

    torch.manual_seed(0)
    a = torch.randn(4, 8)
    v = [torch.randn(4, 8, 2, 2)]
    labels = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])  # videos 0 and 1 share a class
    got = m2icl_loss(a, v, scale_by_tau=False, labels=labels)
    s = mil_logits(F.normalize(a, dim=1), F.normalize(v[0], dim=1)) / 0.03  # (audio, visual)
    keep = ~torch.tensor([[False, True, False, False], [True, False, False, False], [False] * 4, [False] * 4])
    t = torch.arange(4)
    expect = F.cross_entropy(s.masked_fill(~keep, float("-inf")), t) + F.cross_entropy(s.t().masked_fill(~keep, float("-inf")), t)
    assert torch.allclose(got, expect, atol=1e-5)
    assert not torch.allclose(got, m2icl_loss(a, v, scale_by_tau=False))  # without labels 0 and 1 are negatives


def test_the_engine_turns_negative_audio_on_for_any_stage(fake_s4: Path, tmp_path: Path) -> None:
    """negative_audio is a setting of the one training loop: whatever the method's own fit wrapper (PCAS has
    one), the loop turns it on in the dataset; a stage without wav audio is refused with its name."""
    from avseg.config import TrainSettings
    from avseg.data.avsbench import collate_videos
    from avseg.engine.trainer import fit

    class Probe(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))
            self.seen: list[bool] = []

        def forward(self, batch):  # noqa: ANN001, ANN201
            self.seen += batch.extras["negative_audio"].tolist()
            return {"loss": self.w * batch.frames.mean()}

    ds = AVSBenchDataset(fake_s4, "s4", "train", image_size=32, audio_frontend="wsavs-logmel", augment=True)
    model = Probe()
    settings = TrainSettings(epochs=1, batch_size=2, negative_audio=0.99, negative_kinds=("silence",), progress="off")
    fit(model, ds, settings, tmp_path / "run", collate_fn=collate_videos, desc="probe")
    assert ds.negative_audio == 0.99 and model.seen and all(model.seen)
    silent = AVSBenchDataset(fake_s4, "s4", "train", image_size=32, audio_frontend=None, augment=True)
    with pytest.raises(ValueError, match="probe: negative_audio"):
        fit(Probe(), silent, settings, tmp_path / "run2", collate_fn=collate_videos, desc="probe")


def test_negative_audio_add_mode_keeps_every_positive(fake_s4: Path) -> None:
    """"add": every video keeps its own sound and target, and round(fraction x videos) negative items
    follow them, each showing a video drawn per epoch with a negative soundtrack and empty targets."""
    ds = AVSBenchDataset(fake_s4, "s4", "train", image_size=32, audio_frontend="wsavs-logmel", augment=True, seed=1)
    n = len(ds.records)
    own = [ds[i] for i in range(n)]
    ds.set_negative_audio(0.5, ("silence", "other"), mode="add")
    assert len(ds) == n + round(0.5 * n) and ds.negative_extra == round(0.5 * n)
    for i in range(n):  # the positives are untouched
        s = ds[i]
        assert s.negative == "" and torch.equal(s.audio, own[i].audio) and torch.equal(s.masks, own[i].masks)
    bases = set()
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in range(n, len(ds)):
            s, base = ds[i], ds.base_index(i)
            bases.add(base)
            assert s.negative in ("silence", "other") and s.video_id == ds.records[base].video_id
            assert int(s.masks.sum()) == 0 and float(s.labels.sum()) == 0 and torch.equal(s.has_mask, own[base].has_mask)
            kind, helper = ds.negative_plan(i)
            if kind == "other":
                assert ds.records[helper].category != ds.records[base].category
    assert len(bases) > 1  # drawn per epoch, not always the same video
    with pytest.raises(IndexError):
        ds[len(ds)]
    ds.set_negative_audio(1.0, ("noise",), mode="add")
    assert len(ds) == 2 * n  # balanced: as many negatives as videos
    with pytest.raises(ValueError, match=r"negative_audio must be in \[0, 1\)"):
        ds.set_negative_audio(1.0, ("noise",))  # replace mode would leave no positive
    with pytest.raises(ValueError, match="negative_mode"):
        ds.set_negative_audio(0.3, ("noise",), mode="both")
