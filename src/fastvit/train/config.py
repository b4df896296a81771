"""Training configuration: one dataclass, and named recipes that fill it in.

The dataclass defaults are the official FastViT ImageNet recipe (Vasu et al., 2023: AdamW,
lr 1e-3 per 1024 images, weight decay 0.05, 300 epochs of cosine with 5 warmup epochs,
RandAugment, random erasing, mixup/cutmix, label smoothing, EMA). ``RECIPES['digits']`` is the
small recipe for the embedded digits dataset that ``fastvit train`` uses with no data argument.
Every field can be overridden; the whole config is stored in each checkpoint.
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
DEFAULT_MODEL = "fastvit_t8"


@dataclass
class TrainConfig:
    """Everything a training run depends on. Defaults: the official ImageNet recipe."""

    # model
    model: str | None = None  # None: taken from --init/--resume, else fastvit_t8
    drop_path: float | None = None  # None: the variant's recipe value (e.g. SA36 0.2, MA36 0.35)
    drop: float = 0.0
    init: str | None = None  # fine-tune from this checkpoint (head re-initialised if needed)
    freeze_stages: int = 0
    grad_checkpointing: bool = False
    # data (None everywhere: the embedded digits)
    data: str | None = None
    train_dir: str | None = None
    val_dir: str | None = None
    input_size: int = 256
    crop_pct: float | None = None  # None: the variant's (0.9)
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    check_images: str = "auto"
    max_bad_share: float = 0.01
    workers: int | None = None  # None: 0 for digits / CPU-only, else min(8, cores)
    # augmentation
    no_aug: bool = False
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"
    color_jitter: float = 0.4
    reprob: float = 0.25
    mixup: float = 0.8
    cutmix: float = 1.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_mode: str = "batch"
    smoothing: float = 0.1
    # optimisation
    batch_size: int = 128  # per process; the official global batch is 1024 (8 x 128)
    opt: str = "adamw"
    lr: float | None = None  # None: base_lr * global_batch / lr_base_size
    base_lr: float = 1e-3
    lr_base_size: int = 1024
    weight_decay: float = 0.05
    momentum: float = 0.9
    opt_eps: float = 1e-8
    clip_grad: float | None = None
    clip_mode: str = "norm"
    sched: str = "cosine"
    epochs: int = 300
    warmup_epochs: int = 5
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    cooldown_epochs: int = 0
    sched_on_updates: bool = False  # step the lr every update instead of every epoch
    ema: bool = True
    ema_decay: float = 0.9995
    ema_warmup: bool = False
    # distillation
    distill: str = "none"
    teacher: str | None = None  # fastvit checkpoint, or a timm/torchvision model name
    teacher_weights: str | None = None  # weights file for a timm/torchvision teacher name
    distill_alpha: float = 0.5
    distill_tau: float = 1.0
    # runtime
    amp: str = "none"
    channels_last: bool = False
    device: str = "auto"
    threads: int | None = None  # CPU threads per process (None: torch's default)
    sync_bn: bool = False
    seed: int = 42
    output: str | None = None  # None: runs/<model>_<dataset>
    resume: str | None = None
    limit_train_batches: int | None = None
    limit_val_batches: int | None = None
    progress: bool = True
    tensorboard: bool = True
    plot: bool = True
    recipe: str = "imagenet"
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes stored with the run

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
    # per-update cosine schedule, fast EMA, channels-last. FastViT-T8 reaches >= 99% val top-1.
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
        "channels_last": True,  # ~1.9x faster on CPU at 32 px (oneDNN prefers NHWC)
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
        raise ConfigError(f"unknown --{name.replace('_', '-')} value {value!r}; use one of: "
                          f"{', '.join(choices)}")


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
        raise ConfigError(f"--scale MIN MAX must satisfy 0 < MIN <= MAX <= 1 (area fractions), "
                          f"got {lo:g} {hi:g}")
    lo, hi = cfg.ratio
    if not 0.0 < lo <= hi:
        raise ConfigError(f"--ratio MIN MAX must satisfy 0 < MIN <= MAX, got {lo:g} {hi:g}")
    if cfg.std is not None and min(cfg.std) <= 0:
        raise ConfigError(f"--std values must be positive (inputs are divided by them), got "
                          f"{' '.join(f'{v:g}' for v in cfg.std)}")
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
    check_activation_memory(variant, cfg.input_size, cfg.batch_size, training=True,
                            device=cfg.device)
