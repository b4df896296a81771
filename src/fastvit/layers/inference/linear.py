"""The fused linear layer of the attention blocks (qkv and output projections)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastvit.layers.inference.kernels import (
    eager,
    kernels_apply,
    linear,
    linear_add,
    prefer_onednn_gemm,
    unhooked,
)


class FusedLinear(nn.Linear):
    """``nn.Linear`` in fused form (same parameters, state-dict keys and plain path) that picks
    the faster CPU GEMM in eager inference and can add a residual inside it.

    Where :func:`~fastvit.layers.inference.kernels.prefer_onednn_gemm` holds for this CPU
    (AVX2 without AVX-512, or a non-Intel CPU) and the oneDNN kernels may run
    (:func:`~fastvit.layers.inference.kernels.can_fuse`), a contiguous float32 input goes
    through one oneDNN GEMM instead of ``F.linear`` (MKL); :meth:`add_nhwc` also applies a
    residual add as its post-op. Everywhere else (Intel AVX-512/AMX CPUs, autograd, tracing,
    scripting, export, compile, dispatch modes, other dtypes) it is ``F.linear``.
    """

    @classmethod
    def from_linear(cls, layer: nn.Linear) -> FusedLinear:
        """``layer`` as a FusedLinear sharing its parameters (``layer`` itself if it is one)."""
        if isinstance(layer, FusedLinear):
            return layer
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = layer.in_features, layer.out_features
        new.weight = layer.weight
        new.register_parameter("bias", layer.bias)
        new.training = layer.training
        return new

    def forward(self, x: Tensor) -> Tensor:
        if not torch.jit.is_scripting() and self._onednn(x):
            return linear(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)

    @torch.jit.unused
    def _onednn(self, x):  # (unannotated: TorchScript reads unused signatures)
        weights = (self.weight,) if self.bias is None else (self.weight, self.bias)
        return (
            not self.training
            and eager(x)
            and x.dtype == torch.float32  # (the measured case; bf16 keeps torch's choice)
            and x.is_contiguous()
            and prefer_onednn_gemm()
            and kernels_apply(x, *weights)
        )

    @torch.jit.unused
    def can_add_nhwc(self, x, residual):  # (unannotated: TorchScript reads unused signatures)
        """Whether :meth:`add_nhwc` runs as one fused GEMM (else the caller adds itself, so
        that traced graphs keep their plain ops)."""
        return (
            self._onednn(x)
            and unhooked(self)  # (add_nhwc bypasses __call__: hooks must see the layer called)
            and residual.is_contiguous()
            and residual.dtype == x.dtype
            and tuple(residual.shape) == (*x.shape[:-1], self.out_features)
        )

    @torch.jit.unused
    def add_nhwc(self, x, residual):  # (unannotated: TorchScript reads unused signatures)
        """``residual + self(x)`` in one oneDNN GEMM; call only where :meth:`can_add_nhwc`."""
        return linear_add(x, self.weight, self.bias, residual)
