"""FastViT-specific assembly: blocks, configs, the model and its builder.

Names are imported on first use (see :mod:`fastvit._lazy`): ``fastvit.models.config`` (the
variant table) needs neither torch nor timm.
"""

from typing import TYPE_CHECKING

from fastvit._lazy import lazy_attributes

_EXPORTS = {
    **dict.fromkeys(
        (
            "Attention",
            "AttentionBlock",
            "ConvFFN",
            "PatchEmbed",
            "RepCPE",
            "RepMixer",
            "RepMixerBlock",
        ),
        "fastvit.models.blocks",
    ),
    **dict.fromkeys(
        ("VARIANTS", "FastViTConfig", "StageConfig", "get_config", "list_models"),
        "fastvit.models.config",
    ),
    "FastViT": "fastvit.models.fastvit",
    "create_model": "fastvit.models.fastvit",
    "RepMixerViTBlock": "fastvit.models.vit",
    "repmixer_vit": "fastvit.models.vit",
}

__all__ = [
    "VARIANTS",
    "Attention",
    "AttentionBlock",
    "ConvFFN",
    "FastViT",
    "FastViTConfig",
    "PatchEmbed",
    "RepCPE",
    "RepMixer",
    "RepMixerBlock",
    "RepMixerViTBlock",
    "StageConfig",
    "create_model",
    "get_config",
    "list_models",
    "repmixer_vit",
]
__getattr__, __dir__ = lazy_attributes(
    __name__,
    _EXPORTS,
    ("backbones", "blocks", "complexity", "config", "fastvit", "segmentation", "vit"),
)

if TYPE_CHECKING:
    from fastvit.models.blocks import (
        Attention,
        AttentionBlock,
        ConvFFN,
        PatchEmbed,
        RepCPE,
        RepMixer,
        RepMixerBlock,
    )
    from fastvit.models.config import (
        VARIANTS,
        FastViTConfig,
        StageConfig,
        get_config,
        list_models,
    )
    from fastvit.models.fastvit import FastViT, create_model
    from fastvit.models.vit import RepMixerViTBlock, repmixer_vit
