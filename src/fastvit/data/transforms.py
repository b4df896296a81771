"""Train and eval transforms, built by timm's ``create_transform`` (nothing hand-written).

Training: random-resized crop, flips, RandAugment or colour jitter, normalisation, random
erasing. Eval: resize to ``input_size / crop_pct`` and center crop, then normalisation.
Mixup/CutMix (with label smoothing folded into the soft targets) come from ``timm.data.Mixup``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from fastvit.card import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from fastvit.errors import ConfigError

INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "random")


def create_train_transform(
    input_size: int,
    *,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    hflip: float = 0.5,
    auto_augment: str | None = "rand-m9-mstd0.5-inc1",
    color_jitter: float = 0.4,
    re_prob: float = 0.25,
    interpolation: str = "bicubic",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    no_aug: bool = False,
) -> Callable:
    """Training transform (PIL image -> normalised tensor) from timm."""
    from timm.data import create_transform

    if interpolation not in INTERPOLATIONS:
        raise ConfigError(
            f"unknown interpolation {interpolation!r}; use one of {', '.join(INTERPOLATIONS)}"
        )
    if auto_augment:
        _check_auto_augment(auto_augment)
    transform = create_transform(
        input_size,
        is_training=True,
        no_aug=no_aug,
        scale=tuple(scale),
        ratio=tuple(ratio),
        hflip=hflip,
        color_jitter=color_jitter if color_jitter else None,
        auto_augment=auto_augment or None,
        interpolation=interpolation,
        mean=tuple(mean),
        std=tuple(std),
        re_prob=re_prob,
        re_mode="pixel",
        re_count=1,
    )
    keep_posterize_in_range(transform)
    return transform


#: timm's posterize ops (their argument is the number of bits kept).
POSTERIZE_OPS = ("Posterize", "PosterizeIncreasing", "PosterizeOriginal")


def _augment_ops(transform: object) -> list:
    """timm auto-augment ops (``AugmentOp``) anywhere in a (nested) Compose."""
    ops: list = []
    for t in getattr(transform, "transforms", [transform]):
        if t is not transform and hasattr(t, "transforms"):
            ops += _augment_ops(t)
        ops += list(getattr(t, "ops", []))  # RandAugment, AugMixAugment
        for sub in getattr(t, "policy", []):  # AutoAugment: a list of sub-policies
            ops += list(sub)
    return ops


def keep_posterize_in_range(transform: object) -> None:
    """Keep timm's posterize at 1 bit or more (in place).

    timm maps the strongest magnitude of ``PosterizeIncreasing`` (the default recipe's
    ``rand-...-inc1``) and the weakest of ``Posterize`` to 0 bits. Old Pillow turned that into a
    black image; Pillow >= 13 raises "bits must be between 1 and 8", which crashed training at
    the first such sample (epoch 2 of the ImageNet recipe, again on every resume). Clamping to
    1 bit keeps the policy otherwise identical (it only affects the draws at the magnitude
    bound) and works for user-given specs too.
    """
    for op in _augment_ops(transform):
        if getattr(op, "name", None) in POSTERIZE_OPS and not getattr(op, "_fastvit_clamped", 0):
            level_fn = op.level_fn

            def clamped(level: float, hparams: dict, _fn: Callable = level_fn) -> tuple:
                bits, *rest = _fn(level, hparams)
                return (max(1, int(bits)), *rest)

            op.level_fn = clamped
            op._fastvit_clamped = True


def eval_transform(prep: Preprocessing) -> Callable:
    """timm's evaluation transform for ``prep`` (PIL image -> normalized CHW float tensor):
    resize the shorter side to ``size / crop_pct``, crop (``crop_mode``), normalize."""
    from timm.data import create_transform

    return create_transform(
        input_size=prep.input_size,
        is_training=False,
        crop_pct=prep.crop_pct,
        crop_mode=prep.crop_mode,
        interpolation=prep.interpolation,
        mean=prep.mean,
        std=prep.std,
    )


def create_eval_transform(
    input_size: int,
    *,
    crop_pct: float = 0.9,
    interpolation: str = "bicubic",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Callable:
    """Eval transform from separate values (see :func:`eval_transform`)."""
    if not 0.0 < crop_pct <= 1.0:
        raise ConfigError(f"crop_pct must be in (0, 1], got {crop_pct}")
    if interpolation == "random":
        interpolation = "bicubic"
    return eval_transform(
        Preprocessing(
            (len(mean), input_size, input_size),
            crop_pct,
            interpolation=interpolation,
            mean=mean,
            std=std,
        )
    )


def _check_auto_augment(spec: str) -> None:
    """Reject an auto-augment string timm would fail on, with a one-line message."""
    from timm.data.auto_augment import (
        augment_and_mix_transform,
        auto_augment_transform,
        rand_augment_transform,
    )

    head = spec.split("-")[0]
    builders = {"rand": rand_augment_transform, "augmix": augment_and_mix_transform}
    try:
        builder = builders.get(head, auto_augment_transform)
        builder(spec, {"translate_const": 10, "img_mean": (124, 116, 104)})
    except Exception as e:
        raise ConfigError(
            f"invalid --auto-augment {spec!r} ({e}); e.g. rand-m9-mstd0.5-inc1, or 'none'"
        ) from e


def create_mixup(
    mixup: float,
    cutmix: float,
    *,
    num_classes: int,
    label_smoothing: float = 0.1,
    prob: float = 1.0,
    switch_prob: float = 0.5,
    mode: str = "batch",
) -> Callable | None:
    """timm Mixup/CutMix (returns soft targets), or None when both alphas are 0."""
    if mixup <= 0 and cutmix <= 0:
        return None
    from timm.data import Mixup

    return Mixup(
        mixup_alpha=mixup,
        cutmix_alpha=cutmix,
        prob=prob,
        switch_prob=switch_prob,
        mode=mode,
        label_smoothing=label_smoothing,
        num_classes=num_classes,
    )
