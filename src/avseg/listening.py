"""The listening evaluation: one pass over a split, the model run under each soundtrack condition.

For every video of the split the model sees the same frames and hears (docs/metrics.md, "Listening"):

- ``own``: its own soundtrack;
- ``silence``: zeros;
- ``noise``: white noise at the clip's own RMS (seeded per video);
- ``other``: the soundtrack of another video of the split, of a different category (chosen per video by
  the seed), cut or looped to the clip's length;
- ``swap`` (generated data only: the synthetic generator's ``synth_info.json`` lets ``plan_video``
  re-plan every video, the stamps generator's ``stamps_info.json`` holds every plan and names the
  recordings): a copy of the video's plan in which only a chosen visible *silent* object sounds. The object is chosen
  per frame: visible at the evaluated size, silent in that second, of a class different from every
  object sounding in that second; among those, the first in a per-video seeded order (so a video keeps
  one swap object while it stays valid). Frames without such an object are not swap frames (the swap
  audio is silent there, apart from the background noise).

Every replaced soundtrack goes through the model's usual pre-processing: the dataset decodes the wav and
an ``audio_transform`` replaces the waveform before its features are computed (the swap audio is written
to a temporary wav and decoded like the original). Models are loaded as ``avseg eval`` loads them.

``listen_run`` writes ``eval/listen-<split>.json`` (and, on generated data, ``eval/listen-<split>.png``:
frame | own sound | sound of a visible silent object (target outlined) | silence) in the run folder.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from avseg.audio import fit_length, load_audio, rms
from avseg.data.avsbench import AVSBenchDataset, apply_geometry, augment_geometry, collate_videos, read_mask
from avseg.data.imageio import write_wav_atomic
from avseg.data.index import VideoRecord, avss_classes, index_videos
from avseg.data.stamps import INFO_FILE as STAMPS_INFO_FILE
from avseg.data.stamps import replay_video
from avseg.data.synthetic import SAMPLE_RATE, SYNTH_CLASSES, SynthConfig, plan_video, render_video, synth_audio
from avseg.engine.trainer import resolve_device
from avseg.fileio import remove_stale_temporaries, write_text_atomic
from avseg.methods.common import make_dataset
from avseg.metrics.binary import BinaryAccumulator
from avseg.metrics.listening import CONDITIONS, SUMMARY_KEYS, ListeningAccumulator, foreground_probs, format_table
from avseg.runner import _warn_unfinished, check_data, load_run
from avseg.types import AVBatch
from avseg.visualize import contact_sheet, denormalize, overlay, save_image_atomic

log = logging.getLogger("avseg")

# Streams of np.random.default_rng([seed, STREAM, video position]): one per random choice.
_OTHER, _NOISE, _SWAP = 1, 2, 3
_SYNTH_NAME = re.compile(r"^synth_(s4|ms3|avss)_(\d+)(?:_0_0)?$")


# --- generated data (synthetic, stamps): plans, owner maps, swap choices ---------------------------
@dataclass
class SynthVideo:
    """What the generator says about one video, at the evaluated size.

    plan: the generator's plan (``synthetic.VideoPlan`` or ``stamps.StampVideo``: both hold ``name``,
    ``num_frames``, ``objects[j].cls`` and ``sounding`` (T, num_objects) bool). owner: (T, H, W) int64
    index into ``plan.objects`` of the visible object per pixel, -1 = background (the rendered owner map
    resized like the dataset resizes masks). swap: per frame the swap object's index, or None (not a swap
    frame). soundtrack: a plan of this video -> its (T * sample_rate,) mix, as the generator mixes it.
    classes: the names of the class indices.
    """

    plan: Any
    owner: np.ndarray
    swap: list[int | None]
    soundtrack: Callable[[Any], np.ndarray]
    sample_rate: int
    classes: list[str]

    def visible(self, t: int | np.integer) -> np.ndarray:
        """(H, W) bool: every visible object of frame t (what a deaf 'mark every object' would mark)."""
        return self.owner[t] >= 0

    def sounding_gt(self, t: int | np.integer) -> np.ndarray:
        """(H, W) bool: the visible pixels of the objects sounding in second t (= the ground truth)."""
        return np.isin(self.owner[t], np.flatnonzero(self.plan.sounding[t]))

    def target(self, t: int | np.integer) -> np.ndarray:
        """(H, W) bool: the visible pixels of frame t's swap object."""
        j = self.swap[t]
        if j is None:
            raise ValueError(f"frame {t} of {self.plan.name} is not a swap frame")
        return self.owner[t] == j


GENERATORS = {"synth_info.json": "avseg.data.synthetic", STAMPS_INFO_FILE: "avseg.data.stamps"}


def synth_info(root: Path, layout: str) -> dict | None:
    """The generator's description of a dataset root (``synth_info.json`` of the synthetic generator or
    ``stamps_info.json`` of the stamps generator), when it describes a ``layout`` dataset; else None."""
    for name, generator in GENERATORS.items():
        path = Path(root) / name
        if not path.is_file():
            continue
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: unreadable generated dataset description ({exc})") from exc
        if info.get("generator") == generator and info.get("layout") == layout:
            return info
    return None


def choose_swap(plan: Any, owner: np.ndarray, seed: int, position: int) -> list[int | None]:
    """Per frame the swap object (index into ``plan.objects``) or None.

    Candidates in frame t: visible in ``owner[t]`` (at the evaluated size), silent in second t, and of a
    class different from every object sounding in second t. The first candidate in a per-video seeded
    order is taken, so a video keeps one swap object while it stays valid.
    """
    order = np.random.default_rng([seed, _SWAP, position]).permutation(len(plan.objects))
    choices: list[int | None] = []
    for t in range(plan.num_frames):
        sounding = plan.sounding[t]
        sounding_classes = {plan.objects[j].cls for j in np.flatnonzero(sounding)}
        visible = np.bincount(owner[t].ravel() + 1, minlength=len(plan.objects) + 1)[1:] > 0
        pick = None
        for j in order:
            if visible[j] and not sounding[j] and plan.objects[j].cls not in sounding_classes:
                pick = int(j)
                break
        choices.append(pick)
    return choices


def swap_plan(plan: Any, choices: list[int | None]) -> Any:
    """A copy of ``plan`` where only the chosen object of each swap second sounds (nothing elsewhere)."""
    sounding = np.zeros_like(plan.sounding)
    for t, j in enumerate(choices):
        if j is not None:
            sounding[t, j] = True
    return dataclasses.replace(plan, sounding=sounding)


def _replan(root: Path, layout: str, record: VideoRecord, info: dict) -> Any:
    """The generator's plan of ``record`` (``synth_info.json`` holds seed, size and config)."""

    m = _SYNTH_NAME.match(record.video_id)
    if m is None or m.group(1) != layout:
        raise ValueError(f"{root}: video {record.video_id!r} is no video of the synthetic generator that synth_info.json describes")
    label = record.category if layout == "avss" else None
    plan = plan_video(layout, int(m.group(2)), int(info["seed"]), int(info["size"]), SynthConfig(**info["config"]), record.split, label)
    if plan.name != record.video_id:
        raise ValueError(f"{root}: video {record.video_id!r} re-plans as {plan.name!r}")
    return plan


def _replay(root: Path, layout: str, record: VideoRecord, info: dict) -> tuple[Any, np.ndarray, Callable[[Any], np.ndarray], int, list[str]]:
    """(plan, owner at the generated size, soundtrack, sample rate, class names) of a generated video."""
    if info["generator"] == "avseg.data.stamps":
        plan, owner, soundtrack = replay_video(root, record.video_id, info)
        if plan.split != record.split:
            raise ValueError(f"{root}: video {record.video_id!r} is in split {record.split!r}, stamps_info.json says {plan.split!r}")
        return plan, owner.astype(np.int64), soundtrack, int(info["sample_rate"]), list(info["classes"])
    plan = _replan(root, layout, record, info)
    return plan, render_video(plan)[1], synth_audio, SAMPLE_RATE, list(SYNTH_CLASSES)


def synth_videos(dataset: AVSBenchDataset, info: dict, seed: int) -> dict[str, SynthVideo]:
    """Replay every video of ``dataset`` from the generator's description -> {video_id: SynthVideo}."""

    out: dict[str, SynthVideo] = {}
    for position, record in enumerate(dataset.records):
        plan, owner, soundtrack, sample_rate, classes = _replay(dataset.root, dataset.layout, record, info)
        # Resize as the dataset resizes masks (nearest, plain geometry): owner + 1 fits uint8 (<= 10 objects).
        g = augment_geometry(0, 0, position, dataset.image_size, False)
        owner = np.stack([apply_geometry((o.astype(np.int16) + 1).astype(np.uint8), g, dataset.image_size, True) for o in owner])
        owner = owner.astype(np.int64) - 1  # (T, H, W)
        out[record.video_id] = SynthVideo(plan, owner, choose_swap(plan, owner, seed, position), soundtrack, sample_rate, classes)
    return out


def deaf_ceiling(root: Path, layout: str, split: str = "test", category: str | None = None) -> dict[str, Any] | None:
    """The deaf ceiling of a generated split at the data's own size: clean mIoU of marking every visible
    object exactly, against the ground-truth files (frames with ground truth). None for other data.
    ``category``: only the videos of that category (AVSS: the subset v1s / v1m / v2; S4: the class).

    A model that does not listen cannot know which visible object sounds; on scenes with silent
    distractors, marking all of them is the best it can do.
    """

    info = synth_info(Path(root), layout)
    if info is None:
        return None
    num_sem = len(avss_classes(Path(root))) if layout == "avss" else None
    acc = BinaryAccumulator("clean")
    for record in index_videos(Path(root), layout, split):
        if category is not None and record.category != category:
            continue
        owner = _replay(Path(root), layout, record, info)[1]
        for t, path in enumerate(record.mask_paths):
            if path is not None:
                acc.update((owner[t] >= 0)[None].astype(np.float32), (read_mask(path, layout, num_sem) > 0)[None])
    if acc.frames == 0:
        return None
    return {"miou_clean": acc.compute()["miou"], "frames": acc.frames, "split": split}


# --- the replaced soundtracks -----------------------------------------------------------------------
def label_set(dataset: AVSBenchDataset, record: VideoRecord) -> frozenset[str]:
    """A video's category for the choice of 'other': its label names (S4: the category), or (AVSS) the
    classes of its ground-truth maps."""
    if record.label_names is not None:
        return frozenset(record.label_names)

    classes: set[str] = set()
    for p in record.mask_paths:
        if p is not None:
            m = read_mask(p, dataset.layout, dataset.num_semantic_classes)
            classes |= {dataset.classes[int(c) - 1] for c in np.unique(m) if c > 0}
    return frozenset(classes)


def choose_others(dataset: AVSBenchDataset, seed: int) -> list[int]:
    """Per video, the position of the video whose soundtrack it hears under ``other``.

    Candidates: the other videos of the split whose labels share no class with its own; failing that,
    those with another label set; failing that (a split of one category), any other video. One seeded
    draw per video. A split of one video hears itself (audio dependence is then 0 by construction).
    """
    labels = [label_set(dataset, r) for r in dataset.records]
    n = len(labels)
    others = []
    for i in range(n):
        pool = [j for j in range(n) if j != i and not (labels[j] & labels[i])]
        pool = pool or [j for j in range(n) if j != i and labels[j] != labels[i]] or [j for j in range(n) if j != i] or [i]
        others.append(pool[int(np.random.default_rng([seed, _OTHER, i]).integers(len(pool)))])
    return others


class Soundtracks:
    """The ``audio_transform`` of each condition for one dataset (see ``AVSBenchDataset``)."""

    def __init__(self, dataset: AVSBenchDataset, seed: int, synth: dict[str, SynthVideo] | None, workdir: Path) -> None:
        self.dataset = dataset
        self.seed = seed
        self.synth = synth
        self.workdir = Path(workdir)
        self.position = {r.video_id: i for i, r in enumerate(dataset.records)}
        self.others = choose_others(dataset, seed)

    def transform(self, condition: str) -> Callable[[VideoRecord, np.ndarray, int], np.ndarray] | None:
        if condition not in CONDITIONS:
            raise ValueError(f"unknown listening condition {condition!r}; expected one of {CONDITIONS}")
        return None if condition == "own" else getattr(self, condition)

    def silence(self, record: VideoRecord, wave: np.ndarray, sr: int) -> np.ndarray:
        return np.zeros_like(wave)

    def noise(self, record: VideoRecord, wave: np.ndarray, sr: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, _NOISE, self.position[record.video_id]])
        return np.clip(rng.standard_normal(len(wave)) * rms(wave), -1.0, 1.0).astype(np.float32)

    def other(self, record: VideoRecord, wave: np.ndarray, sr: int) -> np.ndarray:
        other = self.dataset.records[self.others[self.position[record.video_id]]]
        return fit_length(load_audio(other.audio_path, sr, warn_silent=False)[0], len(wave))

    def swap(self, record: VideoRecord, wave: np.ndarray, sr: int) -> np.ndarray:
        if self.synth is None:
            raise ValueError("the swap condition needs generated data (synth_info.json or stamps_info.json)")
        video = self.synth[record.video_id]
        # Written and decoded like the generator's own wav, so the model's pre-processing is the same.
        path = self.workdir / f"swap-{self.position[record.video_id]}.wav"
        write_wav_atomic(path, video.soundtrack(swap_plan(video.plan, video.swap)), video.sample_rate)
        return fit_length(load_audio(path, sr, warn_silent=False)[0], len(wave))


# --- the loop ----------------------------------------------------------------------------------------
@dataclass
class ListenExample:
    """One test frame for the picture: (H, W, 3) uint8 frame and (H, W) probabilities / masks."""

    label: str
    frame: np.ndarray
    gt: np.ndarray  # the sounding objects (own ground truth)
    own: np.ndarray
    swap: np.ndarray
    target: np.ndarray
    silence: np.ndarray


def make_datasets(dataset_factory: Callable[[], AVSBenchDataset], conditions: tuple[str, ...], tracks_for: Callable[[AVSBenchDataset], Soundtracks]) -> tuple[dict[str, AVSBenchDataset], Soundtracks]:
    """One dataset per condition (same frames, same order), each with its soundtrack transform."""
    datasets = {c: dataset_factory() for c in conditions}
    tracks = tracks_for(datasets["own"])
    for c, ds in datasets.items():
        ds.audio_transform = tracks.transform(c)
    return datasets, tracks


@torch.no_grad()
def listen(
    predict: Callable[[AVBatch], Tensor],
    dataset_factory: Callable[[], AVSBenchDataset],
    device: torch.device,
    seed: int = 0,
    batch_size: int = 4,
    examples: int = 4,
    progress: str | None = None,
) -> tuple[dict[str, Any], list[ListenExample]]:
    """Run ``predict`` under every condition over the videos of ``dataset_factory()``.

    ``predict`` maps an AVBatch on ``device`` to (B, T, H, W) probabilities or (B, T, C, H, W) class
    probabilities (p = 1 - P(background)). ``dataset_factory`` builds the split's dataset (no augmentation,
    no frame sampling) as the model was evaluated; it is called once per condition. Returns the summary
    of ``ListeningAccumulator.compute`` plus {"conditions", "seed", "videos", "synthetic", "other_pairs"}
    and up to ``examples`` swap frames for the picture (generated data only, one per video); "synthetic" is
    True on generated data (synthetic or stamps: the swap condition ran).
    """

    probe = dataset_factory()
    if probe.augment or probe.sample_frames is not None:
        raise ValueError("the listening evaluation needs a dataset without augmentation or frame sampling")
    if probe.audio_frontend == "pkl":
        raise ValueError(f"{probe.root}: the listening evaluation replaces waveforms; the official .pkl VGGish "
                         "features cannot be replaced (train with a wav front-end)")  # fmt: skip
    info = synth_info(probe.root, probe.layout)
    synth = synth_videos(probe, info, seed) if info is not None else None
    conditions = CONDITIONS if synth is not None else tuple(c for c in CONDITIONS if c != "swap")
    acc = ListeningAccumulator()
    picked: list[ListenExample] = []
    with tempfile.TemporaryDirectory(prefix="avseg-listen-") as tmp:
        datasets, tracks = make_datasets(dataset_factory, conditions, lambda ds: Soundtracks(ds, seed, synth, Path(tmp)))
        records = datasets["own"].records
        n = len(records)
        bar = tqdm(total=n, desc=progress, unit="video", disable=progress is None or not sys.stderr.isatty(), leave=False)
        for start in range(0, n, batch_size):
            idx = list(range(start, min(start + batch_size, n)))
            probs: dict[str, np.ndarray] = {}
            own_batch = None
            for c in conditions:
                batch = collate_videos([datasets[c][i] for i in idx])
                own_batch = batch if c == "own" else own_batch
                out = predict(batch.to(device)).float().cpu()  # (B, T, H, W) or (B, T, C, H, W)
                probs[c] = foreground_probs(out.flatten(0, 1)).reshape(len(idx), out.shape[1], *out.shape[-2:])
            assert own_batch is not None
            for b, i in enumerate(idx):
                record = records[i]
                t_real = len(record.frame_paths)
                has = own_batch.has_mask[b, :t_real].numpy()
                gt = (own_batch.masks[b, :t_real].numpy() > 0)
                for c in ("own", "other"):
                    acc.update(c, probs[c][b, :t_real][has], gt[has])
                    acc.update(c, probs[c][b, :t_real][~has])  # FPR of frames without ground truth
                for c in ("silence", "noise"):
                    acc.update(c, probs[c][b, :t_real])
                for c in conditions[1:]:  # the swap's change too: all its frames, swap frames or not
                    acc.update_change(c, probs[c][b, :t_real], probs["own"][b, :t_real])
                if synth is None:
                    continue
                video = synth[record.video_id]
                t: int | np.integer  # frame index: numpy's from flatnonzero, then a plain int
                for t in np.flatnonzero(has):
                    if not np.array_equal(video.sounding_gt(t), gt[t]):
                        raise ValueError(f"{datasets['own'].root}: frame {record.frame_numbers[t]} of video {record.video_id}: "
                                         "its ground truth differs from what the generator's description replays (regenerated data?)")  # fmt: skip
                    acc.update_deaf(video.visible(t)[None], gt[t][None])
                swap_t = [t for t in range(t_real) if video.swap[t] is not None]
                if swap_t:
                    targets = np.stack([video.target(t) for t in swap_t])
                    acc.update("swap", probs["swap"][b, swap_t], target=targets)
                    if len(picked) < examples:
                        t = swap_t[len(swap_t) // 2]
                        picked.append(ListenExample(
                            label=f"{record.video_id}#{record.frame_numbers[t]}", frame=denormalize(own_batch.frames[b, t].numpy()),
                            gt=video.sounding_gt(t), own=probs["own"][b, t], swap=probs["swap"][b, t], target=video.target(t),
                            silence=probs["silence"][b, t],
                        ))  # fmt: skip
            bar.update(len(idx))
        bar.close()
    result = acc.compute()
    result.update(
        conditions=list(conditions), seed=seed, videos=n, synthetic=synth is not None,
        other_pairs={records[i].video_id: records[j].video_id for i, j in enumerate(tracks.others)},
    )  # fmt: skip
    if synth is not None:
        result["swap_objects"] = {
            v: [None if j is None else s.classes[s.plan.objects[j].cls] for j in s.swap] for v, s in synth.items()
        }
    return result, picked


def listen_sheet(examples: list[ListenExample], path: Path, tile: int = 160) -> None:
    """Write the contact sheet: frame | own sound (ground truth outlined in green) | sound of a visible
    silent object (that object outlined in cyan) | silence; predicted masks (p > 0.5) in red."""
    from PIL import Image

    if not examples:
        raise ValueError("no example frames to draw")

    def up(a: np.ndarray) -> np.ndarray:  # nearest upscaling, so outlines stay thin on small frames
        img = Image.fromarray(a if a.dtype == np.uint8 else (np.clip(a, 0, 1) * 255).astype(np.uint8))
        out = np.asarray(img.resize((tile, tile), Image.Resampling.NEAREST))
        return out if a.dtype == np.uint8 else out.astype(np.float32) / 255.0

    def outline(rgb: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
        m = up(mask.astype(np.float32)) > 0.5
        edge = m & ~_erode(_erode(m))  # 2 px inside the object's border
        rgb = rgb.copy()
        rgb[edge] = colour
        return rgb

    rows, labels = [], []
    for ex in examples:
        frame = up(ex.frame)
        rows.append([
            frame,
            outline(overlay(frame, up(ex.own)), ex.gt, (40, 220, 40)),
            outline(overlay(frame, up(ex.swap)), ex.target, (0, 255, 255)),
            overlay(frame, up(ex.silence)),
        ])  # fmt: skip
        labels.append(ex.label)
    sheet = contact_sheet(rows, labels, ["frame", "own sound (GT green)", "silent object's sound", "silence"])
    save_image_atomic(sheet, path)


def _erode(m: np.ndarray) -> np.ndarray:
    p = np.pad(m, 1, mode="constant")
    return p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]


def listen_run(
    run_dir: Path,
    split: str = "test",
    seed: int = 0,
    device: str = "auto",
    max_videos: int | None = None,
    data_root: str | None = None,
    batch_size: int = 4,
) -> dict[str, Any]:
    """The listening evaluation of a run's final model on a split (loaded as ``avseg eval`` loads it).

    Writes ``eval/listen-<split>.json`` (the returned dict) and, on generated data,
    ``eval/listen-<split>.png`` in the run folder. Keys: see ``ListeningAccumulator.compute`` and
    ``listen``, plus method, split, layout, run, protocol, max_videos, picture, seconds.
    """

    run_dir = Path(run_dir)
    spec, cfg = load_run(run_dir)
    if data_root is not None:
        cfg.data.root = data_root
    check_data(cfg)
    remove_stale_temporaries(run_dir / "eval")
    _warn_unfinished(spec, cfg, run_dir)
    dev = resolve_device(device)
    predictor = spec.load_predictor(cfg, run_dir, dev)
    if cfg.data.audio_frontend is None:
        log.warning("%s: the model takes no audio; every condition gives the same masks", run_dir)

    def factory() -> AVSBenchDataset:
        return make_dataset(cfg.data, split, audio=cfg.data.audio_frontend is not None, max_videos=max_videos)

    start = time.perf_counter()
    result, examples = listen(predictor.predict, factory, dev, seed=seed, batch_size=batch_size, progress=f"listen {split}")
    result = {"method": spec.name, "split": split, "layout": cfg.data.layout, "run": str(run_dir), "protocol": "clean",
              "max_videos": max_videos, **result}  # fmt: skip
    if examples:
        picture = run_dir / "eval" / f"listen-{split}.png"
        listen_sheet(examples, picture)
        result["picture"] = str(picture)
    result["seconds"] = round(time.perf_counter() - start, 2)
    write_text_atomic(run_dir / "eval" / f"listen-{split}.json", json.dumps(result, indent=2, default=float) + "\n")
    return result


def read_listen(run_dir: Path, split: str = "test") -> dict[str, Any] | None:
    """The saved ``eval/listen-<split>.json`` of a run, or None."""
    path = Path(run_dir) / "eval" / f"listen-{split}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def format_listen(result: dict[str, Any]) -> str:
    """The CLI's table of one listening result."""
    lines = [
        f"{result.get('method')} on {result.get('layout')} {result.get('split')}: {result.get('videos')} videos, "
        f"{result.get('gt_frames')} frames with ground truth, seed {result.get('seed')} (clean protocol; % and points)",
        "",
    ]
    width = 34

    def row(name: str, key: str, note: str = "") -> None:
        v = result.get(key)
        text = "n/a" if v is None else (f"{v:+.2f} pts" if key == "audio_dependence" else f"{100 * v:.2f}")
        lines.append(f"  {name:<{width}}{text:>10}  {note}".rstrip())

    row("mIoU, own sound", "miou_own")
    row("F, own sound", "fscore_own")
    row("mIoU, other video's sound", "miou_other")
    row("audio dependence (own - other)", "audio_dependence", "a deaf model scores 0")
    row("FPR % under silence", "fpr_silence", "pixels marked; 0 is right")
    row("FPR % under white noise", "fpr_noise", "0 is right")
    row("FPR % under other video's sound", "fpr_other")
    row("G-mIoU", "g_miou", "harmonic mean of mIoU and 1 - FPR(silence, noise)")
    row("swap IoU", "swap_iou", f"{result.get('swap_frames', 0)} frames; mask under a silent object's sound vs that object")
    row("deaf ceiling", "deaf_ceiling", "mIoU of marking every visible object")
    changes = [f"{c} {result[f'prob_change_{c}']:.2e}" for c in CONDITIONS[1:] if result.get(f"prob_change_{c}") is not None]
    if changes:
        lines += ["", "  mean |p - p(own sound)| per pixel: " + ", ".join(changes) + " (0: the sound does not reach the output)"]
    if result.get("picture"):
        lines += ["", f"picture: {result['picture']}"]
    return "\n".join(lines)


__all__ = ["listen", "listen_run", "deaf_ceiling", "listen_sheet", "read_listen", "format_listen", "format_table", "choose_swap",
           "choose_others", "swap_plan", "synth_videos", "Soundtracks", "SUMMARY_KEYS"]  # fmt: skip
