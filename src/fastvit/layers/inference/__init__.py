"""Inference modules: what reparameterized FastViT blocks are made of, with their speed paths.

``reparameterize()`` and ``inference_mode=True`` build fused blocks from these modules;
training-form blocks never use them. Each keeps the parameters and state-dict keys of the
plain module it stands for and a plain path that fx, TorchScript, ``torch.jit.trace``,
ONNX/``torch.export`` and ``torch.compile`` see. The eager speed paths (channel-repeat depthwise
convs, NHWC GEMMs, oneDNN post-op kernels, the per-CPU GEMM choice) and all their guards live
here only; the private oneDNN ops are used only with torch in
:data:`~fastvit.layers.inference.kernels.SUPPORTED_TORCH` (``[tool.fastvit]
fused-kernels-torch`` in pyproject.toml).
"""

from typing import Any

from fastvit.layers.inference.conv import FusedConv2d
from fastvit.layers.inference.kernels import SUPPORTED_TORCH, kernels_available
from fastvit.layers.inference.linear import FusedLinear

__all__ = ["SUPPORTED_TORCH", "FusedConv2d", "FusedConvFFN", "FusedLinear", "kernels_available"]


def __getattr__(name: str) -> Any:
    # FusedConvFFN builds on layers.ffn, which imports layers.conv_bn, which imports this
    # package: import it on first use so importing either side first works.
    if name == "FusedConvFFN":
        from fastvit.layers.inference.ffn import FusedConvFFN

        return FusedConvFFN
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
