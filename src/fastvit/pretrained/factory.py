"""Models with published weights: ``create_model(tag, pretrained=True)`` and ``load_model``
for tags, ``hf-hub:`` repositories and URLs (timm-compatible API)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from fastvit.errors import CheckpointError, ConfigError
from fastvit.models.config import FastViTConfig, get_config, list_models
from fastvit.pretrained.download import (
    DownloadError,
    download_url,
    fastvit_home,
    hub_download,
    is_offline,
)
from fastvit.pretrained.registry import (
    HUB_FILES,
    PRETRAINED,
    PretrainedEntry,
    default_tag,
    get_pretrained,
    split_name,
)


def weights_dir(entry: PretrainedEntry) -> Path:
    """Folder where the URL downloads of ``entry`` are cached and where a manually downloaded
    file is picked up: ``$FASTVIT_HOME/checkpoints/<tag>/``."""
    return fastvit_home() / "checkpoints" / entry.tag


def manual_file(entry: PretrainedEntry) -> Path:
    """The path named in error messages for a manually downloaded file of ``entry``."""
    name = entry.sources[0].filename if entry.sources else "model.safetensors"
    return weights_dir(entry) / name


def _cached_file(entry: PretrainedEntry) -> Path | None:
    folder = weights_dir(entry)
    if not folder.is_dir():
        return None
    preferred = [folder / s.filename for s in entry.sources]
    others = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    return next((p for p in [*preferred, *others] if p.is_file()), None)


def resolve_weights(entry: PretrainedEntry, progress: bool | None = None) -> Path:
    """A local file holding ``entry``'s weights: a file already in :func:`weights_dir`, else
    the Hub repository, else each official URL in turn (verified download).

    Raises one line naming the tag, the locations tried and the manual-download path.
    """
    cached = _cached_file(entry)
    if cached is not None:
        return cached
    tried: list[str] = []
    if entry.hf_hub_id:
        try:
            return hub_download(entry.hf_hub_id, HUB_FILES)
        except DownloadError as e:
            tried.append(f"https://huggingface.co/{entry.hf_hub_id} ({e})")
    for src in entry.sources:
        try:
            return download_url(
                src.url,
                weights_dir(entry) / src.filename,
                sha256=src.sha256,
                size=src.size,
                progress=progress,
            )
        except DownloadError as e:
            tried.append(f"{src.url} ({e})")
    mode = "offline mode: " if is_offline() else ""
    raise DownloadError(
        f"{mode}cannot get pretrained weights for {entry.tag}: tried {'; '.join(tried) or '-'}; "
        f"download the file manually to {manual_file(entry)}"
    )


def _imagenet_class_names() -> list[str]:
    from timm.data import ImageNetInfo

    return list(ImageNetInfo().label_descriptions())


def _finish(model: nn.Module, entry: PretrainedEntry | None, loaded: bool) -> nn.Module:
    if entry is None:  # an architecture without a tag: name its default tag, as timm does
        tag = default_tag(getattr(model, "variant", ""))
        if tag is not None and hasattr(model, "pretrained_cfg"):
            src = PRETRAINED[tag].pretrained_cfg()
            keys = ("tag", "url", "hf_hub_id", "license")
            model.pretrained_cfg = {**model.pretrained_cfg, **{k: src[k] for k in keys}}
        return model
    n = int(getattr(model, "num_classes", 0))
    model.pretrained_cfg = {**getattr(model, "pretrained_cfg", {}), **entry.pretrained_cfg(n)}
    if loaded and entry.imagenet_classes and n == 1000 and not model.class_names:
        model.class_names = _imagenet_class_names()
    return model


def create_model(
    model_name: str | FastViTConfig,
    pretrained: bool = False,
    *,
    num_classes: int | None = None,
    pretrained_cfg_overlay: Mapping[str, Any] | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    progress: bool | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a FastViT by architecture, ``architecture.tag`` or config (timm-compatible).

    Args:
        model_name: ``"fastvit_t8"``, ``"fastvit_t8.apple_in1k"`` (see
            :func:`list_pretrained`) or a :class:`FastViTConfig`.
        pretrained: load the tag's published weights (an architecture alone means its
            default tag). Files come from the Hugging Face Hub or the official URLs and are
            cached (see :mod:`fastvit.pretrained.download`).
        num_classes: outputs of the head; with ``pretrained`` and a different value than the
            weights', the head is re-initialised (as in timm). Default: the tag's/config's.
        pretrained_cfg_overlay: timm's overlay: ``file=`` a local weights file to use instead
            of downloading; ``url=``/``hf_hub_id=``/``sha256=`` other sources.
        checkpoint_path: a checkpoint to load after building (any layout/form fastvit reads).
        progress: download progress bar (default: only on a terminal).
        **kwargs: passed to :func:`fastvit.models.create_model` (``inference_mode``,
            ``features_only``, ``drop_path_rate``, ...).
    """
    from fastvit.checkpoints import load_model as load_checkpoint
    from fastvit.models.fastvit import create_model as build

    if isinstance(model_name, FastViTConfig):
        if pretrained:
            raise ConfigError(
                "a custom FastViTConfig has no published weights; use "
                "pretrained=False (and checkpoint_path= for your own weights)"
            )
        arch, entry = model_name, None
    else:
        arch_name, tag = split_name(model_name)
        get_config(arch_name)  # unknown architecture -> one-line ConfigError
        arch = arch_name
        entry = get_pretrained(model_name) if (pretrained or tag) else None
    overlay = dict(pretrained_cfg_overlay or {})
    if overlay and not pretrained:
        raise ConfigError("pretrained_cfg_overlay needs pretrained=True")
    if pretrained and checkpoint_path is not None:
        raise ConfigError("pass either pretrained=True or checkpoint_path=, not both")

    if pretrained:
        assert entry is not None
        entry = entry.with_overlay(overlay)
        if overlay.get("file"):
            path = Path(overlay["file"]).expanduser()
            if not path.is_file():
                raise CheckpointError(f"pretrained_cfg_overlay file {path} does not exist")
        else:
            path = resolve_weights(entry, progress)
        model = load_checkpoint(path, name=arch, **kwargs)
        if (
            num_classes is not None
            and num_classes != model.num_classes
            and not kwargs.get("features_only")
        ):
            model.reset_classifier(num_classes)  # a new head for the new task
        return _finish(model, entry, loaded=True).train()
    default = entry.num_classes if entry else get_config(arch).num_classes
    n = default if num_classes is None else num_classes
    if checkpoint_path is not None:
        model = load_checkpoint(
            checkpoint_path, name=arch if isinstance(arch, str) else None, num_classes=n, **kwargs
        )
        return _finish(model, entry, loaded=True).train()
    return _finish(build(arch, num_classes=n, **kwargs), entry, loaded=False)


def _is_tag(source: str) -> bool:
    arch, tag = split_name(source)
    return (
        tag is not None
        and arch in list_models()
        and "/" not in source
        and (source in PRETRAINED or not Path(source).exists())
    )


def _entry_for_hub(repo: str) -> PretrainedEntry | None:
    return next((e for e in PRETRAINED.values() if e.hf_hub_id == repo), None)


def _url_cache_path(url: str) -> Path:
    name = url.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0] or "checkpoint.bin"
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    return fastvit_home() / "urls" / key / name


def fetch(source: str, progress: bool | None = None) -> tuple[Path, PretrainedEntry | None]:
    """A local file for ``hf-hub:org/name[@revision]``, an ``http(s)://`` URL or a pretrained
    tag, plus the registry entry it corresponds to (if any)."""
    if source.startswith("hf-hub:"):
        repo, _, revision = source[len("hf-hub:") :].partition("@")
        entry = _entry_for_hub(repo)
        try:
            return hub_download(repo, HUB_FILES, revision or None), entry
        except DownloadError as e:
            hint = f"; download the file manually to {manual_file(entry)}" if entry else ""
            raise DownloadError(
                f"cannot get {source} from https://huggingface.co/{repo} ({e}){hint}"
            ) from None
    if source.startswith(("http://", "https://")):
        dest = _url_cache_path(source)
        if dest.is_file():
            return dest, None
        try:
            return download_url(source, dest, progress=progress), None
        except DownloadError as e:
            raise DownloadError(
                f"cannot download {source} ({e}); download the file manually to {dest}"
            ) from None
    entry = get_pretrained(source)
    return resolve_weights(entry, progress), entry


def is_remote(source: object) -> bool:
    """True for sources :func:`load_model` fetches: ``hf-hub:``, URLs and pretrained tags."""
    return isinstance(source, str) and (
        source.startswith(("hf-hub:", "http://", "https://")) or _is_tag(source)
    )


def load_model(
    source: Any, name: str | None = None, *, progress: bool | None = None, **create_kwargs: Any
) -> nn.Module:
    """:func:`fastvit.checkpoints.load_model` that also takes ``hf-hub:org/name``, an
    ``http(s)://`` URL (downloaded and cached, verified) or a pretrained tag."""
    from fastvit.checkpoints import load_model as load_checkpoint

    if not is_remote(source):
        return load_checkpoint(source, name, **create_kwargs)
    path, entry = fetch(source, progress)
    if entry is not None and name is None:
        name = entry.architecture
    model = load_checkpoint(path, name, **create_kwargs)
    return _finish(model, entry, loaded=True)


def fpn_backbone(
    model_name: str,
    pretrained: bool = False,
    *,
    returned_stages: Sequence[int] | None = None,
    pretrained_cfg_overlay: Mapping[str, Any] | None = None,
    progress: bool | None = None,
    **kwargs: Any,
) -> nn.Module:
    """A FastViT + FPN backbone for torchvision detectors
    (:func:`fastvit.models.backbones.fpn_backbone`), its body optionally initialised with the
    tag's published ImageNet weights (``fastvit_t8.apple_in1k``); the FPN starts random.
    Other keyword arguments (``trainable_stages``, ``norm``, ``out_channels``, ...) go to that
    builder.
    """
    from fastvit.models.backbones import fpn_backbone as build_fpn

    arch, _tag = split_name(model_name)
    if not pretrained:
        if pretrained_cfg_overlay:
            raise ConfigError("pretrained_cfg_overlay needs pretrained=True")
        return build_fpn(arch, returned_stages=returned_stages, **kwargs)
    n_stages = len(get_config(arch).layers)
    stages = list(range(1, n_stages + 1)) if returned_stages is None else list(returned_stages)
    body_kwargs = {
        k: kwargs.pop(k) for k in ("drop_path_rate", "in_chans", "inference_mode") if k in kwargs
    }
    body = create_model(
        model_name,
        pretrained=True,
        features_only=True,
        out_indices=tuple(s - 1 for s in sorted(set(stages)) if 1 <= s <= n_stages),
        pretrained_cfg_overlay=pretrained_cfg_overlay,
        progress=progress,
        **body_kwargs,
    )
    return build_fpn(arch, returned_stages=returned_stages, body=body, **kwargs)


def create_segmenter(
    model_name: str,
    num_classes: int,
    pretrained: bool = False,
    *,
    norm: str | None = None,
    pretrained_cfg_overlay: Mapping[str, Any] | None = None,
    progress: bool | None = None,
    **kwargs: Any,
) -> nn.Module:
    """A semantic FPN segmenter (:class:`fastvit.models.segmentation.SemanticFPN`) on FastViT
    ``model_name``, its backbone optionally initialised with the tag's published ImageNet
    weights (the FastViT paper's ADE20k setup); the neck and head start random.

    ``norm`` defaults to ``"frozen"`` (fixed BatchNorm statistics, the usual recipe for small
    segmentation batches) with ``pretrained``, else ``"bn"``. Other keyword arguments go to
    :func:`fastvit.models.segmentation.create_segmenter` (``trainable_stages``,
    ``fpn_channels``, ``head_channels``, ``class_names``, ...).
    """
    from fastvit.models.segmentation import create_segmenter as build_segmenter

    arch, _tag = split_name(model_name)
    if norm is None:
        norm = "frozen" if pretrained else "bn"
    if not pretrained:
        if pretrained_cfg_overlay:
            raise ConfigError("pretrained_cfg_overlay needs pretrained=True")
        return build_segmenter(arch, num_classes, norm=norm, **kwargs)
    n_stages = len(get_config(arch).layers)
    body_kwargs = {k: kwargs.pop(k) for k in ("drop_path_rate", "in_chans") if k in kwargs}
    body = create_model(
        model_name,
        pretrained=True,
        features_only=True,
        out_indices=tuple(range(n_stages)),
        pretrained_cfg_overlay=pretrained_cfg_overlay,
        progress=progress,
        **body_kwargs,
    )
    return build_segmenter(arch, num_classes, norm=norm, body=body, **kwargs)
