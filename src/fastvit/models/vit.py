"""RepMixer-ViT: timm's ``VisionTransformer`` with RepMixer token mixing in chosen blocks.

The model *is* a timm ``VisionTransformer`` (patch embedding, position embedding, heads,
``forward_features``/``forward_head``, ``reset_classifier`` all unchanged); only the blocks
listed in ``mixer_blocks`` are :class:`RepMixerViTBlock` instead of timm's attention ``Block``.
timm builds every block through its ``block_fn`` hook; :class:`_BlockFactory` is that hook.

Where the residual goes. timm's block is pre-norm, ``x + attn(norm1(x))`` then
``x + mlp(norm2(x))``. RepMixer carries its own residual and its own norm:
``x + gamma * (mixer(x) - bn(x))``. Putting it *inside* the attention slot would give
``x + ls1 * (mixer(ln(x)) - bn(ln(x)))``: the LayerNorm is per-token and data dependent, so
the identity can never fold into the conv (the fused form keeps LayerNorm + conv + add), and
a BatchNorm after a LayerNorm is redundant. So a RepMixer block replaces the whole token-mixing
half, exactly as in FastViT's RepMixerBlock: ``x = token_mixer(x)`` (no ``norm1``, no ``ls1``,
no drop-path on the mixer, which FastViT does not use either), then timm's channel-MLP half
unchanged: ``x + drop_path(ls2(mlp(norm2(x))))``. After ``fastvit.reparameterize`` the whole
token-mixing half is one depthwise convolution.

Prefix tokens (class/register tokens) bypass RepMixer, so they only meet the patch tokens in
attention blocks: a model whose every block is RepMixer must pool the patch tokens
(``global_pool='avg'``, the default here), not read a class token.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from timm.layers import DropPath, LayerScale, Mlp
from timm.models.vision_transformer import Block, VisionTransformer
from torch import Tensor, nn

from fastvit.errors import ConfigError
from fastvit.layers.repmixer import TokenRepMixer

# Keyword arguments timm passes to every block that only attention uses.
_ATTENTION_ONLY = frozenset(
    {"num_heads", "qkv_bias", "qk_norm", "scale_attn_norm", "attn_drop", "attn_layer"}
)


def _reject_attn_mask(attn_mask: Tensor | None, is_causal: bool) -> None:
    if attn_mask is not None or is_causal:
        raise ValueError(
            "RepMixer blocks mix a fixed grid neighbourhood and cannot apply an "
            "attention mask; call the model without attn_mask/is_causal"
        )


# fx records the check as one call (checked at run time) instead of tracing its branch.
torch.fx.wrap("_reject_attn_mask")


class RepMixerViTBlock(nn.Module):
    """A timm ViT block whose token-mixing half is a :class:`TokenRepMixer`.

    ``forward(x)`` = ``x' = token_mixer(x)``; ``x' + drop_path2(ls2(mlp(norm2(x'))))``.
    Attribute names for the MLP half (``norm2``, ``mlp``, ``ls2``, ``drop_path2``) match
    timm's ``Block``, so MLP weights transfer between the two block types.
    """

    def __init__(
        self,
        dim: int,
        grid_size: int | tuple[int, int],
        num_prefix_tokens: int = 0,
        kernel_size: int = 3,
        mlp_ratio: float = 4.0,
        proj_bias: bool = True,
        proj_drop: float = 0.0,
        init_values: float | None = None,
        drop_path: float = 0.0,
        act_layer: type[nn.Module] = nn.GELU,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        mlp_layer: type[nn.Module] = Mlp,
        scale_mlp_norm: bool = False,
        layer_scale_init_value: float = 1e-5,
        inference_mode: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.token_mixer = TokenRepMixer(
            dim,
            grid_size,
            kernel_size,
            num_prefix_tokens,
            layer_scale_init_value=layer_scale_init_value,
            inference_mode=inference_mode,
        )
        self.token_mixer.to(device=device, dtype=dtype)
        dd: dict[str, Any] = {"device": device, "dtype": dtype}
        self.norm2 = norm_layer(dim, **dd)
        self.mlp = mlp_layer(
            in_features=dim,
            hidden_features=int(dim * mlp_ratio),
            act_layer=act_layer,
            norm_layer=norm_layer if scale_mlp_norm else None,
            bias=proj_bias,
            drop=proj_drop,
            **dd,
        )
        self.ls2 = LayerScale(dim, init_values=init_values, **dd) if init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(
        self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False
    ) -> Tensor:
        _reject_attn_mask(attn_mask, is_causal)
        x = self.token_mixer(x)
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class _BlockFactory:
    """timm ``block_fn``: a :class:`RepMixerViTBlock` at the chosen indices, else ``Block``."""

    def __init__(self, mixer_blocks: frozenset[int], **mixer_kwargs: Any) -> None:
        self.mixer_blocks = mixer_blocks
        self.mixer_kwargs = mixer_kwargs
        self._next = 0

    def __call__(self, **kwargs: Any) -> nn.Module:
        # timm >= 1.0.2x passes the block index as ``depth``; older versions build the blocks
        # in order, so counting calls gives the same index.
        index = kwargs.get("depth", self._next)
        self._next = index + 1
        if index not in self.mixer_blocks:
            return Block(**kwargs)
        kwargs = {k: v for k, v in kwargs.items() if k not in _ATTENTION_ONLY and k != "depth"}
        return RepMixerViTBlock(**kwargs, **self.mixer_kwargs)


def _mixer_indices(mixer_blocks: str | Iterable[int] | None, depth: int) -> frozenset[int]:
    if mixer_blocks is None or mixer_blocks == "none":
        return frozenset()
    if mixer_blocks == "all":
        return frozenset(range(depth))
    if isinstance(mixer_blocks, str):
        raise ConfigError(
            f"mixer_blocks must be 'all', 'none' or block indices, got {mixer_blocks!r}"
        )
    out = set()
    for i in mixer_blocks:
        if not isinstance(i, int) or not -depth <= i < depth:
            raise ConfigError(
                f"mixer block index {i!r} is out of range for depth {depth} "
                f"(use 0..{depth - 1} or negative indices)"
            )
        out.add(i % depth)
    return frozenset(out)


def repmixer_vit(
    mixer_blocks: str | Iterable[int] | None = "all",
    *,
    img_size: int | tuple[int, int] = 224,
    patch_size: int = 16,
    embed_dim: int = 192,
    depth: int = 12,
    num_heads: int = 3,
    kernel_size: int = 3,
    layer_scale_init_value: float = 1e-5,
    class_token: bool = False,
    global_pool: str = "avg",
    inference_mode: bool = False,
    **vit_kwargs: Any,
) -> VisionTransformer:
    """timm ``VisionTransformer`` with RepMixer token mixing in the blocks ``mixer_blocks``.

    Args:
        mixer_blocks: ``"all"`` (default), ``"none"``/``None`` (a plain ViT), or the indices
            of the RepMixer blocks (negative ones count from the end); the other blocks keep
            timm's attention. FastViT's hybrid layout is RepMixer early, attention late, e.g.
            ``range(depth - 2)``.
        img_size, patch_size: fix the token grid ``img_size // patch_size`` that RepMixer
            mixes on (``dynamic_img_size`` is not supported).
        embed_dim, depth, num_heads: as timm's (defaults: ViT-Tiny widths).
        kernel_size: RepMixer's depthwise kernel.
        layer_scale_init_value: initial RepMixer ``gamma`` (FastViT's 1e-5).
        class_token, global_pool: timm's; defaults pool the patch tokens (see module doc).
        inference_mode: build RepMixer blocks already fused.
        **vit_kwargs: any other ``VisionTransformer`` argument (``num_classes``, ``in_chans``,
            ``mlp_ratio``, ``drop_path_rate``, ``reg_tokens``, ``init_values`` ...).

    Convert with ``fastvit.reparameterize(model)`` (for ``verify=True`` pass
    ``input_shape=(1, in_chans, H, W)`` at the model's image size).
    """
    for key in ("block_fn", "dynamic_img_size", "fix_init"):
        if vit_kwargs.get(key):
            raise ConfigError(
                f"repmixer_vit does not support {key}=...: RepMixer blocks need "
                "timm's block hook and a fixed token grid"
            )
    mixers = _mixer_indices(mixer_blocks, depth)
    img = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    if img[0] % patch_size or img[1] % patch_size:
        raise ConfigError(
            f"img_size {img_size} must be a multiple of patch_size {patch_size} "
            "(RepMixer mixes on the full token grid)"
        )
    grid = (img[0] // patch_size, img[1] // patch_size)
    if mixers and len(mixers) == depth and global_pool in ("token", "prr"):
        raise ConfigError(
            f"global_pool={global_pool!r} reads the class token, which never "
            "meets the patch tokens when every block is RepMixer; use "
            "global_pool='avg' or keep some attention blocks"
        )
    num_prefix = int(class_token) + int(vit_kwargs.get("reg_tokens", 0) or 0)
    factory = _BlockFactory(
        mixers,
        grid_size=grid,
        num_prefix_tokens=num_prefix,
        kernel_size=kernel_size,
        layer_scale_init_value=layer_scale_init_value,
        inference_mode=inference_mode,
    )
    return VisionTransformer(
        img_size=img,
        patch_size=patch_size,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        class_token=class_token,
        global_pool=global_pool,
        block_fn=factory,
        **vit_kwargs,
    )
