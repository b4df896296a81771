"""fastvit: FastViT hybrid vision transformers with exact, verified reparameterization.

The public API is imported on first use (PEP 562): ``import fastvit`` imports only the standard
library, so the CLI's quick commands never pay for torch and timm. ``create_model`` /
``load_model`` accept pretrained tags (``"fastvit_t8.apple_in1k"``), ``hf-hub:`` repositories
and URLs.
"""

from typing import TYPE_CHECKING

from fastvit._lazy import lazy_attributes

__version__ = "0.1.0"

_EXPORTS = {
    "CheckpointError": "fastvit.errors",
    "ConfigError": "fastvit.errors",
    "DataError": "fastvit.errors",
    "FastViTError": "fastvit.errors",
    "ReparamError": "fastvit.errors",
    "ModelCard": "fastvit.card",
    "Preprocessing": "fastvit.card",
    "FastViTConfig": "fastvit.models.config",
    "StageConfig": "fastvit.models.config",
    "get_config": "fastvit.models.config",
    "list_models": "fastvit.models.config",
    "FastViT": "fastvit.models.fastvit",
    "create_model": "fastvit.pretrained.factory",
    "create_segmenter": "fastvit.pretrained.factory",
    "fpn_backbone": "fastvit.pretrained.factory",
    "load_model": "fastvit.pretrained.factory",
    "list_pretrained": "fastvit.pretrained.registry",
    "is_fused": "fastvit.reparam",
    "reparameterize": "fastvit.reparam",
    "save_model": "fastvit.checkpoints",
    "convert_state_dict": "fastvit.checkpoints",
}
_SUBPACKAGES = (
    "bench",
    "card",
    "checkpoints",
    "cli",
    "data",
    "errors",
    "export",
    "fileio",
    "host",
    "infer",
    "layers",
    "models",
    "pretrained",
    "reparam",
    "threads",
    "train",
)

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
    "create_segmenter",
    "fpn_backbone",
    "get_config",
    "is_fused",
    "list_models",
    "list_pretrained",
    "load_model",
    "reparameterize",
    "save_model",
]
__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS, _SUBPACKAGES, ("__version__",))

if TYPE_CHECKING:  # what static tools and IDEs see
    from fastvit.card import ModelCard, Preprocessing
    from fastvit.checkpoints import convert_state_dict, save_model
    from fastvit.errors import (
        CheckpointError,
        ConfigError,
        DataError,
        FastViTError,
        ReparamError,
    )
    from fastvit.models.config import FastViTConfig, StageConfig, get_config, list_models
    from fastvit.models.fastvit import FastViT
    from fastvit.pretrained.factory import (
        create_model,
        create_segmenter,
        fpn_backbone,
        load_model,
    )
    from fastvit.pretrained.registry import list_pretrained
    from fastvit.reparam import is_fused, reparameterize
