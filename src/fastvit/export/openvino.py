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
    AccuracyDropError,
    ExportReport,
    fuse_for_export,
    is_digits_model,
    load_source,
    max_abs_diff,
    output_diff,
    random_inputs,
    real_inputs,
)
from fastvit.export.quantize import int8_weight_bits as resolve_weight_bits
from fastvit.export.quantize import weight_bits_note
from fastvit.fileio import WriteError, describe_os_error, temp_sibling
from fastvit.host import HostInfo, host_info

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
    keep_f32: Sequence[str] = (),
    first_conv_f32: bool = False,
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

    ``keep_f32``: OpenVINO op types left unquantized (e.g. ``("GroupConvolution",)``); for
    measuring what int8 gains per kind of layer (``benchmarks/bench_openvino.py keep-f32``).
    ``first_conv_f32`` leaves the first convolution (the one reading the image) in f32: on the
    digits T8 its int8 input and weights cause two thirds of the int8 model's logit error
    (mean |diff| 15% of the logits' scale, 4.5% with it in f32) for 4-7% more latency; the
    exporter falls back to it when the all-int8 model fails the accuracy gate.
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
    names = [first_convolution(model)] if first_conv_f32 else []
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
            ignored_scope=nncf.IgnoredScope(names=names, types=list(keep_f32))
            if names or keep_f32
            else None,
            advanced_parameters=AdvancedQuantizationParameters(
                overflow_fix=OverflowFix.ENABLE if bits == 7 else OverflowFix.FIRST_LAYER
            ),
        )


def first_convolution(model: Any) -> str:
    """Friendly name of the first convolution in graph order: the one reading the image."""
    for op in model.get_ordered_ops():
        if op.get_type_name() in ("Convolution", "GroupConvolution"):
            return op.get_friendly_name()
    raise ConfigError("the model has no convolution to keep in f32")


# --------------------------------------------------------------------------- export


AUTO = "auto"
#: ``--precision auto`` keeps f32 unless a lower precision is at least this much faster: a
#: gain inside timing noise is not worth any accuracy.
MIN_SPEEDUP = 1.1


@dataclass
class PrecisionTrial:
    """One precision considered by ``--precision auto``: its median batch-1 latency (None:
    not timed) and why it was or was not eligible."""

    name: str  # "f32", "bf16" or "int8"
    median_ms: float | None
    eligible: bool
    note: str


def choose_precision(
    trials: Sequence[PrecisionTrial], host: HostInfo | None = None
) -> tuple[str, str]:
    """(name, one-line reason): the fastest eligible trial, f32 unless another is at least
    :data:`MIN_SPEEDUP` times faster. ``trials`` must hold an eligible, timed f32."""
    host = host or host_info()
    f32 = next(t for t in trials if t.name == "f32")
    assert f32.median_ms is not None
    timed = [t for t in trials if t.eligible and t.median_ms is not None]
    best = min(timed, key=lambda t: t.median_ms or 0.0)
    gain = f32.median_ms / (best.median_ms or f32.median_ms)
    if best.name != "f32" and gain < MIN_SPEEDUP:
        why = f"{best.name} only {gain:.2f}x faster (< {MIN_SPEEDUP}x)"
        best, gain = f32, 1.0
    else:
        why = ""
    parts = [
        f"{best.name} on {host.label()}"
        + (f": {gain:.2f}x faster than f32" if best is not f32 else "")
        + (f" ({best.note})" if best.note else "")
    ]
    parts += [f"{t.name}: {t.note}" for t in trials if t is not best and t.name != "f32"]
    if why:
        parts.append(why)
    return best.name, "; ".join(parts)


def time_compiled(
    compiled: Sequence[Any], x: np.ndarray, *, rounds: int = 5, round_time: float = 0.1
) -> list[float]:
    """Median ms per call of each compiled model on ``x``, timed in interleaved rounds so
    that load from other processes hits all alike (enough to rank precisions, not a
    benchmark: see ``fastvit bench``)."""
    import time

    reqs = [c.create_infer_request() for c in compiled]
    for r in reqs:  # warm-up
        run_compiled(None, x, r)
    samples: list[list[float]] = [[] for _ in reqs]
    for k in range(rounds):
        order = list(range(len(reqs)))
        order = order[k % len(order) :] + order[: k % len(order)]
        for i in order:
            stop = time.perf_counter() + round_time
            while True:
                t0 = time.perf_counter()
                run_compiled(None, x, reqs[i])
                samples[i].append(time.perf_counter() - t0)
                if t0 > stop:
                    break
    return [float(np.median(s)) * 1e3 for s in samples]


@dataclass
class _Candidate:
    """An IR ready to write, with what its checks found."""

    name: str
    model: Any
    precision: str  # the stored precision hint
    quantization: str | None
    details: dict[str, str]
    failure: str | None = None  # why its accuracy check failed


def _check_candidate(
    cand: _Candidate,
    probe: ImageSet,
    ref: np.ndarray,
    *,
    max_drop: float,
    threads: int | None,
) -> Any:
    """Compile ``cand``, record its agreement with PyTorch (and top-1 on a labelled probe)
    in ``cand.details``, set ``cand.failure`` when int8 drops more than ``max_drop`` points
    or bf16 agrees on fewer than :data:`MIN_AGREEMENT` % of the images; return the compiled
    model."""
    compiled = compile_ir(cand.model, cand.precision, threads=threads)
    out = compiled_logits(compiled, probe.images)
    agree = float((out.argmax(1) == ref.argmax(1)).mean() * 100.0)
    scale = float(np.abs(ref).max())
    cand.details["top-1 agreement with PyTorch"] = (
        f"{agree:.2f}% of {len(ref)} images ({probe.source}); max |logit diff| "
        f"{max_abs_diff(ref, out):.3g} (logits up to {scale:.3g})"
    )
    if probe.labelled:
        a32, alow = top1(ref, probe.labels), top1(out, probe.labels)
        cand.details["top-1 on " + probe.source] = (
            f"float32 {a32:.2f}%  {cand.name} {alow:.2f}%  (delta {alow - a32:+.2f} points)"
        )
        if cand.name == "int8" and a32 - alow > max_drop:
            cand.failure = (
                f"int8 top-1 on {probe.source} is {alow:.2f}% vs {a32:.2f}% in float32 "
                f"(drop {a32 - alow:.2f} > --max-drop {max_drop:g} points)"
            )
        elif cand.name == "int8":
            cand.details["accuracy gate"] = f"drop {a32 - alow:.2f} <= {max_drop:g} points"
    elif cand.name == "int8":
        cand.details["accuracy"] = "not checked (no labelled --val set)"
    if cand.name == "bf16" and agree < MIN_AGREEMENT:
        cand.failure = f"bf16 agrees with PyTorch on {agree:.2f}% < {MIN_AGREEMENT:g}% of images"
    return compiled


def export_openvino(
    model: nn.Module | str | Path,
    path: str | Path,
    *,
    precision: str = "f32",
    int8: bool = False,
    calib: str | Path | None = None,
    calib_count: int = 300,
    val: str | Path | None = None,
    max_drop: float = 0.5,
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
    points, unless ``force``; an all-int8 model that fails is quantized once more with its
    first convolution in f32 (``quantize_int8(first_conv_f32=True)``) before giving up.
    ``int8_weight_bits`` ("auto": 7 on CPUs without VNNI/AMX, whose
    int8 kernels saturate, else 8; see :func:`fastvit.export.quantize.int8_weight_bits`) is
    stored in the IR's quantization note.

    ``precision="auto"`` (without ``int8``) picks for this CPU: f32; bf16 where the CPU has
    bf16 hardware and bf16 agrees with PyTorch on >= 99% of the images; int8 where
    calibration images (``calib``, or the digits for a digits model) and a labelled ``val``
    set exist and the drop is <= ``max_drop``. The eligible ones are timed interleaved at
    batch 1 and the fastest is written (:func:`choose_precision`); the report says why.
    Nothing is written when a check fails.
    """
    require_openvino()
    from importlib.util import find_spec

    auto = precision == AUTO and not int8
    if int8:
        require_nncf()
    have_nncf = int8 or find_spec("nncf") is not None
    precision = "f32" if precision == AUTO else _check_precision(precision)
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
    if int8 and calib is None and not digits:
        raise ConfigError(
            "--int8 needs calibration images: pass --calib DIR (a folder of "
            "images like the ones the model will see)"
        )
    if val is None and digits:
        val = "digits"
    val_set = load_image_set(val, meta, split="val", what="validation") if val else None
    if val_set is not None and int8 and not val_set.labelled:
        raise DataError(
            f"{val} has no class sub-folders; --val needs an ImageFolder (one "
            "sub-folder per class) or 'digits'"
        )
    labelled = val_set is not None and val_set.labelled
    try_int8 = int8 or (auto and have_nncf and (calib is not None or digits) and labelled)
    calib_images = (
        load_image_set(calib, meta, split="train", limit=calib_count) if try_int8 else None
    )

    log(f"converting {meta.variant} to OpenVINO")
    ov_model = convert_fused(fused, meta)
    report = ExportReport(path=xml, format="openvino")
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

    host = host_info()
    cands: list[_Candidate] = []
    notes: dict[str, str] = {}
    if try_int8:
        assert calib_images is not None
        log(f"quantizing with NNCF on {len(calib_images.images)} images from {calib_images.source}")
        bits = resolve_weight_bits(int8_weight_bits)
        quant_note = (
            f"int8 NNCF PTQ (per-channel {weight_bits_note(bits)}), "
            f"{len(calib_images.images)} calibration images from {calib_images.source}"
        )
        q = quantize_int8(ov_model, calib_images.images, weight_bits=bits)
        cands.append(_Candidate("int8", q, precision, quant_note, {"quantization": quant_note}))
    elif auto:
        notes["int8"] = (
            f"not tried: nncf is not installed ({INSTALL_HINT})"
            if not have_nncf
            else "not tried: needs calibration images (--calib) and a labelled --val set"
            if not labelled
            else "not tried: needs calibration images (--calib)"
        )
    if precision == "bf16" and not int8:
        cands.append(_Candidate("bf16", ov_model, "bf16", None, {}))
        if not host.bf16_native:
            cands[-1].details["warning"] = (
                f"this CPU ({host.label()}) has no bf16 hardware: OpenVINO runs the model in "
                "f32 here; bf16 pays off on CPUs with AVX-512 BF16 or AMX"
            )
    elif auto and host.bf16_native:
        cands.append(_Candidate("bf16", ov_model, "bf16", None, {}))
    elif auto:
        notes["bf16"] = f"not tried: this CPU ({host.label()}) has no bf16 hardware"

    compiled: dict[str, Any] = {}
    if cands:  # bf16/int8 cannot match to 1e-4: agreement with PyTorch and accuracy
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
        for i, c in enumerate(cands):
            compiled[c.name] = _check_candidate(c, probe, ref, max_drop=max_drop, threads=threads)
            if c.name == "int8" and c.failure is not None:
                # the input conv's int8 error dominates (quantize_int8): try once more with it f32
                log(f"{c.failure}; quantizing again with the first convolution in f32")
                assert calib_images is not None
                q = quantize_int8(
                    ov_model, calib_images.images, weight_bits=bits, first_conv_f32=True
                )
                note = f"{c.quantization}; first convolution kept f32"
                retry = _Candidate("int8", q, precision, note, {"quantization": note})
                compiled[c.name] = _check_candidate(
                    retry, probe, ref, max_drop=max_drop, threads=threads
                )
                retry.details["all-int8 model"] = c.failure + ": not used"
                if retry.failure is not None:
                    retry.failure = f"{c.failure}; with the first convolution f32, {retry.failure}"
                cands[i] = retry

    if auto:
        trials = [PrecisionTrial("f32", None, True, "")]
        for c in cands:
            trials.append(PrecisionTrial(c.name, None, c.failure is None, c.failure or ""))
        trials += [PrecisionTrial(n, None, False, why) for n, why in notes.items()]
        timed = [t for t in trials if t.eligible]
        x = random_inputs(meta, batch=1).numpy()
        runs = [f32_compiled if t.name == "f32" else compiled[t.name] for t in timed]
        log(f"timing {', '.join(t.name for t in timed)} at batch 1 on {host.label()}")
        for t, ms in zip(timed, time_compiled(runs, x) if len(runs) > 1 else [1.0]):
            t.median_ms = ms
        for t in trials:
            c = next((c for c in cands if c.name == t.name), None)
            if c is not None and c.failure is None:
                t.note = c.details.get("accuracy gate", "agrees with PyTorch")
        chosen, why = choose_precision(trials, host)
        report.details["precision choice"] = why
        chosen_cand = next((c for c in cands if c.name == chosen), None)
    else:
        chosen_cand = cands[0] if cands else None  # a forced bf16 is reported, not gated
        if chosen_cand is not None and chosen_cand.name == "int8" and chosen_cand.failure:
            if not force:
                raise AccuracyDropError(
                    f"{chosen_cand.failure}; nothing written: calibrate on more "
                    "representative images (--calib), or pass --force"
                )
            chosen_cand.details["warning"] = chosen_cand.failure + "; written anyway (--force)"

    if chosen_cand is None:
        out_model, precision, quant_note, form = ov_model, "f32", None, "f32"
    else:
        out_model, precision = chosen_cand.model, chosen_cand.precision
        quant_note = chosen_cand.quantization
        form = f"int8, {precision}" if chosen_cand.name == "int8" else precision
        report.details.update(chosen_cand.details)
    report.format = f"openvino ({form})"
    set_card(out_model, meta, precision, quantization=quant_note)
    save_ir(out_model, xml, overwrite=overwrite)
    report.details["precision hint"] = (
        f"{precision} (stored in the IR; fastvit predict/eval/"
        f"bench apply it; plain OpenVINO needs "
        f"INFERENCE_PRECISION_HINT={precision})"
    )
    return report


__all__ = [
    "AUTO",
    "PRECISIONS",
    "AccuracyDropError",
    "ImageSet",
    "MissingExtraError",
    "OpenVinoModel",
    "PrecisionTrial",
    "choose_precision",
    "compile_ir",
    "compiled_logits",
    "convert_fused",
    "export_openvino",
    "first_convolution",
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
    "time_compiled",
]
