"""Published weights by name: the registry of tags, downloads with a cache, and the
timm-compatible ``create_model(tag, pretrained=True)`` / ``load_model("hf-hub:...")``.

Names are imported on first use (see :mod:`fastvit._lazy`): the registry needs neither torch
nor timm, and ``huggingface_hub`` is imported only when a Hub file is fetched.
"""

from typing import TYPE_CHECKING

from fastvit._lazy import lazy_attributes

_EXPORTS = {
    **dict.fromkeys(
        ("DownloadError", "download_url", "fastvit_home"), "fastvit.pretrained.download"
    ),
    **dict.fromkeys(
        (
            "create_model",
            "create_segmenter",
            "fetch",
            "fpn_backbone",
            "is_remote",
            "load_model",
            "manual_file",
            "resolve_weights",
            "weights_dir",
        ),
        "fastvit.pretrained.factory",
    ),
    **dict.fromkeys(
        ("PRETRAINED", "PretrainedEntry", "Source", "get_pretrained", "list_pretrained"),
        "fastvit.pretrained.registry",
    ),
}

__all__ = [
    "PRETRAINED",
    "DownloadError",
    "PretrainedEntry",
    "Source",
    "create_model",
    "create_segmenter",
    "download_url",
    "fastvit_home",
    "fetch",
    "fpn_backbone",
    "get_pretrained",
    "is_remote",
    "list_pretrained",
    "load_model",
    "manual_file",
    "resolve_weights",
    "weights_dir",
]
__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS, ("download", "factory", "registry"))

if TYPE_CHECKING:
    from fastvit.pretrained.download import DownloadError, download_url, fastvit_home
    from fastvit.pretrained.factory import (
        create_model,
        create_segmenter,
        fetch,
        fpn_backbone,
        is_remote,
        load_model,
        manual_file,
        resolve_weights,
        weights_dir,
    )
    from fastvit.pretrained.registry import (
        PRETRAINED,
        PretrainedEntry,
        Source,
        get_pretrained,
        list_pretrained,
    )
