"""The published FastViT / MobileCLIP weights: one :class:`PretrainedEntry` per tag.

Tags follow timm (``<architecture>.<tag>``) and cover every FastViT weight timm lists. Each
entry says where its files live (the Hugging Face Hub repository timm uses, and the official
download locations of apple/ml-fastvit and apple/ml-mobileclip), their key layout, how the
weights were evaluated (preprocessing), what the head outputs, the license and the published
ImageNet top-1. This module is pure data: no download or model code.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from fastvit.card import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PREPROCESSING_KEYS, Preprocessing
from fastvit.errors import ConfigError
from fastvit.models.config import IMAGENET_EVAL, get_config

_APPLE = "https://docs-assets.developer.apple.com/ml-research"
FASTVIT_LICENSE = "https://github.com/apple/ml-fastvit/blob/main/LICENSE"
AMLR_LICENSE = "https://github.com/apple/ml-mobileclip/blob/main/LICENSE_weights_data"
#: Files tried, in order, in a Hub repository (timm's convention).
HUB_FILES = (
    "model.safetensors",
    "pytorch_model.bin",
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin",
)


@dataclass(frozen=True)
class Source:
    """One downloadable file: ``url``, its key ``layout`` (``official``, ``timm``,
    ``mobileclip``, ``open_clip``), its ``form`` (``unfused`` or ``fused``) and, when known,
    its size in bytes and SHA-256 (checked after download)."""

    url: str
    layout: str = "official"
    form: str = "unfused"
    sha256: str | None = None
    size: int | None = None

    @property
    def filename(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0] or "checkpoint.bin"


@dataclass(frozen=True)
class PretrainedEntry:
    """A published weight set, its sources and its metadata (a timm ``pretrained_cfg``)."""

    tag: str  # "fastvit_t8.apple_in1k"
    hf_hub_id: str | None = None  # "timm/fastvit_t8.apple_in1k"; files in timm's layout
    hub_layout: str = "timm"
    sources: tuple[Source, ...] = ()
    num_classes: int = 1000
    preprocessing: Preprocessing = IMAGENET_EVAL  # how the weights were evaluated
    license: str = "fastvit-license"
    license_url: str = FASTVIT_LICENSE
    top1: float | None = None
    top1_kind: str = "ImageNet-1k val top-1"
    dataset: str = "imagenet-1k"
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def architecture(self) -> str:
        return self.tag.split(".", 1)[0]

    @property
    def tag_suffix(self) -> str:
        return self.tag.split(".", 1)[1]

    @property
    def imagenet_classes(self) -> bool:
        """True when the head outputs the 1000 ImageNet-1k classes (names from timm)."""
        return self.dataset == "imagenet-1k" and self.num_classes == 1000

    def urls(self) -> list[str]:
        """Every location this entry can come from, Hub first."""
        hub = [f"https://huggingface.co/{self.hf_hub_id}"] if self.hf_hub_id else []
        return hub + [s.url for s in self.sources]

    def pretrained_cfg(self, num_classes: int | None = None) -> dict[str, Any]:
        """timm-style ``pretrained_cfg`` of this tag (``num_classes``: after a head reset)."""
        return {
            "architecture": self.architecture,
            "tag": self.tag_suffix,
            "hf_hub_id": self.hf_hub_id,
            "url": self.sources[0].url if self.sources else "",
            "num_classes": self.num_classes if num_classes is None else num_classes,
            **{
                k: tuple(v) if isinstance(v, list) else v
                for k, v in self.preprocessing.to_dict().items()
            },
            "license": self.license,
            "first_conv": "patch_embed.0.rbr_conv.0.conv",
            "classifier": "head",
        }

    def with_overlay(self, overlay: dict[str, Any] | None) -> PretrainedEntry:
        """timm's ``pretrained_cfg_overlay``: ``url``/``hf_hub_id``/``sha256`` and metadata
        fields replace this entry's (``file`` is handled by the loader)."""
        if not overlay:
            return self
        changes = {
            k: v
            for k, v in overlay.items()
            if k in self.__dataclass_fields__ and k != "preprocessing"
        }
        prep = {k: v for k, v in overlay.items() if k in PREPROCESSING_KEYS}
        if prep:  # preprocessing fields (crop_pct, mean, ...) change the entry's Preprocessing
            changes["preprocessing"] = Preprocessing.from_dict(prep, default=self.preprocessing)
        if "url" in overlay:
            src = self.sources[0] if self.sources else Source(overlay["url"])
            changes["sources"] = (
                replace(
                    src, url=overlay["url"], sha256=overlay.get("sha256"), size=overlay.get("size")
                ),
            )
        unknown = set(overlay) - set(changes) - set(prep) - {"url", "file", "sha256", "size"}
        if unknown:
            raise ConfigError(
                f"unknown pretrained_cfg_overlay keys {sorted(unknown)}; use "
                "file, url, hf_hub_id, sha256 or a metadata field"
            )
        return replace(self, **changes)


def _in1k(arch: str, top1: float, dist: bool, crop_pct: float = 0.9) -> PretrainedEntry:
    folder = "image_classification_distilled_models" if dist else "image_classification_models"
    base = f"{_APPLE}/models/fastvit/{folder}/{arch}"
    tag = f"{arch}.apple_dist_in1k" if dist else f"{arch}.apple_in1k"
    return PretrainedEntry(
        tag,
        hf_hub_id=f"timm/{tag}",
        sources=(
            Source(f"{base}.pth.tar", "official", "unfused"),
            Source(f"{base}_reparam.pth.tar", "official", "fused"),
        ),
        preprocessing=Preprocessing(crop_pct=crop_pct),
        top1=top1,
        description="FastViT trained on ImageNet-1k by the paper authors"
        + (" with hard distillation" if dist else ""),
    )


def _mclip(arch: str, size: str, top1: float) -> PretrainedEntry:
    return PretrainedEntry(
        f"{arch}.apple_mclip",
        hf_hub_id=f"apple/mobileclip_{size}_timm",
        sources=(Source(f"{_APPLE}/datasets/mobileclip/mobileclip_{size}.pt", "mobileclip"),),
        num_classes=512,
        preprocessing=Preprocessing(crop_pct=0.95, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)),
        license="apple-amlr",
        license_url=AMLR_LICENSE,
        top1=top1,
        top1_kind="ImageNet-1k zero-shot top-1",
        dataset="datacompdr",
        description=f"MobileCLIP-{size.upper()} image tower (CLIP embedding, 512-d)",
    )


def _mclip2(arch: str, dims: int, crop_pct: float, clip_norm: bool) -> PretrainedEntry:
    mean, std = (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD) if clip_norm else ((0.0,) * 3, (1.0,) * 3)
    tag = f"{arch}.apple_mclip2_dfndr2b"
    return PretrainedEntry(
        tag,
        hf_hub_id=f"timm/{tag}",
        num_classes=dims,
        preprocessing=Preprocessing(crop_pct=crop_pct, mean=mean, std=std),
        license="apple-amlr",
        license_url=AMLR_LICENSE,
        top1=None,
        top1_kind="ImageNet-1k zero-shot top-1",
        dataset="dfndr-2b",
        description=f"MobileCLIP2 image tower (CLIP embedding, {dims}-d)",
    )


_TOP1 = {  # apple/ml-fastvit README: (ImageNet-1k, with distillation)
    "fastvit_t8": (76.2, 77.2),
    "fastvit_t12": (79.3, 80.3),
    "fastvit_s12": (79.9, 81.1),
    "fastvit_sa12": (80.9, 81.9),
    "fastvit_sa24": (82.7, 83.4),
    "fastvit_sa36": (83.6, 84.2),
    "fastvit_ma36": (83.9, 84.6),
}

PRETRAINED: dict[str, PretrainedEntry] = {
    e.tag: e
    for e in (
        *(_in1k(a, t[0], False, get_config(a).preprocessing.crop_pct) for a, t in _TOP1.items()),
        *(_in1k(a, t[1], True, get_config(a).preprocessing.crop_pct) for a, t in _TOP1.items()),
        _mclip("fastvit_mci0", "s0", 67.8),
        _mclip("fastvit_mci1", "s1", 72.6),
        _mclip("fastvit_mci2", "s2", 74.4),
        _mclip2("fastvit_mci0", 512, 1.0, False),
        _mclip2("fastvit_mci2", 512, 0.95, False),
        _mclip2("fastvit_mci3", 768, 0.95, True),
        _mclip2("fastvit_mci4", 768, 0.95, True),
    )
}


def list_pretrained(filter: str | None = None) -> list[str]:
    """Pretrained tags (``architecture.tag``), optionally those containing ``filter``
    (``*`` wildcards allowed, as in timm)."""
    import fnmatch

    tags = list(PRETRAINED)
    if filter:
        pattern = filter if "*" in filter else f"*{filter}*"
        tags = [t for t in tags if fnmatch.fnmatch(t, pattern)]
    return tags


def split_name(name: str) -> tuple[str, str | None]:
    """``"fastvit_t8.apple_in1k"`` -> ``("fastvit_t8", "apple_in1k")``; no tag -> None."""
    arch, _, tag = name.partition(".")
    return arch, (tag or None)


def default_tag(arch: str) -> str | None:
    """The first (timm default) tag of an architecture, or None if it has no weights."""
    return next((t for t in PRETRAINED if t.split(".", 1)[0] == arch), None)


def get_pretrained(name: str) -> PretrainedEntry:
    """The entry for ``name`` (a full tag, or an architecture: its default tag)."""
    arch, tag = split_name(name)
    full = f"{arch}.{tag}" if tag else default_tag(arch)
    if full in PRETRAINED:
        return PRETRAINED[full]
    get_config(arch)  # unknown architecture: the ConfigError listing the valid names
    tags = [t for t in PRETRAINED if t.startswith(arch + ".")]
    if not tags:
        raise ConfigError(f"{arch} has no published weights; build it with pretrained=False")
    raise ConfigError(f"unknown pretrained tag '{name}'; {arch} has: {', '.join(tags)}")
