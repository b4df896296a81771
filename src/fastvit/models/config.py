"""Architecture as data: a per-stage config schema, one entry per FastViT variant.

Every variant of the family — the seven ImageNet FastViTs and the MobileCLIP image towers
(``fastvit_mci0..2``: MobileCLIP, ``fastvit_mci3/4``: MobileCLIP2) — is one
:class:`FastViTConfig` value; :class:`~fastvit.models.FastViT` builds any of them, and a
user's own config, with the same code. Configs round-trip through JSON
(:meth:`FastViTConfig.to_json` / :meth:`FastViTConfig.from_json`) and travel in saved
checkpoints, so a custom model reloads without code.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from fastvit.card import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, Preprocessing
from fastvit.errors import ConfigError

#: How the official ImageNet weights are evaluated (256 px, crop 0.9, bicubic, ImageNet stats).
IMAGENET_EVAL = Preprocessing()
#: The preprocessing fields of the older flat config form (read into ``preprocessing``).
_FLAT_PREPROCESSING = ("input_size", "crop_pct", "interpolation", "mean", "std")

TOKEN_MIXERS = ("repmixer", "attention")
NORM_LAYERS = ("batchnorm", "layernorm2d")
HEADS = ("classifier", "clip")


@dataclass(frozen=True)
class StageConfig:
    """One stage: ``[downsample] [positional encoding] depth x block``.

    ``downsample``: a stride-``down_stride`` large-kernel PatchEmbed before the blocks (needed
    whenever the width changes); ``se``: squeeze-excite in that PatchEmbed's large-kernel conv
    (MobileCLIP); ``pos_emb``: a RepCPE (7x7 depthwise conditional positional encoding);
    ``token_mixer``: ``"repmixer"`` or ``"attention"``.
    """

    depth: int
    dim: int
    mlp_ratio: float = 3.0
    token_mixer: str = "repmixer"
    pos_emb: bool = False
    downsample: bool = True
    se: bool = False

    def __post_init__(self) -> None:
        if int(self.depth) < 1 or int(self.dim) < 1:
            raise ConfigError(
                f"stage depth and dim must be >= 1, got depth={self.depth}, dim={self.dim}"
            )
        if not float(self.mlp_ratio) > 0:
            raise ConfigError(f"mlp_ratio must be positive, got {self.mlp_ratio}")
        if self.token_mixer not in TOKEN_MIXERS:
            raise ConfigError(
                f"unknown token mixer '{self.token_mixer}'; use one of {', '.join(TOKEN_MIXERS)}"
            )
        if self.se and not self.downsample:
            raise ConfigError("se=True needs downsample=True (SE sits in the downsampling conv)")


@dataclass(frozen=True)
class FastViTConfig:
    """Everything that distinguishes one FastViT variant from another.

    Architecture: ``stages`` (see :class:`StageConfig`); ``norm_layer`` of the attention blocks
    (``"batchnorm"`` folds completely; ``"layernorm2d"`` keeps an affine-free LayerNorm when
    fused); ``lkc_apply_act`` applies the activation after the large-kernel downsampling conv
    (the original FastViT code computes and discards it, the published ImageNet weights depend
    on that); ``stem_scale_branch`` gives the stem's 3x3 MobileOne blocks their 1x1 branch;
    ``head``: ``"classifier"`` (ImageNet logits) or ``"clip"`` (a projection to a CLIP
    embedding of ``num_classes`` dims; official checkpoints store it as ``head.proj``).
    ``num_classes`` is the default number of outputs. ``drop_path_rate`` is the official
    training recipe's value (the model itself defaults to 0 unless asked). ``preprocessing`` is
    how the official weights were evaluated (for 3-channel input; a model adapts it to its
    ``in_chans``).
    """

    name: str
    stages: tuple[StageConfig, ...]
    norm_layer: str = "batchnorm"
    norm_eps: float = 1e-5
    lkc_apply_act: bool = False
    stem_scale_branch: bool = True
    head: str = "classifier"
    num_classes: int = 1000
    layer_scale_init_value: float = 1e-5
    drop_path_rate: float = 0.0
    repmixer_kernel_size: int = 3
    pos_emb_kernel_size: int = 7
    down_patch_size: int = 7
    down_stride: int = 2
    cls_ratio: float = 2.0
    preprocessing: Preprocessing = IMAGENET_EVAL

    def __post_init__(self) -> None:
        stages = tuple(s if isinstance(s, StageConfig) else StageConfig(**s) for s in self.stages)
        object.__setattr__(self, "stages", stages)
        if isinstance(self.preprocessing, dict):
            object.__setattr__(self, "preprocessing", Preprocessing.from_dict(self.preprocessing))
        if not stages:
            raise ConfigError("a FastViT config needs at least one stage")
        for i in range(1, len(stages)):
            if stages[i].dim != stages[i - 1].dim and not stages[i].downsample:
                raise ConfigError(
                    f"stage {i} changes width ({stages[i - 1].dim} -> "
                    f"{stages[i].dim}) and so needs downsample=True"
                )
        if stages[0].downsample or stages[0].se:
            raise ConfigError(
                "stage 0 follows the stem and cannot downsample; set downsample=False for it"
            )
        if self.norm_layer not in NORM_LAYERS:
            raise ConfigError(
                f"unknown norm_layer '{self.norm_layer}'; use one of {', '.join(NORM_LAYERS)}"
            )
        if self.head not in HEADS:
            raise ConfigError(f"unknown head '{self.head}'; use one of {', '.join(HEADS)}")
        if self.num_classes < 0:
            raise ConfigError(f"num_classes must be >= 0, got {self.num_classes}")
        for k in ("repmixer_kernel_size", "pos_emb_kernel_size", "down_patch_size"):
            if getattr(self, k) % 2 == 0 or getattr(self, k) < 1:
                raise ConfigError(f"{k} must be a positive odd number, got {getattr(self, k)}")

    # ----------------------------------------------------------- per-stage views
    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(s.depth for s in self.stages)

    @property
    def embed_dims(self) -> tuple[int, ...]:
        return tuple(s.dim for s in self.stages)

    @property
    def mlp_ratios(self) -> tuple[float, ...]:
        return tuple(s.mlp_ratio for s in self.stages)

    @property
    def token_mixers(self) -> tuple[str, ...]:
        return tuple(s.token_mixer for s in self.stages)

    @property
    def pos_embs(self) -> tuple[bool, ...]:
        return tuple(s.pos_emb for s in self.stages)

    @property
    def downsamples(self) -> tuple[bool, ...]:
        return tuple(s.downsample for s in self.stages)

    @property
    def reductions(self) -> tuple[int, ...]:
        """Output stride of each stage (the stem downsamples by 4)."""
        out, r = [], 4
        for s in self.stages:
            r *= self.down_stride if s.downsample else 1
            out.append(r)
        return tuple(out)

    # ----------------------------------------------------------- (de)serialization
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists); inverse of :meth:`from_dict`."""
        d = asdict(self)
        d["stages"] = [asdict(s) for s in self.stages]
        return json.loads(json.dumps(d))

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, d: dict[str, Any], name: str | None = None) -> FastViTConfig:
        """Config from :meth:`to_dict` output; unknown or wrong-typed fields are a ConfigError.

        Also reads the older flat form (``layers``, ``embed_dims``, ``mlp_ratios``,
        ``token_mixers``, ``pos_embs`` lists: four stages, downsampling before stages 1-3).
        ``name`` is used when ``d`` has none.
        """
        if not isinstance(d, dict):
            raise ConfigError(f"a FastViT config must be a JSON object, got {type(d).__name__}")
        d = _from_flat(d)
        if name is not None:
            d.setdefault("name", name)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown FastViT config fields {unknown}; known: {sorted(known)}")
        d = dict(d)
        stage_keys = {f.name for f in fields(StageConfig)}
        stages = d.get("stages")
        if not isinstance(stages, list | tuple):
            raise ConfigError("a FastViT config needs 'stages', a list of stage objects")
        try:
            parsed = []
            for i, s in enumerate(stages):
                if not isinstance(s, dict) or set(s) - stage_keys:
                    raise ConfigError(
                        f"stage {i} must be an object with fields from "
                        f"{sorted(stage_keys)}, got {s!r}"
                    )
                parsed.append(StageConfig(**s))
            d["stages"] = tuple(parsed)
            if "preprocessing" in d:
                d["preprocessing"] = Preprocessing.from_dict(d["preprocessing"])
            return cls(**d)
        except ConfigError:
            raise
        except (TypeError, ValueError) as e:  # missing fields, wrong value types
            raise ConfigError(f"invalid FastViT config: {e}") from None

    @classmethod
    def from_json(cls, text: str) -> FastViTConfig:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise ConfigError(f"FastViT config is not valid JSON ({e})") from None

    def replace(self, **changes: Any) -> FastViTConfig:
        """A copy with ``changes`` applied (a custom variant)."""
        return replace(self, **changes)


_FLAT = ("layers", "embed_dims", "mlp_ratios", "token_mixers", "pos_embs")


def _from_flat(d: dict[str, Any]) -> dict[str, Any]:
    """The older flat config form (per-stage lists) -> ``stages`` entries."""
    d = dict(d)
    flat_prep = {k: d.pop(k) for k in _FLAT_PREPROCESSING if k in d}
    if flat_prep:
        d["preprocessing"] = {**flat_prep, **d.get("preprocessing", {})}
    if "stages" in d or "layers" not in d:
        return d
    try:
        depths = list(d.pop("layers"))
        n = len(depths)
        dims = list(d.pop("embed_dims"))
        ratios = list(d.pop("mlp_ratios", [3.0] * n))
        mixers = list(d.pop("token_mixers", ["repmixer"] * n))
        pos = list(d.pop("pos_embs", [False] * n))
    except (KeyError, TypeError) as e:
        raise ConfigError(
            f"incomplete flat FastViT config ({e}); give layers and embed_dims"
        ) from None
    if not all(len(v) == n for v in (dims, ratios, mixers, pos)):
        raise ConfigError(
            "flat FastViT config lists (layers, embed_dims, mlp_ratios, "
            "token_mixers, pos_embs) must have one entry per stage"
        )
    d["stages"] = [
        dict(
            depth=depths[i],
            dim=dims[i],
            mlp_ratio=float(ratios[i]),
            token_mixer=mixers[i],
            pos_emb=bool(pos[i]),
            downsample=i > 0,
        )
        for i in range(n)
    ]
    return d


def _stages(depths, dims, ratios, mixers="RRRA", pos="---P", down=None, se="----"):
    down = down or (False,) + (True,) * (len(depths) - 1)
    return tuple(
        StageConfig(
            d, w, float(r), "attention" if m == "A" else "repmixer", p == "P", bool(ds), s == "S"
        )
        for d, w, r, m, p, ds, s in zip(depths, dims, ratios, mixers, pos, down, se)
    )


_W = (64, 128, 256, 512)
_R3, _R4 = (3,) * 4, (4,) * 4
_CROP95 = Preprocessing(crop_pct=0.95)
_MCLIP = dict(
    lkc_apply_act=True,
    head="clip",
    num_classes=512,
    preprocessing=Preprocessing(crop_pct=0.95, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)),
)
_MCLIP2 = dict(
    _MCLIP,
    norm_layer="layernorm2d",
    stem_scale_branch=False,
    num_classes=768,
    preprocessing=Preprocessing(crop_pct=0.95, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD),
)
_FIVE = dict(mixers="RRRAA", pos="---PP", down=(False, True, True, True, True), se="-----")

VARIANTS: dict[str, FastViTConfig] = {
    c.name: c
    for c in (
        FastViTConfig("fastvit_t8", _stages((2, 2, 4, 2), (48, 96, 192, 384), _R3, "RRRR", "----")),
        FastViTConfig("fastvit_t12", _stages((2, 2, 6, 2), _W, _R3, "RRRR", "----")),
        FastViTConfig("fastvit_s12", _stages((2, 2, 6, 2), _W, _R4, "RRRR", "----")),
        FastViTConfig("fastvit_sa12", _stages((2, 2, 6, 2), _W, _R4), drop_path_rate=0.1),
        FastViTConfig("fastvit_sa24", _stages((4, 4, 12, 4), _W, _R4), drop_path_rate=0.1),
        FastViTConfig(
            "fastvit_sa36",
            _stages((6, 6, 18, 6), _W, _R4),
            layer_scale_init_value=1e-6,
            drop_path_rate=0.2,
            preprocessing=_CROP95,
        ),
        FastViTConfig(
            "fastvit_ma36",
            _stages((6, 6, 18, 6), (76, 152, 304, 608), _R4),
            layer_scale_init_value=1e-6,
            drop_path_rate=0.35,
            preprocessing=_CROP95,
        ),
        # MobileCLIP image towers (Vasu et al., CVPR 2024): SE in the stage-3/4 downsampling.
        FastViTConfig("fastvit_mci0", _stages((2, 6, 10, 2), _W, _R3, se="--SS"), **_MCLIP),
        FastViTConfig("fastvit_mci1", _stages((4, 12, 20, 4), _W, _R3, se="--SS"), **_MCLIP),
        FastViTConfig(
            "fastvit_mci2", _stages((4, 12, 24, 4), (80, 160, 320, 640), _R3, se="--SS"), **_MCLIP
        ),
        # MobileCLIP2 (2025): five stages, LayerNorm2d attention in the last two.
        FastViTConfig(
            "fastvit_mci3",
            _stages((2, 12, 24, 4, 2), (96, 192, 384, 768, 1536), (4,) * 5, **_FIVE),
            **_MCLIP2,
        ),
        FastViTConfig(
            "fastvit_mci4",
            _stages((2, 12, 24, 4, 4), (128, 256, 512, 1024, 2048), (4,) * 5, **_FIVE),
            **_MCLIP2,
        ),
    )
}


def list_models() -> list[str]:
    """Names of the available variants."""
    return list(VARIANTS)


def get_config(name: str | FastViTConfig) -> FastViTConfig:
    """The config of variant ``name`` (``ConfigError`` listing the valid names otherwise).

    A :class:`FastViTConfig` is returned as is (a custom architecture).
    """
    if isinstance(name, FastViTConfig):
        return name
    try:
        return VARIANTS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown model '{name}'; choose one of: {', '.join(VARIANTS)}") from None
