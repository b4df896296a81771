"""Published weights by name: the registry of tags, downloads with a cache, and the
timm-compatible ``create_model(tag, pretrained=True)`` / ``load_model("hf-hub:...")``.

Importing this package imports no network library; ``huggingface_hub`` is imported only
when a Hub file is fetched.
"""

from fastvit.pretrained.download import DownloadError, download_url, fastvit_home
from fastvit.pretrained.factory import (
    create_model,
    fetch,
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

__all__ = [
    "PRETRAINED",
    "DownloadError",
    "PretrainedEntry",
    "Source",
    "create_model",
    "download_url",
    "fastvit_home",
    "fetch",
    "get_pretrained",
    "is_remote",
    "list_pretrained",
    "load_model",
    "manual_file",
    "resolve_weights",
    "weights_dir",
]
