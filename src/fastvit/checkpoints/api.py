"""Loading and saving FastViT models: ``load_model``, ``load_into`` and ``save_model``.

``load_model`` is the one loader for every kind of model file (official/timm/ours, unfused or
fused, safetensors or torch, and a training run's ``best.pt``/``last.pt``); the model it returns
carries the file's :class:`~fastvit.card.ModelCard` (preprocessing and class names).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from fastvit.card import PREPROCESSING_KEYS, ModelCard
from fastvit.checkpoints.io import read_checkpoint, write_safetensors
from fastvit.checkpoints.layouts import (
    NATIVE,
    UNFUSED,
    StateDict,
    _few,
    convert_state_dict,
    detect,
    detect_form,
    unwrap_state_dict,
    variant_description,
)
from fastvit.errors import CheckpointError, ConfigError

#: Metadata keys save_model writes itself (user metadata may not reuse them; preprocessing
#: keys in user metadata override the model's preprocessing instead).
RESERVED_METADATA = (
    "variant",
    "form",
    "num_classes",
    "class_names",
    "fastvit_version",
    "layout",
    "fastvit_metadata_version",
    "config",
)


def _source_name(source: object) -> str:
    return str(source) if isinstance(source, (str, os.PathLike)) else "the state dict"


def _read(
    source: str | os.PathLike | Mapping[str, Any], use_ema: bool | None = None
) -> tuple[StateDict, dict[str, str]]:
    if isinstance(source, (str, os.PathLike)):
        return read_checkpoint(source, use_ema=use_ema)
    if isinstance(source, Mapping):
        return unwrap_state_dict(source), {}
    raise CheckpointError(
        f"cannot load a checkpoint from a {type(source).__name__}; pass a file path or a state dict"
    )


def load_model(
    source: str | os.PathLike | Mapping[str, Any],
    name: str | None = None,
    *,
    use_ema: bool | None = None,
    **create_kwargs: Any,
) -> nn.Module:
    """Build the FastViT model a checkpoint describes and load its weights.

    Args:
        source: a path (``.pth``, ``.pth.tar``, ``.pt``, ``.safetensors``) or a state dict, in the
            official or timm layout, unfused or reparameterized (official ``*_reparam``, timm's
            ``reparameterize_model`` output, or our fully fused form), possibly wrapped under
            ``state_dict``/``model``/``state_dict_ema`` or with a ``module.`` prefix.
        name: the variant; needed only when it cannot be detected from the shapes. If given and
            the checkpoint is another variant, CheckpointError says which one it looks like.
        **create_kwargs: passed to :func:`fastvit.create_model`. ``num_classes`` and ``in_chans``
            default to the checkpoint's (an explicit different value is an error);
            ``inference_mode`` defaults to the checkpoint's form (``True`` with an unfused
            checkpoint loads it and reparameterizes; ``False`` with a fused one is an error);
            ``features_only=True`` leaves out the classifier weights (and is the default for a
            checkpoint without them).
        use_ema: for a training run's ``best.pt``/``last.pt``: the EMA weights (True), the raw
            ones (False), or whichever scored best (None, the default).

    Returns:
        The model in eval mode, in the checkpoint's form: training form for unfused checkpoints,
        our fully fused form for any fused one (official/timm fused checkpoints are folded
        further, with identical outputs). Preprocessing and ``class_names`` come from the
        file's model card (a run file's from its training config and classes).
    """
    from fastvit import create_model, reparameterize
    from fastvit.models.config import list_models

    where = _source_name(source)
    raw, metadata = _read(source, use_ema)
    info = detect(raw)
    sd = convert_state_dict(raw, to=NATIVE)

    if name is not None and name not in list_models():
        raise ConfigError(f"unknown model '{name}'; choose one of: {', '.join(list_models())}")
    variant = info.variant
    if name is not None and name != variant:
        if variant is not None:
            raise CheckpointError(
                f"{where} looks like a {variant} checkpoint, not {name}; "
                f"use name='{variant}' (or leave name out)"
            )
        if info.stages:
            raise CheckpointError(
                f"{where} does not match {name}: it has {info.describe()}, "
                f"{name} has {variant_description(name)}"
            )
    variant = variant or name or _metadata_variant(metadata, list_models())
    config = _metadata_config(metadata, where)
    if config is not None and name is None and config != _registered(config.name):
        variant = config  # a custom architecture: rebuilt from the config saved with it
    if variant is None:
        arch = f" ({info.describe()})" if info.stages else ""
        raise CheckpointError(
            f"cannot tell which FastViT variant {where} is{arch}; pass name= one of "
            f"{', '.join(list_models())}"
        )

    if not any(k.startswith("conv_exp.") for k in sd):  # saved from a features_only model
        create_kwargs.setdefault("features_only", True)
    if not create_kwargs.get("features_only"):
        requested = create_kwargs.setdefault("num_classes", info.num_classes)
        if requested != info.num_classes:
            raise CheckpointError(
                f"{where} has {info.num_classes} classes but num_classes={requested} was "
                f"requested; load it without num_classes, then call "
                f"model.reset_classifier({requested})"
            )
    requested = create_kwargs.setdefault("in_chans", info.in_chans)
    if requested != info.in_chans:
        raise CheckpointError(
            f"{where} takes {info.in_chans} input channels but in_chans={requested} was "
            "requested; load it without in_chans"
        )

    fused = info.form != UNFUSED
    want_fused = create_kwargs.pop("inference_mode", None)
    if fused and want_fused is False:
        raise CheckpointError(
            f"{where} is a reparameterized (fused) checkpoint; it cannot be loaded into a "
            "training-form model (inference_mode=False). Load it for inference, or train from "
            "an unfused checkpoint"
        )
    if create_kwargs.get("features_only"):
        sd = {k: v for k, v in sd.items() if k.split(".", 1)[0] not in ("conv_exp", "head")}

    model = create_model(variant, inference_mode=fused, **create_kwargs)
    load_into(model, sd, source_name=where)
    if want_fused and not fused:
        model = reparameterize(model, inplace=True)
    card = ModelCard.from_metadata(
        metadata, in_chans=model.in_chans, default=model.card, where=where
    )
    model.preprocessing = card.preprocessing
    if card.class_names is not None and len(card.class_names) == model.num_classes:
        model.class_names = list(card.class_names)
    return model.eval()


def load_into(
    model: nn.Module,
    source: str | os.PathLike | Mapping[str, Any],
    *,
    source_name: str | None = None,
) -> nn.Module:
    """Load a checkpoint (any supported layout/form) into an existing FastViT ``model``, strictly.

    The checkpoint must be in the model's form: a fused checkpoint needs an inference-form model
    (``inference_mode=True`` or after :func:`fastvit.reparameterize`), an unfused one a
    training-form model. Missing, unexpected or mis-shaped keys raise CheckpointError listing
    them; nothing is dropped silently. Returns ``model``.
    """
    where = source_name or _source_name(source)
    raw, _ = _read(source)
    info = detect(raw)
    sd = convert_state_dict(raw, to=NATIVE)
    model_variant = getattr(model, "variant", None)
    if info.variant is not None and model_variant is not None and info.variant != model_variant:
        raise CheckpointError(
            f"{where} looks like a {info.variant} checkpoint but the model is {model_variant}; "
            f"build the model with fastvit.create_model('{info.variant}') or use fastvit.load_model"
        )
    expected = model.state_dict()
    model_fused = any(".reparam_conv." in k or k.startswith("reparam_conv.") for k in expected)
    model_fused = bool(getattr(model, "inference_mode", model_fused))
    if info.form != UNFUSED and not model_fused:
        raise CheckpointError(
            f"{where} is a reparameterized (fused) checkpoint but the model is in training form; "
            "build it with inference_mode=True (or use fastvit.load_model)"
        )
    if info.form == UNFUSED and model_fused:
        raise CheckpointError(
            f"{where} is a training-form (unfused) checkpoint but the model is reparameterized; "
            "load it into a training-form model, then call fastvit.reparameterize"
        )
    _check_keys(sd, expected, where)
    for k, v in expected.items():  # older files may lack BatchNorm step counters
        if k not in sd and k.endswith("num_batches_tracked"):
            sd[k] = v
    model.load_state_dict(sd, strict=True)
    return model


def _check_keys(sd: Mapping[str, Tensor], expected: Mapping[str, Tensor], where: str) -> None:
    missing = [k for k in expected if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in expected]
    problems = []
    if missing:
        problems.append(f"missing keys {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_few(unexpected)}")
    shapes = [
        f"{k} {tuple(sd[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in sd and sd[k].shape != v.shape
    ]
    if shapes:
        problems.append(
            f"shape mismatch for {', '.join(shapes[:5])}"
            + (f" and {len(shapes) - 5} more" if len(shapes) > 5 else "")
        )
    if problems:
        raise CheckpointError(f"{where} does not fit the model: {'; '.join(problems)}")


def _metadata_variant(metadata: Mapping[str, str], known: Sequence[str]) -> str | None:
    v = metadata.get("variant")
    return v if v in known else None


def _registered(name: str) -> object:
    from fastvit.models.config import VARIANTS

    return VARIANTS.get(name)


def _metadata_config(metadata: Mapping[str, str], where: str) -> Any:
    """The FastViTConfig saved by :func:`save_model` (``config`` metadata), if any."""
    from fastvit.models.config import FastViTConfig

    text = metadata.get("config")
    if not text:
        return None
    try:
        return FastViTConfig.from_dict(json.loads(text), name=metadata.get("variant") or "custom")
    except (ConfigError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{where} has an unreadable model config ({e}); re-save it") from e


def _metadata_variant(metadata: Mapping[str, str], known: Sequence[str]) -> str | None:
    v = metadata.get("variant")
    return v if v in known else None


def _metadata_class_names(metadata: Mapping[str, str], where: str) -> list[str] | None:
    text = metadata.get("class_names")
    if not text:
        return None
    try:
        names = json.loads(text)
    except json.JSONDecodeError as e:
        raise CheckpointError(
            f"{where} has malformed class_names metadata ({e}); re-save it"
        ) from e
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise CheckpointError(f"{where} has class_names metadata that is not a list of strings")
    return names


def save_model(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    class_names: Sequence[str] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Save ``model``'s weights as safetensors with its model card, atomically.

    Metadata: the :class:`~fastvit.card.ModelCard` encoding (``variant``, ``form``,
    ``num_classes``, ``class_names`` - defaulting to ``model.class_names`` -, and the
    preprocessing: ``input_size``, ``crop_pct``, ``crop_mode``, ``interpolation``, ``mean``,
    ``std``), ``fastvit_version``, ``layout`` (``official``), plus ``metadata``: values that are
    not strings are stored as JSON; preprocessing keys override the model's preprocessing.
    :func:`load_model` restores all of it. Returns the path.
    """
    from fastvit import __version__

    sd = model.state_dict()
    info = detect(sd)
    card = ModelCard.from_model(model)
    if not hasattr(model, "card") and info.variant:
        card = card.replace(variant=info.variant)
    if class_names is not None:
        names = [str(n) for n in class_names]
        if card.num_classes and len(names) != card.num_classes:
            raise ConfigError(
                f"class_names has {len(names)} names but the model has {card.num_classes} classes"
            )
        card = card.with_class_names(names)
    user: dict[str, str] = {}
    for key, value in (metadata or {}).items():
        if key in RESERVED_METADATA:
            raise ConfigError(f"metadata key '{key}' is reserved by save_model; rename it")
        try:
            user[str(key)] = value if isinstance(value, str) else json.dumps(value)
        except TypeError as e:
            raise ConfigError(f"metadata '{key}' is not JSON-serializable ({e})") from e
    overrides = {k: user.pop(k) for k in PREPROCESSING_KEYS if k in user}
    if overrides:
        card = ModelCard.from_metadata(
            overrides, in_chans=card.in_chans, default=card, where="save_model's metadata"
        )
    card = card.replace(
        form="unfused" if detect_form(sd) == UNFUSED else "fused", extra={**card.extra, **user}
    )
    meta = card.to_metadata()
    meta.update(fastvit_version=__version__, layout="official")
    cfg_obj = getattr(model, "cfg", None)
    if hasattr(cfg_obj, "to_json"):  # the architecture: a custom model reloads without code
        meta["config"] = cfg_obj.to_json()
    return write_safetensors(sd, path, meta)
