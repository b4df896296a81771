"""Inference: prediction with any model file (checkpoint, training run file, TorchScript, ONNX).

Prediction is not export: this package runs models; :mod:`fastvit.export` writes them. The
arrow points one way only: ``infer`` uses the exporters' readers (ONNX metadata, onnxruntime
sessions, TorchScript loading, in-memory ONNX for a checkpoint run with onnxruntime);
``export`` never imports ``infer`` (its parity checks compare outputs directly).
"""

from fastvit.infer import predict as _predict
from fastvit.infer.predict import *  # noqa: F403  (the public API is predict's __all__)

__all__ = list(_predict.__all__)
