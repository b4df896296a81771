"""Shared pieces of every exporter: fusing, loading, parity checks and real check inputs.

Real check inputs come from :mod:`fastvit.data` (images of a folder, or the bundled digits),
run through the model's own :class:`~fastvit.card.Preprocessing`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fastvit.card import ModelCard
from fastvit.errors import CheckpointError, ConfigError, ReparamError

#: Largest max-abs difference between an exported model and PyTorch that we accept.
PARITY_TOL = 1e-4


@dataclass
class ExportReport:
    """What an exporter wrote and how closely it matches the PyTorch model."""

    path: Path
    format: str
    max_abs_diff_random: float | None = None
    max_abs_diff_real: float | None = None
    tolerance: float = PARITY_TOL
    details: dict[str, object] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        diffs = [d for d in (self.max_abs_diff_random, self.max_abs_diff_real) if d is not None]
        return all(d <= self.tolerance for d in diffs)

    def summary(self) -> str:
        """Human-readable multi-line summary (printed by ``fastvit export``)."""
        lines = [f"wrote {self.format} model to {self.path}"]
        for name, d in (("random", self.max_abs_diff_random), ("real", self.max_abs_diff_real)):
            if d is not None:
                verdict = "ok" if d <= self.tolerance else "FAILED"
                lines.append(f"  max |diff| vs PyTorch on {name} inputs: {d:.2e} "
                             f"(tolerance {self.tolerance:.0e}, {verdict})")
        for k, v in self.details.items():
            lines.append(f"  {k}: {v}")
        return "\n".join(lines)


def fuse_for_export(model: nn.Module) -> nn.Module:
    """Return the fully fused, eval-mode form of ``model`` (a copy if fusing was needed).

    Exports are always made from the inference form: fewer ops, no BatchNorm, and the
    same numbers as the training form up to float rounding.
    """
    import fastvit

    if not getattr(model, "inference_mode", False) or _has_batchnorm(model):
        model = fastvit.reparameterize(model)
    model.eval()
    if _has_batchnorm(model):
        raise ReparamError("model still contains BatchNorm after reparameterization; "
                           "export needs a FastViT model built by fastvit.create_model")
    return model


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def load_source(source: str | Path | nn.Module) -> nn.Module:
    """A model from a module or a checkpoint path (any layout ``fastvit.load_model`` reads)."""
    if isinstance(source, nn.Module):
        return source
    path = Path(source)
    if path.suffix.lower() == ".onnx":
        raise ConfigError(f"{path} is already an ONNX model; export needs a PyTorch checkpoint")
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path")
    import fastvit

    return fastvit.load_model(path)  # restores the saved preprocessing into pretrained_cfg


def random_inputs(card: ModelCard, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """Standard-normal inputs of the model's input size (what normalized images look like)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *card.input_size, generator=g)


def real_inputs(card: ModelCard, batch: int = 4, image_dir: str | Path | None = None
                ) -> torch.Tensor:
    """Real images run through the model's own preprocessing.

    Images come from ``image_dir`` when given, otherwise from the digits val split (real
    scans, available offline; :class:`fastvit.data.DigitsDataset`).
    """
    from fastvit.data import DigitsDataset, eval_transform, list_images, load_image

    prep = card.preprocessing
    transform = eval_transform(prep)
    if image_dir is not None:
        paths = list_images(image_dir)[:batch]
        return torch.stack([transform(load_image(p, prep.in_chans)) for p in paths])
    ds = DigitsDataset("val", prep.input_size[-1], transform, in_chans=prep.in_chans, limit=batch)
    return torch.stack([ds[i][0] for i in range(len(ds))])


def max_abs_diff(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    b = b.detach().cpu().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    if a.shape != b.shape:
        raise ReparamError(f"output shapes differ: {a.shape} vs {b.shape}")
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())
