"""`fastvit train`: train or fine-tune a FastViT (single process or under torchrun).

With no data argument it trains on the embedded scikit-learn digits with the 'digits' recipe;
with ``--data ROOT`` (``ROOT/train/<class>/`` and ``ROOT/val/<class>/``, or ``ROOT/<class>/``
split with ``--val-split``) the default recipe is the official ImageNet one. Every option
overrides the recipe. The options are derived from :class:`~fastvit.train.TrainConfig`: one
per field, help text from the field's metadata.

Run directories are never replaced silently: a new run into a directory that holds one is
refused unless ``--overwrite`` is given, and ``--resume RUN/last.pt`` continues in ``RUN`` (or
``--output``) with the stored config (changed options are applied or refused, see
:func:`~fastvit.train.config.resume_config`).
"""

from __future__ import annotations

import argparse
import types
import typing
from dataclasses import MISSING, Field, fields
from typing import Any

#: exit status of a run stopped by SIGTERM (128 + 15, like a shell reports it)


def _value_type(f: Field, hints: dict[str, Any]) -> tuple[type | None, int | None]:
    """(element type, nargs) of a config field's annotation; nargs None for scalars."""
    tp = hints[f.name]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = args[0] if len(args) == 1 else str
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        return args[0], len(args)
    if tp in (int, float, str, bool):
        return tp, None
    return None, None


def _recipe_default(f: Field) -> str:
    """'(default X)' or '(default X; digits recipe Y)' for the help text."""
    from fastvit.train.config import RECIPES

    base = f.default if f.default is not MISSING else None
    digits = RECIPES["digits"].get(f.name, base)

    def show(v: Any) -> str:
        if isinstance(v, bool):
            return "on" if v else "off"
        if isinstance(v, tuple):
            return " ".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v)
        return "none" if v is None else (f"{v:g}" if isinstance(v, float) else str(v))

    if digits is None and (base is None or "default" in f.metadata["help"]):
        return ""
    if base is None or "default" in f.metadata["help"]:
        return "" if digits == base else f" (digits recipe {show(digits)})"
    if digits == base:
        return f" (default {show(base)})"
    return f" (default {show(base)}; digits recipe {show(digits)})"


def add_parser(p: argparse.ArgumentParser) -> None:
    """One option per :class:`TrainConfig` field, grouped and documented by its metadata.

    Every default is None, so that only the options actually given override the recipe (or,
    with ``--resume``, the run's stored config).
    """
    from fastvit.train.config import GROUPS, TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    groups = {key: p.add_argument_group(title) for key, title in GROUPS.items()}
    for f in fields(TrainConfig):
        meta = f.metadata
        if not meta.get("cli", False):
            continue
        flags = ["--" + f.name.replace("_", "-"), *meta["flags"]]
        elem, nargs = _value_type(f, hints)
        kw: dict[str, Any] = {
            "dest": f.name,
            "default": None,
            "help": meta["help"] + _recipe_default(f),
        }
        if meta["action"] == "store_true":
            kw["action"] = "store_true"
        elif elem is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            if elem in (int, float):
                kw["type"] = elem
            if nargs is not None:
                kw["nargs"] = nargs
            if meta["choices"]:
                kw["choices"] = meta["choices"]
            if meta["metavar"]:
                kw["metavar"] = meta["metavar"]
        groups[meta["group"]].add_argument(*flags, **kw)


def config_from_args(args: argparse.Namespace):
    """(TrainConfig, loaded resume checkpoint or None) from the recipe, or from the resumed
    run's stored config, plus the options given. The checkpoint is read here, once."""
    from fastvit.train.checkpoint import load_training_checkpoint
    from fastvit.train.config import TrainConfig, recipe_config

    names = {f.name for f in fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in names and v is not None}
    for key in ("mean", "std", "scale", "ratio"):
        if key in given:
            given[key] = tuple(given[key])
    explicit_no_aa = isinstance(given.get("auto_augment"), str) and given[
        "auto_augment"
    ].lower() in ("none", "off", "")
    if explicit_no_aa:
        given.pop("auto_augment")
    if args.resume:
        ckpt = load_training_checkpoint(args.resume)
        stored = TrainConfig.from_dict(ckpt["config"])
        # the run continues where its checkpoint lies unless --output is given; a stored
        # --overwrite belonged to the run's start (a new --init is refused by train())
        cfg = stored.replace(**{"output": None, "overwrite": False, **given})
        if explicit_no_aa:
            cfg = cfg.replace(auto_augment=None)
        return cfg, ckpt
    recipe = given.pop("recipe", None) or (
        "digits" if not any(k in given for k in ("data", "train_dir", "val_dir")) else "imagenet"
    )
    cfg = recipe_config(recipe, **given)
    if explicit_no_aa:
        cfg = cfg.replace(auto_augment=None)
    return cfg, None


def run(args: argparse.Namespace) -> int:
    import sys

    from fastvit.train.engine import TrainingStopped, format_summary, train

    cfg, ckpt = config_from_args(args)
    try:
        result = train(cfg, resume_checkpoint=ckpt)
    except TrainingStopped as e:  # Ctrl-C (130) or SIGTERM (143), with the resume command
        print(f"fastvit train: {e}", file=sys.stderr)
        return e.exit_code
    if result.final is not None:
        print(format_summary(result))
    return 0
