"""FastViT-specific blocks: token mixers, positional encoding and the two block types.

Every block can be built directly in its fused form (``inference_mode=True``) and fuses in
place with ``reparameterize()``. Beyond the official fused form, our fused blocks contain no
BatchNorm and no layer-scale multiply: those are folded into the adjacent convs/linears.
Training-form blocks are plain PyTorch; fused ones are made of the inference modules of
:mod:`fastvit.layers.inference` (same keys, same plain path, plus CPU speed paths).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import Tensor, nn

from fastvit.layers.ffn import ConvFFN
from fastvit.layers.inference.conv import FusedConv2d
from fastvit.layers.inference.ffn import FusedConvFFN
from fastvit.layers.inference.kernels import eager, unhooked
from fastvit.layers.inference.linear import FusedLinear
from fastvit.layers.large_kernel import ReparamLargeKernelConv
from fastvit.layers.mobileone import MobileOneBlock
from fastvit.layers.repmixer import RepMixer
from fastvit.reparam.base import ReparamContainer, Reparameterizable, new_linear
from fastvit.reparam.fuse import (
    fold_affine_into_linear_input,
    identity_kernel,
    is_batchnorm,
    norm_affine,
    scale_output,
)

__all__ = [
    "Attention",
    "AttentionBlock",
    "ConvFFN",
    "PatchEmbed",
    "RepCPE",
    "RepMixer",
    "RepMixerBlock",
]


def _layer_scale(dim: int, init_value: float) -> nn.Parameter:
    return nn.Parameter(init_value * torch.ones(dim, 1, 1))


def _fold_scale_into(layer: nn.Linear, scale: Tensor) -> nn.Linear:
    """Return a copy of ``layer`` whose output is multiplied by ``scale`` per channel."""
    return new_linear(*scale_output(layer.weight, layer.bias, scale))


def residual_norm(norm: nn.Module) -> nn.Module | None:
    """What stays of ``norm`` once its foldable affine part is folded into the next linear.

    BatchNorm: nothing (``None``). LayerNorm/GroupNorm: the same norm without affine
    parameters. Any other module is kept as is (it cannot be folded, and is not dropped).
    """
    if is_batchnorm(norm):
        return None
    if norm_affine(norm) is None:
        return norm
    rest = copy.deepcopy(norm)
    rest.register_parameter("weight", None)
    rest.register_parameter("bias", None)
    for flag in ("elementwise_affine", "affine"):
        if hasattr(rest, flag):
            setattr(rest, flag, False)
    return rest


class RepCPE(Reparameterizable):
    """Conditional positional encoding (Chu et al., 2021): ``x + dwconv(x)``, fused into one
    depthwise conv ``reparam_conv`` by adding the identity kernel."""

    def __init__(
        self,
        in_channels: int,
        embed_dim: int = 768,
        spatial_shape: int | tuple[int, int] = (7, 7),
        inference_mode: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(spatial_shape, int):
            spatial_shape = (spatial_shape, spatial_shape)
        if len(spatial_shape) != 2:
            raise ValueError(f"spatial_shape must be an int or a pair, got {spatial_shape}")
        if in_channels != embed_dim:
            raise ValueError("RepCPE needs in_channels == embed_dim for its identity branch")
        self.in_channels, self.embed_dim = in_channels, embed_dim
        self.spatial_shape = tuple(spatial_shape)
        self.groups = embed_dim
        self.inference_mode = inference_mode
        pad = spatial_shape[0] // 2
        conv = FusedConv2d if inference_mode else nn.Conv2d
        conv = conv(in_channels, embed_dim, self.spatial_shape, 1, pad, groups=embed_dim, bias=True)
        if inference_mode:
            self.reparam_conv, self.pe = conv, None
        else:
            self.reparam_conv, self.pe = None, conv

    def forward(self, x: Tensor) -> Tensor:
        if self.reparam_conv is not None:
            return self.reparam_conv(x)
        assert self.pe is not None
        return self.pe(x) + x

    def _reparameterize(self) -> None:
        assert self.pe is not None
        k = self.pe.weight + identity_kernel(
            self.in_channels,
            self.groups,
            self.spatial_shape,
            dtype=self.pe.weight.dtype,
            device=self.pe.weight.device,
        )
        self.reparam_conv = FusedConv2d.from_kernel(
            k, self.pe.bias, padding=self.pe.padding, groups=self.groups
        )
        self.pe = None


def _tokens(x: Tensor) -> Tensor:
    """The (B, N, C) tokens of an NCHW map: a view in eager, a contiguous copy under export.

    Eager hands ``F.linear`` the view (free for a channels-last map; ``F.linear`` copies an
    NCHW one once). Under ``torch.export`` with dynamic H/W, each view-or-copy choice here or
    in ``F.linear`` depends on whether N (or W) is 1, as a size-1 dim is contiguous in any
    layout, so the exported graph would assert more than one token; an unconditional copy to
    (B, H, W, C) asks no such question.
    """
    # (TorchScript skips only a bare `if not is_scripting()` block; it cannot compile the rest)
    if not torch.jit.is_scripting():  # noqa: SIM102
        if torch.compiler.is_exporting():
            return x.permute(0, 2, 3, 1).clone(memory_format=torch.contiguous_format).flatten(1, 2)
    return x.flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention over the spatial positions of an NCHW map.

    ``inference_mode=True`` (the fused block's attention) makes ``qkv`` and ``proj``
    :class:`~fastvit.layers.inference.FusedLinear` (same keys; the faster GEMM for the CPU in
    eager inference), and ``forward(x, residual)`` may add the residual inside ``proj``'s GEMM.
    """

    def __init__(
        self,
        dim: int,
        head_dim: int = 32,
        qkv_bias: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        inference_mode: bool = False,
    ) -> None:
        super().__init__()
        if dim % head_dim:
            raise ValueError(f"dim ({dim}) must be divisible by head_dim ({head_dim})")
        self.head_dim = head_dim
        self.num_heads = dim // head_dim
        self.scale = head_dim**-0.5
        linear = FusedLinear if inference_mode else nn.Linear
        self.qkv = linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        """Attention of ``x`` (NCHW), plus ``residual`` (same shape) when given."""
        B, C, H, W = x.shape
        N = H * W
        tokens = _tokens(x)  # (B, N, C)
        qkv = self.qkv(tokens).reshape(B, N, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, head_dim)
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_drop if self.training else 0.0
        )
        out = out.transpose(1, 2).reshape(B, N, C)
        if residual is not None and not torch.jit.is_scripting() and self._proj_adds(out, residual):
            return self._proj_add(out, residual)
        out = self.proj_drop(self.proj(out))
        # (B, H, W, C) viewed as NCHW; reshaping out.transpose(1, 2) would guard N != 1 in export
        out = out.reshape(B, H, W, C).permute(0, 3, 1, 2)
        return out if residual is None else residual + out

    @torch.jit.unused
    def _proj_adds(self, out, residual):  # (unannotated: TorchScript reads unused signatures)
        """Whether ``residual + proj(out)`` runs as one fused GEMM (channels-last residual)."""
        if not (
            isinstance(self.proj, FusedLinear)
            and not self.training
            and eager(out)  # (before any shape read: `out` may be an fx proxy)
            and unhooked(self.proj_drop)
            and residual.dim() == 4
            and residual.shape[2] * residual.shape[3] == out.shape[1]
        ):
            return False
        r = residual.permute(0, 2, 3, 1)
        return self.proj.can_add_nhwc(out.view(*r.shape[:3], -1), r)

    @torch.jit.unused
    def _proj_add(self, out, residual):  # (unannotated: TorchScript reads unused signatures)
        """``residual + proj(out)`` as one oneDNN GEMM on the (B, H, W, C) views."""
        r = residual.permute(0, 2, 3, 1)
        return self.proj.add_nhwc(out.view(*r.shape[:3], -1), r).permute(0, 3, 1, 2)


def _conv_ffn(
    dim: int, mlp_ratio: float, act_layer: type[nn.Module], drop: float, inference_mode: bool
) -> ConvFFN:
    """A block's FFN: plain ConvFFN in training form, FusedConvFFN in inference form."""
    hidden = int(dim * mlp_ratio)
    if inference_mode:
        return FusedConvFFN(dim, hidden, act_layer=act_layer, drop=drop)
    return ConvFFN(dim, hidden, act_layer=act_layer, drop=drop)


class RepMixerBlock(Reparameterizable):
    """MetaFormer block with RepMixer token mixing: ``x = mixer(x); x + ls * ffn(x)``."""

    def __init__(
        self,
        dim: int,
        kernel_size: int = 3,
        mlp_ratio: float = 4.0,
        act_layer: type[nn.Module] = nn.GELU,
        drop: float = 0.0,
        drop_path: float = 0.0,
        use_layer_scale: bool = True,
        layer_scale_init_value: float = 1e-5,
        inference_mode: bool = False,
    ) -> None:
        super().__init__()
        if mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be positive, got {mlp_ratio}")
        self.inference_mode = inference_mode
        self.token_mixer = RepMixer(
            dim, kernel_size, use_layer_scale, layer_scale_init_value, inference_mode
        )
        self.convffn = _conv_ffn(dim, mlp_ratio, act_layer, drop, inference_mode)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        if use_layer_scale and not inference_mode:
            self.layer_scale = _layer_scale(dim, layer_scale_init_value)
        else:
            self.register_parameter("layer_scale", None)

    def forward(self, x: Tensor) -> Tensor:
        x = self.token_mixer(x)
        if self.layer_scale is None and not self.training:
            return self.convffn(x, residual=x)  # x + ffn(x); fused: added inside fc2
        y = self.convffn(x)
        if self.layer_scale is not None:
            y = self.layer_scale * y
        return x + self.drop_path(y)

    def _reparameterize(self) -> None:
        if self.layer_scale is not None:
            self.convffn.fold_output_scale(self.layer_scale)
            self.layer_scale = None
        self.convffn = FusedConvFFN.from_ffn(self.convffn)


class AttentionBlock(Reparameterizable):
    """MetaFormer block with self-attention: ``x + ls1 * attn(norm(x)); x + ls2 * ffn(x)``.

    Fused form: a BatchNorm ``norm`` is folded into the qkv projection (which gains a bias);
    a LayerNorm's affine part is folded there too and an affine-free LayerNorm stays (its
    normalisation depends on the input); the layer scales fold into ``proj`` and
    ``convffn.fc2``.
    """

    def __init__(
        self,
        dim: int,
        mlp_ratio: float = 4.0,
        act_layer: type[nn.Module] = nn.GELU,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        drop: float = 0.0,
        drop_path: float = 0.0,
        use_layer_scale: bool = True,
        layer_scale_init_value: float = 1e-5,
        inference_mode: bool = False,
    ) -> None:
        super().__init__()
        if mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be positive, got {mlp_ratio}")
        self.inference_mode = inference_mode
        # A norm's per-channel affine part folds into qkv (which then needs a bias): all of a
        # BatchNorm; a LayerNorm's weight/bias, leaving an affine-free LayerNorm. Other norms
        # stay as they are in both forms.
        norm = norm_layer(dim)
        foldable = norm_affine(norm) is not None
        self.norm = residual_norm(norm) if inference_mode else norm
        self.token_mixer = Attention(
            dim, qkv_bias=inference_mode and foldable, inference_mode=inference_mode
        )
        self.convffn = _conv_ffn(dim, mlp_ratio, act_layer, drop, inference_mode)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        if use_layer_scale and not inference_mode:
            self.layer_scale_1 = _layer_scale(dim, layer_scale_init_value)
            self.layer_scale_2 = _layer_scale(dim, layer_scale_init_value)
        else:
            self.register_parameter("layer_scale_1", None)
            self.register_parameter("layer_scale_2", None)

    def forward(self, x: Tensor) -> Tensor:
        normed = self.norm(x) if self.norm is not None else x
        if self.layer_scale_1 is None and not self.training:
            # x + attn(norm(x)); fused: added inside proj (the residual is a keyword, so
            # forward hooks on the token mixer see only its input)
            return self._ffn_residual(self.token_mixer(normed, residual=x))
        y = self.token_mixer(normed)
        if self.layer_scale_1 is not None:
            y = self.layer_scale_1 * y
        x = x + self.drop_path(y)
        return self._ffn_residual(x)

    def _ffn_residual(self, x: Tensor) -> Tensor:
        """``x + ls2 * ffn(x)``."""
        if self.layer_scale_2 is None and not self.training:
            return self.convffn(x, residual=x)  # x + ffn(x); fused: added inside fc2
        y = self.convffn(x)
        if self.layer_scale_2 is not None:
            y = self.layer_scale_2 * y
        return x + self.drop_path(y)

    def _reparameterize(self) -> None:
        attn = self.token_mixer
        if self.norm is not None:
            affine = norm_affine(self.norm)
            if affine is not None:
                w, b = fold_affine_into_linear_input(attn.qkv.weight, attn.qkv.bias, *affine)
                attn.qkv = new_linear(w, b)
            self.norm = residual_norm(self.norm)
        if self.layer_scale_1 is not None:
            attn.proj = _fold_scale_into(attn.proj, self.layer_scale_1)
            self.layer_scale_1 = None
        attn.qkv = FusedLinear.from_linear(attn.qkv)
        attn.proj = FusedLinear.from_linear(attn.proj)
        if self.layer_scale_2 is not None:
            self.convffn.fold_output_scale(self.layer_scale_2)
            self.layer_scale_2 = None
        self.convffn = FusedConvFFN.from_ffn(self.convffn)


class PatchEmbed(ReparamContainer):
    """Downsampling between stages: large-kernel depthwise conv (stride 2) + 1x1 MobileOne."""

    def __init__(
        self,
        patch_size: int,
        stride: int,
        in_channels: int,
        embed_dim: int,
        inference_mode: bool = False,
        act_layer: type[nn.Module] = nn.GELU,
        lkc_apply_act: bool = False,
        use_se: bool = False,
    ) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            ReparamLargeKernelConv(
                in_channels,
                embed_dim,
                patch_size,
                stride,
                groups=in_channels,
                small_kernel=3,
                inference_mode=inference_mode,
                activation=act_layer,
                apply_act=lkc_apply_act,
                use_se=use_se,
            ),
            MobileOneBlock(
                embed_dim,
                embed_dim,
                1,
                stride=1,
                padding=0,
                inference_mode=inference_mode,
                activation=act_layer,
            ),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)
