"""Large-kernel conv with a parallel small-kernel branch (RepLKNet, Ding et al., CVPR 2022)."""

from __future__ import annotations

from torch import Tensor, nn

from fastvit.layers.conv_bn import ConvBN
from fastvit.layers.inference.conv import FusedConv2d
from fastvit.layers.se import SEBlock
from fastvit.reparam.base import Reparameterizable
from fastvit.reparam.fuse import pad_kernel


class ReparamLargeKernelConv(Reparameterizable):
    """kxk conv+BN ``lkb_origin`` plus a small-kernel conv+BN ``small_conv``; fuses into one
    kxk conv ``lkb_reparam``.

    ``apply_act``: the official implementation computes ``activation(out)`` and discards the
    result, so the published weights were trained without it. The default (``False``)
    reproduces that; ``True`` applies the activation, for new architectures (MobileCLIP).
    ``use_se``: squeeze-excite (reduction 1/4) between the conv and the activation; it is not
    linear, so it stays a separate module in the fused form.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        groups: int,
        small_kernel: int | None = None,
        inference_mode: bool = False,
        activation: type[nn.Module] = nn.GELU,
        apply_act: bool = False,
        use_se: bool = False,
    ) -> None:
        super().__init__()
        if small_kernel is not None and small_kernel > kernel_size:
            raise ValueError(
                f"small_kernel ({small_kernel}) must not exceed kernel_size ({kernel_size})"
            )
        self.inference_mode = inference_mode
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.small_kernel = kernel_size, small_kernel
        self.stride, self.groups, self.padding = stride, groups, kernel_size // 2
        self.se = SEBlock(out_channels, rd_ratio=0.25) if use_se else nn.Identity()
        self.activation = activation() if apply_act else nn.Identity()
        if inference_mode:
            self.lkb_reparam = FusedConv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride,
                self.padding,
                groups=groups,
                bias=True,
            )
            self.lkb_origin = None
            self.small_conv = None
        else:
            self.lkb_reparam = None
            self.lkb_origin = ConvBN(
                in_channels, out_channels, kernel_size, stride, self.padding, groups
            )
            self.small_conv = (
                ConvBN(in_channels, out_channels, small_kernel, stride, small_kernel // 2, groups)
                if small_kernel is not None
                else None
            )

    def forward(self, x: Tensor) -> Tensor:
        if self.lkb_reparam is not None:
            out = self.lkb_reparam(x)
        else:
            assert self.lkb_origin is not None
            out = self.lkb_origin(x)
            if self.small_conv is not None:
                out = out + self.small_conv(x)
        return self.activation(self.se(out))

    def get_kernel_bias(self) -> tuple[Tensor, Tensor]:
        """Equivalent (kernel, bias), in either form."""
        if self.lkb_reparam is not None:
            return self.lkb_reparam.weight, self.lkb_reparam.bias
        assert self.lkb_origin is not None
        kernel, bias = self.lkb_origin.get_kernel_bias()
        if self.small_conv is not None:
            k, b = self.small_conv.get_kernel_bias()
            kernel = kernel + pad_kernel(k, self.kernel_size)
            bias = bias + b
        return kernel, bias

    def _reparameterize(self) -> None:
        kernel, bias = self.get_kernel_bias()
        self.lkb_reparam = FusedConv2d.from_kernel(
            kernel, bias, stride=self.stride, padding=self.padding, groups=self.groups
        )
        self.lkb_origin = None
        self.small_conv = None
