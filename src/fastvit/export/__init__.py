"""Deployment: ONNX / TorchScript / CoreML export with parity checks, prediction, int8/bf16,
and a low-overhead ``torch.compile`` wrapper for serving.

Every exporter starts from the fully fused inference form and stores the preprocessing and
class names in the exported file (see :mod:`fastvit.export.metadata`). onnx, onnxruntime and
coremltools are imported only inside the functions that use them.
"""

from fastvit.export.common import PARITY_TOL, ExportReport, fuse_for_export
from fastvit.export.compiled import CompiledInference
from fastvit.export.coreml import coreml_available, export_coreml, inspect_coreml
from fastvit.export.metadata import ModelMetadata, metadata_from_model
from fastvit.export.onnx import describe_onnx, export_onnx, ort_session, read_onnx_metadata
from fastvit.export.predict import Prediction, Predictor, load_predictor, predict_images
from fastvit.export.quantize import bf16_supported, quantize_onnx, to_bf16
from fastvit.export.torchscript import export_torchscript, load_torchscript

__all__ = [
    "PARITY_TOL",
    "CompiledInference",
    "ExportReport",
    "ModelMetadata",
    "Prediction",
    "Predictor",
    "bf16_supported",
    "coreml_available",
    "describe_onnx",
    "export_coreml",
    "export_onnx",
    "export_torchscript",
    "fuse_for_export",
    "inspect_coreml",
    "load_predictor",
    "load_torchscript",
    "metadata_from_model",
    "ort_session",
    "predict_images",
    "quantize_onnx",
    "read_onnx_metadata",
    "to_bf16",
]
