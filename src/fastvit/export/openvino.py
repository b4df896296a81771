"""OpenVINO export: IR (``.xml`` + ``.bin``) of the fused model, bf16 hint, NNCF int8.

Conversion goes through our ONNX graph (:func:`fastvit.export.onnx.onnx_proto`):
``openvino.convert_model`` on the cleaned, constant-folded ONNX bytes gives the same 204-op
graph for FastViT-T8 as converting the PyTorch module, the same float32 outputs, and takes
~4 s instead of ~25 s (the module path re-traces with TorchScript and folds the graph again).

The model card (:class:`fastvit.card.ModelCard`, its one flat encoding
:meth:`~fastvit.card.ModelCard.to_metadata`) is stored in the IR's runtime info under ``fastvit``; the inference precision (``f32``/``bf16``)
is stored under ``fastvit/precision`` and ``runtime_options/INFERENCE_PRECISION_HINT``.
OpenVINO 2026.4 does not apply that hint by itself (it picks bf16 on CPUs with AVX-512 BF16 /
AMX), so :func:`compile_ir` always passes it explicitly: an ``f32`` export runs in float32.

int8: NNCF post-training quantization of the converted model, calibrated on real images run
through the model's own preprocessing, checked for top-1 on a labelled set before writing.

openvino and nncf are imported only inside functions; without them a one-line
:class:`MissingExtraError` says how to install them.
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fastvit.card import ModelCard
from fastvit.data import LabelledImages
from fastvit.errors import ConfigError, DataError, FastViTError, ReparamError
from fastvit.export.common import (
    ExportReport,
    fuse_for_export,
    load_source,
    max_abs_diff,
    output_diff,
    random_inputs,
    real_inputs,
)
from fastvit.export.quantize import int8_weight_bits as resolve_weight_bits
from fastvit.export.quantize import weight_bits_note
from fastvit.fileio import WriteError, describe_os_error, temp_sibling

PRECISIONS = ("f32", "bf16")
RT_SECTION = "fastvit"
INSTALL_HINT = "pip install 'fastvit[openvino]'"
#: Agreement (top-1, %) with PyTorch below which a bf16/int8 export is reported as suspicious.
MIN_AGREEMENT = 99.0


class MissingExtraError(FastViTError):
    """An optional dependency (extra) is not installed."""


def require_openvino() -> Any:
    """The ``openvino`` module, or a one-line error saying how to install it."""
    try:
        import openvino
    except ImportError:
        raise MissingExtraError(
            f"OpenVINO is not installed; install it with {INSTALL_HINT}"
        ) from None
    return openvino


def require_nncf() -> Any:
    """The ``nncf`` module (int8 quantization), or a one-line install hint."""
    require_openvino()
    import logging

    # nncf imports torch's C++ extension helper, which logs a CUDA warning on CPU machines
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    try:
        import nncf
    except ImportError:
        raise MissingExtraError(
            f"NNCF (int8 quantization) is not installed; install it with {INSTALL_HINT}"
        ) from None
    return nncf


def openvino_available() -> bool:
    try:
        require_openvino()
    except MissingExtraError:
        return False
    return True


def _check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; use f32 or bf16")
    return precision


# --------------------------------------------------------------------------- conversion


def convert_fused(fused: nn.Module, meta: ModelCard) -> Any:
    """``openvino.Model`` of an already fused model (through our ONNX graph, dynamic batch)."""
    from fastvit.export.onnx import onnx_proto

    ov = require_openvino()
    proto = onnx_proto(fused, meta, dynamic_hw=False)
    return ov.convert_model(io.BytesIO(proto.SerializeToString()))


def set_card(
    model: Any, meta: ModelCard, precision: str, *, quantization: str | None = None
) -> None:
    """Store the model card and the precision hint in ``model``'s runtime info."""
    for k, v in meta.to_metadata().items():
        model.set_rt_info(v, [RT_SECTION, k])
    model.set_rt_info(precision, [RT_SECTION, "precision"])
    model.set_rt_info(quantization or "none", [RT_SECTION, "quantization"])
    model.set_rt_info(precision, ["runtime_options", "INFERENCE_PRECISION_HINT"])


def read_card(model: Any) -> tuple[ModelCard | None, dict[str, str]]:
    """(model card or None, {precision, quantization}) from an ``openvino.Model``."""
    rt = model.get_rt_info()
    if RT_SECTION not in rt:
        return None, {}
    props = {str(k): str(v.astype(str)) for k, v in rt[RT_SECTION].items()}
    info = {k: props.pop(k) for k in ("precision", "quantization") if k in props}
    meta = (
        ModelCard.from_metadata(props, where="the OpenVINO model")
        if ModelCard.has_metadata(props)
        else None
    )
    return meta, info


def compile_ir(
    model: Any,
    precision: str = "f32",
    *,
    threads: int | None = None,
    batch: int | None = None,
    throughput: bool = False,
) -> Any:
    """Compile for the CPU with an explicit precision hint (never OpenVINO's default).

    ``batch`` fixes the batch dimension (static shapes are a little faster);
    ``throughput`` uses the THROUGHPUT performance hint instead of LATENCY.
    """
    ov = require_openvino()
    _check_precision(precision)
    if batch is not None:
        model = model.clone()
        shape = model.inputs[0].get_partial_shape()
        shape[0] = int(batch)
        model.reshape({model.inputs[0].get_any_name(): shape})
    config: dict[str, Any] = {
        "INFERENCE_PRECISION_HINT": precision,
        "PERFORMANCE_HINT": "THROUGHPUT" if throughput else "LATENCY",
    }
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    if not throughput:
        config["NUM_STREAMS"] = 1
    return ov.Core().compile_model(model, "CPU", config)


def run_compiled(compiled: Any, batch: np.ndarray, request: Any = None) -> np.ndarray:
    """Logits of one float32 batch (copied out of OpenVINO's buffer)."""
    req = request or compiled.create_infer_request()
    req.infer({0: np.ascontiguousarray(batch, dtype=np.float32)}, share_inputs=True)
    return np.array(req.get_output_tensor(0).data, dtype=np.float32, copy=True)


def compiled_logits(compiled: Any, images: np.ndarray, batch: int = 32) -> np.ndarray:
    req = compiled.create_infer_request()
    return np.concatenate(
        [run_compiled(compiled, images[i : i + batch], req) for i in range(0, len(images), batch)]
    )


# --------------------------------------------------------------------------- reading


@dataclass
class OpenVinoModel:
    """A read IR: the model, its card, its stored precision and quantization."""

    model: Any
    meta: ModelCard | None
    precision: str
    quantization: str
    path: Path

    def compile(
        self, *, threads: int | None = None, precision: str | None = None, batch: int | None = None
    ) -> Any:
        return compile_ir(self.model, precision or self.precision, threads=threads, batch=batch)


def xml_pair(path: str | Path) -> tuple[Path, Path]:
    path = Path(path)
    return path, path.with_suffix(".bin")


def read_openvino(path: str | Path) -> OpenVinoModel:
    """Read an IR ``.xml`` (its ``.bin`` next to it) with a one-line error for bad files."""
    from fastvit.errors import CheckpointError

    ov = require_openvino()
    xml, bin_ = xml_pair(path)
    if not xml.is_file():
        raise CheckpointError(f"OpenVINO model {xml} does not exist; check the path")
    if not bin_.is_file():
        raise CheckpointError(
            f"{xml} has no weights file {bin_.name} next to it; copy the .xml and .bin together"
        )
    try:
        model = ov.Core().read_model(str(xml))
    except Exception as e:  # openvino raises RuntimeError with pages of text
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{xml} is not a readable OpenVINO IR ({first}); export one with "
            "`fastvit export CKPT --format openvino`"
        ) from None
    meta, info = read_card(model)
    precision = info.get("precision", "f32")
    if precision not in PRECISIONS:
        precision = "f32"
    return OpenVinoModel(model, meta, precision, info.get("quantization", "none"), xml)


# --------------------------------------------------------------------------- writing


def save_ir(model: Any, xml: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``xml`` + its ``.bin`` so that no reader ever sees half an IR.

    Both files are written into a hidden temporary folder first (float32 weights: no fp16
    compression). A new output folder is then renamed into place in one step; into an
    existing folder the ``.bin`` is moved first and the ``.xml`` (the file users open) last,
    after any old ``.xml`` was removed, so an ``.xml`` always sits next to its own ``.bin``.
    """
    ov = require_openvino()
    xml, bin_ = xml_pair(xml)
    if xml.suffix != ".xml":
        raise ConfigError(f"an OpenVINO model is written as NAME.xml + NAME.bin; got {xml}")
    for p in (xml, bin_):
        if p.exists() and not overwrite:
            raise WriteError(
                f"{p} already exists; pass --overwrite to replace it or choose another --output"
            )
    folder = xml.parent
    new_folder = not folder.exists()
    # the temporary folder lives next to the final folder (new) or inside it (existing)
    tmp = temp_sibling(folder) if new_folder else temp_sibling(xml)
    try:
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        ov.save_model(model, str(tmp / xml.name), compress_to_fp16=False)
        for p in tmp.iterdir():
            os.chmod(p, 0o666 & ~_umask())
        if new_folder:
            os.replace(tmp, folder)
        else:
            xml.unlink(missing_ok=True)
            os.replace(tmp / bin_.name, bin_)
            os.replace(tmp / xml.name, xml)
    except OSError as e:
        raise WriteError(describe_os_error(e, xml)) from None
    except RuntimeError as e:  # openvino's own write errors
        raise WriteError(f"cannot write {xml}: {str(e).strip().splitlines()[0][:160]}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return xml


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --------------------------------------------------------------------------- images


@dataclass
class ImageSet(LabelledImages):
    """:class:`fastvit.data.LabelledImages` (labels -1: unknown) and where they came from."""

    source: str = ""

    @property
    def labelled(self) -> bool:
        return bool(len(self.labels)) and bool((self.labels >= 0).all())


def is_digits_model(meta: ModelCard) -> bool:
    """Whether ``meta`` describes a model trained on the embedded digits (classes 0..9)."""
    from fastvit.data import DIGITS_CLASSES

    return meta.extra.get("dataset") == "digits" or (
        meta.class_names is not None and list(meta.class_names) == list(DIGITS_CLASSES)
    )


def load_image_set(
    source: str | Path | None,
    meta: ModelCard,
    *,
    split: str,
    limit: int | None = None,
    what: str = "calibration",
) -> ImageSet:
    """Images through the model's preprocessing, read by :mod:`fastvit.data`: ``"digits"``
    (that split, labelled), or a folder: ``split='train'`` is calibration
    (:func:`fastvit.data.calibration_images`: a data root's ``train/`` or any folder of images,
    unlabelled), ``split='val'`` the val split exactly as ``fastvit eval --data`` reads it
    (:func:`fastvit.data.load_labelled`)."""
    from fastvit.data import calibration_images, load_labelled

    if source is None or str(source) == "digits":
        data = load_labelled("digits", meta, split=split, limit=limit)
        return ImageSet(data.images, data.labels, f"digits {split}")
    root = Path(source)
    if not root.is_dir():
        raise DataError(
            f"{what} folder {root} does not exist or is not a folder; give a folder "
            "of images (flat, or one sub-folder per class)"
        )
    if split == "val":
        data = load_labelled(root, meta, split="val", limit=limit)
        return ImageSet(data.images, data.labels, str(root))
    try:
        images = calibration_images(root, meta.preprocessing, limit=limit)
    except DataError:
        raise DataError(
            f"no images found in {what} folder {root}; give a folder of images "
            "(.png/.jpg/...), flat or one sub-folder per class"
        ) from None
    return ImageSet(images, np.full(len(images), -1, dtype=np.int64), str(root))


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean() * 100.0)


# --------------------------------------------------------------------------- int8


def quantize_int8(
    model: Any,
    calibration: np.ndarray,
    *,
    batch: int = 16,
    fast_bias_correction: bool = True,
    transformer: bool = False,
    weight_bits: str | int = "auto",
) -> Any:
    """NNCF post-training int8 quantization of an ``openvino.Model``.

    Weights per channel (symmetric), activations per tensor, ranges from ``calibration``
    (preprocessed images), performance preset (symmetric activations: what the CPU plugin's
    VNNI kernels take). NNCF's default (CNN) model type: on the digits-trained T8 it loses
    0.28 points of top-1 where ``transformer=True`` (SmoothQuant, attention MatMuls) loses
    0.56; both quantize the FastViT convolutions the same way.

    ``weight_bits`` (:func:`fastvit.export.quantize.int8_weight_bits`; "auto" decides for this
    CPU): 7 halves the weight range of every convolution and MatMul (NNCF's overflow fix for
    all layers), so that the int8 kernels of CPUs without VNNI cannot saturate; 8 is NNCF's
    default, which halves only the first convolution.
    """
    nncf = require_nncf()  # first: a missing nncf gets the one-line install hint
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        OverflowFix,
    )

    bits = resolve_weight_bits(weight_bits)
    if not len(calibration):
        raise DataError("no calibration images; give --calib DIR with images")
    batches = [calibration[i : i + batch] for i in range(0, len(calibration), batch)]
    import contextlib
    import logging

    logging.getLogger("nncf").setLevel(logging.ERROR)
    quiet = io.StringIO()  # NNCF draws progress bars on the terminal
    with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        return nncf.quantize(
            model,
            nncf.Dataset(batches),
            subset_size=len(batches),
            preset=nncf.QuantizationPreset.PERFORMANCE,
            model_type=nncf.ModelType.TRANSFORMER if transformer else None,
            fast_bias_correction=fast_bias_correction,
            advanced_parameters=AdvancedQuantizationParameters(
                overflow_fix=OverflowFix.ENABLE if bits == 7 else OverflowFix.FIRST_LAYER
            ),
        )


class AccuracyDropError(FastViTError):
    """An int8 model loses more top-1 than allowed; nothing was written."""


# --------------------------------------------------------------------------- export


def export_openvino(
    model: nn.Module | str | Path,
    path: str | Path,
    *,
    precision: str = "f32",
    int8: bool = False,
    calib: str | Path | None = None,
    calib_count: int = 300,
    val: str | Path | None = None,
    max_drop: float = 1.0,
    force: bool = False,
    int8_weight_bits: str | int = "auto",
    input_size: int | tuple[int, int] | None = None,
    class_names: Sequence[str] | None = None,
    verify: bool = True,
    check_images: str | Path | None = None,
    threads: int | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
) -> ExportReport:
    """Export the fused ``model`` as an OpenVINO IR at ``path`` (``NAME.xml`` + ``NAME.bin``).

    ``precision`` is the inference precision stored with the model (f32: checked against
    PyTorch to 1e-4; bf16: reported as top-1 agreement and max difference on ``val``).
    ``int8`` quantizes with NNCF on ``calib`` images (default: the digits train split for a
    digits model) and refuses to write if top-1 on ``val`` drops more than ``max_drop``
    points, unless ``force``. ``int8_weight_bits`` ("auto": 7 on CPUs without VNNI/AMX, whose
    int8 kernels saturate, else 8; see :func:`fastvit.export.quantize.int8_weight_bits`) is
    stored in the IR's quantization note. Nothing is written when a check fails.
    """
    require_openvino()
    if int8:
        require_nncf()
    _check_precision(precision)
    if max_drop < 0:
        raise ConfigError(f"--max-drop must be >= 0 points, got {max_drop}")
    resolve_weight_bits(int8_weight_bits)  # a bad value fails before any slow work
    if calib_count < 1:
        raise ConfigError(f"--calibration-count must be at least 1, got {calib_count}")
    xml = Path(path)
    for p in xml_pair(xml):  # fail before any slow work
        if p.exists() and not overwrite:
            raise WriteError(
                f"{p} already exists; pass --overwrite to replace it or choose another --output"
            )
    log = log or (lambda s: None)
    fused = fuse_for_export(load_source(model))
    meta = ModelCard.from_model(fused, input_size=input_size, class_names=class_names)
    digits = is_digits_model(meta)
    calib_images = None
    if int8:
        if calib is None and not digits:
            raise ConfigError(
                "--int8 needs calibration images: pass --calib DIR (a folder of "
                "images like the ones the model will see)"
            )
        calib_images = load_image_set(calib, meta, split="train", limit=calib_count)
    if val is None and digits:
        val = "digits"
    val_set = load_image_set(val, meta, split="val", what="validation") if val else None
    if val_set is not None and int8 and not val_set.labelled:
        raise DataError(
            f"{val} has no class sub-folders; --val needs an ImageFolder (one "
            "sub-folder per class) or 'digits'"
        )

    log(f"converting {meta.variant} to OpenVINO")
    ov_model = convert_fused(fused, meta)
    report = ExportReport(path=xml, format=f"openvino ({'int8, ' if int8 else ''}{precision})")
    f32_compiled = compile_ir(ov_model, "f32", threads=threads)
    if verify:  # the float32 IR must match PyTorch, whatever is written
        with torch.no_grad():
            for name, x in (
                ("random", random_inputs(meta, batch=2)),
                ("real", real_inputs(meta, 4, check_images)),
            ):
                report.record(name, output_diff(fused(x), run_compiled(f32_compiled, x.numpy())))
        if not report.ok:
            raise ReparamError(report.failure())
    quant_note = None
    if int8:
        assert calib_images is not None
        log(f"quantizing with NNCF on {len(calib_images.images)} images from {calib_images.source}")
        bits = resolve_weight_bits(int8_weight_bits)
        out_model = quantize_int8(ov_model, calib_images.images, weight_bits=bits)
        quant_note = (
            f"int8 NNCF PTQ (per-channel {weight_bits_note(bits)}), "
            f"{len(calib_images.images)} calibration images from {calib_images.source}"
        )
        report.details["quantization"] = quant_note
    else:
        out_model = ov_model
    set_card(out_model, meta, precision, quantization=quant_note)
    if int8 or precision != "f32":
        # bf16/int8 cannot match to 1e-4: report agreement with PyTorch and accuracy
        compiled = compile_ir(out_model, precision, threads=threads)
        probe = (
            val_set
            if val_set is not None
            else ImageSet(
                real_inputs(meta, 64, check_images).numpy(), np.full(64, -1), "real images"
            )
        )
        with torch.no_grad():
            ref = np.concatenate(
                [
                    fused(torch.from_numpy(probe.images[i : i + 64])).numpy()
                    for i in range(0, len(probe.images), 64)
                ]
            )
        out = compiled_logits(compiled, probe.images)
        agree = float((out.argmax(1) == ref.argmax(1)).mean() * 100.0)
        scale = float(np.abs(ref).max())
        report.details["top-1 agreement with PyTorch"] = (
            f"{agree:.2f}% of {len(ref)} images ({probe.source}); max |logit diff| "
            f"{max_abs_diff(ref, out):.3g} (logits up to {scale:.3g})"
        )
        if probe.labelled:
            a32, alow = top1(ref, probe.labels), top1(out, probe.labels)
            report.details["top-1 on " + probe.source] = (
                f"float32 {a32:.2f}%  {'int8' if int8 else precision} {alow:.2f}%  "
                f"(delta {alow - a32:+.2f} points)"
            )
            if int8 and a32 - alow > max_drop:
                msg = (
                    f"int8 top-1 on {probe.source} is {alow:.2f}% vs {a32:.2f}% in float32 "
                    f"(drop {a32 - alow:.2f} > --max-drop {max_drop:g} points)"
                )
                if not force:
                    raise AccuracyDropError(
                        f"{msg}; nothing written: calibrate on more "
                        "representative images (--calib), or pass --force"
                    )
                report.details["warning"] = msg + "; written anyway (--force)"
        elif int8:
            report.details["accuracy"] = "not checked (no labelled --val set)"
    save_ir(out_model, xml, overwrite=overwrite)
    report.details["precision hint"] = (
        f"{precision} (stored in the IR; fastvit predict/eval/"
        f"bench apply it; plain OpenVINO needs "
        f"INFERENCE_PRECISION_HINT={precision})"
    )
    return report


__all__ = [
    "PRECISIONS",
    "AccuracyDropError",
    "ImageSet",
    "MissingExtraError",
    "OpenVinoModel",
    "compile_ir",
    "compiled_logits",
    "convert_fused",
    "export_openvino",
    "is_digits_model",
    "load_image_set",
    "openvino_available",
    "quantize_int8",
    "read_card",
    "read_openvino",
    "require_nncf",
    "require_openvino",
    "run_compiled",
    "save_ir",
    "set_card",
]
