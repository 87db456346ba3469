"""Typed dataclass configs (litgpt-style): YAML in, dotted overrides, checked construction, YAML out.

A config is a tree of dataclasses whose ``__post_init__`` rejects bad values. Files and command-line
overrides become plain dicts first, and :func:`from_dict` is the one place they turn into objects:

    raw = apply_overrides(load_yaml("configs/ws_avs/s4.yaml"), ["train.lr=3e-4", "data.root=/data/s4"])
    cfg = from_dict(MyMethodConfig, raw, source="configs/ws_avs/s4.yaml")
    dump_yaml(cfg, run_dir / "config.yaml")

Method configs nest :class:`DataConfig` and one :class:`TrainSettings` per training stage, and add
their own sections.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import logging
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar, Union

import torch
import yaml

from avseg.fileio import write_text_atomic
from avseg.types import NEGATIVE_KINDS, negative_audio_problem

T = TypeVar("T")

log = logging.getLogger("avseg")

_FLOAT_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|[-+]?(inf|nan)", re.IGNORECASE)


class ConfigError(ValueError):
    """A config value or key is invalid; the message names the key (and the file)."""


# ---- YAML in / out ----


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping (an empty file is ``{}``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def to_dict(obj: Any) -> Any:
    """Dataclasses -> dicts recursively; tuples -> lists and paths -> strings (YAML/JSON-friendly)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def dump_yaml(obj: Any, path: str | Path | None = None) -> str:
    """YAML text of a config (dataclass or dict), written atomically to ``path`` when given."""
    text = yaml.safe_dump(to_dict(obj), sort_keys=False, default_flow_style=False)
    if path is not None:
        write_text_atomic(Path(path), text, durable=True)
    return text


# ---- overrides ----


def apply_overrides(d: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """A copy of ``d`` with dotted ``a.b.c=value`` overrides applied; values are parsed as YAML.

    Missing intermediate sections are created (unknown keys are rejected later by :func:`from_dict`).
    """
    out = copy.deepcopy(d)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r} is not of the form a.b.c=value")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: value is not valid YAML: {exc}") from exc
        *parents, leaf = key.split(".")
        node = out
        for depth, part in enumerate(parents):
            child = node.setdefault(part, {})
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(parents[: depth + 1])
                raise ConfigError(f"override {item!r}: {where!r} is a value ({child!r}), not a section")
            node = child
        node[leaf] = value
    return out


# ---- typed construction ----


def from_dict(cls: type[T], d: Mapping[str, Any], *, source: str | Path | None = None) -> T:
    """Build dataclass ``cls`` from a nested dict, checking every key and value against the type hints.

    Unknown keys, missing required keys, wrong types and values rejected by ``__post_init__`` raise
    :class:`ConfigError` naming the dotted key and ``source`` (the file), e.g.
    ``configs/x.yaml: train.lr: expected float, got str 'fast'``.
    """
    prefix = f"{source}: " if source is not None else ""
    del _IGNORED[:]
    try:
        return _build(cls, d, "")
    except ConfigError as exc:
        raise ConfigError(prefix + str(exc)) from None
    finally:
        for note in _IGNORED:
            log.warning("%s%s", prefix, note)
        del _IGNORED[:]


def load_config(cls: type[T], path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> T:
    """``from_dict(cls, apply_overrides(load_yaml(path), overrides), source=path)``."""
    return from_dict(cls, apply_overrides(load_yaml(path), overrides), source=path)


def _where(path: str) -> str:
    return path if path else "<top level>"


_IGNORED: list[str] = []  # removed keys met by the current from_dict call (REMOVED_KEYS)


def _build(cls: type, d: Any, path: str) -> Any:
    if not isinstance(d, Mapping):
        raise ConfigError(f"{_where(path)}: expected a mapping for {cls.__name__}, got {type(d).__name__} {d!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    removed: dict[str, str] = getattr(cls, "REMOVED_KEYS", {})
    for key in [k for k in d if k in removed and k not in fields]:
        _IGNORED.append(f"{_join(path, str(key))} is no longer used and was ignored ({removed[key]})")
    unknown = [k for k in d if k not in fields and k not in removed]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), list(fields), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"{_join(path, str(key))}: unknown key{hint}; {cls.__name__} accepts {', '.join(fields)}"
        )
    kwargs = {}
    for name, f in fields.items():
        key = _join(path, name)
        if name not in d:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{key}: required key is missing")
            continue
        kwargs[name] = _convert(hints[name], d[name], key)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{_where(path)}: {exc}") from None


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def _convert(tp: Any, value: Any, key: str) -> Any:
    """``value`` checked (and lightly converted) to type ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Union or origin is types.UnionType:
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{key}: must not be null")
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # Optional[X]: X's own, more precise error
            return _convert(options[0], value, key)
        for arg in options:
            try:
                return _convert(arg, value, key)
            except ConfigError:
                continue
        names = " or ".join("null" if a is type(None) else _type_name(a) for a in args)
        raise ConfigError(f"{key}: expected {names}, got {_describe(value)}")
    if value is None:
        raise ConfigError(f"{key}: must not be null (expected {_type_name(tp)})")
    if origin is Literal:
        for allowed in args:  # bool is not int here: True must not match 1
            if value == allowed and type(value) is type(allowed):
                return value
        raise ConfigError(f"{key}: expected one of {', '.join(repr(a) for a in args)}, got {value!r}")
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list ({_type_name(tp)}), got {_describe(value)}")
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} items ({_type_name(tp)}), got {len(value)}")
            return tuple(_convert(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        items = [_convert(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping ({_type_name(tp)}), got {_describe(value)}")
        kt, vt = args if args else (Any, Any)
        return {_convert(kt, k, f"{key}.{k}"): _convert(vt, v, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # YAML 1.1 reads "1e-3" (no dot) as a string; accept what is unambiguously a number.
        if isinstance(value, str) and _FLOAT_RE.fullmatch(value.strip()):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
    elif isinstance(tp, type):
        if isinstance(value, tp):
            return value
    else:
        raise ConfigError(f"{key}: unsupported field type {tp!r}")
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {_describe(value)}")


def _type_name(tp: Any) -> str:
    return tp.__name__ if isinstance(tp, type) and not typing.get_args(tp) else str(tp).replace("typing.", "")


# ---- shared config sections ----


# ---- training settings (read by the one training loop, avseg.engine.trainer.fit) ----

Amp = Literal["off", "bf16", "fp16"]
OptimizerName = Literal["adam", "adamw", "sgd"]
Schedule = Literal["constant", "cosine", "poly"]
Progress = Literal["auto", "on", "off"]

_DEVICE_RE = re.compile(r"auto|cpu|cuda(:\d+)?")


@dataclass
class TrainSettings:
    """Everything the training loop needs; validated on construction.

    ``batch_size`` is the GLOBAL batch: each of N processes loads ``batch_size / N`` samples.
    ``max_steps`` stops training early but does not change the LR schedule, which always spans
    ``epochs`` (so a run stopped by ``max_steps`` and resumed without it equals an uninterrupted one).
    ``warmup_steps`` ramps the LR linearly before the schedule; ``min_lr_ratio`` is the floor of the
    cosine / poly decay as a fraction of ``lr``.
    """

    epochs: int = 1
    lr: float = 1e-3
    batch_size: int = 8
    amp: Amp = "off"
    optimizer: OptimizerName = "adamw"
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only
    betas: tuple[float, float] = (0.9, 0.999)  # adam / adamw only
    schedule: Schedule = "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    poly_power: float = 0.9
    grad_clip: float | None = None
    max_steps: int | None = None
    seed: int = 0
    workers: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    checkpoint_every_steps: int | None = None
    log_every: int = 50
    progress: Progress = "auto"  # tqdm bar: auto = only when stderr is a terminal
    channels_last: bool = False
    compile: bool = False
    fused_optimizer: bool = False  # CUDA only
    # Negative-audio training (AVSBench-Robust's balanced training): this fraction of the training videos
    # hears silence, white noise or another video's soundtrack and gets empty targets. Off in the paper
    # recipes; applied by the dataset, before the audio front-end (``AVSBenchDataset.set_negative_audio``).
    negative_audio: float = 0.0
    negative_kinds: tuple[str, ...] = NEGATIVE_KINDS
    # "replace": the negatives are drawn among the training videos (which lose their own target that epoch);
    # "add": round(negative_audio x videos) negative items are added, every video keeps its own target.
    negative_mode: str = "replace"

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(message)

        need(self.epochs >= 1, f"epochs must be >= 1 (got {self.epochs})")
        need(self.lr > 0, f"lr must be > 0 (got {self.lr})")
        need(self.batch_size >= 1, f"batch_size must be >= 1 (got {self.batch_size})")
        need(self.amp in ("off", "bf16", "fp16"), f"amp must be off, bf16 or fp16 (got {self.amp!r})")
        need(self.optimizer in ("adam", "adamw", "sgd"), f"optimizer must be adam, adamw or sgd (got {self.optimizer!r})")
        need(self.schedule in ("constant", "cosine", "poly"), f"schedule must be constant, cosine or poly (got {self.schedule!r})")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0 (got {self.weight_decay})")
        need(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), f"betas must be two values in [0, 1) (got {self.betas})")
        need(self.warmup_steps >= 0, f"warmup_steps must be >= 0 (got {self.warmup_steps})")
        need(0 <= self.min_lr_ratio <= 1, f"min_lr_ratio must be in [0, 1] (got {self.min_lr_ratio})")
        need(self.poly_power > 0, f"poly_power must be > 0 (got {self.poly_power})")
        need(self.grad_clip is None or self.grad_clip > 0, f"grad_clip must be > 0 or None (got {self.grad_clip})")
        need(self.max_steps is None or self.max_steps >= 1, f"max_steps must be >= 1 or None (got {self.max_steps})")
        need(self.seed >= 0, f"seed must be >= 0 (got {self.seed})")
        need(self.workers >= 0, f"workers must be >= 0 (got {self.workers})")
        need(bool(_DEVICE_RE.fullmatch(self.device)), f"device must be auto, cpu, cuda or cuda:N (got {self.device!r})")
        need(
            self.checkpoint_every_steps is None or self.checkpoint_every_steps >= 1,
            f"checkpoint_every_steps must be >= 1 or None (got {self.checkpoint_every_steps})",
        )
        need(self.log_every >= 1, f"log_every must be >= 1 (got {self.log_every})")
        need(self.progress in ("auto", "on", "off"), f"progress must be auto, on or off (got {self.progress!r})")
        self.negative_kinds = tuple(self.negative_kinds)
        problem = negative_audio_problem(self.negative_audio, self.negative_kinds, self.negative_mode)
        need(problem is None, problem or "")
        self.betas = tuple(self.betas)  # type: ignore[assignment]
        # "auto" / "cuda" are checked against the hardware in check_device() when fit() resolves them.
        if self.device == "cpu":
            self.check_device(torch.device("cpu"))

    def check_device(self, device: torch.device) -> None:
        """Reject settings the resolved device cannot run."""
        if self.amp == "fp16" and device.type != "cuda":
            raise ValueError(f"amp=fp16 needs a CUDA device (device is {device}); use bf16 on CPU")
        if self.fused_optimizer and device.type != "cuda":
            raise ValueError(f"fused_optimizer needs a CUDA device (device is {device})")


# ---- data ----


@dataclass
class DataConfig:
    """Where the data is and how samples are made (consumed by the dataset builders)."""

    root: str
    layout: Literal["s4", "ms3", "avss"]
    image_size: int = 224
    audio_frontend: str = "wsavs-logmel"
    audio_window: Literal["centred", "inside", "clip"] = "centred"  # audio around each frame (zeros or kept inside the clip at its edges), or the whole clip
    max_videos: int | None = None  # only the first N videos of each split (smoke runs, demos)
    # The label vocabulary (index = position in the video-level label vector; AVSS: class id - 1). Left
    # empty in recipes: a run fills it from its dataset when it starts and keeps it in config.yaml, so
    # that the trained model loads, and names its classes, without the dataset.
    classes: list[str] | None = None
    # Keys of earlier versions that nothing read; run folders' config.yaml files written then still hold
    # them: accepted and ignored with a warning naming the file.
    REMOVED_KEYS: ClassVar[dict[str, str]] = {
        "window_seconds": "the audio window length comes from the front-end (audio.FRONTENDS)",
        "workers": "evaluation and pseudo-mask loaders never read it (training uses train.workers)",
    }

    def __post_init__(self) -> None:
        if not self.root:
            raise ValueError("root must not be empty")
        if self.layout not in ("s4", "ms3", "avss"):
            raise ValueError(f"layout must be s4, ms3 or avss (got {self.layout!r})")
        if self.image_size < 1:
            raise ValueError(f"image_size must be >= 1 (got {self.image_size})")
        if self.audio_window not in ("centred", "inside", "clip"):
            raise ValueError(f"audio_window must be centred, inside or clip (got {self.audio_window!r})")
        if self.classes is not None and (not self.classes or len(set(self.classes)) != len(self.classes)):
            raise ValueError(f"classes must be a non-empty list of distinct names or null (got {self.classes})")
        if self.max_videos is not None and self.max_videos < 1:
            raise ValueError(f"max_videos must be >= 1 or None (got {self.max_videos})")
