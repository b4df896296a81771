"""Training engine: config and recipes, ``train`` / ``train_one_epoch`` / ``evaluate``."""

from __future__ import annotations

from fastvit.train.config import RECIPES, TrainConfig, recipe_config, validate_config
from fastvit.train.engine import (
    TrainingDiverged,
    TrainingTerminated,
    TrainResult,
    evaluate,
    train,
    train_one_epoch,
)
from fastvit.train.final import FinalReport
from fastvit.train.state import RunState

__all__ = [
    "RECIPES",
    "FinalReport",
    "RunState",
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "TrainingTerminated",
    "evaluate",
    "format_summary",
    "recipe_config",
    "train",
    "train_one_epoch",
    "validate_config",
]


def format_summary(result: TrainResult) -> str:
    """Multi-line end-of-run summary (what the CLI prints)."""
    cfg = result.config
    lines = [
        f"done in {result.wall_time_s:.1f} s: {cfg.model} on {'digits' if cfg.uses_digits else cfg.data or cfg.train_dir} "
        f"({result.num_train} train / {result.num_val} val images, {len(result.classes)} classes, "
        f"{cfg.input_size}px, {result.epochs_run} epochs run)",
        f"  best val top-1 {result.best_top1:.2f}%  top-5 {result.best_top5:.2f}%  "
        f"(epoch {result.best_epoch}, {'EMA' if result.best_is_ema else 'model'} weights)",
    ]
    f = result.final
    if f is not None:
        lines += [
            f"  reparameterized: {f.params_unfused / 1e6:.3f}M -> {f.params_fused / 1e6:.3f}M "
            f"params; val top-1 {f.top1:.2f}%; {f.mismatches}/{f.num_val} predictions differ "
            f"from the training form, max |logit diff| {f.max_logit_diff:.2e}",
            f"  saved {f.model_path} (training form) and {f.reparam_path} (fused)",
        ]
    out = result.output_dir
    files = ["last.pt", "best.pt", "metrics.csv", "summary.json"]
    files += ["curves.png"] if cfg.plot else []
    files += ["tensorboard/"] if cfg.tensorboard else []
    lines.append(f"  run files in {out}/: {', '.join(files)}")
    if f is not None:
        lines.append(f"next: fastvit eval {f.reparam_path}")
    return "\n".join(lines)
