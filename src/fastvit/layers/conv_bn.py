"""Conv + BatchNorm, the unit every branch is made of."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastvit.layers.inference.conv import FusedConv2d
from fastvit.layers.inference.kernels import (
    eager,
    reach_cropped,
    split_multiplier_conv,
    unhooked,
)
from fastvit.reparam.base import Reparameterizable
from fastvit.reparam.fuse import fuse_conv_bn


class ConvBN(Reparameterizable):
    """``bn(conv(x))`` with a bias-free conv; fuses to one biased conv ``reparam_conv``.

    State-dict keys match the official ``_conv_bn`` sequential: ``conv.weight``, ``bn.*``.

    In eager execution with autograd on (not fx, scripting, tracing, export, compile or a
    dispatch mode, and with no hook on ``conv``) the training form computes the same conv
    faster: taps that cannot reach a small input are dropped
    (:func:`~fastvit.layers.inference.kernels.reach_cropped`) and a channel-multiplier conv
    runs as depthwise convs (:func:`~fastvit.layers.inference.kernels.split_multiplier_conv`);
    same parameters, outputs and gradients up to float rounding. Graph captures and no-grad
    evaluation run ``nn.Conv2d``: bitwise what an fx graph of the model computes, as timm's
    generic tests check.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        inference_mode: bool = False,
    ) -> None:
        super().__init__()
        self.inference_mode = inference_mode
        self.stride, self.padding, self.groups = stride, padding, groups
        # A strided 1x1 conv without padding only reads every stride-th pixel: run it as a
        # stride-1 conv on the subsampled input (same result; and torch 2.14's oneDNN backward
        # of strided 1x1 convs on channels-last CPU tensors crashes at >= 112 px). The
        # subsampling is a 1x1 max-pool, not a slice: its output size has the conv formula
        # (H - 1) // s + 1, so torch.export sees it equal to the other branches' sizes.
        self.subsample = stride if kernel_size == 1 and padding == 0 and stride > 1 else 1
        m = out_channels // in_channels
        self.multiplier = (
            m if groups == in_channels and m > 1 and out_channels == m * in_channels else 1
        )
        if inference_mode:
            self.conv = None
            self.bn = None
            self.reparam_conv = FusedConv2d(
                in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=True
            )
        else:
            self.conv = nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride if self.subsample == 1 else 1,
                padding,
                groups=groups,
                bias=False,
            )
            self.bn = nn.BatchNorm2d(out_channels)
            self.reparam_conv = None

    def forward(self, x: Tensor) -> Tensor:
        if self.reparam_conv is not None:
            return self.reparam_conv(x)
        assert self.conv is not None and self.bn is not None
        if self.subsample > 1:
            x = F.max_pool2d(x, 1, self.subsample)
        if not torch.jit.is_scripting() and self._eager_conv(x):
            return self.bn(self._conv_fast(x))
        return self.bn(self.conv(x))

    @torch.jit.unused
    def _eager_conv(self, x):  # (unannotated: TorchScript reads unused signatures)
        conv = self.conv
        return (
            (self.multiplier > 1 or conv.kernel_size != (1, 1))
            and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str)
            and conv.dilation == (1, 1)
            and torch.is_grad_enabled()  # training steps; no-grad eval stays bitwise plain
            and eager(x)
            and unhooked(conv)
        )

    @torch.jit.unused
    def _conv_fast(self, x):  # (unannotated: TorchScript reads unused signatures)
        conv = self.conv
        weight, padding = conv.weight, conv.padding
        cropped = reach_cropped(weight, padding, x.shape[-2:])
        if cropped is not None:
            weight, padding = cropped
        if self.multiplier > 1:
            return split_multiplier_conv(x, weight, conv.stride, padding, self.multiplier)
        if cropped is None:
            return conv(x)
        return F.conv2d(x, weight, None, conv.stride, padding, 1, conv.groups)

    def get_kernel_bias(self) -> tuple[Tensor, Tensor]:
        """Equivalent (kernel, bias) of this branch, in either form."""
        if self.reparam_conv is not None:
            return self.reparam_conv.weight, self.reparam_conv.bias
        assert self.conv is not None and self.bn is not None
        return fuse_conv_bn(self.conv.weight, self.conv.bias, self.bn)

    def _reparameterize(self) -> None:
        kernel, bias = self.get_kernel_bias()
        self.reparam_conv = FusedConv2d.from_kernel(
            kernel, bias, stride=self.stride, padding=self.padding, groups=self.groups
        )
        self.conv = None
        self.bn = None
