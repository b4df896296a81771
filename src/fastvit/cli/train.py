"""`fastvit train`: train or fine-tune a FastViT (single process or under torchrun).

With no data argument it trains on the embedded scikit-learn digits with the 'digits' recipe;
with ``--data ROOT`` (``ROOT/train/<class>/``, ``ROOT/val/<class>/``) the default recipe is
the official ImageNet one. Every option overrides the recipe; ``--resume RUN/last.pt``
continues a run with its stored config (options given again override it).
"""

from __future__ import annotations

import argparse


def add_parser(p: argparse.ArgumentParser) -> None:
    # every default is None, so that only the options actually given override the recipe
    g = p.add_argument_group("data (default: the embedded scikit-learn digits)")
    g.add_argument("--data", metavar="ROOT", help="ImageFolder root with train/ and val/ "
                   "(or validation/) class folders")
    g.add_argument("--train-dir", metavar="DIR", help="training class folders (with --val-dir)")
    g.add_argument("--val-dir", metavar="DIR", help="validation class folders")
    g.add_argument("--input-size", type=int, metavar="PX", help="square input size (>= 32)")
    g.add_argument("--crop-pct", type=float, help="eval center-crop fraction (variant default)")
    g.add_argument("--interpolation", choices=("bilinear", "bicubic", "nearest", "random"))
    g.add_argument("--mean", type=float, nargs=3, metavar=("R", "G", "B"))
    g.add_argument("--std", type=float, nargs=3, metavar=("R", "G", "B"))
    g.add_argument("--check-images", choices=("auto", "full", "header", "none"),
                   help="decode every image (full), headers only, or none; auto: full up to "
                   "10k files")
    g.add_argument("--max-bad-share", type=float, metavar="F",
                   help="stop when more than this share of files is unreadable (default 0.01)")
    g.add_argument("--workers", type=int, help="data loader processes")

    g = p.add_argument_group("model")
    g.add_argument("--model", "-m", metavar="NAME", help="variant (default fastvit_t8; see "
                   "`fastvit info`)")
    g.add_argument("--init", metavar="CKPT", help="fine-tune from an unfused checkpoint "
                   "(official, timm or ours); the head is re-initialised for new classes")
    g.add_argument("--freeze-stages", type=int, metavar="N",
                   help="freeze the stem and the first N stages")
    g.add_argument("--drop-path", type=float, help="stochastic depth (variant default)")
    g.add_argument("--drop", type=float, help="dropout before the classifier")
    g.add_argument("--grad-checkpointing", action=argparse.BooleanOptionalAction, default=None)

    g = p.add_argument_group("recipe and augmentation")
    g.add_argument("--recipe", choices=("imagenet", "digits"),
                   help="preset (default: digits without data, imagenet with --data)")
    g.add_argument("--no-aug", action="store_true", default=None,
                   help="no training augmentation (resize + crop only)")
    g.add_argument("--scale", type=float, nargs=2, metavar=("MIN", "MAX"),
                   help="random-resized-crop area range")
    g.add_argument("--ratio", type=float, nargs=2, metavar=("MIN", "MAX"),
                   help="random-resized-crop aspect range")
    g.add_argument("--hflip", type=float, help="horizontal flip probability")
    g.add_argument("--auto-augment", "--aa", dest="auto_augment", metavar="SPEC",
                   help="timm auto-augment spec, e.g. rand-m9-mstd0.5-inc1, or 'none'")
    g.add_argument("--color-jitter", type=float)
    g.add_argument("--reprob", type=float, help="random erasing probability")
    g.add_argument("--mixup", type=float, help="mixup alpha (0 = off)")
    g.add_argument("--cutmix", type=float, help="cutmix alpha (0 = off)")
    g.add_argument("--mixup-prob", type=float)
    g.add_argument("--mixup-switch-prob", type=float)
    g.add_argument("--mixup-mode", choices=("batch", "pair", "elem"))
    g.add_argument("--smoothing", type=float, help="label smoothing")

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", "-b", type=int, help="per process")
    g.add_argument("--opt", metavar="NAME", help="timm optimizer (default adamw)")
    g.add_argument("--lr", type=float, help="absolute learning rate (overrides scaling)")
    g.add_argument("--base-lr", type=float, help="lr at --lr-base-size images per step")
    g.add_argument("--lr-base-size", type=int, help="global batch the base lr refers to")
    g.add_argument("--weight-decay", "--wd", dest="weight_decay", type=float)
    g.add_argument("--momentum", type=float)
    g.add_argument("--opt-eps", type=float)
    g.add_argument("--clip-grad", type=float, help="gradient clipping value (off by default)")
    g.add_argument("--clip-mode", choices=("norm", "value", "agc"))
    g.add_argument("--sched", choices=("cosine", "tanh", "step", "multistep", "poly",
                                       "constant", "none"))
    g.add_argument("--warmup-epochs", type=int)
    g.add_argument("--warmup-lr", type=float)
    g.add_argument("--min-lr", type=float)
    g.add_argument("--cooldown-epochs", type=int)
    g.add_argument("--sched-on-updates", action=argparse.BooleanOptionalAction, default=None,
                   help="step the lr schedule every update instead of every epoch")
    g.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None,
                   help="keep an EMA of the weights")
    g.add_argument("--ema-decay", type=float)
    g.add_argument("--ema-warmup", action=argparse.BooleanOptionalAction, default=None)

    g = p.add_argument_group("distillation")
    g.add_argument("--distill", choices=("none", "soft", "hard"))
    g.add_argument("--teacher", metavar="CKPT|NAME",
                   help="fastvit checkpoint, or a timm/torchvision model name")
    g.add_argument("--teacher-weights", metavar="FILE", help="weights for a named teacher")
    g.add_argument("--distill-alpha", type=float)
    g.add_argument("--distill-tau", type=float)

    g = p.add_argument_group("run")
    g.add_argument("--output", "-o", metavar="DIR", help="run directory (default "
                   "runs/<model>_<dataset>)")
    g.add_argument("--resume", metavar="CKPT", help="continue from a run's last.pt")
    g.add_argument("--amp", choices=("none", "bf16", "fp16"), help="mixed precision")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    g.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads per process (default: torch's; 1 helps on a busy machine)")
    g.add_argument("--sync-bn", action=argparse.BooleanOptionalAction, default=None,
                   help="SyncBatchNorm under torchrun")
    g.add_argument("--seed", type=int)
    g.add_argument("--limit-train-batches", type=int, metavar="N",
                   help="at most N batches per epoch (quick runs)")
    g.add_argument("--limit-val-batches", type=int, metavar="N")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars (shown only on a terminal)")
    g.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--plot", action=argparse.BooleanOptionalAction, default=None,
                   help="write curves.png each epoch")


def config_from_args(args: argparse.Namespace):
    """TrainConfig from the recipe (or the resumed run's config) plus the given options."""
    from dataclasses import fields

    from fastvit.train.checkpoint import load_training_checkpoint
    from fastvit.train.config import TrainConfig, recipe_config

    names = {f.name for f in fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in names and v is not None}
    for key in ("mean", "std", "scale", "ratio"):
        if key in given:
            given[key] = tuple(given[key])
    if isinstance(given.get("auto_augment"), str) and given["auto_augment"].lower() in (
            "none", "off", ""):
        given["auto_augment"] = None
        explicit_no_aa = True
    else:
        explicit_no_aa = False
    if args.resume:
        ckpt = load_training_checkpoint(args.resume)
        base = TrainConfig.from_dict(ckpt["config"])
        # a different --model is reported by train() as a variant mismatch
        cfg = base.replace(init=None, **given)
        if explicit_no_aa:
            cfg = cfg.replace(auto_augment=None)
        return cfg
    recipe = given.pop("recipe", None) or (
        "digits" if not any(k in given for k in ("data", "train_dir", "val_dir")) else "imagenet")
    cfg = recipe_config(recipe, **given)
    if explicit_no_aa:
        cfg = cfg.replace(auto_augment=None)
    return cfg


def run(args: argparse.Namespace) -> int:
    from fastvit.train import format_summary, train

    cfg = config_from_args(args)
    result = train(cfg)
    if result.final is not None:
        print(format_summary(result))
    return 0
