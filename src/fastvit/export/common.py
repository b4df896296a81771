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
from fastvit.errors import CheckpointError, ConfigError, FastViTError, ReparamError
from fastvit.reparam.walk import OutputDiff, image_like_inputs

#: Parity tolerance of an exported model against PyTorch, relative to the output scale:
#: ``max|diff| <= PARITY_TOL * (1 + max|output|)`` (see :class:`fastvit.reparam.OutputDiff`).
PARITY_TOL = 1e-5


@dataclass
class ExportReport:
    """What an exporter wrote and how closely it matches the PyTorch model."""

    path: Path
    format: str
    max_abs_diff_random: float | None = None
    max_abs_diff_real: float | None = None
    tolerance: float = PARITY_TOL  # relative to the output scale
    scale_random: float = 0.0  # max |PyTorch output| on the random inputs
    scale_real: float = 0.0
    details: dict[str, object] = field(default_factory=dict)

    def _checks(self) -> list[tuple[str, OutputDiff]]:
        return [
            (name, OutputDiff(d, scale))
            for name, d, scale in (
                ("random", self.max_abs_diff_random, self.scale_random),
                ("real", self.max_abs_diff_real, self.scale_real),
            )
            if d is not None
        ]

    @property
    def ok(self) -> bool:
        return all(d.ok(self.tolerance) for _, d in self._checks())

    def record(self, name: str, diff: OutputDiff) -> None:
        """Keep the worst difference seen on ``random*`` or ``real`` inputs."""
        kind = "random" if name.startswith("random") else "real"
        old = getattr(self, f"max_abs_diff_{kind}")
        if old is None or not diff.max_abs <= old:
            setattr(self, f"max_abs_diff_{kind}", diff.max_abs)
            setattr(self, f"scale_{kind}", diff.scale)

    def failure(self) -> str:
        """One line for a failed parity check (absolute and relative error)."""
        name, worst = next((n, d) for n, d in self._checks() if not d.ok(self.tolerance))
        return (
            f"{self.format} output differs from PyTorch on {name} inputs: "
            f"{worst.describe(self.tolerance)}; nothing was written. Please report this "
            "as a bug"
        )

    def summary(self) -> str:
        """Human-readable multi-line summary (printed by ``fastvit export``)."""
        lines = [f"wrote {self.format} model to {self.path}"]
        for name, d in self._checks():
            verdict = "ok" if d.ok(self.tolerance) else "FAILED"
            lines.append(f"  vs PyTorch on {name} inputs: {d.describe(self.tolerance)}, {verdict}")
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
        raise ReparamError(
            "model still contains BatchNorm after reparameterization; "
            "export needs a FastViT model built by fastvit.create_model"
        )
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
    """Random image-like inputs of the model's input size, normalized with its mean/std."""
    prep = card.preprocessing
    return image_like_inputs(
        (batch, *card.input_size), mean=tuple(prep.mean), std=tuple(prep.std), seed=seed
    )


def real_inputs(
    card: ModelCard, batch: int = 4, image_dir: str | Path | None = None
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


def output_diff(ref: np.ndarray | torch.Tensor, out: np.ndarray | torch.Tensor) -> OutputDiff:
    """Max |ref - out| and the output scale max |ref| (float64)."""
    a = ref.detach().cpu().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref)
    b = out.detach().cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out)
    if a.shape != b.shape:
        raise ReparamError(f"output shapes differ: {a.shape} vs {b.shape}")
    a, b = a.astype(np.float64), b.astype(np.float64)
    return OutputDiff(float(np.abs(a - b).max()), float(np.abs(a).max()))


def max_abs_diff(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    return output_diff(a, b).max_abs


class AccuracyDropError(FastViTError):
    """An int8 model loses more top-1 than allowed; nothing was written."""


def is_digits_model(meta: ModelCard) -> bool:
    """Whether ``meta`` describes a model trained on the embedded digits (classes 0..9)."""
    from fastvit.data import DIGITS_CLASSES

    return meta.extra.get("dataset") == "digits" or (
        meta.class_names is not None and list(meta.class_names) == list(DIGITS_CLASSES)
    )
