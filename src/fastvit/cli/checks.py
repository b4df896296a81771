"""Option checks shared by the sub-commands: one-line ConfigError before any work starts."""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence

from fastvit.errors import ConfigError
from fastvit.threads import ThreadChoice, apply_threads

MIN_SIZE = 32  # FastViT downsamples by 32


def check_size(value: int | None, option: str = "--size") -> None:
    """Input sizes below 32 px leave nothing after the stem and four downsamplings."""
    if value is not None and value < MIN_SIZE:
        raise ConfigError(
            f"{option} {value} is too small; FastViT downsamples by 32, use {MIN_SIZE} or more"
        )


def check_min(value: int | float | None, option: str, minimum: int | float) -> None:
    """``value`` (when given) must be finite and at least ``minimum``."""
    if value is not None and not (math.isfinite(value) and value >= minimum):
        raise ConfigError(f"{option} must be at least {minimum}, got {value}")


def check_positive(value: float | None, option: str) -> None:
    """``value`` (when given) must be a finite number above 0."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{option} must be a positive number, got {value}")


def check_mean_std(mean: Sequence[float] | None, std: Sequence[float] | None) -> None:
    """Mean finite, std finite and non-zero (normalization divides by it)."""
    if mean is not None and not all(math.isfinite(v) for v in mean):
        raise ConfigError(f"--mean must be finite numbers, got {' '.join(map(str, mean))}")
    if std is not None and not all(math.isfinite(v) and v > 0 for v in std):
        raise ConfigError(
            f"--std must be positive numbers (images are divided by it), got "
            f"{' '.join(map(str, std))}"
        )


def check_crop_pct(value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise ConfigError(f"--crop-pct must be in (0, 1], got {value}")


def setup_threads(requested: int | None) -> ThreadChoice:
    """Pick and apply the thread count (see :mod:`fastvit.threads`); returns the choice for the
    command's setup line. Nothing is printed here, so a bad-input error stays a single line."""
    check_min(requested, "--threads", 1)
    return apply_threads(requested)


def warn_threads(command: str, choice: ThreadChoice, *, timed: bool = False) -> None:
    """One stderr line when the machine was oversubscribed (printed after the work); for a
    command that reports no speed (``timed=False``) only when ``--threads`` caused it."""
    warning = choice.warning(timed)
    if warning:
        print(f"fastvit {command}: warning: {warning}", file=sys.stderr)
