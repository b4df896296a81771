"""FastViT-specific blocks: token mixers, positional encoding, FFN and the two block types.

Every block can be built directly in its fused form (``inference_mode=True``) and fuses in
place with ``reparameterize()``. Beyond the official fused form, our fused blocks contain no
BatchNorm and no layer-scale multiply: those are folded into the adjacent convs/linears.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from torch import Tensor, nn

from fastvit.layers.conv_bn import ConvBN
from fastvit.layers.fused_ops import (
    can_fuse,
    is_exact_gelu,
    linear_add,
    linear_gelu,
    unhooked,
)
from fastvit.layers.large_kernel import ReparamLargeKernelConv
from fastvit.layers.mobileone import MobileOneBlock
from fastvit.reparam.base import Reparameterizable, new_conv, new_linear
from fastvit.reparam.fuse import (
    bn_affine,
    fold_affine_into_linear_input,
    fold_fused_block_entries,
    identity_kernel,
    scale_output,
)


def _layer_scale(dim: int, init_value: float) -> nn.Parameter:
    return nn.Parameter(init_value * torch.ones(dim, 1, 1))


def _fold_scale_into(layer: nn.Conv2d | nn.Linear, scale: Tensor) -> nn.Module:
    """Return a copy of ``layer`` whose output is multiplied by ``scale`` per channel."""
    w, b = scale_output(layer.weight, layer.bias, scale)
    if isinstance(layer, nn.Linear):
        return new_linear(w, b)
    return new_conv(w, b, stride=layer.stride, padding=layer.padding, groups=layer.groups,
                    dilation=layer.dilation)


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
            self.reparam_conv = nn.Conv2d(dim, dim, kernel_size, 1, pad, groups=dim, bias=True)
            self.norm = None
            self.mixer = None
            self.register_parameter("layer_scale", None)
        else:
            self.reparam_conv = None
            self.norm = MobileOneBlock(dim, dim, kernel_size, padding=pad, groups=dim,
                                       use_act=False, use_scale_branch=False,
                                       num_conv_branches=0)
            self.mixer = MobileOneBlock(dim, dim, kernel_size, padding=pad, groups=dim,
                                        use_act=False)
            if use_layer_scale:
                self.layer_scale = _layer_scale(dim, layer_scale_init_value)
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
        k = k + identity_kernel(self.dim, self.dim, self.kernel_size, dtype=k.dtype,
                                device=k.device)
        self.reparam_conv = new_conv(k, b, padding=self.kernel_size // 2, groups=self.dim)
        self.mixer = None
        self.norm = None
        self.layer_scale = None


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
        conv = nn.Conv2d(in_channels, embed_dim, self.spatial_shape, 1, pad, groups=embed_dim,
                         bias=True)
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
        k = self.pe.weight + identity_kernel(self.in_channels, self.groups, self.spatial_shape,
                                             dtype=self.pe.weight.dtype,
                                             device=self.pe.weight.device)
        self.reparam_conv = new_conv(k, self.pe.bias, padding=self.pe.padding,
                                     groups=self.groups)
        self.pe = None


class ConvFFN(Reparameterizable):
    """Convolutional FFN: depthwise 7x7 conv+BN -> 1x1 expand -> act -> 1x1 project.

    The conv+BN fuses into one conv (``conv.reparam_conv``); the official fused form keeps
    the BN.
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int | None = None,
        out_channels: int | None = None,
        act_layer: type[nn.Module] = nn.GELU,
        drop: float = 0.0,
        inference_mode: bool = False,
    ) -> None:
        super().__init__()
        out_channels = out_channels or in_channels
        hidden_channels = hidden_channels or in_channels
        self.inference_mode = inference_mode
        self.conv = ConvBN(in_channels, out_channels, 7, padding=3, groups=in_channels,
                           inference_mode=inference_mode)
        self.fc1 = nn.Conv2d(in_channels, hidden_channels, kernel_size=1)
        self.act = act_layer()
        self.fc2 = nn.Conv2d(hidden_channels, out_channels, kernel_size=1)
        self.drop = nn.Dropout(drop)
        for m in (self.fc1, self.fc2):
            trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        if not inference_mode:
            trunc_normal_(self.conv.conv.weight, std=0.02)

    def forward(self, x: Tensor, shortcut: Tensor | None = None) -> Tensor:
        """FFN output, plus ``shortcut`` if given (the block's residual, added in the GEMM)."""
        x = self.conv(x)
        if not torch.jit.is_scripting() and self._use_nhwc(x):
            return self._forward_nhwc(x, shortcut)
        x = self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))
        return x if shortcut is None else shortcut + x

    @torch.jit.unused
    def _use_nhwc(self, x):  # (unannotated: TorchScript reads unused signatures)
        return (not torch.jit.is_tracing() and x.is_contiguous(memory_format=torch.channels_last)
                and unhooked(self.fc1, self.fc2, self.act))

    @torch.jit.unused
    def _forward_nhwc(self, x, shortcut):  # (unannotated: TorchScript reads unused signatures)
        # NHWC: the 1x1 convs are GEMMs on the (N*H*W, C) view; plain sgemm beats oneDNN's
        # 1x1 conv here. In inference, oneDNN GEMMs apply the GELU and the residual add as
        # post-ops instead (one pass less over the hidden and output tensors each).
        # (Traced/scripted exports and hooked modules keep the Conv ops.)
        xt = x.permute(0, 2, 3, 1)
        w1, w2 = self.fc1.weight.flatten(1), self.fc2.weight.flatten(1)
        fast = not self.training and can_fuse(x, w1, w2)
        if fast and is_exact_gelu(self.act):
            y = linear_gelu(xt, w1, self.fc1.bias)
        else:
            y = self.drop(self.act(F.linear(xt, w1, self.fc1.bias)))
        if shortcut is None:
            return self.drop(F.linear(y, w2, self.fc2.bias)).permute(0, 3, 1, 2)
        if fast and shortcut.is_contiguous(memory_format=torch.channels_last):
            return linear_add(y, w2, self.fc2.bias, shortcut.permute(0, 2, 3, 1)).permute(
                0, 3, 1, 2)
        # Add in the NHWC view too: torch.compile then fuses it into the GEMM's epilogue.
        out = shortcut.permute(0, 2, 3, 1) + self.drop(F.linear(y, w2, self.fc2.bias))
        return out.permute(0, 3, 1, 2)

    def _reparameterize(self) -> None:
        pass  # self.conv was fused by reparameterize(); fc1/fc2 are already plain convs

    def fold_output_scale(self, scale: Tensor) -> None:
        """Multiply the FFN output by ``scale`` per channel, by rescaling ``fc2`` (in place)."""
        self.fc2 = _fold_scale_into(self.fc2, scale)


class Attention(nn.Module):
    """Multi-head self-attention over the spatial positions of an NCHW map."""

    def __init__(
        self,
        dim: int,
        head_dim: int = 32,
        qkv_bias: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % head_dim:
            raise ValueError(f"dim ({dim}) must be divisible by head_dim ({head_dim})")
        self.head_dim = head_dim
        self.num_heads = dim // head_dim
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        N = H * W
        tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)
        qkv = self.qkv(tokens).reshape(B, N, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, head_dim)
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        out = self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, C)))
        return out.transpose(1, 2).reshape(B, C, H, W)


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
        self.token_mixer = RepMixer(dim, kernel_size, use_layer_scale, layer_scale_init_value,
                                    inference_mode)
        self.convffn = ConvFFN(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop,
                               inference_mode=inference_mode)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        if use_layer_scale and not inference_mode:
            self.layer_scale = _layer_scale(dim, layer_scale_init_value)
        else:
            self.register_parameter("layer_scale", None)

    def forward(self, x: Tensor) -> Tensor:
        x = self.token_mixer(x)
        if self.layer_scale is None and not self.training:
            return self.convffn(x, shortcut=x)  # inference: residual added inside fc2
        y = self.convffn(x)
        if self.layer_scale is not None:
            y = self.layer_scale * y
        return x + self.drop_path(y)

    def _reparameterize(self) -> None:
        if self.layer_scale is not None:
            self.convffn.fold_output_scale(self.layer_scale)
            self.layer_scale = None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Official/timm fused checkpoints keep the layer scale: fold it into fc2 on load.
        if self.inference_mode:
            fold_fused_block_entries(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class AttentionBlock(Reparameterizable):
    """MetaFormer block with self-attention: ``x + ls1 * attn(bn(x)); x + ls2 * ffn(x)``.

    Fused form: the BatchNorm is folded into the qkv projection (which gains a bias) and the
    layer scales into ``proj`` and ``convffn.fc2``.
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
        self.norm = None if inference_mode else norm_layer(dim)
        self.token_mixer = Attention(dim, qkv_bias=inference_mode)
        self.convffn = ConvFFN(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop,
                               inference_mode=inference_mode)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        if use_layer_scale and not inference_mode:
            self.layer_scale_1 = _layer_scale(dim, layer_scale_init_value)
            self.layer_scale_2 = _layer_scale(dim, layer_scale_init_value)
        else:
            self.register_parameter("layer_scale_1", None)
            self.register_parameter("layer_scale_2", None)

    def forward(self, x: Tensor) -> Tensor:
        y = self.token_mixer(self.norm(x) if self.norm is not None else x)
        if self.layer_scale_1 is not None:
            y = self.layer_scale_1 * y
        x = x + self.drop_path(y)
        if self.layer_scale_2 is None and not self.training:
            return self.convffn(x, shortcut=x)  # inference: residual added inside fc2
        y = self.convffn(x)
        if self.layer_scale_2 is not None:
            y = self.layer_scale_2 * y
        return x + self.drop_path(y)

    def _reparameterize(self) -> None:
        attn = self.token_mixer
        if self.norm is not None:
            if not isinstance(self.norm, nn.modules.batchnorm._BatchNorm):
                raise TypeError(f"cannot fold a {type(self.norm).__name__} into qkv; "
                                "only BatchNorm norm layers can be reparameterized")
            a, c = bn_affine(self.norm)
            w, b = fold_affine_into_linear_input(attn.qkv.weight, attn.qkv.bias, a, c)
            attn.qkv = new_linear(w, b)
            self.norm = None
        if self.layer_scale_1 is not None:
            attn.proj = _fold_scale_into(attn.proj, self.layer_scale_1)
            self.layer_scale_1 = None
        if self.layer_scale_2 is not None:
            self.convffn.fold_output_scale(self.layer_scale_2)
            self.layer_scale_2 = None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Official/timm fused checkpoints keep the BatchNorm and both layer scales: fold them
        # on load (same math as _reparameterize, on state-dict tensors).
        if self.inference_mode:
            fold_fused_block_entries(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class PatchEmbed(Reparameterizable, nn.Module):
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
    ) -> None:
        super().__init__()
        self.inference_mode = inference_mode
        self.proj = nn.Sequential(
            ReparamLargeKernelConv(in_channels, embed_dim, patch_size, stride,
                                   groups=in_channels, small_kernel=3,
                                   inference_mode=inference_mode, activation=act_layer,
                                   apply_act=lkc_apply_act),
            MobileOneBlock(embed_dim, embed_dim, 1, stride=1, padding=0,
                           inference_mode=inference_mode, activation=act_layer),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)

    def _reparameterize(self) -> None:
        pass  # both sub-blocks were fused by reparameterize()
