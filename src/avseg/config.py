"""Typed dataclass configs (litgpt-style): YAML in, dotted overrides, checked construction, YAML out.

A config is a tree of dataclasses whose ``__post_init__`` rejects bad values. Files and command-line
overrides become plain dicts first, and :func:`from_dict` is the one place they turn into objects:

    raw = apply_overrides(load_yaml("configs/ws_avs/s4.yaml"), ["train.lr=3e-4", "data.root=/data/s4"])
    cfg = from_dict(MyMethodConfig, raw, source="configs/ws_avs/s4.yaml")
    dump_yaml(cfg, run_dir / "config.yaml")

Method configs nest :class:`DataConfig` and :class:`~avseg.engine.trainer.TrainSettings` the way
:class:`RunConfig` does, and add their own sections.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from avseg.fileio import write_text_atomic
from avseg.engine.trainer import TrainSettings

T = TypeVar("T")

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
    try:
        return _build(cls, d, "")
    except ConfigError as exc:
        raise ConfigError(prefix + str(exc)) from None


def load_config(cls: type[T], path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> T:
    """``from_dict(cls, apply_overrides(load_yaml(path), overrides), source=path)``."""
    return from_dict(cls, apply_overrides(load_yaml(path), overrides), source=path)


def _where(path: str) -> str:
    return path if path else "<top level>"


def _build(cls: type, d: Any, path: str) -> Any:
    if not isinstance(d, Mapping):
        raise ConfigError(f"{_where(path)}: expected a mapping for {cls.__name__}, got {type(d).__name__} {d!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in d if k not in fields]
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
    if dataclasses.is_dataclass(tp):
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


@dataclass
class DataConfig:
    """Where the data is and how samples are made (consumed by the dataset builders)."""

    root: str
    layout: Literal["s4", "ms3", "avss"]
    image_size: int = 224
    audio_frontend: str = "wsavs-logmel"
    audio_window: Literal["centred", "clip"] = "centred"  # audio around each frame, or the whole clip
    window_seconds: float = 3.0
    workers: int = 4  # data-loading processes outside training (evaluation, pseudo-masks)
    max_videos: int | None = None  # only the first N videos of each split (smoke runs, demos)
    # The label vocabulary (index = position in the video-level label vector; AVSS: class id - 1). Left
    # empty in recipes: a run fills it from its dataset when it starts and keeps it in config.yaml, so
    # that the trained model loads, and names its classes, without the dataset.
    classes: list[str] | None = None

    def __post_init__(self) -> None:
        if not self.root:
            raise ValueError("root must not be empty")
        if self.layout not in ("s4", "ms3", "avss"):
            raise ValueError(f"layout must be s4, ms3 or avss (got {self.layout!r})")
        if self.image_size < 1:
            raise ValueError(f"image_size must be >= 1 (got {self.image_size})")
        if self.audio_window not in ("centred", "clip"):
            raise ValueError(f"audio_window must be centred or clip (got {self.audio_window!r})")
        if self.window_seconds <= 0:
            raise ValueError(f"window_seconds must be > 0 (got {self.window_seconds})")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0 (got {self.workers})")
        if self.classes is not None and (not self.classes or len(set(self.classes)) != len(self.classes)):
            raise ValueError(f"classes must be a non-empty list of distinct names or null (got {self.classes})")
        if self.max_videos is not None and self.max_videos < 1:
            raise ValueError(f"max_videos must be >= 1 or None (got {self.max_videos})")


@dataclass
class RunConfig:
    """The pattern every method config follows: data + train sections (+ the method's own)."""

    data: DataConfig
    train: TrainSettings = field(default_factory=TrainSettings)
    out: str = "runs/default"
