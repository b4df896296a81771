"""Per-epoch metrics: ``metrics.csv``, TensorBoard scalars and a PNG of the curves.

Only rank 0 writes. The history lives in the training checkpoint too, so a resumed run
rewrites the same ``metrics.csv`` rows instead of appending duplicates, and its TensorBoard
writer purges the events logged after the resumed epoch (by the interrupted process).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import torch

from fastvit.fileio import write_bytes_atomic

COLUMNS = (
    "epoch",
    "train_loss",
    "lr",
    "val_loss",
    "val_top1",
    "val_top5",
    "ema_val_loss",
    "ema_top1",
    "ema_top5",
    "train_img_s",
    "epoch_time_s",
)


def topk_correct(
    logits: torch.Tensor, targets: torch.Tensor, ks: tuple[int, ...] = (1, 5)
) -> list[torch.Tensor]:
    """Number of samples whose target is among the top-k logits, for each k (k is capped at
    the number of classes). The one top-k accuracy helper of training and evaluation."""
    kmax = min(max(ks), logits.shape[1])
    hits = logits.topk(kmax, dim=1).indices == targets[:, None]
    return [hits[:, : min(k, kmax)].any(dim=1).sum() for k in ks]


class MetricsLogger:
    """Collects one row per epoch and writes csv / TensorBoard / PNG (when enabled)."""

    def __init__(
        self,
        output_dir: str | Path,
        *,
        enabled: bool = True,
        tensorboard: bool = True,
        plot: bool = True,
        history: list[dict[str, Any]] | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.enabled = enabled
        self.plot = plot
        self.history: list[dict[str, Any]] = list(history or [])
        self.tensorboard = enabled and tensorboard
        self._tb = None

    def _writer(self, epoch: int):
        """The TensorBoard writer, created at the first logged epoch (a run that fails before
        leaves no log folder). Events at or after the first epoch this process logs are purged,
        so the epochs an interrupted process logged after its last checkpoint do not repeat."""
        if self._tb is None and self.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(
                log_dir=str(self.output_dir / "tensorboard"),
                purge_step=epoch if epoch > 1 else None,
            )
        return self._tb

    @property
    def csv_path(self) -> Path:
        return self.output_dir / "metrics.csv"

    @property
    def png_path(self) -> Path:
        return self.output_dir / "curves.png"

    def log(self, row: dict[str, Any]) -> None:
        """Record one epoch and refresh every output."""
        self.history = [r for r in self.history if r["epoch"] < row["epoch"]] + [row]
        if not self.enabled:
            return
        self._write_csv()
        tb = self._writer(row["epoch"])
        if tb is not None:
            for k, v in row.items():
                if k != "epoch" and v is not None:
                    tb.add_scalar(k, v, row["epoch"])
            tb.flush()
        if self.plot:
            plot_curves(self.history, self.png_path)

    def _write_csv(self) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(COLUMNS), extrasaction="ignore")
        writer.writeheader()
        for r in self.history:
            writer.writerow({k: _fmt(r.get(k)) for k in COLUMNS})
        write_bytes_atomic(self.csv_path, buf.getvalue().encode())

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else v


# one colour per series, the same in both panels
COLOURS = {"train": "C0", "val": "C1", "ema": "C2"}


def curves_figure(history: list[dict[str, Any]]):
    """Loss (train/val/EMA val) and top-1 (val/EMA val) against epoch, side by side.

    The val and EMA series have the same colour in both panels, and epochs are integer ticks.
    """
    from matplotlib.figure import Figure  # no pyplot: leaves the user's backend alone
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in history]
    has_ema = any(r.get("ema_top1") is not None for r in history)

    def series(key: str) -> list[float]:
        return [r.get(key) if r.get(key) is not None else float("nan") for r in history]

    fig = Figure(figsize=(10, 4))
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(epochs, series("train_loss"), marker="o", color=COLOURS["train"], label="train")
    ax_loss.plot(epochs, series("val_loss"), marker="o", color=COLOURS["val"], label="val")
    if has_ema:
        ax_loss.plot(
            epochs, series("ema_val_loss"), marker="o", color=COLOURS["ema"], label="val (EMA)"
        )
    ax_loss.set_ylabel("loss")
    ax_acc.plot(epochs, series("val_top1"), marker="o", color=COLOURS["val"], label="val top-1")
    if has_ema:
        ax_acc.plot(
            epochs, series("ema_top1"), marker="o", color=COLOURS["ema"], label="val top-1 (EMA)"
        )
    ax_acc.set_ylabel("accuracy (%)")
    for ax in (ax_loss, ax_acc):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_curves(history: list[dict[str, Any]], path: str | Path) -> None:
    """Write :func:`curves_figure` as a PNG (atomically)."""
    buf = io.BytesIO()
    curves_figure(history).savefig(buf, format="png", dpi=90)
    write_bytes_atomic(Path(path), buf.getvalue())
