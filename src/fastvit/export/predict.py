"""Image classification with a checkpoint, a TorchScript file or an ONNX model.

Preprocessing always comes from the model's own metadata (input size, crop fraction,
interpolation, mean/std), built with timm's evaluation transform: resize the shorter side to
``floor(size / crop_pct)``, centre-crop ``size``, scale to [0, 1], normalize.

Images of any PIL mode are converted to what the model takes: grayscale, palette and CMYK
images become RGB; images with transparency (RGBA, LA, palette + transparency) are composited
onto a white background first. Models that take 1 channel get grayscale ("L") images.

Class names: when the model carries none, labels are the class indices and a one-line
warning is printed; passing ``class_names`` (``--class-names FILE``) supplies them, and a
list whose length does not match the model's classes is an error.
"""

from __future__ import annotations

import sys
import warnings
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fastvit.errors import CheckpointError, ConfigError, DataError
from fastvit.export.metadata import ModelMetadata, metadata_from_model

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                    ".pgm")
BACKENDS = ("torch", "onnxruntime")


class MissingClassNamesWarning(UserWarning):
    """The model has no class names; predictions are labelled with class indices."""


# --------------------------------------------------------------------------- preprocessing

def build_transform(meta: ModelMetadata) -> Callable[[Any], torch.Tensor]:
    """timm's evaluation transform for ``meta`` (PIL image -> normalized CHW float tensor)."""
    from timm.data import create_transform

    return create_transform(
        input_size=meta.input_size, is_training=False, interpolation=meta.interpolation,
        mean=meta.mean, std=meta.std, crop_pct=meta.crop_pct,
    )


def load_image(path: str | Path, in_chans: int = 3) -> Any:
    """Open an image as a PIL image with ``in_chans`` channels (1 -> "L", 3 -> "RGB").

    Raises :class:`DataError` (one line) for missing/unreadable files and for channel counts
    an image cannot be converted to.
    """
    from PIL import Image, UnidentifiedImageError

    if in_chans not in (1, 3):
        raise DataError(f"the model takes {in_chans}-channel input but images have 1 (grayscale) "
                        "or 3 (RGB) channels; use a model built with in_chans=1 or 3")
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            img = im.copy()
    except FileNotFoundError:
        raise DataError(f"image {path} does not exist; check the path") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"cannot read image {path} ({reason}); is it a valid image file?") from None
    return to_model_mode(img, in_chans, name=str(path))


def to_model_mode(img: Any, in_chans: int = 3, name: str = "image") -> Any:
    """Convert a PIL image to "RGB" (``in_chans=3``) or "L" (``in_chans=1``)."""
    from PIL import Image

    target = "RGB" if in_chans == 3 else "L"
    if img.mode == target:
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # high bit-depth grayscale
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray((np.clip(arr / hi, 0, 1) * 255).round().astype(np.uint8), "L")
    try:
        return img.convert(target)
    except (ValueError, OSError) as e:
        raise DataError(f"cannot convert {name} (mode {img.mode}) to {target} ({e}); "
                        "save it as an RGB or grayscale image") from None


def list_images(path: str | Path) -> list[Path]:
    """One image file, or every image in a folder (recursively, sorted)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist; give an image file or a folder of images")
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*")
                   if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {path}")
    return files


# --------------------------------------------------------------------------- predictors

class Predictor:
    """Maps a normalized float32 batch ``(N, C, H, W)`` to logits ``(N, num_classes)``."""

    meta: ModelMetadata
    backend: str

    def logits(self, batch: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def max_batch(self) -> int | None:
        """Largest batch the model accepts (``None``: any)."""
        return None


class TorchPredictor(Predictor):
    """Runs a fused PyTorch (or TorchScript) module."""

    backend = "torch"

    def __init__(self, module: nn.Module | torch.jit.ScriptModule, meta: ModelMetadata) -> None:
        self.module = module
        self.meta = meta

    @torch.inference_mode()
    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self.module(torch.from_numpy(np.ascontiguousarray(batch))).float().numpy()


class OnnxPredictor(Predictor):
    """Runs an ONNX model with onnxruntime; checks the input shape against the metadata."""

    backend = "onnxruntime"

    def __init__(self, session: Any, meta: ModelMetadata) -> None:
        self.session = session
        self.meta = meta
        inp = session.get_inputs()[0]
        self.input_name = inp.name
        self.shape = list(inp.shape)
        self.dtype = np.float16 if "float16" in inp.type else np.float32
        self._check_shape()

    def _check_shape(self) -> None:
        shape = self.shape
        c, h, w = self.meta.input_size
        if len(shape) != 4:
            raise DataError(f"the ONNX model takes a {len(shape)}-D input {shape}; predict needs "
                            "an image model with an (N, C, H, W) input")
        for dim, want, what in ((shape[1], c, "channels"), (shape[2], h, "height"),
                                (shape[3], w, "width")):
            if isinstance(dim, int) and dim > 0 and dim != want:
                raise DataError(
                    f"ONNX input shape {shape} does not match the preprocessing "
                    f"({c}x{h}x{w}): {what} {dim} != {want}; pass --size {shape[2]} or re-export "
                    "with the wanted size")

    @property
    def max_batch(self) -> int | None:
        b = self.shape[0]
        return b if isinstance(b, int) and b > 0 else None

    def logits(self, batch: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self.input_name: batch.astype(self.dtype)})[0]
        return np.asarray(out, dtype=np.float32)


def is_torchscript(path: Path) -> bool:
    """TorchScript archives are zip files with a ``code/`` folder (plain checkpoints have none)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any("/code/" in n for n in zf.namelist()[:200])


def load_predictor(
    source: str | Path | nn.Module,
    backend: str | None = None,
    *,
    size: int | None = None,
    class_names: Sequence[str] | None = None,
    threads: int | None = None,
) -> Predictor:
    """A :class:`Predictor` for a checkpoint, TorchScript file, ONNX file or module.

    ``backend`` defaults to onnxruntime for ``.onnx`` files and torch otherwise; a PyTorch
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
        if source.suffix.lower() == ".onnx":
            kind = "onnx"
        elif is_torchscript(source):
            kind = "torchscript"
        else:
            kind = "checkpoint"
    backend = backend or ("onnxruntime" if kind == "onnx" else "torch")

    if kind == "onnx":
        if backend != "onnxruntime":
            raise ConfigError(f"{source} is an ONNX model; run it with --backend onnxruntime")
        return _onnx_file_predictor(Path(source), size, class_names, threads)
    if kind == "torchscript":
        from fastvit.export.torchscript import load_torchscript

        module, meta = load_torchscript(Path(source))
        if backend != "torch":
            raise ConfigError(f"{source} is a TorchScript model; run it with --backend torch")
        return TorchPredictor(module, _finish_meta(meta, size, class_names))

    from fastvit.export.common import fuse_for_export, load_source

    fused = fuse_for_export(load_source(source))
    meta = _finish_meta(metadata_from_model(fused), size, class_names)
    if backend == "torch":
        if threads:
            torch.set_num_threads(int(threads))
        return TorchPredictor(fused, meta)
    from fastvit.export.onnx import onnx_proto, ort_session

    proto = onnx_proto(fused, meta, dynamic_hw=False)
    return OnnxPredictor(ort_session(proto.SerializeToString(), threads=threads), meta)


def _onnx_file_predictor(path: Path, size: int | None, class_names: Sequence[str] | None,
                         threads: int | None) -> OnnxPredictor:
    from fastvit.export.onnx import load_onnx, onnx_input_shape, ort_session, read_onnx_metadata

    proto = load_onnx(path)
    meta = read_onnx_metadata(proto)
    if meta is None:  # a foreign ONNX file: take what the graph tells us, ImageNet defaults
        shape = onnx_input_shape(proto)
        out = proto.graph.output[0].type.tensor_type.shape.dim
        num_classes = int(out[-1].dim_value) if out and out[-1].dim_value else 1000
        c = shape[1] if len(shape) == 4 and isinstance(shape[1], int) and shape[1] > 0 else 3
        hw = [d if isinstance(d, int) and d > 0 else 256 for d in (shape[2:4] if len(shape) == 4
                                                                   else [256, 256])]
        mean = (0.485, 0.456, 0.406) if c == 3 else (0.449,) * c
        std = (0.229, 0.224, 0.225) if c == 3 else (0.226,) * c
        meta = ModelMetadata(variant=path.stem, num_classes=num_classes,
                             input_size=(c, hw[0], hw[1]), crop_pct=0.875, mean=mean, std=std)
        warnings.warn(f"{path} has no fastvit metadata; assuming ImageNet preprocessing "
                      f"at {hw[0]}x{hw[1]}", stacklevel=2)
    meta = _finish_meta(meta, size, class_names)
    return OnnxPredictor(ort_session(path, threads=threads), meta)


def _finish_meta(meta: ModelMetadata, size: int | None,
                 class_names: Sequence[str] | None) -> ModelMetadata:
    if size is not None:
        if size < 8:
            raise ConfigError(f"--size {size} is too small; use 32 or more")
        meta = meta.with_input_size(size)
    if class_names is not None:
        if len(class_names) != meta.num_classes:
            raise ConfigError(f"{len(class_names)} class names given for a {meta.num_classes}-class "
                              "model; give exactly one name per class (one per line)")
        meta = meta.with_class_names(class_names)
    return meta


def read_class_names(path: str | Path) -> list[str]:
    """Class names from a text file, one per line (blank lines ignored)."""
    path = Path(path)
    try:
        names = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read class names from {path} ({type(e).__name__}); "
                        "give a UTF-8 text file with one name per line") from None
    names = [n for n in names if n]
    if not names:
        raise DataError(f"{path} holds no class names; give one name per line")
    return names


# --------------------------------------------------------------------------- predict

@dataclass
class Prediction:
    """Top-k classes of one image (probabilities from a softmax over the logits)."""

    path: str
    indices: list[int]
    labels: list[str]
    probs: list[float]

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path,
                "top_k": [{"index": i, "label": lb, "prob": p}
                          for i, lb, p in zip(self.indices, self.labels, self.probs)]}

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
) -> list[Prediction]:
    """Classify image files in batches; ``progress`` shows a tqdm bar on stderr."""
    if top_k < 1:
        raise ConfigError(f"--top-k must be at least 1, got {top_k}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    meta = predictor.meta
    if meta.in_chans not in (1, 3):
        raise DataError(f"the model takes {meta.in_chans}-channel input but images have 1 "
                        "(grayscale) or 3 (RGB) channels; use a model built with in_chans=1 or 3")
    if meta.class_names is None:
        warnings.warn("the model has no class names; showing class indices (pass --class-names "
                      "FILE with one name per line)", MissingClassNamesWarning, stacklevel=2)
    labels = meta.labels()
    k = min(top_k, meta.num_classes)
    bs = min(batch_size, predictor.max_batch or batch_size)
    transform = build_transform(meta)
    paths = [Path(p) for p in images]

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(paths), unit="img", file=sys.stderr, leave=False)
    results: list[Prediction] = []
    try:
        for start in range(0, len(paths), bs):
            chunk = paths[start:start + bs]
            batch = torch.stack([transform(load_image(p, meta.in_chans)) for p in chunk]).numpy()
            fixed = predictor.max_batch
            if fixed is not None and len(chunk) < fixed:  # pad a fixed-batch ONNX model
                pad = np.zeros((fixed - len(chunk), *batch.shape[1:]), dtype=batch.dtype)
                batch = np.concatenate([batch, pad])
            logits = predictor.logits(batch)[: len(chunk)]
            if logits.ndim != 2 or logits.shape[1] != meta.num_classes:
                raise DataError(f"model returned shape {tuple(logits.shape)}, expected "
                                f"(N, {meta.num_classes}); is this a classification model?")
            probs = torch.from_numpy(logits).double().softmax(-1)
            top_p, top_i = probs.topk(k, dim=-1)
            for p, pi, ii in zip(chunk, top_p.tolist(), top_i.tolist()):
                results.append(Prediction(str(p), ii, [labels[i] for i in ii],
                                          [float(v) for v in pi]))
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    return results
