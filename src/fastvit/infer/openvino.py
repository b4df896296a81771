"""OpenVINO runtime adapter for ``fastvit predict`` / ``eval`` / ``bench``.

:class:`OpenVinoPredictor` runs an IR (``.xml``) with the precision stored in it, or a
checkpoint converted in memory (``--backend openvino``). Reading, compiling and the model card
are :mod:`fastvit.export.openvino`'s (infer uses export's readers; export never imports infer).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from fastvit.card import ModelCard, Preprocessing
from fastvit.errors import DataError
from fastvit.infer.base import Predictor


class OpenVinoPredictor(Predictor):
    """Runs an OpenVINO model on the CPU with an explicit precision hint."""

    backend = "openvino"

    def __init__(self, compiled: Any, card: ModelCard, precision: str) -> None:
        self.compiled = compiled
        self.card = card
        self.precision = precision
        self._request = compiled.create_infer_request()
        shape = compiled.inputs[0].get_partial_shape()
        c, h, w = card.input_size
        dims = [d.get_length() if d.is_static else None for d in shape]
        if len(dims) != 4:
            raise DataError(
                f"the OpenVINO model takes a {len(dims)}-D input; predict needs an "
                "image model with an (N, C, H, W) input"
            )
        for dim, want, what in (
            (dims[1], c, "channels"),
            (dims[2], h, "height"),
            (dims[3], w, "width"),
        ):
            if dim is not None and dim != want:
                raise DataError(
                    f"OpenVINO input shape {dims} does not match the preprocessing "
                    f"({c}x{h}x{w}): {what} {dim} != {want}; pass --size {dims[2]} "
                    "or re-export with the wanted size"
                )
        self._fixed_batch = dims[0]

    @property
    def runtime(self) -> str:
        """Backend and precision, e.g. ``openvino f32`` (what ``fastvit eval`` reports)."""
        return f"{self.backend} {self.precision}"

    @property
    def max_batch(self) -> int | None:
        return self._fixed_batch

    def logits(self, batch: np.ndarray) -> np.ndarray:
        from fastvit.export.openvino import run_compiled

        return run_compiled(self.compiled, batch, self._request)


def openvino_file_predictor(
    path: str | Path,
    *,
    size: int | None = None,
    threads: int | None = None,
    precision: str | None = None,
) -> OpenVinoPredictor:
    """A predictor for an IR file with the card stored in it (``size`` reshapes the input;
    the caller applies class-name overrides). A foreign IR gets ImageNet defaults and a
    warning."""
    from fastvit.export.openvino import compile_ir, read_openvino

    ir = read_openvino(path)
    card = ir.meta
    if card is None:  # a foreign IR: take what the graph tells us, ImageNet defaults
        shape = ir.model.inputs[0].get_partial_shape()
        dims = [d.get_length() if d.is_static else 256 for d in shape]
        out = ir.model.outputs[0].get_partial_shape()
        num_classes = out[-1].get_length() if out[-1].is_static else 1000
        c, hw = (dims[1], dims[2:4]) if len(dims) == 4 else (3, [256, 256])
        prep = Preprocessing(crop_pct=0.875).with_in_chans(c).with_input_size(hw)
        card = ModelCard(
            variant=Path(path).stem, num_classes=num_classes, form="fused", preprocessing=prep
        )
        warnings.warn(
            f"{path} has no fastvit model card; assuming ImageNet preprocessing at {hw[0]}x{hw[1]}",
            stacklevel=2,
        )
    from fastvit.export.quantize import saturation_warning

    if (msg := saturation_warning(ir.quantization)) is not None:
        warnings.warn(f"{path}: {msg}", stacklevel=2)
    model = ir.model
    if size is not None and size != card.input_size[1]:
        model = model.clone()
        shape = model.inputs[0].get_partial_shape()
        shape[2], shape[3] = size, size
        model.reshape({model.inputs[0].get_any_name(): shape})
        card = card.with_input_size(size)
    prec = precision or ir.precision
    return OpenVinoPredictor(compile_ir(model, prec, threads=threads), card, prec)


def module_predictor(
    fused: nn.Module, card: ModelCard, *, threads: int | None = None, precision: str = "f32"
) -> OpenVinoPredictor:
    """A fused PyTorch model converted to OpenVINO in memory (``--backend openvino``)."""
    from fastvit.export.openvino import compile_ir, convert_fused

    model = convert_fused(fused, card)
    return OpenVinoPredictor(compile_ir(model, precision, threads=threads), card, precision)


__all__ = ["OpenVinoPredictor", "module_predictor", "openvino_file_predictor"]
