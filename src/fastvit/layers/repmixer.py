"""RepMixer token mixing (Vasu et al., FastViT, ICCV 2023), on feature maps and on tokens.

:class:`RepMixer` mixes the spatial positions of a (B, C, H, W) map with the reparameterizable
form ``x + gamma * (mixer(x) - norm(x))``; :class:`TokenRepMixer` applies the same module to a
ViT-style (B, N, C) token sequence by viewing the patch tokens as their H x W grid, so any
transformer can swap attention for it. Both fuse into a single depthwise convolution.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fastvit.layers.inference.conv import FusedConv2d
from fastvit.layers.mobileone import MobileOneBlock
from fastvit.reparam.base import Reparameterizable
from fastvit.reparam.fuse import identity_kernel, scale_output


class RepMixer(Reparameterizable):
    """Reparameterizable token mixer: ``x + gamma * (mixer(x) - norm(x))``.

    ``mixer`` is a depthwise MobileOne block, ``norm`` a BN-only one; the whole expression is
    a depthwise conv plus identity, so it fuses into one depthwise conv ``reparam_conv``.
    """

    def __init__(
        self,
        dim: int,
        kernel_size: int = 3,
        use_layer_scale: bool = True,
        layer_scale_init_value: float = 1e-5,
        inference_mode: bool = False,
    ) -> None:
        super().__init__()
        self.dim, self.kernel_size = dim, kernel_size
        self.inference_mode = inference_mode
        self.use_layer_scale = use_layer_scale
        pad = kernel_size // 2
        if inference_mode:
            self.reparam_conv = FusedConv2d(dim, dim, kernel_size, 1, pad, groups=dim, bias=True)
            self.norm = None
            self.mixer = None
            self.register_parameter("layer_scale", None)
        else:
            self.reparam_conv = None
            self.norm = MobileOneBlock(
                dim,
                dim,
                kernel_size,
                padding=pad,
                groups=dim,
                use_act=False,
                use_scale_branch=False,
                num_conv_branches=0,
            )
            self.mixer = MobileOneBlock(
                dim, dim, kernel_size, padding=pad, groups=dim, use_act=False
            )
            if use_layer_scale:
                self.layer_scale = nn.Parameter(layer_scale_init_value * torch.ones(dim, 1, 1))
            else:
                self.register_parameter("layer_scale", None)

    def forward(self, x: Tensor) -> Tensor:
        if self.reparam_conv is not None:
            return self.reparam_conv(x)
        assert self.mixer is not None and self.norm is not None
        mixed = self.mixer(x) - self.norm(x)
        if self.layer_scale is not None:
            mixed = self.layer_scale * mixed
        return x + mixed

    def _reparameterize(self) -> None:
        assert self.mixer is not None and self.norm is not None
        k_mix, b_mix = self.mixer._get_kernel_bias()
        k_norm, b_norm = self.norm._get_kernel_bias()
        k, b = k_mix - k_norm, b_mix - b_norm
        if self.layer_scale is not None:
            k, b = scale_output(k, b, self.layer_scale)
        # x + conv(x) = (I + K) * x: add the depthwise identity kernel.
        k = k + identity_kernel(
            self.dim, self.dim, self.kernel_size, dtype=k.dtype, device=k.device
        )
        self.reparam_conv = FusedConv2d.from_kernel(
            k, b, padding=self.kernel_size // 2, groups=self.dim
        )
        self.mixer = None
        self.norm = None
        self.layer_scale = None


def _pair(value: int | tuple[int, int] | list[int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v > 0 for v in pair):
        raise ValueError(f"{name} must be a positive int or a pair of them, got {value!r}")
    return int(pair[0]), int(pair[1])


def _check_tokens(num_tokens: int, num_prefix_tokens: int, height: int, width: int) -> None:
    if num_tokens != num_prefix_tokens + height * width:
        raise ValueError(
            f"TokenRepMixer got {num_tokens} tokens but expects {num_prefix_tokens} prefix + "
            f"{height}x{width} grid = {num_prefix_tokens + height * width}; pass the grid of "
            "this input as forward(x, grid_size=(H, W))"
        )


# fx records the check as one call instead of tracing (and failing on) its comparison.
torch.fx.wrap("_check_tokens")


class TokenRepMixer(Reparameterizable):
    """:class:`RepMixer` for (B, N, C) token sequences: a drop-in replacement for attention.

    The first ``num_prefix_tokens`` tokens (class/register tokens) pass through unchanged; the
    other ``H * W`` tokens, in row-major grid order (timm/torchvision patch order), are viewed
    as a (B, C, H, W) map, mixed by RepMixer and returned in the same order. The output
    includes the residual (``x + gamma * (mixer(x) - norm(x))``), so it *replaces* a residual
    attention branch rather than feeding one (see :func:`fastvit.models.repmixer_vit`).

    The (B, N, C) -> (B, C, H, W) view is free: a contiguous token tensor already is the
    channels-last layout of the map, so no copy is made on either side of the convolution.

    Args:
        dim: channels C.
        grid_size: default token grid (H, W) (or one int for a square grid).
        kernel_size: depthwise mixing kernel (odd).
        num_prefix_tokens: leading tokens that bypass mixing.
        use_layer_scale, layer_scale_init_value: RepMixer's per-channel ``gamma``.
        inference_mode: build the fused form (one depthwise conv) directly.
    """

    def __init__(
        self,
        dim: int,
        grid_size: int | tuple[int, int],
        kernel_size: int = 3,
        num_prefix_tokens: int = 0,
        use_layer_scale: bool = True,
        layer_scale_init_value: float = 1e-5,
        inference_mode: bool = False,
    ) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size}")
        if num_prefix_tokens < 0:
            raise ValueError(f"num_prefix_tokens must be >= 0, got {num_prefix_tokens}")
        self.dim = dim
        self.grid_size = _pair(grid_size, "grid_size")
        self.num_prefix_tokens = num_prefix_tokens
        self.inference_mode = inference_mode
        self.repmixer = RepMixer(
            dim, kernel_size, use_layer_scale, layer_scale_init_value, inference_mode
        )

    def forward(self, x: Tensor, grid_size: tuple[int, int] | None = None) -> Tensor:
        """Mix ``x`` of shape (B, N, C); ``grid_size`` overrides the default (H, W) grid."""
        if grid_size is None:
            grid_size = self.grid_size
        h, w = grid_size[0], grid_size[1]
        p = self.num_prefix_tokens
        b, n, c = x.shape
        _check_tokens(n, p, h, w)
        tokens = x[:, p:] if p > 0 else x
        # (B, HW, C) -> (B, C, H, W): a view with channels-last strides (no copy) when the
        # tokens are contiguous. (Not transpose + reshape: for B == 1 that view gets batch
        # stride C, and torch 2.14's CPU BatchNorm backward then returns wrong gradients.)
        grid = tokens.reshape(b, h, w, c).permute(0, 3, 1, 2)
        out = self.repmixer(grid).permute(0, 2, 3, 1).reshape(b, h * w, c)
        return torch.cat([x[:, :p], out], dim=1) if p > 0 else out

    def _reparameterize(self) -> None:
        pass  # self.repmixer was fused by reparameterize()

    def extra_repr(self) -> str:
        return f"grid_size={self.grid_size}, num_prefix_tokens={self.num_prefix_tokens}"
