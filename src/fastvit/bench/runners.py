"""Benchmark runners: one zero-argument callable per (variant, backend, batch, implementation).

Backends (all CPU, float32 unless named otherwise):

* ``unfused``            training form in eval mode, PyTorch eager (the "before" of reparam);
* ``eager``              fully fused model, PyTorch eager, NCHW;
* ``channels_last``      fully fused model and input in channels-last (NHWC) memory format;
* ``compile``            ``torch.compile`` (inductor, weights frozen) of the fused model, via
                         :class:`fastvit.export.compiled.CompiledInference`;
* ``torchscript``        traced + ``torch.jit.freeze`` of the fused model;
* ``bf16``               fused model in bfloat16, channels-last (oneDNN AMX/AVX-512 BF16);
* ``bf16-compile``       that bf16 model through ``torch.compile`` (inductor, frozen weights);
* ``onnxruntime``        the exported fused ONNX model in onnxruntime (all graph optimizations);
* ``onnxruntime-int8``   that model statically quantized to int8 (QDQ, per-channel weights,
                         calibrated on the digits train split);
* ``openvino-f32``       the same ONNX model converted to OpenVINO, float32 precision hint;
* ``openvino-bf16``      that OpenVINO model with the bf16 precision hint;
* ``openvino-int8``      that OpenVINO model quantized by NNCF (calibrated on the digits train
                         split), float32 hint for the ops left in floating point.

OpenVINO runners are compiled for a static batch with the LATENCY hint and one stream.
The bf16 backends (:data:`BF16_BACKENDS`) are timed only on a CPU with bf16 hardware
(:func:`emulated_bf16` says why not, from :func:`fastvit.host.host_info`) unless
``allow_emulated``.

``impl="timm"`` builds timm's model of the same variant, reparameterized with
``timm.utils.reparameterize_model`` for every backend but ``unfused``.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fastvit.errors import ConfigError
from fastvit.host import HostInfo

BACKENDS = (
    "unfused",
    "eager",
    "channels_last",
    "compile",
    "torchscript",
    "bf16",
    "bf16-compile",
    "onnxruntime",
    "onnxruntime-int8",
    "openvino-f32",
    "openvino-bf16",
    "openvino-int8",
)
OPENVINO_BACKENDS = tuple(b for b in BACKENDS if b.startswith("openvino-"))
#: Backends that compute in bf16: only worth timing on a CPU with bf16 hardware.
BF16_BACKENDS = ("bf16", "bf16-compile", "openvino-bf16")
#: Backend name of a runner for an exported model file given in place of a variant.
FILE_BACKEND = "file"
MODEL_FILE_SUFFIXES = (".xml", ".onnx", ".pt")


def is_model_file(variant: str) -> bool:
    """Whether a bench "variant" is an exported model file (OpenVINO .xml, .onnx, TorchScript)."""
    return Path(variant).suffix.lower() in MODEL_FILE_SUFFIXES and Path(variant).is_file()


def _file_predictor(spec: RunnerSpec) -> Any:
    from fastvit.infer import load_predictor

    return load_predictor(spec.variant, size=spec.size, threads=spec.threads)


IMPLS = ("fastvit", "timm")
#: Backends that timm's model can be run with for --compare-timm.
TIMM_BACKENDS = tuple(b for b in BACKENDS if b != "onnxruntime-int8")  # (ours only)


@dataclass(frozen=True)
class RunnerSpec:
    """What to build; picklable so a child process can rebuild it for memory measurement."""

    variant: str
    backend: str
    batch: int
    size: int
    impl: str = "fastvit"
    threads: int | None = None
    cache_dir: str | None = None  # where ONNX files are written and shared with children
    allow_emulated: bool = False  # run a bf16 backend on a CPU without bf16 hardware

    @property
    def key(self) -> str:
        return f"{self.impl}:{self.variant}:{self.backend}:b{self.batch}"


def emulated_bf16(backend: str, host: HostInfo) -> str | None:
    """Why ``backend`` is not worth timing on ``host`` (one line), or None when it is.

    A bf16 backend on a CPU without bf16 hardware times an emulation (PyTorch) or plain f32
    under a bf16 label (OpenVINO falls back silently), not a real deployment choice. Where the
    host's flags are unknown nothing is skipped.
    """
    if backend not in BF16_BACKENDS or host.bf16_native or not host.known:
        return None
    what = (
        "OpenVINO would run f32"
        if backend in OPENVINO_BACKENDS
        else "PyTorch would emulate bf16, slower than f32"
    )
    return f"{backend}: skipped, this CPU ({host.label()}) has no bf16 hardware; {what}"


@dataclass
class Runner:
    spec: RunnerSpec
    fn: Callable[[], Any]


def build_model(variant: str, impl: str, *, fused: bool, num_classes: int = 1000) -> nn.Module:
    """A randomly initialised eval-mode model (weights do not change timings)."""
    torch.manual_seed(0)
    if impl == "timm":
        import timm
        from timm.utils import reparameterize_model

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = timm.create_model(variant, pretrained=False, num_classes=num_classes).eval()
        return reparameterize_model(m) if fused else m
    if impl != "fastvit":
        raise ConfigError(f"unknown implementation {impl!r}; use fastvit or timm")
    import fastvit

    if variant not in fastvit.list_models():
        raise ConfigError(
            f"unknown variant {variant!r}; choose from {', '.join(fastvit.list_models())}"
        )
    m = fastvit.create_model(variant, num_classes=num_classes).eval()
    return fastvit.reparameterize(m) if fused else m


def onnx_path(spec: RunnerSpec, int8: bool = False) -> Path:
    """Cached ONNX file for ``spec`` (fp32, or int8 quantized), exported on first use."""
    from fastvit.card import ModelCard
    from fastvit.export.onnx import onnx_proto, save_proto

    if spec.cache_dir is None:
        raise ConfigError("onnxruntime backends need a cache directory for the exported model")
    cache = Path(spec.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    stem = f"{spec.impl}_{spec.variant}_{spec.size}"
    fp32 = cache / f"{stem}.onnx"
    if not fp32.exists():
        model = build_model(spec.variant, spec.impl, fused=True)
        card = ModelCard.from_model(model, input_size=spec.size)
        save_proto(onnx_proto(model, card), fp32)
    if not int8:
        return fp32
    from fastvit.export.quantize import int8_weight_bits

    bits = int8_weight_bits()  # 7 on CPUs whose int8 kernels saturate: cached apart
    q = cache / f"{stem}_int8w{bits}.onnx"
    if not q.exists():
        from fastvit.data import calibration_images
        from fastvit.export.onnx import read_onnx_metadata
        from fastvit.export.quantize import quantize_onnx

        card = read_onnx_metadata(fp32)
        assert card is not None
        calib = calibration_images("digits", card.preprocessing, limit=32)
        batches = [calib[i : i + 8] for i in range(0, len(calib), 8)]
        quantize_onnx(fp32, q, batches, weight_bits=bits)
    return q


def openvino_model(spec: RunnerSpec) -> Any:
    """The OpenVINO model for ``spec`` (from the cached ONNX file; NNCF int8 for
    ``openvino-int8``, cached as an IR so memory children reuse it)."""
    import openvino as ov

    from fastvit.export.openvino import require_openvino

    require_openvino()
    fp32 = onnx_path(spec)
    if spec.backend != "openvino-int8":
        return ov.convert_model(str(fp32))
    from fastvit.export.quantize import int8_weight_bits

    bits = int8_weight_bits()  # 7 on CPUs whose int8 kernels saturate: cached apart
    xml = fp32.with_name(fp32.stem + f"_ov_int8w{bits}.xml")
    if not xml.exists():
        from fastvit.data import calibration_images
        from fastvit.export.onnx import read_onnx_metadata
        from fastvit.export.openvino import quantize_int8, save_ir

        card = read_onnx_metadata(fp32)
        assert card is not None
        # random weights: calibration only sets ranges for timing; fewer images at large sizes
        calib = calibration_images(
            "digits", card.preprocessing, limit=64 if spec.size <= 256 else 8
        )
        q = quantize_int8(ov.convert_model(str(fp32)), calib, weight_bits=bits)
        save_ir(q, xml, overwrite=True)
    return ov.Core().read_model(str(xml))


def build_runner(spec: RunnerSpec) -> Runner:
    """Build the model for ``spec`` and return a callable running one batch."""
    if spec.backend == FILE_BACKEND:  # its own runtime and stored precision
        if spec.threads:
            torch.set_num_threads(spec.threads)
        predictor = _file_predictor(spec)
        g = torch.Generator().manual_seed(spec.batch * 100003 + spec.size)
        xf = torch.randn(spec.batch, *predictor.card.input_size, generator=g).numpy()
        return Runner(spec, lambda: predictor.logits(xf))
    if spec.backend not in BACKENDS:
        raise ConfigError(f"unknown backend {spec.backend!r}; use any of {', '.join(BACKENDS)}")
    if spec.impl == "timm" and spec.backend not in TIMM_BACKENDS:
        raise ConfigError(f"--compare-timm does not support backend {spec.backend}")
    if spec.threads:
        torch.set_num_threads(spec.threads)
    g = torch.Generator().manual_seed(spec.batch * 100003 + spec.size)  # same for all backends
    x = torch.randn(spec.batch, 3, spec.size, spec.size, generator=g)

    if spec.backend in OPENVINO_BACKENDS:
        from fastvit.export.openvino import compile_ir

        precision = "bf16" if spec.backend == "openvino-bf16" else "f32"
        compiled = compile_ir(
            openvino_model(spec), precision, threads=spec.threads, batch=spec.batch
        )
        request = compiled.create_infer_request()
        feed = {0: x.numpy()}
        # (no copies of the input and output: what onnxruntime does with numpy arrays too)
        return Runner(spec, lambda: request.infer(feed, share_inputs=True, share_outputs=True))

    if spec.backend.startswith("onnxruntime"):
        from fastvit.export.onnx import ort_session

        sess = ort_session(
            onnx_path(spec, int8=spec.backend.endswith("int8")), threads=spec.threads
        )
        name = sess.get_inputs()[0].name
        feed = {name: x.numpy()}
        return Runner(spec, lambda: sess.run(None, feed))

    model = build_model(spec.variant, spec.impl, fused=spec.backend != "unfused")
    if spec.backend in ("channels_last", "bf16", "bf16-compile"):
        x = x.contiguous(memory_format=torch.channels_last)
        model = model.to(memory_format=torch.channels_last)
    if spec.backend in ("bf16", "bf16-compile"):
        from fastvit.export.quantize import to_bf16

        model = to_bf16(model, allow_emulated=spec.allow_emulated)
        x = x.to(torch.bfloat16)
    if spec.backend in ("compile", "bf16-compile"):
        from fastvit.export.compiled import CompiledInference

        model = CompiledInference(model, channels_last=False)  # already converted above
    if spec.backend == "torchscript":
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            model = torch.jit.freeze(torch.jit.trace(copy.deepcopy(model), x, check_trace=False))

    def run() -> Any:
        with torch.inference_mode():
            return model(x)

    return Runner(spec, run)


def count_flops(variant: str, size: int, impl: str = "fastvit") -> float:
    """FLOPs (multiply-adds x 2) of one fused forward at batch 1, counted by PyTorch."""
    from torch.utils.flop_counter import FlopCounterMode

    card = None
    if is_model_file(variant):  # the architecture the file's model card names
        card = _file_predictor(RunnerSpec(variant, FILE_BACKEND, 1, size)).card
        variant = card.variant
    from fastvit.models.segmentation import is_segmentation_card, segmenter_from_card

    if card is not None and is_segmentation_card(card):  # an exported segmenter
        model: nn.Module = segmenter_from_card(card)
    else:
        model = build_model(variant, impl, fused=True)
    x = torch.zeros(1, 3, size, size)
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(x)
    return float(counter.get_total_flops())
