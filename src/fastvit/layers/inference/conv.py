"""The fused convolution that every reparameterized conv block ends in."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastvit.layers.inference.kernels import (
    conv_gelu,
    eager,
    is_exact_gelu,
    kernels_apply,
    repeat_channels,
    unhooked,
)


class FusedConv2d(nn.Conv2d):
    """A biased ``nn.Conv2d`` (same parameters and state-dict keys) followed by an optional
    activation ``act`` (None: none): the single conv a multi-branch block fuses into.

    Plain path (what fx, TorchScript, ``torch.jit.trace``, ONNX/``torch.export`` and
    ``torch.compile`` see): ``act(conv2d(x))``. Eager speed paths, same result:

    * a channel-multiplier grouped conv (``groups == in_channels``, ``out_channels = m *
      in_channels``, FastViT's patch embeddings and classifier conv) runs as a depthwise conv
      over the input with each channel repeated ``m`` times: output channel ``o`` reads input
      channel ``o // m`` either way, and oneDNN's depthwise kernels are far faster than its
      generic grouped path;
    * in CPU inference an exact ``nn.GELU`` ``act`` is applied inside the conv as a oneDNN
      post-op (:mod:`fastvit.layers.inference.kernels`; on AVX2-only CPUs in place right after
      it), unless ``act`` is hooked.
    """

    def __init__(self, *args, act: nn.Module | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.act = act  # None: no activation (and no module call for it)
        m = self.out_channels // self.in_channels
        self.channel_multiplier = (
            m
            if self.groups == self.in_channels
            and m > 1
            and self.out_channels == m * self.in_channels
            else 1
        )

    @classmethod
    def from_kernel(
        cls,
        weight: Tensor,
        bias: Tensor,
        *,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        act: nn.Module | None = None,
    ) -> FusedConv2d:
        """A fused conv holding ``weight``/``bias`` (same dtype/device), e.g. a fusion result."""
        out_ch, in_per_group = weight.shape[:2]
        conv = cls(
            in_per_group * groups,
            out_ch,
            tuple(weight.shape[2:]),
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=True,
            device=weight.device,
            dtype=weight.dtype,
            act=act,
        )
        with torch.no_grad():
            conv.weight.copy_(weight)
            conv.bias.copy_(bias)
        return conv

    def forward(self, x: Tensor) -> Tensor:
        if not torch.jit.is_scripting() and self._eager_path(x):
            return self._forward_fast(x)
        x = self._conv_forward(x, self.weight, self.bias)
        if self.act is not None:
            x = self.act(x)
        return x

    @torch.jit.unused
    def _eager_path(self, x):  # (unannotated: TorchScript reads unused signatures)
        if self.padding_mode != "zeros" or isinstance(self.padding, str):
            return False
        if self.channel_multiplier > 1:
            return eager(x)
        # GELU post-op: cheap module checks first, then the input (which may be an fx proxy)
        return (
            self.act is not None
            and is_exact_gelu(self.act)
            and not self.training
            and unhooked(self.act)
            and eager(x)
            and kernels_apply(x, self.weight)
        )

    @torch.jit.unused
    def _forward_fast(self, x):  # (unannotated: TorchScript reads unused signatures)
        if self.channel_multiplier > 1:
            x = repeat_channels(x, self.channel_multiplier)
            y = F.conv2d(
                x,
                self.weight,
                self.bias,
                self.stride,
                self.padding,
                self.dilation,
                self.out_channels,
            )
            return y if self.act is None else self.act(y)
        return conv_gelu(self, x)  # conv + GELU in one oneDNN call (or GELU in place after)
