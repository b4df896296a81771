"""CoreML export (ML Program ``.mlpackage``) of the fused model, via the optional coremltools.

Install with ``pip install 'fastvit[coreml]'``. Conversion runs on any OS (it is checked
here on Linux); *running* a CoreML model needs macOS, so on other systems the exported
package is validated by inspecting its spec (inputs, outputs, operations) only.

The input ``input`` is the normalized image tensor ``(N, C, H, W)`` (N from 1 to
``max_batch``); the output ``logits`` is ``(N, num_classes)``. Preprocessing and class names
are stored in the package's user-defined metadata.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fastvit.card import ModelCard
from fastvit.errors import ConfigError
from fastvit.export.common import ExportReport, fuse_for_export, load_source
from fastvit.fileio import atomic_path

PRECISIONS = ("float32", "float16")


def coreml_available() -> bool:
    """Whether coremltools can be imported (it is the optional ``coreml`` extra)."""
    try:
        with _quiet():
            import coremltools  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence coremltools' import notices, version warnings and progress bars."""
    import logging

    logger = logging.getLogger("coremltools")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def export_coreml(
    model: nn.Module | str | Path,
    path: str | Path,
    *,
    input_size: int | tuple[int, int] | None = None,
    class_names: list[str] | None = None,
    precision: str = "float32",
    max_batch: int = 64,
) -> ExportReport:
    """Convert the fused form of ``model`` to an ML Program ``.mlpackage`` at ``path``.

    The written package is re-read and its spec summarized in the report (prediction, and
    therefore a numeric parity check, is only possible on macOS).
    """
    if not coreml_available():
        raise ConfigError(
            "CoreML export needs coremltools; install it with "
            "`pip install 'fastvit[coreml]'` (or `pip install coremltools`)"
        )
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown CoreML precision {precision!r}; use float32 or float16")
    with _quiet():
        import coremltools as ct

    path = Path(path)
    if path.suffix != ".mlpackage":
        raise ConfigError(f"CoreML output must end in .mlpackage, got {path.name}")
    fused = fuse_for_export(load_source(model))
    meta = ModelCard.from_model(fused, input_size=input_size, class_names=class_names)
    example = torch.zeros(1, *meta.input_size)
    with _quiet(), torch.no_grad():
        traced = torch.jit.trace(fused, example, check_trace=False)
        shape = ct.Shape(
            shape=(ct.RangeDim(lower_bound=1, upper_bound=max_batch, default=1), *meta.input_size)
        )
        mlmodel = ct.convert(
            traced,
            inputs=[ct.TensorType(name="input", shape=shape)],
            outputs=[ct.TensorType(name="logits")],
            convert_to="mlprogram",
            compute_precision=(
                ct.precision.FLOAT32 if precision == "float32" else ct.precision.FLOAT16
            ),
            minimum_deployment_target=ct.target.macOS13,
            skip_model_load=True,  # loading compiles the model, which only works on macOS
        )
    mlmodel.short_description = f"FastViT {meta.variant} (fused inference form)"
    mlmodel.input_description["input"] = "normalized image (N, C, H, W); see metadata for mean/std"
    mlmodel.output_description["logits"] = f"class logits (N, {meta.num_classes})"
    mlmodel.user_defined_metadata.update(meta.to_metadata())

    with atomic_path(path) as tmp, _quiet():  # a folder, replaced as a whole
        mlmodel.save(str(tmp))
    report = ExportReport(path=path, format="coreml")
    info = inspect_coreml(path)
    report.details.update(
        {
            "inputs": info["inputs"],
            "outputs": info["outputs"],
            "ops": info["num_ops"],
            "precision": precision,
            "note": "CoreML prediction runs on macOS only; the spec was checked here",
        }
    )
    return report


def inspect_coreml(path: str | Path) -> dict[str, Any]:
    """Inputs, outputs, operation counts and metadata of a saved ``.mlpackage``.

    Reads the spec only (no compilation), so it works on every OS.
    """
    with _quiet():
        import coremltools as ct

        spec = ct.utils.load_spec(str(path))

    def _feature(f: Any) -> dict[str, Any]:
        arr = f.type.multiArrayType
        shape = list(arr.shape)
        ranges = [(r.lowerBound, r.upperBound) for r in arr.shapeRange.sizeRanges]
        dtype = ct.proto.FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(arr.dataType)
        return {"name": f.name, "shape": shape, "ranges": ranges, "dtype": dtype}

    ops: Counter[str] = Counter()

    def _walk(block: Any) -> None:
        for op in block.operations:
            ops[op.type] += 1
            for b in op.blocks:
                _walk(b)

    for fn in spec.mlProgram.functions.values():
        for blk in fn.block_specializations.values():
            _walk(blk)
    return {
        "inputs": [_feature(f) for f in spec.description.input],
        "outputs": [_feature(f) for f in spec.description.output],
        "num_ops": sum(ops.values()),
        "op_counts": dict(sorted(ops.items())),
        "metadata": ModelCard.from_metadata(
            dict(spec.description.metadata.userDefined),
            default=ModelCard(form="fused"),
            where=str(path),
        ),
        "spec_version": spec.specificationVersion,
    }
