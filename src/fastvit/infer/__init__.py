"""Inference: prediction with any model file (checkpoint, training run file, TorchScript, ONNX).

Prediction is not export: this package runs models; :mod:`fastvit.export` writes them. The
arrow points one way only: ``infer`` uses the exporters' readers (ONNX metadata, onnxruntime
sessions, TorchScript loading, in-memory ONNX for a checkpoint run with onnxruntime);
``export`` never imports ``infer`` (its parity checks compare outputs directly).
"""

from fastvit.infer.predict import (
    BACKENDS,
    MissingClassNamesWarning,
    OnnxPredictor,
    Prediction,
    Predictor,
    PredictorModule,
    TorchPredictor,
    is_export_file,
    is_torchscript,
    load_predictor,
    predict_images,
    read_class_names,
)

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
