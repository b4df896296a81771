"""The state of a training run: everything the next epoch depends on, in one object.

:meth:`RunState.state_dict` is the one place a training checkpoint (``last.pt``/``best.pt``)
is built and :meth:`RunState.load_state_dict` the one place a run is restored from it: model
and EMA weights, optimizer, lr scheduler and grad-scaler state, the epoch and update counters,
the best accuracy so far, the metrics history, the RNG states, the classes and the config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fastvit.train.checkpoint import FORMAT, get_rng_state, set_rng_state
from fastvit.train.config import TrainConfig
from fastvit.train.modeling import model_state


def _no_best() -> dict[str, Any]:
    return {"top1": -1.0, "top5": 0.0, "epoch": 0, "ema": False}


@dataclass
class RunState:
    """A run's mutable state. ``model`` is the bare model (never a DDP wrapper)."""

    config: TrainConfig
    classes: list[str]
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any = None
    ema: Any = None  # timm ModelEmaV3
    scaler: torch.amp.GradScaler | None = None
    epoch: int = 0  # epochs completed
    global_step: int = 0  # optimizer updates completed
    best: dict[str, Any] = field(default_factory=_no_best)
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.epoch >= self.config.epochs

    def record(self, row: dict[str, Any], top: dict[str, float], use_ema: bool) -> bool:
        """Add one epoch's metrics; returns whether it is the best epoch so far."""
        self.epoch = int(row["epoch"])
        self.history = [r for r in self.history if r["epoch"] < row["epoch"]] + [row]
        if top["top1"] > self.best["top1"]:
            self.best = {
                "top1": top["top1"],
                "top5": top["top5"],
                "epoch": self.epoch,
                "ema": use_ema,
            }
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        """The training checkpoint: tensors and plain values only (loads weights_only)."""
        return {
            "format": FORMAT,
            "variant": self.config.model,
            "epoch": self.epoch,
            "global_step": self.global_step,
            "model": model_state(self.model),
            "ema": model_state(self.ema.module) if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "best": dict(self.best),
            "rng": get_rng_state(),
            "history": list(self.history),
            "classes": list(self.classes),
            "config": self.config.to_dict(),
        }

    def load_state_dict(self, ckpt: dict[str, Any], *, replan: bool = False) -> None:
        """Restore a run from :meth:`state_dict` output and position the lr schedule after its
        last completed update. ``replan``: the run's length changed, so the scheduler keeps
        the plan it was built with (over the new length) instead of the stored one."""
        self.model.load_state_dict(ckpt["model"])
        if self.ema is not None and ckpt.get("ema") is not None:
            self.ema.module.load_state_dict(ckpt["ema"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scheduler is not None and ckpt.get("scheduler") is not None and not replan:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt.get("scaler") is not None:
            self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.global_step = int(ckpt["epoch"]), int(ckpt["global_step"])
        self.best = dict(ckpt["best"])
        self.history = list(ckpt.get("history", []))
        set_rng_state(ckpt["rng"])
        if self.scheduler is not None:
            self.scheduler.step(self.epoch)
            if self.config.sched_on_updates:
                self.scheduler.step_update(self.global_step)
