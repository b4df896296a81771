"""FastViT-specific assembly: blocks, configs, the model and its builder."""

from fastvit.models.blocks import (
    Attention,
    AttentionBlock,
    ConvFFN,
    PatchEmbed,
    RepCPE,
    RepMixer,
    RepMixerBlock,
)
from fastvit.models.config import VARIANTS, FastViTConfig, StageConfig, get_config, list_models
from fastvit.models.fastvit import FastViT, create_model
from fastvit.models.repmixer_vit import RepMixerViTBlock, repmixer_vit

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
