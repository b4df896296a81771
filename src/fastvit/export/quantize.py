"""Post-training quantization (int8, onnxruntime) and bf16 inference (PyTorch).

int8: static quantization of the exported fused ONNX model with onnxruntime. Weights are
quantized per output channel (symmetric int8), activations per tensor (asymmetric uint8) with
ranges calibrated on real images (read by :func:`fastvit.data.calibration_images`) run through
the model's own preprocessing. The result keeps the fp32 model's metadata. Latency comparisons
live in :mod:`fastvit.bench`.

bf16: the fused model with bfloat16 weights and activations, run by oneDNN (AMX / AVX-512
BF16 kernels) when the CPU has them; :func:`bf16_supported` says whether it does.

int8 weight range: :func:`int8_weight_bits` picks 7-bit weights on x86 CPUs without an int8
dot-product instruction, where full-range int8 convolutions saturate (both the onnxruntime and
the OpenVINO quantizer use it).
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fastvit.data import LabelledImages
from fastvit.errors import ConfigError, DataError
from fastvit.fileio import atomic_path
from fastvit.host import HostInfo, host_info

QUANT_FORMATS = ("qdq", "qoperator")
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
INT8_WEIGHT_BITS = ("auto", "7", "8")


def int8_weight_bits(requested: str | int = "auto", host: HostInfo | None = None) -> int:
    """How many bits int8 weights may use (7 or 8) so that the CPU's int8 kernels are exact.

    x86 CPUs without an int8 dot-product instruction (AVX2, or AVX-512 without VNNI) multiply
    u8 activations by s8 weights with VPMADDUBSW, which adds each pair of products into a
    *saturating* int16: 2·255·127 = 64770 > 32767, so a large activation meeting a large weight
    is clipped (on a digits-trained T8, onnxruntime int8 fell from 100% to 87.5% top-1 and an
    OpenVINO model lost 5.85 points). With 7-bit weights (|q| ≤ 64) a pair is at most
    2·255·64 = 32640 and never clips. VNNI / AVX-VNNI / AMX accumulate in int32, and ARM's
    int8 kernels widen before adding, so they keep all 8 bits. ``"auto"`` decides for ``host``
    (default: this machine); where the CPU's flags cannot be read it takes the safe 7 bits.
    A model quantized with 8 bits on a VNNI host saturates when run on an AVX2 host: export
    on the kind of CPU you deploy on, or pass 7.
    """
    req = str(requested)
    if req not in INT8_WEIGHT_BITS:
        raise ConfigError(
            f"int8 weight bits must be one of {', '.join(INT8_WEIGHT_BITS)}, got {requested!r}"
        )
    if req != "auto":
        return int(req)
    return 7 if int8_saturates(host) else 8


def weight_bits_note(bits: int) -> str:
    """The words stored in a quantized model's card for its weight range (read back by
    :func:`saturation_warning`)."""
    return "7-bit weights" if bits == 7 else "8-bit weights"


def saturation_warning(quantization: str, host: HostInfo | None = None) -> str | None:
    """A one-line warning when a model quantized with 8-bit weights (its card's
    ``quantization`` note) is about to run on a CPU whose int8 kernels saturate, else None."""
    q = quantization or ""
    # notes written before the 7-bit option name no bits: those models have 8-bit weights
    full_range = "int8" in q and "7-bit weights" not in q and "weight_bits=7" not in q
    if not full_range or not int8_saturates(host):
        return None
    host = host or host_info()
    return (
        f"this int8 model has 8-bit weights, made for CPUs with VNNI/AMX; on this CPU "
        f"({host.label()}, no VNNI) its int8 convolutions can saturate and lose accuracy: "
        "re-export it here (`fastvit export ... --int8`: 7-bit weights by default on such CPUs)"
    )


def int8_saturates(host: HostInfo | None = None) -> bool:
    """Whether full-range (8-bit) int8 weights can saturate on ``host`` (see
    :func:`int8_weight_bits`): x86 without VNNI/AMX, or a CPU whose flags are unknown."""
    host = host or host_info()
    if not host.known:
        return True
    return host.is_x86 and not host.int8_dot_product


#: ONNX ops that are a convolution after onnxruntime's offline optimization.
CONV_OPS = ("Conv", "FusedConv", "NhwcFusedConv")


def quantize_onnx(
    fp32_path: str | Path,
    out_path: str | Path,
    calibration: np.ndarray | Iterable[np.ndarray],
    *,
    quant_format: str = "qdq",
    per_channel: bool = True,
    method: str = "minmax",
    quantize_depthwise: bool = True,
    op_types: Sequence[str] = ("Conv", "Gemm", "MatMul"),
    activations: str = "uint8",
    symmetric_activations: bool = False,
    weight_bits: str | int = "auto",
    first_conv_fp32: bool = True,
) -> Path:
    """Static int8 quantization of an fp32 ONNX model (from :func:`export_onnx`).

    ``calibration`` is a float32 array ``(N, C, H, W)`` or an iterable of such batches of
    preprocessed images. The graph is first optimized offline by onnxruntime (extended
    level: the erf pattern becomes one fused GELU kernel), then ``op_types`` are quantized.
    Grouped convs with several outputs per input channel (the 7x7 stride-2 patch
    embeddings, ``conv_exp``) always stay fp32: onnxruntime runs them in int8 through a generic
    kernel ~20x slower than fp32. ``quantize_depthwise=False`` also keeps true depthwise convs
    fp32 (slower overall: the graph then switches between int8 NHWC and fp32 NCHWc layouts
    around every block). Activation-by-activation MatMuls (attention scores) stay fp32.
    ``weight_bits`` (:func:`int8_weight_bits`): "auto" uses 7-bit weights (onnxruntime's
    ``reduce_range``) on CPUs whose int8 kernels saturate. ``first_conv_fp32`` (default) keeps
    the first conv, the one reading the image, in fp32: quantized, its input and weights
    made the int8 digits T8's logits 33% wrong on average (top-1 100 -> 95%); fp32, 4%
    (99.7-100%). The fp32 metadata is copied to the output, plus a ``quantization`` entry
    saying how it was quantized.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if quant_format not in QUANT_FORMATS:
        raise ConfigError(f"unknown quantization format {quant_format!r}; use qdq or qoperator")
    if method not in CALIBRATION_METHODS:
        raise ConfigError(
            f"unknown calibration method {method!r}; use {', '.join(CALIBRATION_METHODS)}"
        )
    bits = int8_weight_bits(weight_bits)
    batches = [calibration] if isinstance(calibration, np.ndarray) else list(calibration)
    batches = [np.ascontiguousarray(b, dtype=np.float32) for b in batches if len(b)]
    if not batches:
        raise DataError("no calibration images; give a folder of images or 'digits'")
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    src = onnx.load(str(fp32_path))
    input_name = src.graph.input[0].name

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            b = next(self._it, None)
            return None if b is None else {input_name: b}

    with tempfile.TemporaryDirectory() as tmpdir:
        opt, pre = Path(tmpdir) / "opt.onnx", Path(tmpdir) / "pre.onnx"
        _ort_optimize(fp32_path, opt)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quant_pre_process(str(opt), str(pre), skip_optimization=True, skip_symbolic_shape=True)
        model = _annotate_contrib_types(onnx.load(str(pre)))
        for i, node in enumerate(model.graph.node):  # the optimizer leaves some unnamed
            if not node.name:
                node.name = f"{node.op_type}_fastvit_{i}"
        onnx.save(model, str(pre))
        exclude = [
            n.name for n in model.graph.node if not _worth_quantizing(n, model, quantize_depthwise)
        ]
        # nodes are in topological order: the first conv (or conv + activation that the
        # optimizer fused) reads the image
        first = next((n.name for n in model.graph.node if n.op_type in CONV_OPS), None)
        if first_conv_fp32 and first is not None and first not in exclude:
            exclude.append(first)
        with atomic_path(out_path) as tmp_out:
            quiet = contextlib.redirect_stdout(io.StringIO())  # calibrators print progress
            with quiet:
                quantize_static(
                    str(pre),
                    str(tmp_out),
                    _Reader(),
                    quant_format=QuantFormat.QDQ
                    if quant_format == "qdq"
                    else QuantFormat.QOperator,
                    per_channel=per_channel,
                    activation_type=QuantType.QUInt8 if activations == "uint8" else QuantType.QInt8,
                    weight_type=QuantType.QInt8,
                    reduce_range=bits == 7,
                    op_types_to_quantize=list(op_types),
                    nodes_to_exclude=exclude,
                    calibrate_method={
                        "minmax": CalibrationMethod.MinMax,
                        "percentile": CalibrationMethod.Percentile,
                        "entropy": CalibrationMethod.Entropy,
                    }[method],
                    extra_options={
                        "WeightSymmetric": True,
                        "ActivationSymmetric": symmetric_activations,
                    },
                )
            q = onnx.load(str(tmp_out))
            del q.metadata_props[:]
            for p in src.metadata_props:
                q.metadata_props.add().CopyFrom(p)
            n_images = sum(map(len, batches))
            q.metadata_props.add(
                key="quantization",
                value=f"int8 static {quant_format} per_channel={per_channel} calibration={method} "
                f"images={n_images} depthwise={'int8' if quantize_depthwise else 'fp32'} "
                f"weight_bits={bits} first_conv={'fp32' if first_conv_fp32 else 'int8'}",
            )
            onnx.save(q, str(tmp_out))
    return out_path


def _ort_optimize(src: Path, dst: Path, level: str = "extended") -> None:
    """Save onnxruntime's offline optimization of ``src`` at ``level`` (``"extended"``: fused
    GELU etc.; ``"basic"``: constant folding and redundant-node removal only)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    }[level]
    opts.optimized_model_filepath = str(dst)
    opts.log_severity_level = 3
    ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])


def _annotate_contrib_types(model: Any) -> Any:
    """Give outputs of onnxruntime contrib ops (fused GELU, FusedConv) a float type.

    ONNX shape inference does not know these ops, and the calibrator only collects ranges
    for tensors with a known float type; their outputs have their input's element type.
    """
    import onnx

    for _ in range(3):  # each pass lets shape inference propagate past one more contrib op
        model = onnx.shape_inference.infer_shapes(model)
        known = {v.name for v in (*model.graph.value_info, *model.graph.input, *model.graph.output)}
        known |= {i.name for i in model.graph.initializer}
        added = 0
        for node in model.graph.node:
            if node.domain != "com.microsoft":
                continue
            for out in node.output:
                if out and out not in known:
                    model.graph.value_info.append(
                        onnx.helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, None)
                    )
                    added += 1
        if not added:
            break
    return model


def _worth_quantizing(node: Any, model: Any, quantize_depthwise: bool) -> bool:
    """Conv/Gemm/MatMul nodes that gain from int8 (see :func:`quantize_onnx`)."""
    inits = {i.name: i for i in model.graph.initializer}
    if node.op_type == "Conv":
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if group == 1:
            return True
        weight = inits.get(node.input[1])
        out_channels = weight.dims[0] if weight is not None else -1
        # grouped convs with several outputs per input channel (the patch-embedding 7x7,
        # conv_exp) fall back to a very slow generic int8 kernel: always keep them fp32
        return quantize_depthwise and out_channels == group
    if node.op_type == "MatMul":
        return any(x in inits for x in node.input)
    return True


def onnx_top1(
    path_or_session: str | Path | Any,
    data: LabelledImages,
    *,
    batch: int = 64,
    threads: int | None = None,
) -> float:
    """Top-1 accuracy (%) of an ONNX model on preprocessed, labelled images."""
    from fastvit.export.onnx import ort_session

    sess = path_or_session
    if isinstance(path_or_session, (str, Path)):
        sess = ort_session(path_or_session, threads=threads)
    name = sess.get_inputs()[0].name
    preds = [
        np.argmax(sess.run(None, {name: data.images[i : i + batch]})[0], axis=1)
        for i in range(0, len(data.images), batch)
    ]
    return float((np.concatenate(preds) == data.labels).mean() * 100.0)


def torch_top1(
    model: nn.Module, data: LabelledImages, *, batch: int = 64, dtype: torch.dtype = torch.float32
) -> float:
    """Top-1 accuracy (%) of a PyTorch model (optionally run in bf16)."""
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(data.images), batch):
            x = torch.from_numpy(data.images[i : i + batch]).to(dtype)
            if dtype != torch.float32:
                x = x.contiguous(memory_format=torch.channels_last)
            pred = model(x).float().argmax(1).numpy()
            correct += int((pred == data.labels[i : i + batch]).sum())
    return 100.0 * correct / len(data.images)


def bf16_supported() -> bool:
    """Whether this CPU has bf16 arithmetic in hardware (AVX-512 BF16, AMX-BF16, ARM BF16) and
    PyTorch's oneDNN uses it.

    Both must hold: :attr:`fastvit.host.HostInfo.bf16_native` (oneDNN also reports AVX-512
    CPUs without BF16, where it emulates bf16 and is slower than f32) and oneDNN's own check.
    Where the host's flags cannot be read, oneDNN's check alone decides.
    """
    from fastvit.host import host_info

    host = host_info()
    if host.known and not host.bf16_native:
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def to_bf16(fused: nn.Module, *, allow_emulated: bool = False) -> nn.Module:
    """A bfloat16, channels-last copy of a fused model (feed it bf16 channels-last input).

    Refused on a CPU without bf16 hardware (:func:`bf16_supported`) unless ``allow_emulated``:
    there PyTorch emulates bf16 and runs slower than f32.
    """
    import copy

    if not allow_emulated and not bf16_supported():
        from fastvit.host import host_info

        raise ConfigError(
            f"this CPU ({host_info().label()}) has no native bf16 support (AVX-512 BF16 / "
            "AMX / ARM BF16); use fp32 or the onnxruntime int8 backend"
        )
    m = copy.deepcopy(fused).eval().to(torch.bfloat16)
    return m.to(memory_format=torch.channels_last)
