"""Typed configs: YAML, dotted overrides, checked construction with errors naming key and file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from avseg.config import (
    ConfigError,
    DataConfig,
    TrainSettings,
    apply_overrides,
    dump_yaml,
    from_dict,
    load_config,
    load_yaml,
    to_dict,
)


@dataclass
class RunConfig:
    """The pattern every method config follows: data + train sections (+ the method's own)."""

    data: DataConfig
    train: TrainSettings = field(default_factory=TrainSettings)
    out: str = "runs/default"

RECIPE = """\
data:
  root: /data/avsbench/s4
  layout: s4
train:
  epochs: 2
  lr: 1e-4          # YAML 1.1 reads this as a string; float fields accept it
  betas: [0.9, 0.99]
  grad_clip: null
out: runs/x
"""


@dataclass
class Inner:
    name: str
    weights: dict[str, float] = field(default_factory=dict)
    sizes: list[int] = field(default_factory=list)
    mode: Literal["a", "b"] = "a"
    path: Path | None = None


@dataclass
class Outer:
    inner: Inner
    flag: bool = False
    count: int = 1


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE)
    return path


def test_load_recipe_builds_nested_dataclasses(recipe: Path):
    cfg = load_config(RunConfig, recipe)
    assert isinstance(cfg.data, DataConfig) and cfg.data.layout == "s4" and cfg.data.image_size == 224
    assert isinstance(cfg.train, TrainSettings)
    assert cfg.train.lr == pytest.approx(1e-4) and cfg.train.betas == (0.9, 0.99) and cfg.train.grad_clip is None
    assert cfg.out == "runs/x"


def test_overrides_parse_yaml_values_and_create_sections(recipe: Path):
    raw = load_yaml(recipe)
    new = apply_overrides(raw, ["train.lr=3e-4", "train.epochs=5", "train.max_steps=null",
                                "data.root=/elsewhere", "train.amp=bf16", "train.grad_clip=1.5"])
    assert raw["train"]["epochs"] == 2  # the input is not modified
    cfg = from_dict(RunConfig, new)
    assert (cfg.train.lr, cfg.train.epochs, cfg.train.amp, cfg.train.grad_clip) == (3e-4, 5, "bf16", 1.5)
    assert cfg.data.root == "/elsewhere"
    assert apply_overrides({}, ["a.b.c=[1, 2]"]) == {"a": {"b": {"c": [1, 2]}}}
    assert apply_overrides({"a": None}, ["a.b=x"]) == {"a": {"b": "x"}}
    for bad in ["train.lr", "=3", "train..lr=1"]:
        with pytest.raises(ConfigError, match="a.b.c=value"):
            apply_overrides(raw, [bad])
    with pytest.raises(ConfigError, match="'out' is a value"):
        apply_overrides(raw, ["out.x=1"])


def test_type_errors_name_the_key_and_file(recipe: Path):
    cases = {
        "train.epochs=two": r"train\.epochs: expected int, got str 'two'",
        "train.epochs=2.5": r"train\.epochs: expected int, got float",
        "train.lr=fast": r"train\.lr: expected float, got str 'fast'",
        "train.compile=1": r"train\.compile: expected bool, got int",
        "train.amp=fp32": r"train\.amp: expected one of 'off', 'bf16', 'fp16', got 'fp32'",
        "data.layout=s5": r"data\.layout: expected one of 's4', 'ms3', 'avss'",
        "train.betas=[0.9]": r"train\.betas: expected 2 items",
        "train.grad_clip=[1]": r"train\.grad_clip: expected float, got list \[1\]",
        "train=3": r"train: expected a mapping for TrainSettings",
        "data.root=null": r"data\.root: must not be null",
    }
    for override, message in cases.items():
        with pytest.raises(ConfigError, match=message) as info:
            load_config(RunConfig, recipe, [override])
        assert str(info.value).startswith(f"{recipe}: "), override


def test_post_init_errors_are_prefixed_with_the_section(recipe: Path):
    with pytest.raises(ConfigError, match=r"recipe\.yaml: train: lr must be > 0"):
        load_config(RunConfig, recipe, ["train.lr=0"])
    with pytest.raises(ConfigError, match=r"train: amp=fp16 needs a CUDA device"):
        load_config(RunConfig, recipe, ["train.amp=fp16", "train.device=cpu"])
    with pytest.raises(ConfigError, match=r"data: image_size must be >= 1"):
        load_config(RunConfig, recipe, ["data.image_size=0"])


def test_removed_keys_of_old_run_configs_are_ignored_with_a_warning(recipe: Path, caplog: pytest.LogCaptureFixture):
    # config.yaml files of runs made before data.window_seconds / data.workers were removed hold both.
    with caplog.at_level("WARNING", logger="avseg"):
        cfg = load_config(RunConfig, recipe, ["data.window_seconds=3.0", "data.workers=4"])
    assert cfg.data.layout == "s4" and not hasattr(cfg.data, "workers")
    warnings = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"{recipe}: data.window_seconds is no longer used") for m in warnings), warnings
    assert any(m.startswith(f"{recipe}: data.workers is no longer used") for m in warnings), warnings
    with pytest.raises(ConfigError, match=r"train\.window_seconds: unknown key"):  # only where it was removed
        load_config(RunConfig, recipe, ["train.window_seconds=3.0"])


def test_unknown_and_missing_keys_are_rejected(recipe: Path):
    with pytest.raises(ConfigError, match=r"train\.lrr: unknown key \(did you mean 'lr'\?\)"):
        load_config(RunConfig, recipe, ["train.lrr=0.1"])
    with pytest.raises(ConfigError, match=r"^.*recipe\.yaml: extra: unknown key"):
        load_config(RunConfig, recipe, ["extra=1"])
    with pytest.raises(ConfigError, match=r"data\.layout: required key is missing"):
        from_dict(RunConfig, {"data": {"root": "/x"}})


def test_generic_field_types():
    cfg = from_dict(Outer, {"inner": {"name": "n", "weights": {"a": 1, "b": 0.5}, "sizes": [1, 2],
                                      "mode": "b", "path": "x/y"}, "flag": True})
    assert cfg.inner.weights == {"a": 1.0, "b": 0.5} and isinstance(cfg.inner.weights["a"], float)
    assert cfg.inner.path == Path("x/y") and cfg.inner.mode == "b" and cfg.flag is True
    with pytest.raises(ConfigError, match=r"inner\.sizes\[1\]: expected int, got str"):
        from_dict(Outer, {"inner": {"name": "n", "sizes": [1, "2"]}})
    with pytest.raises(ConfigError, match=r"inner\.path: expected Path, got int"):  # Optional[Path]
        from_dict(Outer, {"inner": {"name": "n", "path": 3}})
    with pytest.raises(ConfigError, match=r"inner\.weights\.a: expected float"):
        from_dict(Outer, {"inner": {"name": "n", "weights": {"a": "heavy"}}})


def test_dump_round_trip(tmp_path: Path, recipe: Path):
    cfg = load_config(RunConfig, recipe, ["train.seed=7"])
    text = dump_yaml(cfg, tmp_path / "config.yaml")
    assert (tmp_path / "config.yaml").read_text() == text and "betas:\n  - 0.9" in text
    again = load_config(RunConfig, tmp_path / "config.yaml")
    assert again == cfg and to_dict(again) == to_dict(cfg)


def test_load_yaml_errors(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_yaml(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="list.yaml: the top level must be a mapping"):
        load_yaml(tmp_path / "list.yaml")
    (tmp_path / "empty.yaml").write_text("")
    assert load_yaml(tmp_path / "empty.yaml") == {}
