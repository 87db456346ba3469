"""Run methods: build a config from a recipe + flags, run its stages in a run folder, evaluate a run."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch
import yaml

from avseg.config import TrainSettings, apply_overrides, dump_yaml, from_dict, load_yaml, to_dict
from avseg.data.index import class_names
from avseg.data.layout import LAYOUTS, metadata_path
from avseg.engine import distributed as dist
from avseg.engine.checkpoint import LAST, read_metadata
from avseg.engine.evaluate import evaluate_outputs, iterate_outputs
from avseg.engine.tracking import prepare_run_dir, setup_logging
from avseg.engine.trainer import resolve_device, seed_everything
from avseg.fileio import remove_stale_temporaries, write_text_atomic
from avseg.methods import METHODS
from avseg.methods.base import MethodSpec, StageContext, read_marker, write_marker
from avseg.methods.common import make_dataset

log = logging.getLogger("avseg")

RECIPES = Path(__file__).resolve().parent / "recipes"
QUICK_TRAIN_FLAGS = ("epochs", "batch_size", "max_steps", "device", "seed", "workers", "amp")


class RunError(Exception):
    """A user-facing problem with a run folder or its configuration."""


def recipe_path(name: str) -> Path:
    """A recipe file: an existing path, or ``METHOD/NAME`` of the shipped recipes (avseg/recipes)."""
    p = Path(name)
    if p.is_file():
        return p
    shipped = RECIPES / (name if name.endswith(".yaml") else f"{name}.yaml")
    if shipped.is_file():
        return shipped
    known = sorted(str(q.relative_to(RECIPES).with_suffix("")) for q in RECIPES.rglob("*.yaml"))
    raise RunError(f"config {name!r} is neither a file nor a shipped recipe (shipped: {', '.join(known)})")


def build_config(
    method: str,
    config: str | None = None,
    data_root: str | None = None,
    layout: str | None = None,
    quick: dict[str, Any] | None = None,
    image_size: int | None = None,
    overrides: list[str] | None = None,
) -> tuple[MethodSpec, Any]:
    """Recipe (or the method's defaults) + data location + quick flags + dotted overrides -> config.

    Quick flags (epochs, batch_size, ...) apply to every training stage of the method.
    """
    if method not in METHODS:
        raise RunError(f"unknown method {method!r}; expected one of {', '.join(sorted(METHODS))}")
    spec = METHODS[method]
    raw: dict[str, Any] = {}
    source = "defaults"
    if config is not None:
        path = recipe_path(config)
        raw = load_yaml(path)
        source = str(path)
        recipe_method = raw.pop("method", method)
        if recipe_method != method:
            raise RunError(f"{path}: recipe is for method {recipe_method!r}, not {method!r}")
    if raw.get("data") is None:
        raw["data"] = {}
    if not isinstance(raw["data"], dict):
        raise RunError(f"{source}: data must be a mapping, got {raw['data']!r}")
    if data_root is not None:
        # Absolute, so that the run's config.yaml still finds the data from another working directory.
        raw["data"]["root"] = str(Path(data_root).expanduser().resolve())
    if layout is not None:
        raw["data"]["layout"] = layout
    if image_size is not None:
        raw["data"]["image_size"] = image_size
    if "root" not in raw["data"]:
        raise RunError("no dataset given: pass --data ROOT (and --layout)")
    if "layout" not in raw["data"]:
        raise RunError(f"no dataset layout given: pass --layout ({', '.join(LAYOUTS)})")
    cfg: Any = from_dict(spec.config_cls, raw, source=source)
    return spec, reconfigure(spec, cfg, quick, overrides, source=source)


def reconfigure(spec: MethodSpec, cfg: Any, quick: dict[str, Any] | None = None, overrides: list[str] | None = None, source: str = "config") -> Any:
    """``cfg`` with quick flags (applied to every training stage) and dotted overrides, validated again."""
    settings_names = list(cfg.train_settings())
    extra: list[str] = []
    for key, value in (quick or {}).items():
        if value is not None:
            extra += [f"{name}.{key}={json.dumps(value)}" for name in settings_names]
    extra += list(overrides or [])  # explicit --set wins over the quick flags
    if not extra:
        return cfg
    return from_dict(spec.config_cls, apply_overrides(to_dict(cfg), extra), source=f"{source} + overrides")


def reuse_override(source_run: Path) -> str:
    """The dotted override that lets a method take its first stages from ``source_run`` when identical
    (``reuse_run``, ``MethodSpec.reuses``): the absolute path, quoted so that the value parses as a string."""
    return f"reuse_run={json.dumps(str(Path(source_run).resolve()))}"


def check_data(cfg: Any) -> None:
    """Fail early, before a run folder is made, when the dataset is not where the config says."""
    root = Path(cfg.data.root)
    if not root.is_dir():
        raise RunError(f"dataset folder {root} not found")
    meta = metadata_path(root, cfg.data.layout)
    if not meta.is_file():
        raise RunError(f"{root} is not a {cfg.data.layout} dataset: {meta.name} not found in it")


def record_classes(spec: MethodSpec, cfg: Any) -> Any:
    """``cfg`` with ``data.classes`` = the dataset's label vocabulary (kept in the run's config.yaml).

    A vocabulary already recorded (a resumed run, or one set by hand) must equal the dataset's: class
    index k of the trained heads means the same class only then.
    """

    found = class_names(Path(cfg.data.root), cfg.data.layout)
    if cfg.data.classes is None:
        data = dataclasses.replace(cfg.data, classes=list(found))
        return dataclasses.replace(cfg, data=data)
    if list(cfg.data.classes) != list(found):
        raise RunError(
            f"{cfg.data.root}: its label vocabulary ({len(found)} classes: {', '.join(found[:6])}{', ...' if len(found) > 6 else ''}) "
            f"differs from the run's data.classes ({len(cfg.data.classes)}: {', '.join(cfg.data.classes[:6])}"
            f"{', ...' if len(cfg.data.classes) > 6 else ''}); a model's class k would mean another class"
        )
    return cfg


def _first_settings(cfg: Any) -> TrainSettings:
    return next(iter(cfg.train_settings().values()))


def run_method(
    spec: MethodSpec,
    cfg: Any,
    run_dir: Path,
    resume: bool = False,
    only: list[str] | None = None,
    force: bool | Collection[str] = False,
    max_steps: int | None = None,
) -> dict[str, Any]:
    """Run the method's stages in ``run_dir``; finished stages are skipped unless ``force`` (True: every
    stage of this call; a collection: those stages).

    Writes config.yaml, git revision and environment into the run folder (rank 0) and one JSON marker
    per finished stage under ``stages/``. Returns {stage name: summary}.

    Stages form a chain, so once a stage has (re)computed its outputs in this call, every later stage
    that ran before and reads them is stale: its outputs are removed and it runs again from scratch
    (stages outside ``only`` are marked stale instead, and the next ``train --resume`` recomputes them).
    A stage reads every earlier stage's outputs unless it names what it reads (``Stage.reads``); a stale
    stage counts as changed for the stages that read it.

    ``max_steps`` caps every training stage for this call only (it is not written to config.yaml): a
    stage it stops early gets a marker with ``"truncated": true``, and a later call without it (e.g.
    ``avseg train --out RUN --resume``) continues that stage from its checkpoint to the end.
    """

    run_dir = Path(run_dir)
    config_file = run_dir / "config.yaml"
    if config_file.exists() and not resume and only is None:
        raise RunError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
    check_data(cfg)
    cfg = record_classes(spec, cfg)
    stages = spec.stages(cfg)
    names = [s.name for s in stages]
    for name in only or []:
        if name not in names:
            raise RunError(f"method {spec.name} has no stage {name!r}; its stages: {', '.join(names)}")
    if dist.is_main():
        if resume and config_file.is_file():
            note_changed_settings(run_dir, [s.name for s in stages if s.is_done(run_dir)], saved_settings(run_dir), {"method": spec.name, **to_dict(cfg)})
        prepare_run_dir(run_dir, {"method": spec.name, **to_dict(cfg)})
        for folder in (run_dir, run_dir / "stages"):  # half-written markers of a killed run
            if removed := remove_stale_temporaries(folder):
                log.info("%s: removed %d temporary file(s) of an interrupted run", folder, len(removed))
    dist.barrier()
    setup_logging(run_dir if dist.is_main() else None, level=logging.getLogger().level or logging.INFO)
    run_cfg = reconfigure(spec, cfg, {"max_steps": max_steps}) if max_steps is not None else cfg
    settings = _first_settings(run_cfg)
    device = resolve_device(settings.device)
    if dist.is_dist() and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank())
    summaries: dict[str, Any] = {}
    forced = set(names) if force is True else set(force or ())
    changed: dict[str, str] = {}  # stage -> the stage whose rerun in this call changed (or staled) its outputs
    for i, stage in enumerate(stages):
        reads = names[:i] if stage.reads is None else stage.reads
        upstream_changed = next((changed[n] for n in reads if n in changed), None)
        # Rank 0 reads the run folder and every rank takes the same decisions from what it read.
        marker = dist.broadcast_object(read_marker(stage.name, run_dir) if dist.is_main() else None)
        if only is not None and stage.name not in only:
            if upstream_changed:
                changed[stage.name] = upstream_changed
                if marker is not None and not marker.get("stale") and dist.is_main():
                    _mark_stale(stage, run_dir, marker, upstream_changed)
            continue
        fresh = stage.name in forced or upstream_changed is not None or bool(marker and marker.get("stale"))
        if marker is not None and not fresh and _finished(marker, max_steps):
            log.info("stage %s: done earlier, skipped (%s)", stage.name, stage.marker(run_dir))
            summaries[stage.name] = marker
            continue
        if fresh and marker is None and not dist.broadcast_object(_has_outputs(stage, run_dir) if dist.is_main() else None):
            fresh = False  # nothing to remove (first run of this stage)
        log.info("stage %s: %s%s", stage.name, stage.description, " (from scratch)" if fresh else "")
        start = time.perf_counter()
        if fresh and dist.is_main():
            _remove_outputs(stage, run_dir)
        dist.barrier()
        # Continue the stage's own checkpoints when it was interrupted (no marker) or stopped by max_steps.
        ctx = StageContext(run_dir=run_dir, config=run_cfg, device=device, resume=not fresh and (resume or marker is not None))
        # Stages build their models before the engine seeds (and torch's own start seed is random):
        # seed here so that model initialisation, and so the whole run, repeats for the same seed.
        seed_everything(settings.seed)
        if stage.all_ranks or dist.is_main():
            summary = stage.run(ctx)
        else:
            summary = {}
        dist.barrier()
        if dist.is_main():
            summary = {"stage": stage.name, **summary, "seconds": round(time.perf_counter() - start, 2)}
            if _stopped_early(stage, run_dir):
                summary["truncated"] = True
                log.warning("stage %s: stopped by max_steps after %s steps; `avseg train --out %s --resume` "
                            "(without --max-steps) continues it", stage.name, summary.get("steps"), run_dir)  # fmt: skip
            write_marker(stage, run_dir, summary)
        summary = dist.broadcast_object(summary if dist.is_main() else None)
        summaries[stage.name] = summary
        # A resumed stage whose checkpoint did not move (nothing left to train) changed nothing downstream.
        unchanged = marker is not None and not fresh and marker.get("steps") is not None and marker.get("steps") == summary.get("steps")
        if not unchanged:
            changed[stage.name] = stage.name
        log.info("stage %s: finished in %.1f s", stage.name, summary["seconds"])
    dist.barrier()
    return summaries


def saved_settings(run_dir: Path) -> dict[str, Any]:
    """A run's config.yaml read through its method's config class, as plain YAML values: a setting added to the
    code after the file was written counts at its default (what the run's finished stages did without it), so
    resuming an older run is no settings change. The file as written where it no longer loads (a setting
    removed from the code, a value the code now refuses)."""
    try:
        spec, cfg = load_run(run_dir)
    except (RunError, ValueError, TypeError):
        return load_yaml(Path(run_dir) / "config.yaml")
    return yaml.safe_load(dump_yaml({"method": spec.name, **to_dict(cfg)}))


def settings_changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> dict[str, list[Any]]:
    """{dotted key: [old value, new value]} for every setting that differs between two config mappings (a key
    on one side only counts as None on the other)."""
    out: dict[str, list[Any]] = {}
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out.update(settings_changes(a, b, f"{prefix}{key}."))
        elif a != b:
            out[f"{prefix}{key}"] = [a, b]
    return out


def note_changed_settings(run_dir: Path, finished: list[str], old: dict[str, Any], new: dict[str, Any]) -> dict[str, list[Any]]:
    """On ``--resume`` with other settings, say which finished stages keep what they computed with the old ones.

    ``run_method`` skips finished stages whatever the settings, while config.yaml takes the new ones, so the
    change is logged and appended to ``config-changes.json`` in the run (the settings before and after, the
    stages kept): the run folder keeps saying how its outputs were made. Returns the changes.
    """
    changes = settings_changes(old, yaml.safe_load(dump_yaml(new)))
    if not changes or not finished:
        return changes
    listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items())
    log.warning(
        "%s: settings changed on --resume (%s). The finished stages %s are kept as they were computed (recorded in "
        "config-changes.json); to recompute one with the new settings, `avseg pseudo --run %s --from STAGE` (pseudo-mask "
        "stages) or remove the stage's stages/STAGE.json and its outputs, then resume.", run_dir, listed, ", ".join(finished), run_dir,
    )  # fmt: skip
    path = run_dir / "config-changes.json"
    history = json.loads(path.read_text()) if path.is_file() else []
    history.append({"changed": changes, "stages_kept": finished})
    write_text_atomic(path, json.dumps(history, indent=2, default=str) + "\n")
    return changes


def _finished(marker: dict[str, Any], max_steps: int | None) -> bool:
    """A marker of a complete stage, or of one stopped at (at least) the ``max_steps`` asked for now."""
    if not marker.get("truncated"):
        return True
    return max_steps is not None and (marker.get("steps") or 0) >= max_steps


def _stopped_early(stage: Any, run_dir: Path) -> bool:
    """True when a training stage's last checkpoint is short of its epochs (stopped by max_steps)."""

    for rel in stage.outputs:
        last = run_dir / rel / LAST
        if last.is_file():
            meta = read_metadata(last)
            epochs = (meta.get("settings") or {}).get("epochs")
            if epochs is not None and meta.get("epoch", epochs) < epochs:
                return True
    return False


def _has_outputs(stage: Any, run_dir: Path) -> bool:
    return any((run_dir / rel).exists() for rel in stage.outputs)


def _remove_outputs(stage: Any, run_dir: Path) -> None:
    """Before a rerun from scratch: remove what the stage wrote, so nothing stale is mixed with the new run."""
    import shutil

    stage.marker(run_dir).unlink(missing_ok=True)
    for rel in stage.outputs:
        path = run_dir / rel
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _mark_stale(stage: Any, run_dir: Path, marker: dict[str, Any], cause: str) -> None:
    log.warning("stage %s: its outputs were computed from the previous outputs of stage %s and are now stale; "
                "`avseg train --out %s --resume` recomputes them", stage.name, cause, run_dir)  # fmt: skip
    write_marker(stage, run_dir, {**marker, "stale": True, "stale_because": f"stage {cause} was rerun"})


def load_run(run_dir: Path) -> tuple[MethodSpec, Any]:
    """The method and config of an existing run folder."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise RunError(f"{run_dir} is not a run folder (no config.yaml)")
    raw = load_yaml(path)
    method = raw.pop("method", None)
    if method not in METHODS:
        raise RunError(f"{path}: unknown method {method!r}")
    spec = METHODS[method]
    return spec, from_dict(spec.config_cls, raw, source=str(path))


def evaluate_run(
    run_dir: Path,
    split: str = "test",
    protocol: str = "clean",
    batch_frames: int = 20,
    device: str = "auto",
    save_pred: Path | None = None,
    data_root: str | None = None,
    keep: Any = None,
    binary: bool = False,
) -> dict[str, Any]:
    """Evaluate a run's final model on a split; writes ``eval/{split}-{protocol}.json`` in the run.

    A model with semantic outputs (PCAS on AVSS) is scored against the class maps, unless ``binary``: then
    its foreground probability is scored against the union of the sounding objects (as every binary model
    is on AVSS), written to ``eval/{split}-{protocol}-binary.json``. The result's "scoring" says which.
    """

    spec, cfg = load_run(run_dir)
    if data_root is not None:
        cfg.data.root = data_root
    check_data(cfg)
    remove_stale_temporaries(Path(run_dir) / "eval")  # of an evaluation that was killed while writing
    _warn_unfinished(spec, cfg, Path(run_dir))
    dev = resolve_device(device)
    predictor = spec.load_predictor(cfg, Path(run_dir), dev)
    dataset = make_dataset(cfg.data, split, audio=cfg.data.audio_frontend is not None)
    start = time.perf_counter()
    outputs = iterate_outputs(predictor.predict, dataset, dev, batch_size=4, progress=f"eval {split}")
    semantic_model = getattr(predictor, "output", "binary") == "semantic"
    semantic = semantic_model and not binary
    result = evaluate_outputs(outputs, cfg.data.layout, protocol, batch_frames=batch_frames, num_classes=getattr(dataset, "num_semantic_classes", None), save_dir=save_pred, keep=keep, semantic=semantic)
    result.update({"method": spec.name, "split": split, "layout": cfg.data.layout, "scoring": "semantic" if semantic else "binary", "run": str(run_dir), "seconds": round(time.perf_counter() - start, 2)})
    suffix = "-binary" if semantic_model and binary else ""
    write_text_atomic(Path(run_dir) / "eval" / f"{split}-{protocol}{suffix}.json", json.dumps(result, indent=2, default=float))
    return result


def _warn_unfinished(spec: MethodSpec, cfg: Any, run_dir: Path) -> None:
    for stage in spec.stages(cfg):
        marker = read_marker(stage.name, run_dir)
        state = "not finished" if marker is None else "stale" if marker.get("stale") else "stopped by max_steps" if marker.get("truncated") else None
        if state:
            log.warning("%s: stage %s is %s; evaluating what is there (`avseg train --out %s --resume` completes the run)", run_dir, stage.name, state, run_dir)


__all__ = ["build_config", "reconfigure", "reuse_override", "run_method", "evaluate_run", "load_run", "RunError", "QUICK_TRAIN_FLAGS"]
