"""Image classification with a checkpoint, a training run file, TorchScript or ONNX.

Preprocessing always comes from the model's own card (:class:`~fastvit.card.ModelCard`: input
size, crop fraction, interpolation, mean/std), applied with timm's evaluation transform
(:func:`fastvit.data.eval_transform`). Images are read by :mod:`fastvit.data.images` (any PIL
mode, converted to what the model takes).

Class names: when the model carries none, labels are the class indices and a one-line
warning is printed; passing ``class_names`` (``--class-names FILE``) supplies them, and a
list whose length does not match the model's classes is an error.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fastvit.card import ModelCard, Preprocessing
from fastvit.data import eval_transform, load_image, read_class_names
from fastvit.errors import CheckpointError, ConfigError, DataError
from fastvit.infer.base import Predictor

BACKENDS = ("torch", "onnxruntime", "openvino")
__all__ = [
    "BACKENDS",
    "MissingClassNamesWarning",
    "OnnxPredictor",
    "Prediction",
    "Predictor",
    "PredictorModule",
    "TorchPredictor",
    "is_export_file",
    "is_torchscript",
    "load_predictor",
    "predict_images",
    "read_class_names",
]


class MissingClassNamesWarning(UserWarning):
    """The model has no class names; predictions are labelled with class indices."""


# --------------------------------------------------------------------------- predictors


class TorchPredictor(Predictor):
    """Runs a fused PyTorch (or TorchScript) module."""

    backend = "torch"

    def __init__(self, module: nn.Module | torch.jit.ScriptModule, card: ModelCard) -> None:
        self.module = module
        self.card = card

    @torch.inference_mode()
    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self.module(torch.from_numpy(np.ascontiguousarray(batch))).float().numpy()


class OnnxPredictor(Predictor):
    """Runs an ONNX model with onnxruntime; checks the input shape against the metadata."""

    backend = "onnxruntime"

    def __init__(self, session: Any, card: ModelCard) -> None:
        self.session = session
        self.card = card
        inp = session.get_inputs()[0]
        self.input_name = inp.name
        self.shape = list(inp.shape)
        self.dtype = np.float16 if "float16" in inp.type else np.float32
        self._check_shape()

    def _check_shape(self) -> None:
        shape = self.shape
        c, h, w = self.card.input_size
        if len(shape) != 4:
            raise DataError(
                f"the ONNX model takes a {len(shape)}-D input {shape}; predict needs "
                "an image model with an (N, C, H, W) input"
            )
        for dim, want, what in (
            (shape[1], c, "channels"),
            (shape[2], h, "height"),
            (shape[3], w, "width"),
        ):
            if isinstance(dim, int) and dim > 0 and dim != want:
                raise DataError(
                    f"ONNX input shape {shape} does not match the preprocessing "
                    f"({c}x{h}x{w}): {what} {dim} != {want}; pass --size {shape[2]} or re-export "
                    "with the wanted size"
                )

    @property
    def max_batch(self) -> int | None:
        b = self.shape[0]
        return b if isinstance(b, int) and b > 0 else None

    def logits(self, batch: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self.input_name: batch.astype(self.dtype)})[0]
        return np.asarray(out, dtype=np.float32)


class PredictorModule(nn.Module):
    """A :class:`Predictor` as a module (``(N, C, H, W)`` tensor -> logits tensor), so code
    written for PyTorch models (e.g. ``fastvit eval``) scores exports exactly as predict
    runs them. CPU only; a fixed-batch ONNX model gets its batches padded."""

    def __init__(self, predictor: Predictor) -> None:
        super().__init__()
        self.predictor = predictor

    @property
    def card(self) -> ModelCard:
        return self.predictor.card

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.detach().float().cpu().numpy()
        n = len(batch)
        fixed = self.predictor.max_batch
        outs = []
        for start in range(0, n, fixed or max(n, 1)):
            chunk = batch[start : start + (fixed or n)]
            if fixed is not None and len(chunk) < fixed:
                pad = np.zeros((fixed - len(chunk), *chunk.shape[1:]), dtype=chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            outs.append(self.predictor.logits(chunk)[: min(len(chunk), n - start)])
        return torch.from_numpy(np.concatenate(outs)).to(x.device)


def is_torchscript(path: Path) -> bool:
    """TorchScript archives are zip files with a ``code/`` folder (plain checkpoints have none)."""
    from fastvit.checkpoints.filetype import TORCHSCRIPT, detect_file_type

    return Path(path).is_file() and detect_file_type(path) == TORCHSCRIPT


def is_export_file(path: str | Path) -> bool:
    """Whether ``path`` is an exported model (ONNX, TorchScript or an OpenVINO ``.xml``) rather
    than a checkpoint, judged by its content (:mod:`fastvit.checkpoints.filetype`); any
    ``.xml`` counts, so a broken IR is reported as one."""
    from fastvit.checkpoints.filetype import ONNX, OPENVINO_XML, TORCHSCRIPT, detect_file_type

    path = Path(path)
    return path.is_file() and (
        detect_file_type(path) in (ONNX, TORCHSCRIPT, OPENVINO_XML) or path.suffix.lower() == ".xml"
    )


def load_predictor(
    source: str | Path | nn.Module,
    backend: str | None = None,
    *,
    size: int | None = None,
    class_names: Sequence[str] | None = None,
    threads: int | None = None,
) -> Predictor:
    """A :class:`Predictor` for a checkpoint, run file, TorchScript, ONNX or OpenVINO file, or
    a module.

    Checkpoints and training run files (``best.pt``/``last.pt``) are read by
    :func:`fastvit.load_model`, the one loader, with their stored preprocessing and class
    names. ``backend`` defaults to onnxruntime for ONNX files, openvino for OpenVINO IRs
    (``.xml``, run with the precision stored in them) and torch otherwise; a PyTorch
    checkpoint run with onnxruntime is exported to ONNX in memory first. ``size`` overrides
    the input size from the metadata; ``class_names`` overrides (or supplies) class names.
    """
    if backend is not None and backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if isinstance(source, nn.Module):
        kind = "module"
    else:
        source = Path(source)
        if not source.exists():
            raise CheckpointError(f"model file {source} does not exist; check the path")
        from fastvit.checkpoints.filetype import (
            ONNX,
            OPENVINO_BIN,
            OPENVINO_XML,
            TORCHSCRIPT,
            detect_file_type,
        )

        found = detect_file_type(source)
        kind = {
            ONNX: "onnx",
            TORCHSCRIPT: "torchscript",
            OPENVINO_XML: "openvino",
            OPENVINO_BIN: "openvino",
        }.get(found, "checkpoint")
        if found == OPENVINO_BIN:  # the weights half of an IR: run its .xml
            source = source.with_suffix(".xml")
        elif source.suffix.lower() == ".xml":  # a broken IR is reported as one
            kind = "openvino"
    backend = backend or {"onnx": "onnxruntime", "openvino": "openvino"}.get(kind, "torch")

    if kind == "onnx":
        if backend != "onnxruntime":
            raise ConfigError(f"{source} is an ONNX model; run it with --backend onnxruntime")
        return _onnx_file_predictor(Path(source), size, class_names, threads)
    if kind == "openvino":
        if backend != "openvino":
            raise ConfigError(f"{source} is an OpenVINO model; run it with --backend openvino")
        from fastvit.infer.openvino import openvino_file_predictor

        if size is not None:
            _finish_meta(ModelCard(), size, None)  # the size check, before any reshape
        predictor = openvino_file_predictor(Path(source), size=size, threads=threads)
        predictor.card = _finish_meta(predictor.card, size, class_names)
        return predictor
    if kind == "torchscript":
        from fastvit.export.torchscript import load_torchscript

        module, meta = load_torchscript(Path(source))
        if backend != "torch":
            raise ConfigError(f"{source} is a TorchScript model; run it with --backend torch")
        return TorchPredictor(module, _finish_meta(meta, size, class_names))

    from fastvit.export.common import fuse_for_export, load_source

    fused = fuse_for_export(load_source(source))
    meta = _finish_meta(ModelCard.from_model(fused), size, class_names)
    if backend == "torch":
        if threads:
            torch.set_num_threads(int(threads))
        return TorchPredictor(fused, meta)
    if backend == "openvino":
        from fastvit.infer.openvino import module_predictor

        return module_predictor(fused, meta, threads=threads)
    from fastvit.export.onnx import onnx_proto, ort_session

    proto = onnx_proto(fused, meta, dynamic_hw=False)
    return OnnxPredictor(ort_session(proto.SerializeToString(), threads=threads), meta)


def _onnx_file_predictor(
    path: Path, size: int | None, class_names: Sequence[str] | None, threads: int | None
) -> OnnxPredictor:
    from fastvit.export.onnx import load_onnx, onnx_input_shape, ort_session, read_onnx_metadata

    proto = load_onnx(path)
    meta = read_onnx_metadata(proto)
    if meta is None:  # a foreign ONNX file: take what the graph tells us, ImageNet defaults
        shape = onnx_input_shape(proto)
        out = proto.graph.output[0].type.tensor_type.shape.dim
        num_classes = int(out[-1].dim_value) if out and out[-1].dim_value else 1000
        c = shape[1] if len(shape) == 4 and isinstance(shape[1], int) and shape[1] > 0 else 3
        hw = [
            d if isinstance(d, int) and d > 0 else 256
            for d in (shape[2:4] if len(shape) == 4 else [256, 256])
        ]
        prep = Preprocessing(crop_pct=0.875).with_in_chans(c).with_input_size(hw)
        meta = ModelCard(
            variant=path.stem, num_classes=num_classes, form="fused", preprocessing=prep
        )
        warnings.warn(
            f"{path} has no fastvit metadata; assuming ImageNet preprocessing at {hw[0]}x{hw[1]}",
            stacklevel=2,
        )
    from fastvit.export.quantize import saturation_warning

    note = next((p.value for p in proto.metadata_props if p.key == "quantization"), "")
    if (msg := saturation_warning(note)) is not None:
        warnings.warn(f"{path}: {msg}", stacklevel=2)
    meta = _finish_meta(meta, size, class_names)
    return OnnxPredictor(ort_session(path, threads=threads), meta)


def _finish_meta(meta: ModelCard, size: int | None, class_names: Sequence[str] | None) -> ModelCard:
    if size is not None:
        if size < 32:
            raise ConfigError(
                f"--size {size} is too small; FastViT downsamples by 32, use 32 or more"
            )
        meta = meta.with_input_size(size)
    if class_names is not None:
        if len(class_names) != meta.num_classes:
            raise ConfigError(
                f"{len(class_names)} class names given for a {meta.num_classes}-class "
                "model; give exactly one name per class (one per line)"
            )
        meta = meta.with_class_names(class_names)
    return meta


# --------------------------------------------------------------------------- predict


@dataclass
class Prediction:
    """Top-k classes of one image (probabilities from a softmax over the logits)."""

    path: str
    indices: list[int]
    labels: list[str]
    probs: list[float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "top_k": [
                {"index": i, "label": lb, "prob": p}
                for i, lb, p in zip(self.indices, self.labels, self.probs)
            ],
        }

    def format(self) -> str:
        body = ", ".join(f"{lb} ({p:.3f})" for lb, p in zip(self.labels, self.probs))
        return f"{self.path}: {body}"


def predict_images(
    predictor: Predictor,
    images: Iterable[str | Path],
    *,
    top_k: int = 5,
    batch_size: int = 16,
    progress: bool = False,
    failed: list[tuple[str, str]] | None = None,
) -> list[Prediction]:
    """Classify image files in batches; ``progress`` shows a tqdm bar on stderr.

    An unreadable image raises :class:`DataError`, unless ``failed`` is a list: then it is
    skipped, ``(path, message)`` is appended there and the other images are still classified.
    """
    if top_k < 1:
        raise ConfigError(f"--top-k must be at least 1, got {top_k}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    meta = predictor.card
    if meta.in_chans not in (1, 3):
        raise DataError(
            f"the model takes {meta.in_chans}-channel input but images have 1 "
            "(grayscale) or 3 (RGB) channels; use a model built with in_chans=1 or 3"
        )
    if meta.class_names is None:
        warnings.warn(
            "the model has no class names; showing class indices (pass --class-names "
            "FILE with one name per line)",
            MissingClassNamesWarning,
            stacklevel=2,
        )
    labels = meta.labels()
    k = min(top_k, meta.num_classes)
    bs = min(batch_size, predictor.max_batch or batch_size)
    transform = eval_transform(meta.preprocessing)
    paths = [Path(p) for p in images]

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(paths), unit="img", file=sys.stderr, leave=False)
    results: list[Prediction] = []
    try:
        for start in range(0, len(paths), bs):
            chunk, tensors = [], []
            for p in paths[start : start + bs]:
                try:
                    tensors.append(transform(load_image(p, meta.in_chans)))
                except DataError as e:
                    if failed is None:
                        raise
                    failed.append((str(p), str(e)))
                    continue
                chunk.append(p)
            if bar is not None:
                bar.update(len(paths[start : start + bs]) - len(chunk))
            if not chunk:
                continue
            batch = torch.stack(tensors).numpy()
            fixed = predictor.max_batch
            if fixed is not None and len(chunk) < fixed:  # pad a fixed-batch ONNX model
                pad = np.zeros((fixed - len(chunk), *batch.shape[1:]), dtype=batch.dtype)
                batch = np.concatenate([batch, pad])
            logits = predictor.logits(batch)[: len(chunk)]
            if logits.ndim != 2 or logits.shape[1] != meta.num_classes:
                raise DataError(
                    f"model returned shape {tuple(logits.shape)}, expected "
                    f"(N, {meta.num_classes}); is this a classification model?"
                )
            probs = torch.from_numpy(logits).double().softmax(-1)
            top_p, top_i = probs.topk(k, dim=-1)
            for p, pi, ii in zip(chunk, top_p.tolist(), top_i.tolist()):
                results.append(
                    Prediction(str(p), ii, [labels[i] for i in ii], [float(v) for v in pi])
                )
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    return results
