"""The :class:`Predictor` interface every runtime adapter implements (torch, onnxruntime,
OpenVINO), in its own module so adapters import it without importing each other."""

from __future__ import annotations

import numpy as np

from fastvit.card import ModelCard


class Predictor:
    """Maps a normalized float32 batch ``(N, C, H, W)`` to logits ``(N, num_classes)``."""

    card: ModelCard
    backend: str

    def logits(self, batch: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def max_batch(self) -> int | None:
        """Largest batch the model accepts (``None``: any)."""
        return None


__all__ = ["Predictor"]
