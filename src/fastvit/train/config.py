"""Training configuration: one dataclass, and named recipes that fill it in.

The dataclass defaults are the official FastViT ImageNet recipe (Vasu et al., 2023: AdamW,
lr 1e-3 per 1024 images, weight decay 0.05, 300 epochs of cosine with 5 warmup epochs,
RandAugment, random erasing, mixup/cutmix, label smoothing, EMA). ``RECIPES['digits']`` is the
small recipe for the embedded digits dataset that ``fastvit train`` uses with no data argument.
Every field can be overridden; the whole config is stored in each checkpoint. Each field's
metadata (help text, option group, extra flags, choices) is what ``fastvit train`` builds its
command-line options from, so the CLI and the config cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from fastvit.errors import ConfigError

AMP_CHOICES = ("none", "bf16", "fp16")
DISTILL_CHOICES = ("none", "soft", "hard")
CLIP_MODES = ("norm", "value", "agc")
SCHED_CHOICES = ("cosine", "tanh", "step", "multistep", "poly", "constant", "none")
CHECK_IMAGES_CHOICES = ("auto", "full", "header", "none")
MIXUP_MODES = ("batch", "pair", "elem")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "random")
RECIPE_NAMES = ("imagenet", "digits")
DEFAULT_MODEL = "fastvit_t8"

# option groups of `fastvit train --help`, in order
GROUPS = {
    "data": "data (default: the embedded scikit-learn digits)",
    "model": "model",
    "aug": "recipe and augmentation",
    "optim": "optimisation",
    "distill": "distillation",
    "run": "run",
}


def option(
    default: Any = None,
    help: str = "",
    *,
    group: str,
    flags: tuple[str, ...] = (),
    choices: tuple[str, ...] | None = None,
    metavar: str | tuple[str, ...] | None = None,
    action: str | None = None,
    cli: bool = True,
) -> Any:
    """A config field whose metadata describes its command-line option."""
    meta = {
        "help": help,
        "group": group,
        "flags": flags,
        "choices": choices,
        "metavar": metavar,
        "action": action,
        "cli": cli,
    }
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Everything a training run depends on. Defaults: the official ImageNet recipe."""

    # model
    model: str | None = option(
        None,
        "variant (default fastvit_t8; see `fastvit info`)",
        group="model",
        flags=("-m",),
        metavar="NAME",
    )
    drop_path: float | None = option(
        None, "stochastic depth (default: the variant's, e.g. SA36 0.2, MA36 0.35)", group="model"
    )
    drop: float = option(0.0, "dropout before the classifier", group="model")
    init: str | None = option(
        None,
        "fine-tune from an unfused checkpoint (official, timm or ours); "
        "the head is re-initialised for new classes",
        group="model",
        metavar="CKPT",
    )
    freeze_stages: int = option(
        0, "freeze the stem and the first N stages", group="model", metavar="N"
    )
    grad_checkpointing: bool = option(
        False, "recompute activations in the backward pass (less memory, slower)", group="model"
    )
    # data (None everywhere: the embedded digits)
    data: str | None = option(
        None,
        "ImageFolder root with train/ and val/ (or validation/) class "
        "folders, or a folder of class folders (split with --val-split)",
        group="data",
        metavar="ROOT",
    )
    train_dir: str | None = option(
        None, "training class folders (with --val-dir)", group="data", metavar="DIR"
    )
    val_dir: str | None = option(None, "validation class folders", group="data", metavar="DIR")
    val_split: float = option(
        0.2,
        "share of each class held out for validation when --data is one "
        "folder of class folders (a stratified split drawn with --seed)",
        group="data",
        metavar="F",
    )
    input_size: int = option(256, "square input size (>= 32)", group="data", metavar="PX")
    crop_pct: float | None = option(
        None, "eval center-crop fraction (default: the variant's)", group="data"
    )
    interpolation: str = option(
        "bicubic", "resize interpolation", group="data", choices=INTERPOLATIONS
    )
    mean: tuple[float, float, float] | None = option(
        None, "normalisation mean (default: the variant's)", group="data", metavar=("R", "G", "B")
    )
    std: tuple[float, float, float] | None = option(
        None, "normalisation std (default: the variant's)", group="data", metavar=("R", "G", "B")
    )
    check_images: str = option(
        "auto",
        "decode every image (full), headers only, or none; auto: full up to 10k files",
        group="data",
        choices=CHECK_IMAGES_CHOICES,
    )
    max_bad_share: float = option(
        0.01, "stop when more than this share of files is unreadable", group="data", metavar="F"
    )
    workers: int | None = option(
        None, "data loader processes (default: 0 for digits, else min(8, cores - 1))", group="data"
    )
    # augmentation
    no_aug: bool = option(
        False, "no training augmentation (resize + crop only)", group="aug", action="store_true"
    )
    scale: tuple[float, float] = option(
        (0.08, 1.0), "random-resized-crop area range", group="aug", metavar=("MIN", "MAX")
    )
    ratio: tuple[float, float] = option(
        (3 / 4, 4 / 3), "random-resized-crop aspect range", group="aug", metavar=("MIN", "MAX")
    )
    hflip: float = option(0.5, "horizontal flip probability", group="aug")
    auto_augment: str | None = option(
        "rand-m9-mstd0.5-inc1",
        "timm auto-augment spec, e.g. rand-m9-mstd0.5-inc1, or 'none'",
        group="aug",
        flags=("--aa",),
        metavar="SPEC",
    )
    color_jitter: float = option(0.4, "color jitter strength", group="aug")
    reprob: float = option(0.25, "random erasing probability", group="aug")
    mixup: float = option(0.8, "mixup alpha (0 = off)", group="aug")
    cutmix: float = option(1.0, "cutmix alpha (0 = off)", group="aug")
    mixup_prob: float = option(
        1.0, "probability of applying mixup or cutmix to a batch", group="aug"
    )
    mixup_switch_prob: float = option(
        0.5, "probability of cutmix instead of mixup when both are on", group="aug"
    )
    mixup_mode: str = option(
        "batch", "mix per batch, pair or element", group="aug", choices=MIXUP_MODES
    )
    smoothing: float = option(0.1, "label smoothing", group="aug")
    # optimisation
    batch_size: int = option(
        128,
        "batch size per process (the official global batch is 1024 = 8 x 128)",
        group="optim",
        flags=("-b",),
    )
    opt: str = option("adamw", "timm optimizer name", group="optim", metavar="NAME")
    lr: float | None = option(
        None,
        "absolute learning rate (default: --base-lr scaled by the global batch / --lr-base-size)",
        group="optim",
    )
    base_lr: float = option(1e-3, "lr at --lr-base-size images per step", group="optim")
    lr_base_size: int = option(1024, "global batch the base lr refers to", group="optim")
    weight_decay: float = option(
        0.05, "weight decay (not on norms, biases, layer scales)", group="optim", flags=("--wd",)
    )
    momentum: float = option(0.9, "optimizer momentum", group="optim")
    opt_eps: float = option(1e-8, "optimizer epsilon", group="optim")
    clip_grad: float | None = option(
        None, "gradient clipping value (off by default)", group="optim"
    )
    clip_mode: str = option("norm", "gradient clipping mode", group="optim", choices=CLIP_MODES)
    sched: str = option("cosine", "lr schedule", group="optim", choices=SCHED_CHOICES)
    epochs: int = option(
        300,
        "training epochs (on --resume: a larger value extends the run and re-plans the schedule)",
        group="optim",
    )
    warmup_epochs: int = option(5, "linear lr warmup epochs (capped below --epochs)", group="optim")
    warmup_lr: float = option(1e-6, "lr at the start of the warmup", group="optim")
    min_lr: float = option(1e-5, "lr at the end of the schedule", group="optim")
    cooldown_epochs: int = option(0, "epochs at --min-lr after the schedule", group="optim")
    sched_on_updates: bool = option(
        False, "step the lr schedule every update instead of every epoch", group="optim"
    )
    ema: bool = option(True, "keep an EMA of the weights", group="optim")
    ema_decay: float = option(
        0.9995,
        "EMA decay per update (made faster, with a warning, when the run is too short for it)",
        group="optim",
    )
    ema_warmup: bool = option(False, "timm's EMA decay warmup (fast at first)", group="optim")
    # distillation
    distill: str = option(
        "none", "knowledge distillation mode", group="distill", choices=DISTILL_CHOICES
    )
    teacher: str | None = option(
        None,
        "fastvit checkpoint, or a timm/torchvision model name",
        group="distill",
        metavar="CKPT|NAME",
    )
    teacher_weights: str | None = option(
        None, "weights file for a named teacher", group="distill", metavar="FILE"
    )
    distill_alpha: float = option(0.5, "weight of the distillation term", group="distill")
    distill_tau: float = option(1.0, "softmax temperature of soft distillation", group="distill")
    # runtime
    amp: str = option("none", "mixed precision", group="run", choices=AMP_CHOICES)
    # NHWC memory format: on CPU (oneDNN) FastViT trains 1.3-1.9x faster than NCHW at 32-256 px
    # (benchmarks/bench_train.py); CUDA not measured yet. Opt out with --no-channels-last.
    channels_last: bool = option(
        True, "train in NHWC memory format (default; --no-channels-last for NCHW)", group="run"
    )
    device: str = option("auto", "auto, cpu, cuda or cuda:N", group="run")
    threads: int | None = option(
        None,
        "CPU threads per process (default: torch's; 1 helps on a busy machine)",
        group="run",
        metavar="N",
    )
    sync_bn: bool = option(False, "synchronised BatchNorm under torchrun", group="run")
    seed: int = option(
        42, "seed of the run (initial weights, data order, augmentation, split)", group="run"
    )
    output: str | None = option(
        None,
        "run directory (default runs/<model>_<dataset>; on --resume the checkpoint's directory)",
        group="run",
        flags=("-o",),
        metavar="DIR",
    )
    overwrite: bool = option(
        False,
        "start a new run in an --output that holds a previous run "
        "(its run files are removed first)",
        group="run",
        action="store_true",
    )
    resume: str | None = option(
        None,
        "continue a run from its last.pt (in the same directory unless --output is given)",
        group="run",
        metavar="CKPT",
    )
    limit_train_batches: int | None = option(
        None, "at most N batches per epoch (quick runs)", group="run", metavar="N"
    )
    limit_val_batches: int | None = option(
        None, "at most N val batches per evaluation", group="run", metavar="N"
    )
    progress: bool = option(True, "progress bars (shown only on a terminal)", group="run")
    tensorboard: bool = option(True, "write TensorBoard logs", group="run")
    plot: bool = option(True, "write curves.png each epoch", group="run")
    recipe: str = option(
        "imagenet",
        "preset (default: digits without data, imagenet with --data)",
        group="aug",
        choices=RECIPE_NAMES,
    )
    # free-form notes stored with the run (library only, no option)
    extra: dict[str, Any] = field(default_factory=dict, metadata={"cli": False})

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON/pickle-safe dict (tuples become lists)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Rebuild a config from ``to_dict`` output; unknown keys (older/newer runs) dropped."""
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        for k in ("mean", "std", "scale", "ratio"):
            if kw.get(k) is not None:
                kw[k] = tuple(kw[k])
        return cls(**kw)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    @property
    def uses_digits(self) -> bool:
        return self.data is None and self.train_dir is None and self.val_dir is None


# Overrides applied on top of the dataclass defaults.
RECIPES: dict[str, dict[str, Any]] = {
    # Official FastViT ImageNet-1k recipe; the paper's T8..SA36 runs used mixup 0.2.
    "imagenet": {},
    # Embedded digits: 32 px, no flips (digits are not mirror-symmetric), light crops,
    # per-update cosine schedule, fast EMA. FastViT-T8 reaches >= 99% val top-1.
    "digits": {
        "input_size": 32,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "scale": (0.75, 1.0),
        "ratio": (0.9, 1.1),
        "hflip": 0.0,
        "auto_augment": None,
        "color_jitter": 0.0,
        "reprob": 0.0,
        "mixup": 0.0,
        "cutmix": 0.0,
        "smoothing": 0.1,
        "drop_path": 0.0,
        "batch_size": 64,
        "base_lr": 2e-3,
        "lr_base_size": 64,
        "weight_decay": 0.05,
        "epochs": 10,
        "warmup_epochs": 1,
        "warmup_lr": 1e-5,
        "min_lr": 1e-5,
        "sched_on_updates": True,
        "ema": True,
        "ema_decay": 0.99,
        "ema_warmup": True,
        "workers": 0,
    },
}


def recipe_config(name: str, **overrides: Any) -> TrainConfig:
    """A config from recipe ``name`` with ``overrides`` (None values are ignored)."""
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; choose one of: {', '.join(RECIPES)}")
    values = dict(RECIPES[name])
    values.update({k: v for k, v in overrides.items() if v is not None})
    values["recipe"] = name
    names = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown config field(s): {', '.join(unknown)}")
    return TrainConfig(**values)


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(
            f"unknown --{name.replace('_', '-')} value {value!r}; use one of: {', '.join(choices)}"
        )


def validate_config(cfg: TrainConfig) -> None:
    """Raise ConfigError (one line) for any value that cannot work, before anything is built."""
    _choice("amp", cfg.amp, AMP_CHOICES)
    _choice("distill", cfg.distill, DISTILL_CHOICES)
    _choice("clip_mode", cfg.clip_mode, CLIP_MODES)
    _choice("sched", cfg.sched, SCHED_CHOICES)
    _choice("check_images", cfg.check_images, CHECK_IMAGES_CHOICES)
    _choice("mixup_mode", cfg.mixup_mode, MIXUP_MODES)
    for f in fields(cfg):  # nan/inf pass every comparison below; refuse them first
        v = getattr(cfg, f.name)
        values = v if isinstance(v, tuple) else (v,)
        if any(isinstance(x, float) and not math.isfinite(x) for x in values):
            raise ConfigError(f"--{f.name.replace('_', '-')} must be a finite number, got {v}")
    if cfg.input_size < 32:
        raise ConfigError(
            f"input size {cfg.input_size} is too small; FastViT downsamples by 32, use >= 32"
        )
    if cfg.batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {cfg.batch_size}")
    if cfg.epochs < 1:
        raise ConfigError(f"epochs must be at least 1, got {cfg.epochs}")
    if cfg.warmup_epochs < 0 or cfg.cooldown_epochs < 0:
        raise ConfigError("warmup and cooldown epochs must be >= 0")
    for name in ("lr", "base_lr"):
        v = getattr(cfg, name)
        if v is not None and v <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {v}")
    if cfg.lr_base_size < 1:
        raise ConfigError(f"--lr-base-size must be at least 1, got {cfg.lr_base_size}")
    if cfg.weight_decay < 0:
        raise ConfigError(f"weight decay must be >= 0, got {cfg.weight_decay}")
    for name in ("drop", "reprob", "hflip", "mixup_prob", "mixup_switch_prob", "smoothing"):
        v = getattr(cfg, name)
        if not 0.0 <= v <= 1.0:
            raise ConfigError(f"--{name.replace('_', '-')} must be in [0, 1], got {v}")
    if cfg.drop_path is not None and not 0.0 <= cfg.drop_path < 1.0:
        raise ConfigError(f"--drop-path must be in [0, 1), got {cfg.drop_path}")
    if cfg.mixup < 0 or cfg.cutmix < 0:
        raise ConfigError("--mixup and --cutmix alphas must be >= 0")
    if (cfg.mixup > 0 or cfg.cutmix > 0) and cfg.batch_size % 2:
        raise ConfigError(f"mixup/cutmix need an even batch size, got {cfg.batch_size}")
    lo, hi = cfg.scale
    if not 0.0 < lo <= hi <= 1.0:
        raise ConfigError(
            f"--scale MIN MAX must satisfy 0 < MIN <= MAX <= 1 (area fractions), got {lo:g} {hi:g}"
        )
    lo, hi = cfg.ratio
    if not 0.0 < lo <= hi:
        raise ConfigError(f"--ratio MIN MAX must satisfy 0 < MIN <= MAX, got {lo:g} {hi:g}")
    if cfg.std is not None and min(cfg.std) <= 0:
        raise ConfigError(
            f"--std values must be positive (inputs are divided by them), got "
            f"{' '.join(f'{v:g}' for v in cfg.std)}"
        )
    if not 0.0 < cfg.val_split < 1.0:
        raise ConfigError(f"--val-split must be in (0, 1), got {cfg.val_split}")
    if not 0.0 <= cfg.ema_decay < 1.0:
        raise ConfigError(f"--ema-decay must be in [0, 1), got {cfg.ema_decay}")
    if cfg.crop_pct is not None and not 0.0 < cfg.crop_pct <= 1.0:
        raise ConfigError(f"--crop-pct must be in (0, 1], got {cfg.crop_pct}")
    if not 0.0 <= cfg.max_bad_share <= 1.0:
        raise ConfigError(f"--max-bad-share must be in [0, 1], got {cfg.max_bad_share}")
    if cfg.freeze_stages < 0 or cfg.freeze_stages > 4:
        raise ConfigError(f"--freeze-stages must be between 0 and 4, got {cfg.freeze_stages}")
    if cfg.threads is not None and cfg.threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {cfg.threads}")
    if cfg.workers is not None and cfg.workers < 0:
        raise ConfigError(f"--workers must be >= 0, got {cfg.workers}")
    for name in ("limit_train_batches", "limit_val_batches"):
        v = getattr(cfg, name)
        if v is not None and v < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {v}")
    if cfg.clip_grad is not None and cfg.clip_grad <= 0:
        raise ConfigError(f"--clip-grad must be positive, got {cfg.clip_grad}")
    if cfg.distill != "none" and not cfg.teacher:
        raise ConfigError(f"--distill {cfg.distill} needs --teacher (a checkpoint or model name)")
    if not 0.0 <= cfg.distill_alpha <= 1.0:
        raise ConfigError(f"--distill-alpha must be in [0, 1], got {cfg.distill_alpha}")
    if cfg.distill_tau <= 0:
        raise ConfigError(f"--distill-tau must be positive, got {cfg.distill_tau}")
    if cfg.device not in ("auto", "cpu") and not cfg.device.startswith("cuda"):
        raise ConfigError(f"unknown --device {cfg.device!r}; use auto, cpu or cuda[:N]")
    if cfg.data is None and (cfg.train_dir is None) != (cfg.val_dir is None):
        raise ConfigError("pass both --train-dir and --val-dir (or --data ROOT)")
    from timm.optim import list_optimizers

    if cfg.opt.lower() not in set(list_optimizers()):
        raise ConfigError(f"unknown optimizer {cfg.opt!r}; e.g. adamw, sgd, lamb, adan")
    check_train_memory(cfg)


def check_train_memory(cfg: TrainConfig) -> None:
    """Refuse an input size / batch whose training activations cannot fit in memory.

    Estimated on the meta device for the run's variant (the smallest, fastvit_t8, while the
    variant is still unknown: taken from --init/--resume), so the refusal is never too eager.
    """
    from fastvit.models import list_models
    from fastvit.models.complexity import check_activation_memory

    variant = cfg.model if cfg.model in list_models() else DEFAULT_MODEL
    check_activation_memory(
        variant, cfg.input_size, cfg.batch_size, training=True, device=cfg.device
    )


# --------------------------------------------------------------------------- resume policy
# Options that only say where and how a run executes: a resumed run may change them freely
# (they are applied from the next epoch on and listed in the banner).
RESUME_RUNTIME = frozenset(
    {
        "output",
        "resume",
        "overwrite",
        "init",
        "workers",
        "threads",
        "progress",
        "tensorboard",
        "plot",
        "device",
        "limit_val_batches",
        "check_images",
        "max_bad_share",
        "data",
        "train_dir",
        "val_dir",
        "amp",
        "channels_last",
        "grad_checkpointing",
        "sync_bn",
        "extra",
    }
)
# Optional fields whose None means "the variant's / the run's value".
_UNSET_MEANS_STORED = frozenset({"model", "drop_path", "crop_pct", "mean", "std"})


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _show(value: Any) -> str:
    if value is None:
        return "default"
    if isinstance(value, tuple):
        return " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def resume_config(
    stored: TrainConfig, requested: TrainConfig, done_epochs: int
) -> tuple[TrainConfig, list[str]]:
    """The config a resumed run continues with, and one note per option that changed.

    Runtime options (:data:`RESUME_RUNTIME`) are applied; a different ``--epochs`` (not below the
    epochs already run) extends or shortens the run and re-plans the lr schedule over the new
    length. Any other change (lr, batch size, seed, input size, augmentation, ...) would make the
    resumed run differ from what its first epochs were trained for, so it is refused with a
    one-line reason.
    """
    changes: dict[str, Any] = {}
    notes: list[str] = []
    for f in fields(TrainConfig):
        old, new = getattr(stored, f.name), getattr(requested, f.name)
        if f.name in _UNSET_MEANS_STORED and new is None:
            continue
        if new == old:
            continue
        changes[f.name] = new
        if f.name in ("output", "resume", "overwrite", "extra", "progress", "init"):
            continue
        if f.name in RESUME_RUNTIME:
            notes.append(f"{_flag(f.name)} {_show(old)} -> {_show(new)}")
        elif f.name == "epochs":
            if new < done_epochs:
                raise ConfigError(
                    f"cannot resume with --epochs {new}: the run already completed {done_epochs} "
                    f"epochs; pass --epochs {done_epochs} or more"
                )
            notes.append(f"--epochs {old} -> {new} (lr schedule re-planned over {new} epochs)")
        elif f.name == "model":
            raise ConfigError(
                f"cannot resume: the checkpoint is a {old} run but --model is {new}; drop --model "
                "or start a new run with another --output"
            )
        else:
            raise ConfigError(
                f"cannot change {_flag(f.name)} ({_show(old)} -> {_show(new)}) when resuming: the "
                f"run's first {done_epochs} epochs were trained with {_show(old)}; resume without "
                "it, or start a new run from this one's weights with --init RUN/model.safetensors"
            )
    return stored.replace(**changes), notes
