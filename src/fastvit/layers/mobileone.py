"""MobileOne blocks (Vasu et al., "An Improved One millisecond Mobile Backbone", CVPR 2023)."""

from __future__ import annotations

from torch import Tensor, nn

from fastvit.errors import ConfigError
from fastvit.layers.conv_bn import ConvBN
from fastvit.layers.inference.conv import FusedConv2d
from fastvit.layers.se import SEBlock
from fastvit.reparam.base import ReparamContainer, Reparameterizable
from fastvit.reparam.fuse import fuse_bn_alone, is_batchnorm, pad_kernel


class MobileOneBlock(Reparameterizable):
    """Multi-branch conv block that fuses into a single conv.

    Training form: the sum of a BN-only skip branch ``rbr_skip`` (only when
    ``in_channels == out_channels`` and ``stride == 1``), a 1x1 conv+BN ``rbr_scale``
    (when ``kernel_size > 1``) and ``num_conv_branches`` kxk conv+BN branches ``rbr_conv``,
    followed by optional squeeze-excite and the activation.
    Inference form: one biased :class:`~fastvit.layers.inference.FusedConv2d` ``reparam_conv``
    (+ SE, activation). Without SE the activation moves into ``reparam_conv.act`` (and
    ``activation`` becomes ``nn.Identity``), so the fused conv can apply it as a post-op.
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
        use_se: bool = False,
        use_act: bool = True,
        use_scale_branch: bool = True,
        num_conv_branches: int = 1,
        activation: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.inference_mode = inference_mode
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding, self.groups = (
            kernel_size,
            stride,
            padding,
            groups,
        )
        self.num_conv_branches = num_conv_branches

        self.se = SEBlock(out_channels) if use_se else nn.Identity()
        self.activation = activation() if use_act else nn.Identity()

        has_skip = out_channels == in_channels and stride == 1
        has_scale = kernel_size > 1 and use_scale_branch
        if (has_skip or has_scale) and padding != kernel_size // 2:
            raise ConfigError(
                f"MobileOneBlock with a skip or 1x1 branch needs padding={kernel_size // 2} "
                f"for kernel_size={kernel_size}, got padding={padding}"
            )

        if inference_mode:
            self.reparam_conv = FusedConv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride,
                padding,
                groups=groups,
                bias=True,
                act=self._take_activation(),
            )
            self.rbr_skip = None
            self.rbr_conv = None
            self.rbr_scale = None
        else:
            self.reparam_conv = None
            self.rbr_skip = nn.BatchNorm2d(in_channels) if has_skip else None
            self.rbr_conv = (
                nn.ModuleList(
                    ConvBN(in_channels, out_channels, kernel_size, stride, padding, groups)
                    for _ in range(num_conv_branches)
                )
                if num_conv_branches > 0
                else None
            )
            self.rbr_scale = (
                ConvBN(in_channels, out_channels, 1, stride, 0, groups) if has_scale else None
            )

    def forward(self, x: Tensor) -> Tensor:
        if self.reparam_conv is not None:
            return self.activation(self.se(self.reparam_conv(x)))
        out = self.rbr_skip(x) if self.rbr_skip is not None else 0
        if self.rbr_scale is not None:
            out = out + self.rbr_scale(x)
        if self.rbr_conv is not None:
            for branch in self.rbr_conv:
                out = out + branch(x)
        return self.activation(self.se(out))

    def _take_activation(self) -> nn.Module | None:
        """The activation for the fused conv (and ``nn.Identity`` left here); None with SE
        (SE sits between the conv and the activation) or without activation."""
        if not isinstance(self.se, nn.Identity) or isinstance(self.activation, nn.Identity):
            return None
        act, self.activation = self.activation, nn.Identity()
        return act

    def _fuse_bn_tensor(self, branch: nn.Module) -> tuple[Tensor, Tensor]:
        """(kernel, bias) of one branch: a conv+BN, or the BN-only skip as an identity conv."""
        if isinstance(branch, ConvBN):
            return branch.get_kernel_bias()
        if is_batchnorm(branch):
            return fuse_bn_alone(branch, self.groups, self.kernel_size)
        raise TypeError(f"cannot fuse branch of type {type(branch).__name__}")

    def _get_kernel_bias(self) -> tuple[Tensor, Tensor]:
        """Equivalent (kernel, bias) of the whole block before SE/activation, in either form."""
        if self.reparam_conv is not None:
            return self.reparam_conv.weight, self.reparam_conv.bias
        # All branches see the same input with centre-aligned padding, so they add up as
        # kernels once the 1x1 scale kernel is zero-padded to kxk.
        branches: list[nn.Module] = []
        if self.rbr_conv is not None:
            branches.extend(self.rbr_conv)
        if self.rbr_scale is not None:
            branches.append(self.rbr_scale)
        if self.rbr_skip is not None:
            branches.append(self.rbr_skip)
        if not branches:
            raise ValueError("MobileOneBlock has no branch to fuse")
        kernel = bias = None
        for branch in branches:
            k, b = self._fuse_bn_tensor(branch)
            k = pad_kernel(k, self.kernel_size)
            kernel = k if kernel is None else kernel + k
            bias = b if bias is None else bias + b
        return kernel, bias

    def _reparameterize(self) -> None:
        kernel, bias = self._get_kernel_bias()
        self.reparam_conv = FusedConv2d.from_kernel(
            kernel,
            bias,
            stride=self.stride,
            padding=self.padding,
            groups=self.groups,
            act=self._take_activation(),
        )
        self.rbr_skip = None
        self.rbr_conv = None
        self.rbr_scale = None


class RepStem(ReparamContainer, nn.Sequential):
    """FastViT's convolutional stem: three MobileOne blocks, 3x3/s2 -> depthwise 3x3/s2 -> 1x1.

    Downsamples by 4. The blocks are reachable as ``conv1``/``conv2``/``conv3`` while the
    state-dict keys stay those of the official stem (``0.``, ``1.``, ``2.``), so it can be
    dropped into any network (e.g. a detector) and fused with ``fastvit.reparameterize``.
    ``use_scale_branch=False`` leaves out the 1x1 branch of the 3x3 blocks (MobileCLIP2).
    """

    __jit_unused_properties__ = ["conv1", "conv2", "conv3"]  # noqa: RUF012

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        inference_mode: bool = False,
        activation: type[nn.Module] = nn.GELU,
        use_scale_branch: bool = True,
    ) -> None:
        kw = dict(
            inference_mode=inference_mode, activation=activation, use_scale_branch=use_scale_branch
        )
        super().__init__(
            MobileOneBlock(in_channels, out_channels, 3, stride=2, padding=1, **kw),
            MobileOneBlock(
                out_channels, out_channels, 3, stride=2, padding=1, groups=out_channels, **kw
            ),
            MobileOneBlock(out_channels, out_channels, 1, stride=1, padding=0, **kw),
        )

    @property
    def conv1(self) -> MobileOneBlock:
        return self[0]

    @property
    def conv2(self) -> MobileOneBlock:
        return self[1]

    @property
    def conv3(self) -> MobileOneBlock:
        return self[2]
