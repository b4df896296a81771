"""The fused ConvFFN with its CPU speed path (NHWC GEMMs with oneDNN post-ops)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastvit.layers.ffn import ConvFFN
from fastvit.layers.inference.kernels import (
    eager,
    is_exact_gelu,
    kernels_apply,
    linear_add,
    linear_gelu,
    unhooked,
)


class FusedConvFFN(ConvFFN):
    """:class:`~fastvit.layers.ffn.ConvFFN` in fused form (same modules, same state-dict keys,
    same plain path), with an eager speed path for channels-last inputs.

    The 1x1 convs run as GEMMs on the ``(N*H*W, C)`` view of the NHWC tensor (plain sgemm beats
    oneDNN's 1x1 conv here). In CPU inference (see
    :func:`~fastvit.layers.inference.kernels.can_fuse`) oneDNN GEMMs apply the GELU and the
    block's residual add as post-ops instead: one pass less over the hidden and output tensors
    each (on AVX2-only CPUs the GELU runs in place right after fc1's GEMM:
    :func:`~fastvit.layers.inference.kernels.prefer_gelu_postop`). fx/jit tracing, scripting,
    export, ``torch.compile``, dispatch modes and hooks on ``fc1``/``act``/``fc2`` get the
    plain ops.
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int | None = None,
        out_channels: int | None = None,
        act_layer: type[nn.Module] = nn.GELU,
        drop: float = 0.0,
    ) -> None:
        super().__init__(
            in_channels, hidden_channels, out_channels, act_layer, drop, inference_mode=True
        )

    @classmethod
    def from_ffn(cls, ffn: ConvFFN) -> FusedConvFFN:
        """The fused-form ``ffn`` (after ``reparameterize()``) as a FusedConvFFN, sharing its
        modules."""
        if not ffn.inference_mode:
            raise ValueError("FusedConvFFN.from_ffn needs a reparameterized ConvFFN")
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.inference_mode = True
        new.training = ffn.training
        for name, child in ffn.named_children():
            setattr(new, name, child)
        return new

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        x = self.conv(x)
        if not torch.jit.is_scripting() and self._use_nhwc(x):
            return self._forward_nhwc(x, residual)
        return self._mlp(x, residual)

    @torch.jit.unused
    def _use_nhwc(self, x):  # (unannotated: TorchScript reads unused signatures)
        return (
            eager(x)
            and x.is_contiguous(memory_format=torch.channels_last)
            and unhooked(self.fc1, self.fc2, self.act)
        )

    @torch.jit.unused
    def _forward_nhwc(self, x, residual):  # (unannotated: TorchScript reads unused signatures)
        xt = x.permute(0, 2, 3, 1)
        w1, w2 = self.fc1.weight.flatten(1), self.fc2.weight.flatten(1)
        fast = not self.training and kernels_apply(x, w1, w2)  # (eager: checked by _use_nhwc)
        if fast and is_exact_gelu(self.act):
            y = linear_gelu(xt, w1, self.fc1.bias)
        else:
            y = self.drop(self.act(F.linear(xt, w1, self.fc1.bias)))
        if residual is None:
            return self.drop(F.linear(y, w2, self.fc2.bias)).permute(0, 3, 1, 2)
        if fast and residual.is_contiguous(memory_format=torch.channels_last):
            return linear_add(y, w2, self.fc2.bias, residual.permute(0, 2, 3, 1)).permute(
                0, 3, 1, 2
            )
        out = residual.permute(0, 2, 3, 1) + self.drop(F.linear(y, w2, self.fc2.bias))
        return out.permute(0, 3, 1, 2)
