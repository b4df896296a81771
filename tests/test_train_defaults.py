"""Fast training defaults (issue 14): channels-last is the default layout, with an opt-out."""

from __future__ import annotations

from fastvit.cli.main import build_parser
from fastvit.train.config import RECIPES, TrainConfig, recipe_config


def test_channels_last_is_the_default_in_one_place() -> None:
    assert TrainConfig().channels_last is True
    assert all("channels_last" not in r for r in RECIPES.values())  # no second place
    assert recipe_config("imagenet").channels_last and recipe_config("digits").channels_last


def test_channels_last_opt_out() -> None:
    args = build_parser().parse_args(["train", "--no-channels-last"])
    assert args.channels_last is False
    assert recipe_config("imagenet", channels_last=False).channels_last is False
