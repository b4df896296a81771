"""Deployment: ONNX / TorchScript / CoreML export with parity checks, int8/bf16, and a
low-overhead ``torch.compile`` wrapper for serving.

Every exporter starts from the fully fused inference form and stores the model card
(:class:`fastvit.card.ModelCard`: preprocessing and class names) in the exported file.
Prediction with exported files lives in :mod:`fastvit.infer`. onnx, onnxruntime and
coremltools are imported only inside the functions that use them.
"""

from fastvit.card import ModelCard
from fastvit.export.common import PARITY_TOL, ExportReport, fuse_for_export
from fastvit.export.compiled import CompiledInference
from fastvit.export.coreml import coreml_available, export_coreml, inspect_coreml
from fastvit.export.onnx import describe_onnx, export_onnx, ort_session, read_onnx_metadata
from fastvit.export.program import export_program
from fastvit.export.quantize import bf16_supported, quantize_onnx, to_bf16
from fastvit.export.torchscript import export_torchscript, load_torchscript

__all__ = [
    "PARITY_TOL",
    "CompiledInference",
    "ExportReport",
    "ModelCard",
    "bf16_supported",
    "coreml_available",
    "describe_onnx",
    "export_coreml",
    "export_onnx",
    "export_program",
    "export_torchscript",
    "fuse_for_export",
    "inspect_coreml",
    "load_torchscript",
    "ort_session",
    "quantize_onnx",
    "read_onnx_metadata",
    "to_bf16",
]
