"""Model metadata that travels with every exported file.

Preprocessing (input size, crop fraction, interpolation, mean/std) and class names are stored
inside each exported artefact (ONNX ``metadata_props``, a TorchScript extra file, CoreML user
metadata) so ``fastvit predict`` applies exactly what the model was trained with and users
never have to guess. One flat dict with JSON-encoded values is the common format.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from torch import nn

from fastvit.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
METADATA_VERSION = 1
_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")


@dataclass(frozen=True)
class ModelMetadata:
    """What a deployed model needs besides its weights.

    ``input_size`` is ``(channels, height, width)`` of the network input after the centre
    crop; the image is first resized so its shorter side is ``floor(min(H, W) / crop_pct)``.
    """

    variant: str = "unknown"
    num_classes: int = 1000
    input_size: tuple[int, int, int] = (3, 256, 256)
    crop_pct: float = 0.9
    interpolation: str = "bicubic"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    class_names: tuple[str, ...] | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        c, h, w = self.input_size
        if c < 1 or h < 1 or w < 1:
            raise ConfigError(f"invalid input size {self.input_size}; expected (C, H, W) > 0")
        if not 0.0 < self.crop_pct <= 1.0:
            raise ConfigError(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        if self.interpolation not in _INTERPOLATIONS:
            raise ConfigError(f"unknown interpolation {self.interpolation!r}; "
                              f"use one of {', '.join(_INTERPOLATIONS)}")
        if len(self.mean) != c or len(self.std) != c:
            raise ConfigError(f"mean/std have {len(self.mean)}/{len(self.std)} values but the "
                              f"model takes {c} channels; give one value per channel")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ConfigError(f"{len(self.class_names)} class names for a {self.num_classes}-class "
                              "model; give exactly one name per class")

    @property
    def in_chans(self) -> int:
        return self.input_size[0]

    @property
    def resize_size(self) -> int:
        """Shorter-side size the image is resized to before the centre crop."""
        return math.floor(min(self.input_size[1:]) / self.crop_pct)

    def with_input_size(self, size: int | tuple[int, int] | None) -> ModelMetadata:
        """A copy with a new spatial input size (``None`` keeps the current one)."""
        if size is None:
            return self
        h, w = (size, size) if isinstance(size, int) else size
        return replace(self, input_size=(self.input_size[0], int(h), int(w)))

    def with_class_names(self, names: Sequence[str] | None) -> ModelMetadata:
        return replace(self, class_names=None if names is None else tuple(str(n) for n in names))

    def labels(self) -> list[str]:
        """Class names, or the class indices as strings when the model has none."""
        if self.class_names is not None:
            return list(self.class_names)
        return [str(i) for i in range(self.num_classes)]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        d["class_names"] = None if self.class_names is None else list(self.class_names)
        return d

    def to_props(self) -> dict[str, str]:
        """Flat ``str -> str`` map (values JSON-encoded), for ONNX/CoreML/TorchScript metadata."""
        d = self.to_dict()
        extra = d.pop("extra")
        props = {"fastvit_metadata_version": str(METADATA_VERSION)}
        props.update({k: json.dumps(v) for k, v in d.items()})
        props.update({f"extra.{k}": str(v) for k, v in extra.items()})
        return props

    @classmethod
    def from_props(cls, props: Mapping[str, str]) -> ModelMetadata:
        """Inverse of :meth:`to_props`; missing keys take the defaults."""
        kwargs: dict[str, Any] = {}
        extra: dict[str, str] = {}
        names = {f.name for f in cls.__dataclass_fields__.values()} - {"extra"}
        for k, v in props.items():
            if k.startswith("extra."):
                extra[k[len("extra."):]] = v
            elif k in names:
                try:
                    kwargs[k] = json.loads(v)
                except json.JSONDecodeError as e:
                    raise ConfigError(f"metadata field {k!r} is not valid JSON ({e}); "
                                      "re-export the model with fastvit export") from e
        for k in ("input_size", "mean", "std"):
            if k in kwargs:
                kwargs[k] = tuple(kwargs[k])
        if kwargs.get("class_names") is not None:
            kwargs["class_names"] = tuple(str(n) for n in kwargs["class_names"])
        return cls(**kwargs, extra=extra)

    @staticmethod
    def has_props(props: Mapping[str, str]) -> bool:
        return "fastvit_metadata_version" in props


def metadata_from_model(
    model: nn.Module,
    *,
    input_size: int | tuple[int, int] | None = None,
    class_names: Sequence[str] | None = None,
) -> ModelMetadata:
    """Collect :class:`ModelMetadata` from a model's ``variant``/``pretrained_cfg``/``class_names``.

    ``input_size`` and ``class_names`` override what the model carries.
    """
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    num_classes = int(getattr(model, "num_classes", cfg.get("num_classes", 1000)))
    raw = cfg.get("input_size", (3, 256, 256))
    in_size = (3, int(raw), int(raw)) if isinstance(raw, (int, float)) else tuple(raw)
    if len(in_size) == 2:  # (H, W)
        in_size = (3, *in_size)
    in_chans = _model_in_chans(model, default=int(in_size[0]))
    in_size = (in_chans, int(in_size[1]), int(in_size[2]))
    mean = tuple(float(v) for v in cfg.get("mean", IMAGENET_MEAN))
    std = tuple(float(v) for v in cfg.get("std", IMAGENET_STD))
    if len(mean) != in_chans:  # e.g. a 1-channel model with ImageNet defaults: average them
        mean = (sum(mean) / len(mean),) * in_chans
        std = (sum(std) / len(std),) * in_chans
    names = class_names if class_names is not None else getattr(model, "class_names", None)
    meta = ModelMetadata(
        variant=str(getattr(model, "variant", cfg.get("architecture", "unknown"))),
        num_classes=num_classes,
        input_size=in_size,  # type: ignore[arg-type]
        crop_pct=float(cfg.get("crop_pct", 0.9)),
        interpolation=str(cfg.get("interpolation", "bicubic")),
        mean=mean,
        std=std,
    )
    return meta.with_class_names(names).with_input_size(input_size)


def _model_in_chans(model: nn.Module, default: int) -> int:
    """Input channels of the first convolution (what the network really accepts)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return int(m.in_channels)
    return default
