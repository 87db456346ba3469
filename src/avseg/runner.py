"""Run methods: build a config from a recipe + flags, run its stages in a run folder, evaluate a run.

Also the ``train`` / ``pseudo`` / ``eval`` / ``demo`` subcommands of the CLI.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import torch

from avseg.config import apply_overrides, from_dict, load_yaml, to_dict
from avseg.data.layout import LAYOUTS, SPLITS
from avseg.engine import distributed as dist
from avseg.engine.trainer import TrainSettings, resolve_device
from avseg.methods import METHODS
from avseg.methods.base import MethodSpec, StageContext, write_marker

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
        raise RunError(f"unknown method {method!r}; expected one of {sorted(METHODS)}")
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
    raw.setdefault("data", {})
    if data_root is not None:
        raw["data"]["root"] = str(data_root)
    if layout is not None:
        raw["data"]["layout"] = layout
    if image_size is not None:
        raw["data"]["image_size"] = image_size
    if "root" not in raw["data"]:
        raise RunError("no dataset given: pass --data ROOT (and --layout)")
    cfg = from_dict(spec.config_cls, raw, source=source)
    settings_names = list(cfg.train_settings())
    overrides = list(overrides or [])
    for key, value in (quick or {}).items():
        if value is not None:
            overrides += [f"{name}.{key}={json.dumps(value)}" for name in settings_names]
    if overrides:
        d = apply_overrides(to_dict(cfg), overrides)
        cfg = from_dict(spec.config_cls, d, source=f"{source} + overrides")
    return spec, cfg


def _first_settings(cfg: Any) -> TrainSettings:
    return next(iter(cfg.train_settings().values()))


def run_method(spec: MethodSpec, cfg: Any, run_dir: Path, resume: bool = False, only: list[str] | None = None, force: bool = False) -> dict[str, Any]:
    """Run the method's stages in ``run_dir``; finished stages are skipped unless ``force``.

    Writes config.yaml, git revision and environment into the run folder (rank 0) and one JSON marker
    per finished stage under ``stages/``. Returns {stage name: summary}.
    """
    from avseg.engine.tracking import prepare_run_dir, setup_logging

    run_dir = Path(run_dir)
    config_file = run_dir / "config.yaml"
    if config_file.exists() and not resume and only is None:
        raise RunError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
    if dist.is_main():
        prepare_run_dir(run_dir, {"method": spec.name, **to_dict(cfg)})
    setup_logging(run_dir if dist.is_main() else None, level=logging.getLogger().level or logging.INFO)
    settings = _first_settings(cfg)
    device = resolve_device(settings.device)
    if dist.is_dist() and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank())
    summaries: dict[str, Any] = {}
    stages = spec.stages(cfg)
    names = [s.name for s in stages]
    for name in only or []:
        if name not in names:
            raise RunError(f"method {spec.name} has no stage {name!r}; its stages: {', '.join(names)}")
    for stage in stages:
        if only is not None and stage.name not in only:
            continue
        if stage.is_done(run_dir) and not force:
            log.info("stage %s: done earlier, skipped (%s)", stage.name, stage.marker(run_dir))
            summaries[stage.name] = json.loads(stage.marker(run_dir).read_text())
            continue
        log.info("stage %s: %s", stage.name, stage.description)
        start = time.time()
        if force and dist.is_main():
            _remove_outputs(stage, run_dir)
        dist.barrier()
        ctx = StageContext(run_dir=run_dir, config=cfg, device=device, resume=resume and not force)
        if stage.all_ranks or dist.is_main():
            summary = stage.run(ctx)
        else:
            summary = {}
        dist.barrier()
        summary = {"stage": stage.name, "seconds": round(time.time() - start, 2), **summary}
        if dist.is_main():
            write_marker(stage, run_dir, summary)
        summaries[stage.name] = summary
        log.info("stage %s: finished in %.1f s", stage.name, summary["seconds"])
    return summaries


def _remove_outputs(stage: Any, run_dir: Path) -> None:
    """Before a forced rerun: remove what the stage wrote, so nothing stale is mixed with the new run."""
    import shutil

    stage.marker(run_dir).unlink(missing_ok=True)
    for rel in stage.outputs:
        path = run_dir / rel
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


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
) -> dict[str, Any]:
    """Evaluate a run's final model on a split; writes ``eval/{split}-{protocol}.json`` in the run."""
    from avseg.data.imageio import write_text_atomic
    from avseg.inference.predict import evaluate_outputs, iterate_outputs
    from avseg.methods.common import make_dataset

    spec, cfg = load_run(run_dir)
    if data_root is not None:
        cfg.data.root = data_root
    dev = resolve_device(device)
    predictor = spec.load_predictor(cfg, Path(run_dir), dev)
    dataset = make_dataset(cfg.data, split, audio=cfg.data.audio_frontend is not None)
    start = time.time()
    outputs = iterate_outputs(predictor.predict, dataset, dev, batch_size=4, progress=f"eval {split}")
    result = evaluate_outputs(outputs, cfg.data.layout, protocol, batch_frames=batch_frames, num_classes=getattr(dataset, "num_semantic_classes", None), save_dir=save_pred, keep=keep)
    result.update({"method": spec.name, "split": split, "layout": cfg.data.layout, "run": str(run_dir), "seconds": round(time.time() - start, 2)})
    write_text_atomic(Path(run_dir) / "eval" / f"{split}-{protocol}.json", json.dumps(result, indent=2, default=float))
    return result


# --- CLI ----------------------------------------------------------------------------------------------
def _quick(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k, None) for k in QUICK_TRAIN_FLAGS}


def cmd_train(args: argparse.Namespace) -> int:
    run_dir = Path(args.out)
    dist.init_from_env("cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu")
    try:
        if args.resume and (run_dir / "config.yaml").is_file():
            spec, cfg = load_run(run_dir)
            quick = {k: v for k, v in _quick(args).items() if v is not None}
            if quick or args.set:
                spec, cfg = build_config(spec.name, None, None, None, quick, None, list(args.set or []) + _as_overrides(cfg))
        else:
            spec, cfg = build_config(args.method, args.config, args.data, args.layout, _quick(args), args.image_size, args.set)
        summaries = run_method(spec, cfg, run_dir, resume=args.resume)
        if dist.is_main():
            print(json.dumps({"run": str(run_dir), "stages": {k: v.get("seconds") for k, v in summaries.items()}}))
    finally:
        dist.cleanup()
    return 0


def _as_overrides(cfg: Any) -> list[str]:
    """A config as dotted overrides (to re-apply quick flags on top of a loaded run config)."""
    out: list[str] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}{k}.", v)
        else:
            out.append(f"{prefix[:-1]}={json.dumps(value)}")

    walk("", to_dict(cfg))
    return out


def cmd_pseudo(args: argparse.Namespace) -> int:
    spec, cfg = load_run(Path(args.run))
    names = [s.name for s in spec.stages(cfg)]
    pseudo = names[:-1]  # every stage before the final training produces the pseudo masks
    if not pseudo:
        raise RunError(f"method {spec.name} has no pseudo-mask stages")
    only = pseudo[pseudo.index(args.from_stage):] if args.from_stage else pseudo
    summaries = run_method(spec, cfg, Path(args.run), resume=True, only=only, force=args.force or bool(args.from_stage))
    print(json.dumps({k: v.get("quality", v.get("seconds")) for k, v in summaries.items()}, default=str))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    result = evaluate_run(Path(args.run), args.split, args.protocol, args.batch_frames, args.device, Path(args.save_pred) if args.save_pred else None, args.data)
    if args.json:
        print(json.dumps(result, indent=2, default=float))
    else:
        print(f"{result['method']} on {result['layout']} {args.split} ({result['frames']} frames, {args.protocol}): mIoU {result['miou']:.4f}  F {result['fscore']:.4f}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from avseg.demo import run_demo

    metrics = run_demo(Path(args.out), videos=args.videos, size=args.size, seed=args.seed, recipe=args.recipe)
    print(json.dumps(metrics, indent=2))
    return 0


def add_run_commands(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train", help="train a method (all its stages) into a run folder")
    t.add_argument("--method", choices=sorted(METHODS), default="ws-avs")
    t.add_argument("--data", help="dataset root (the folder holding the metadata CSV)")
    t.add_argument("--layout", choices=LAYOUTS)
    t.add_argument("--out", required=True, help="run folder")
    t.add_argument("--config", help="recipe YAML file or shipped recipe name, e.g. ws-avs/s4 or ws-avs/demo")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="dotted override, e.g. segmenter_train.lr=3e-4 (repeatable)")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int, dest="batch_size")
    t.add_argument("--image-size", type=int, dest="image_size")
    t.add_argument("--max-steps", type=int, dest="max_steps")
    t.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    t.add_argument("--seed", type=int)
    t.add_argument("--workers", type=int)
    t.add_argument("--amp", choices=("off", "bf16", "fp16"))
    t.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    t.set_defaults(func=cmd_train)

    p = sub.add_parser("pseudo", help="run or rerun the pseudo-mask stages of a run")
    p.add_argument("--run", required=True)
    p.add_argument("--from", dest="from_stage", help="rerun from this stage on (e.g. activation-maps)")
    p.add_argument("--force", action="store_true", help="rerun finished stages")
    p.set_defaults(func=cmd_pseudo)

    e = sub.add_parser("eval", help="evaluate a run's final model on a split")
    e.add_argument("--run", required=True)
    e.add_argument("--split", choices=SPLITS, default="test")
    e.add_argument("--protocol", choices=("clean", "avsbench", "per-frame-max"), default="clean")
    e.add_argument("--batch-frames", type=int, default=20, dest="batch_frames")
    e.add_argument("--device", default="auto")
    e.add_argument("--data", help="dataset root, if it moved since training")
    e.add_argument("--save-pred", dest="save_pred", help="also write prediction PNGs here (readable by avseg score)")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_eval)

    d = sub.add_parser("demo", help="the main job on the embedded synthetic data: WS-AVS + supervised reference, report")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--videos", type=int, default=None, help="videos to generate (default: the demo recipe's)")
    d.add_argument("--size", type=int, default=None, help="frame size (default: the demo recipe's)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--recipe", default="demo", help="recipe name under ws-avs/ and supervised/")
    d.set_defaults(func=cmd_demo)


__all__ = ["build_config", "run_method", "evaluate_run", "load_run", "add_run_commands", "RunError", "fields", "is_dataclass"]
