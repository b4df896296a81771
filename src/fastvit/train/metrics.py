"""Per-epoch metrics: ``metrics.csv``, TensorBoard scalars and a PNG of the curves.

Only rank 0 writes. The history lives in the training checkpoint too, so a resumed run
rewrites the same ``metrics.csv`` rows instead of appending duplicates.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from pathlib import Path
from typing import Any

COLUMNS = (
    "epoch", "train_loss", "lr", "val_loss", "val_top1", "val_top5",
    "ema_val_loss", "ema_top1", "ema_top5", "train_img_s", "epoch_time_s",
)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
        self._tb = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.output_dir / "tensorboard"))

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
        if self._tb is not None:
            for k, v in row.items():
                if k != "epoch" and v is not None:
                    self._tb.add_scalar(k, v, row["epoch"])
            self._tb.flush()
        if self.plot:
            plot_curves(self.history, self.png_path)

    def _write_csv(self) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(COLUMNS), extrasaction="ignore")
        writer.writeheader()
        for r in self.history:
            writer.writerow({k: _fmt(r.get(k)) for k in COLUMNS})
        _atomic_write_bytes(self.csv_path, buf.getvalue().encode())

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else v


def plot_curves(history: list[dict[str, Any]], path: str | Path) -> None:
    """Loss (train/val) and top-1 (model/EMA) against epoch, side by side, as a PNG."""
    from matplotlib.figure import Figure  # no pyplot: leaves the user's backend alone

    epochs = [r["epoch"] for r in history]

    def series(key: str) -> list[float]:
        return [r.get(key) if r.get(key) is not None else float("nan") for r in history]

    fig = Figure(figsize=(10, 4))
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(epochs, series("train_loss"), marker="o", label="train")
    ax_loss.plot(epochs, series("val_loss"), marker="o", label="val")
    if any(r.get("ema_val_loss") is not None for r in history):
        ax_loss.plot(epochs, series("ema_val_loss"), marker="o", label="val (EMA)")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    ax_acc.plot(epochs, series("val_top1"), marker="o", label="val top-1")
    if any(r.get("ema_top1") is not None for r in history):
        ax_acc.plot(epochs, series("ema_top1"), marker="o", label="val top-1 (EMA)")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.legend()
    ax_acc.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    _atomic_write_bytes(Path(path), buf.getvalue())
