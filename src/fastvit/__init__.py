"""fastvit: FastViT hybrid vision transformers with exact, verified reparameterization.

The model/reparameterization API and the pretrained registry are imported eagerly (torch +
timm only); checkpoint I/O and downloads (huggingface_hub) are imported on first use.
``create_model``/``load_model`` accept pretrained tags (``"fastvit_t8.apple_in1k"``),
``hf-hub:`` repositories and URLs.
"""

from fastvit.card import ModelCard, Preprocessing
from fastvit.errors import CheckpointError, ConfigError, DataError, FastViTError, ReparamError
from fastvit.models import FastViT, FastViTConfig, StageConfig, get_config, list_models
from fastvit.pretrained import create_model, list_pretrained, load_model
from fastvit.reparam import is_fused, reparameterize

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "FastViT",
    "FastViTConfig",
    "FastViTError",
    "ModelCard",
    "Preprocessing",
    "ReparamError",
    "StageConfig",
    "__version__",
    "convert_state_dict",
    "create_model",
    "get_config",
    "is_fused",
    "list_models",
    "list_pretrained",
    "load_model",
    "reparameterize",
    "save_model",
]

_LAZY = ("save_model", "convert_state_dict")


def __getattr__(name: str) -> object:
    if name in _LAZY:
        from fastvit import checkpoints

        return getattr(checkpoints, name)
    raise AttributeError(f"module 'fastvit' has no attribute '{name}'")


def __dir__() -> list[str]:
    """The public API (lazy names included) and the sub-packages, not import helpers."""
    import pkgutil

    subpackages = [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")]
    return sorted({*__all__, *subpackages})
