"""Architecture as data: one frozen config per FastViT variant (official configurations)."""

from __future__ import annotations

from dataclasses import dataclass

from fastvit.card import Preprocessing
from fastvit.errors import ConfigError

#: How the official ImageNet weights are evaluated (256 px, crop 0.9, bicubic, ImageNet stats).
IMAGENET_EVAL = Preprocessing()


@dataclass(frozen=True)
class FastViTConfig:
    """Everything that distinguishes one FastViT variant from another.

    ``pos_embs[i]`` puts a 7x7 RepCPE before stage ``i``; ``token_mixers[i]`` is
    ``"repmixer"`` or ``"attention"``. ``drop_path_rate`` is the official training recipe's
    value (the model itself defaults to 0 unless asked). ``preprocessing`` is how the official
    weights were evaluated (for 3-channel input; a model adapts it to its ``in_chans``).
    """

    name: str
    layers: tuple[int, int, int, int]
    embed_dims: tuple[int, int, int, int]
    mlp_ratios: tuple[float, float, float, float]
    token_mixers: tuple[str, str, str, str] = ("repmixer",) * 4
    pos_embs: tuple[bool, bool, bool, bool] = (False,) * 4
    layer_scale_init_value: float = 1e-5
    drop_path_rate: float = 0.0
    repmixer_kernel_size: int = 3
    down_patch_size: int = 7
    down_stride: int = 2
    cls_ratio: float = 2.0
    preprocessing: Preprocessing = IMAGENET_EVAL


_SA = dict(token_mixers=("repmixer", "repmixer", "repmixer", "attention"),
           pos_embs=(False, False, False, True))
_WIDE = (64, 128, 256, 512)

VARIANTS: dict[str, FastViTConfig] = {
    c.name: c
    for c in (
        FastViTConfig("fastvit_t8", (2, 2, 4, 2), (48, 96, 192, 384), (3, 3, 3, 3)),
        FastViTConfig("fastvit_t12", (2, 2, 6, 2), _WIDE, (3, 3, 3, 3)),
        FastViTConfig("fastvit_s12", (2, 2, 6, 2), _WIDE, (4, 4, 4, 4)),
        FastViTConfig("fastvit_sa12", (2, 2, 6, 2), _WIDE, (4, 4, 4, 4), **_SA,
                      drop_path_rate=0.1),
        FastViTConfig("fastvit_sa24", (4, 4, 12, 4), _WIDE, (4, 4, 4, 4), **_SA,
                      drop_path_rate=0.1),
        FastViTConfig("fastvit_sa36", (6, 6, 18, 6), _WIDE, (4, 4, 4, 4), **_SA,
                      layer_scale_init_value=1e-6, drop_path_rate=0.2,
                      preprocessing=Preprocessing(crop_pct=0.95)),
        FastViTConfig("fastvit_ma36", (6, 6, 18, 6), (76, 152, 304, 608), (4, 4, 4, 4), **_SA,
                      layer_scale_init_value=1e-6, drop_path_rate=0.35,
                      preprocessing=Preprocessing(crop_pct=0.95)),
    )
}


def list_models() -> list[str]:
    """Names of the available variants."""
    return list(VARIANTS)


def get_config(name: str) -> FastViTConfig:
    """The config of variant ``name`` (``ConfigError`` listing the valid names otherwise)."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise ConfigError(f"unknown model '{name}'; choose one of: {', '.join(VARIANTS)}") from None
