"""The model card: what a model is, and how an image must be prepared for it.

Two frozen types that every reader and writer of model files shares (ground floor: they import
nothing of fastvit but the errors, so models, data, checkpoints, export and infer can all use
them):

* :class:`Preprocessing` - input size ``(C, H, W)``, crop fraction and mode, interpolation and
  mean/std: timm's evaluation transform (resize the shorter side to ``size / crop_pct``,
  centre-crop ``size``, normalize).
* :class:`ModelCard` - variant, form (unfused/fused), number of classes, class names and the
  :class:`Preprocessing`.

One flat ``str -> str`` encoding (:meth:`ModelCard.to_metadata`) is stored in safetensors
headers, ONNX ``metadata_props``, the TorchScript extra file and CoreML user metadata: strings
as they are, numbers as decimal text, lists as JSON; ``input_size`` is always ``[C, H, W]``.
:meth:`ModelCard.from_metadata` also reads what earlier versions wrote (JSON-encoded strings
such as ``'"bicubic"'``, ``input_size`` as one integer, ``extra.``-prefixed keys).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from fastvit.errors import CheckpointError, ConfigError

# The normalisation constants of the two weight families, as timm's ``timm.data`` defines them
# (a test checks they are equal). Written out so that reading a model card, a config or the
# pretrained registry does not import timm (and torchvision behind it): ``fastvit info`` and
# ``fastvit --version`` then never import torch.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming")
CROP_MODES = ("center", "squash", "border")
FORMS = ("unfused", "fused")
METADATA_VERSION = 2
#: Keys of the flat metadata encoding that hold card fields (everything else is ``extra``).
PREPROCESSING_KEYS = ("input_size", "crop_pct", "crop_mode", "interpolation", "mean", "std")
CARD_KEYS = ("variant", "form", "num_classes", "class_names", *PREPROCESSING_KEYS)
#: Bookkeeping keys written next to the card; read back neither as fields nor as extras.
_BOOKKEEPING = ("fastvit_metadata_version", "fastvit_version", "layout", "format")


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the network input (timm's evaluation transform).

    ``input_size`` is ``(channels, height, width)`` after the crop; the image's shorter side is
    first resized to ``floor(min(H, W) / crop_pct)`` (``crop_mode='center'``).
    """

    input_size: tuple[int, int, int] = (3, 256, 256)
    crop_pct: float = 0.9
    crop_mode: str = "center"
    interpolation: str = "bicubic"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self) -> None:
        try:
            size = tuple(int(v) for v in self.input_size)
            mean = tuple(float(v) for v in self.mean)
            std = tuple(float(v) for v in self.std)
            crop_pct = float(self.crop_pct)
        except (TypeError, ValueError) as e:
            raise ConfigError(
                f"invalid preprocessing values ({e}); input_size is (C, H, W), "
                "mean/std one number per channel"
            ) from None
        object.__setattr__(self, "input_size", size)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        object.__setattr__(self, "crop_pct", crop_pct)
        if len(size) != 3 or min(size) < 1:
            raise ConfigError(f"invalid input size {self.input_size}; expected (C, H, W) > 0")
        if not 0.0 < crop_pct <= 1.0:
            raise ConfigError(f"crop_pct must be in (0, 1], got {crop_pct}")
        if self.crop_mode not in CROP_MODES:
            raise ConfigError(
                f"unknown crop mode {self.crop_mode!r}; use one of {', '.join(CROP_MODES)}"
            )
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(
                f"unknown interpolation {self.interpolation!r}; "
                f"use one of {', '.join(INTERPOLATIONS)}"
            )
        if len(mean) != size[0] or len(std) != size[0]:
            raise ConfigError(
                f"mean/std have {len(mean)}/{len(std)} values but the model takes "
                f"{size[0]} channels; give one value per channel"
            )
        if min(std) <= 0:
            raise ConfigError(f"std values must be positive, got {std}")

    @property
    def in_chans(self) -> int:
        return self.input_size[0]

    @property
    def resize_size(self) -> int:
        """Shorter-side size the image is resized to before the centre crop."""
        return math.floor(min(self.input_size[1:]) / self.crop_pct)

    def replace(self, **changes: Any) -> Preprocessing:
        """A copy with some fields changed (``None`` values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def with_input_size(self, size: int | Sequence[int] | None) -> Preprocessing:
        """A copy with a new spatial size: ``S``, ``(H, W)`` or ``(C, H, W)``; None keeps it."""
        if size is None:
            return self
        return replace(self, input_size=_as_input_size(size, self.in_chans))

    def with_in_chans(self, in_chans: int) -> Preprocessing:
        """A copy for ``in_chans`` input channels; mean/std given for another channel count are
        averaged (e.g. ImageNet's RGB statistics for a grayscale model)."""
        if in_chans == self.in_chans:
            return self
        mean, std = self.mean, self.std
        if len(mean) != in_chans:
            mean = (sum(mean) / len(mean),) * in_chans
            std = (sum(std) / len(std),) * in_chans
        return replace(self, input_size=(in_chans, *self.input_size[1:]), mean=mean, std=std)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (lists for the tuples)."""
        return {
            "input_size": list(self.input_size),
            "crop_pct": self.crop_pct,
            "crop_mode": self.crop_mode,
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_dict(
        cls,
        d: Mapping[str, Any],
        *,
        in_chans: int | None = None,
        default: Preprocessing | None = None,
    ) -> Preprocessing:
        """Inverse of :meth:`to_dict`; also reads timm ``pretrained_cfg`` dicts and training
        configs. Missing keys come from ``default``; other keys are ignored; ``input_size`` may
        be ``S``, ``(H, W)`` or ``(C, H, W)``; ``in_chans`` fixes the channel count."""
        base = default or cls()
        if in_chans is not None:
            base = base.with_in_chans(in_chans)
        changes = {k: d[k] for k in PREPROCESSING_KEYS if d.get(k) is not None}
        if "input_size" in changes:
            changes["input_size"] = _as_input_size(changes["input_size"], base.in_chans)
            base = base.with_in_chans(changes["input_size"][0])  # default mean/std follow
        prep = replace(base, **changes)
        if in_chans is not None and prep.in_chans != in_chans:
            prep = prep.with_in_chans(in_chans)
        return prep


def _as_input_size(size: Any, in_chans: int) -> tuple[int, int, int]:
    if isinstance(size, (int, float)) and not isinstance(size, bool):
        return (in_chans, int(size), int(size))
    size = tuple(int(v) for v in size)
    if len(size) == 1:
        return (in_chans, size[0], size[0])
    if len(size) == 2:
        return (in_chans, *size)
    if len(size) == 3:
        return size  # type: ignore[return-value]
    raise ConfigError(f"invalid input size {size}; give S, (H, W) or (C, H, W)")


@dataclass(frozen=True)
class ModelCard:
    """Everything a model file says about the model besides its weights.

    ``extra`` holds free-form string entries that travel with the card (training results,
    quantization settings, user metadata).
    """

    variant: str = "unknown"
    num_classes: int = 1000
    form: str = "unfused"
    class_names: tuple[str, ...] | None = None
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    extra: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "num_classes", int(self.num_classes))
        if self.class_names is not None:
            object.__setattr__(self, "class_names", tuple(str(n) for n in self.class_names))
        object.__setattr__(self, "extra", {str(k): str(v) for k, v in self.extra.items()})
        if self.form not in FORMS:
            raise ConfigError(f"unknown model form {self.form!r}; use unfused or fused")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ConfigError(
                f"{len(self.class_names)} class names for a {self.num_classes}-class "
                "model; give exactly one name per class"
            )
        clash = sorted(set(self.extra) & {*CARD_KEYS, *_BOOKKEEPING})
        if clash:
            raise ConfigError(
                f"metadata key '{clash[0]}' is reserved for the model card; rename it"
            )

    # -- shortcuts ---------------------------------------------------------------------------
    @property
    def input_size(self) -> tuple[int, int, int]:
        return self.preprocessing.input_size

    @property
    def in_chans(self) -> int:
        return self.preprocessing.in_chans

    def labels(self) -> list[str]:
        """Class names, or the class indices as strings when the model has none."""
        if self.class_names is not None:
            return list(self.class_names)
        return [str(i) for i in range(self.num_classes)]

    def replace(self, **changes: Any) -> ModelCard:
        return replace(self, **changes)

    def with_input_size(self, size: int | Sequence[int] | None) -> ModelCard:
        if size is None:
            return self
        return replace(self, preprocessing=self.preprocessing.with_input_size(size))

    def with_class_names(self, names: Sequence[str] | None) -> ModelCard:
        return replace(self, class_names=None if names is None else tuple(str(n) for n in names))

    # -- the one flat encoding -----------------------------------------------------------------
    def to_metadata(self) -> dict[str, str]:
        """Flat ``str -> str`` map: strings as is, numbers as text, lists as JSON."""
        p = self.preprocessing
        out = {
            "fastvit_metadata_version": str(METADATA_VERSION),
            "variant": self.variant,
            "form": self.form,
            "num_classes": str(self.num_classes),
            "input_size": json.dumps(list(p.input_size)),
            "crop_pct": repr(p.crop_pct),
            "crop_mode": p.crop_mode,
            "interpolation": p.interpolation,
            "mean": json.dumps(list(p.mean)),
            "std": json.dumps(list(p.std)),
        }
        if self.class_names is not None:
            out["class_names"] = json.dumps(list(self.class_names))
        out.update(self.extra)
        return out

    @classmethod
    def from_metadata(
        cls,
        metadata: Mapping[str, str],
        *,
        in_chans: int | None = None,
        default: ModelCard | None = None,
        where: str = "the model file",
    ) -> ModelCard:
        """Inverse of :meth:`to_metadata`; missing keys come from ``default``. Also reads the
        encodings of earlier versions (JSON-encoded strings, ``input_size`` as one integer,
        ``extra.`` prefixes). ``in_chans`` (the network's real input channels) wins over the
        stored channel count."""
        base = default or cls()
        values: dict[str, Any] = {}
        extra: dict[str, str] = dict(base.extra)
        for key, raw in metadata.items():
            if key in _BOOKKEEPING:
                continue
            if key.startswith("extra."):
                extra[key[len("extra.") :]] = raw
            elif key in CARD_KEYS:
                values[key] = _decode(key, raw, where)
            else:
                extra[key] = raw
        try:
            prep = Preprocessing.from_dict(values, in_chans=in_chans, default=base.preprocessing)
            names = values.get("class_names", base.class_names)
            if names is not None and (
                not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names)
            ):
                raise ConfigError("class_names is not a list of strings")
            return cls(
                variant=str(values.get("variant", base.variant)),
                num_classes=int(values.get("num_classes", base.num_classes)),
                form=str(values.get("form", base.form)),
                class_names=names,
                preprocessing=prep,
                extra=extra,
            )
        except (ConfigError, TypeError, ValueError) as e:
            raise CheckpointError(
                f"{where} has invalid model metadata ({e}); re-save or re-export it with fastvit"
            ) from None

    @staticmethod
    def has_metadata(metadata: Mapping[str, str]) -> bool:
        """Whether ``metadata`` was written by fastvit (any version)."""
        return "fastvit_metadata_version" in metadata or "fastvit_version" in metadata

    @classmethod
    def from_model(
        cls,
        model: Any,
        *,
        input_size: int | Sequence[int] | None = None,
        class_names: Sequence[str] | None = None,
    ) -> ModelCard:
        """The card of ``model``: a FastViT's own ``card``, or one read from a timm-style
        ``pretrained_cfg``/``num_classes``. ``input_size``/``class_names`` override it."""
        card = getattr(model, "card", None)
        if not isinstance(card, ModelCard):
            cfg = dict(getattr(model, "pretrained_cfg", None) or {})
            in_chans = _first_conv_in_chans(model)
            card = cls(
                variant=str(cfg.get("architecture", type(model).__name__)),
                num_classes=int(getattr(model, "num_classes", cfg.get("num_classes", 1000))),
                preprocessing=Preprocessing.from_dict(cfg, in_chans=in_chans),
            )
        card = card.with_input_size(input_size)
        return card.with_class_names(class_names) if class_names is not None else card


def _first_conv_in_chans(model: Any) -> int | None:
    from torch import nn

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return int(m.in_channels)
    return None


def _decode(key: str, raw: str, where: str) -> Any:
    """One metadata value. Strings were stored JSON-encoded by version 1 (``'"bicubic"'``)."""
    if key in ("variant", "form", "crop_mode", "interpolation"):
        if raw.startswith('"'):
            try:
                value = json.loads(raw)
                if isinstance(value, str):
                    return value
            except json.JSONDecodeError:
                pass
        return raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        raise CheckpointError(
            f"{where} has malformed '{key}' metadata ({raw[:60]!r}); re-save "
            "or re-export it with fastvit"
        ) from None


__all__ = [
    "CARD_KEYS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INTERPOLATIONS",
    "PREPROCESSING_KEYS",
    "ModelCard",
    "Preprocessing",
]
