"""Convolution building helpers shared by the blocks (same math, faster kernels)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def repeat_channels(x: Tensor, m: int) -> Tensor:
    """Repeat every channel ``m`` times in place order (c0, c0, c1, c1, ... for m=2).

    Keeps a channels-last input channels-last (an expand + reshape of the NHWC view).
    """
    if m == 1:
        return x
    # (Exporters trace the plain op: shape arithmetic in traced graphs trips up converters.)
    if not torch.jit.is_tracing() and x.is_contiguous(memory_format=torch.channels_last):
        b, c, h, w = x.shape
        y = x.permute(0, 2, 3, 1).unsqueeze(-1).expand(b, h, w, c, m)
        return y.reshape(b, h, w, c * m).permute(0, 3, 1, 2)
    return x.repeat_interleave(m, dim=1)


class ChannelRepeatConv2d(nn.Conv2d):
    """A conv with ``groups == in_channels`` and ``out_channels == m * in_channels``, run as a
    depthwise conv over the input with each channel repeated ``m`` times.

    Output channel ``o`` of the grouped conv reads input channel ``o // m``, which is channel
    ``o`` of the repeated input: same ``[out, 1, k, k]`` weights, same result. oneDNN's
    depthwise kernels are far faster than its generic grouped path for this shape (FastViT's
    patch embeddings and classifier conv).
    """

    def forward(self, x: Tensor) -> Tensor:
        x = repeat_channels(x, self.out_channels // self.in_channels)
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                        self.out_channels)


def conv2d(
    in_channels: int,
    out_channels: int,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    bias: bool = True,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> nn.Conv2d:
    """``nn.Conv2d``, or :class:`ChannelRepeatConv2d` for channel-multiplier grouped convs."""
    cls = (ChannelRepeatConv2d
           if groups == in_channels and out_channels > in_channels
           and out_channels % in_channels == 0 else nn.Conv2d)
    return cls(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
               device=device, dtype=dtype)
