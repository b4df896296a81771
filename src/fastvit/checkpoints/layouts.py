"""FastViT state-dict layouts: detection and pure conversion between them.

Two key layouts exist in the wild, each in two forms:

* ``official`` (apple/ml-fastvit, also our native layout): ``patch_embed.0.rbr_conv.0.conv.weight``,
  a flat ``network.N`` list in which downsampling (``network.N.proj``), positional encodings
  (``network.N.pe``) and block groups (``network.N.J``) alternate, ``conv_exp`` and ``head``.
* ``timm``: ``stem.0.conv_kxk.0.conv.weight``, ``stages.S.{downsample,pos_emb,blocks}``,
  ``final_conv``, ``head.fc``, layer scales as ``*.gamma``.

Forms: ``unfused`` (training form), ``fused`` (the official/timm inference form, which keeps the
ConvFFN BatchNorm, the attention BatchNorm and every layer scale) and ``fused_full`` (our inference
form, official key names, where those are folded as well: ``convffn.conv.reparam_conv``, a
``token_mixer.qkv.bias`` and no layer scales).

Everything here is a pure function of tensors; no model is built. Folding is done in float64 and
cast back to the checkpoint's dtype, so conversions are exact to the last bit or two.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from fastvit.errors import CheckpointError, ConfigError
from fastvit.models.config import StageConfig, get_config, list_models
from fastvit.reparam import fuse

OFFICIAL = "official"
TIMM = "timm"
NATIVE = "fastvit"
UNFUSED = "unfused"
FUSED = "fused"
FUSED_FULL = "fused_full"

# BatchNorm eps of every FastViT BatchNorm (official, timm and ours); checkpoints do not store it.
BN_EPS = 1e-5

# Module-name segments that differ between the layouts (official -> timm).
_SEGMENTS_TO_TIMM = {
    "rbr_conv": "conv_kxk",
    "rbr_scale": "conv_scale",
    "rbr_skip": "identity",
    "lkb_origin": "large_conv",
    "lkb_reparam": "reparam_conv",
    "convffn": "mlp",
}
_SEGMENTS_TO_OFFICIAL = {v: k for k, v in _SEGMENTS_TO_TIMM.items() if k != "lkb_reparam"}
_SE_TO_TIMM = {"reduce": "fc1", "expand": "fc2"}
_SE_TO_OFFICIAL = {v: k for k, v in _SE_TO_TIMM.items()}
_LAYER_SCALES = ("layer_scale", "layer_scale_1", "layer_scale_2")

# Module names that exist only in one form (either layout).
_UNFUSED_MARKERS = frozenset(
    {"rbr_conv", "rbr_scale", "rbr_skip", "lkb_origin", "mixer", "pe"}  # official
    | {"conv_kxk", "conv_scale", "identity", "large_conv", "pos_enc"}  # timm
)
_FUSED_MARKERS = frozenset({"reparam_conv", "lkb_reparam"})

StateDict = dict[str, Tensor]


@dataclass(frozen=True)
class CheckpointInfo:
    """What :func:`detect` found: layout, form, architecture and (if known) the variant name."""

    layout: str  # "official" | "timm"
    form: str  # "unfused" | "fused" | "fused_full"
    variant: str | None
    num_classes: int
    in_chans: int
    stages: tuple[StageConfig, ...]  # the architecture the shapes show, as config data

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(s.depth for s in self.stages)

    @property
    def embed_dims(self) -> tuple[int, ...]:
        return tuple(s.dim for s in self.stages)

    def describe(self) -> str:
        """Short architecture summary used in error messages."""
        mixers = "".join("A" if s.token_mixer == "attention" else "R" for s in self.stages)
        ratios = tuple(
            int(s.mlp_ratio) if float(s.mlp_ratio).is_integer() else s.mlp_ratio
            for s in self.stages
        )
        return (
            f"layers={self.layers}, embed_dims={self.embed_dims}, mlp_ratios={ratios}, "
            f"mixers={mixers}, pos_emb={tuple(int(s.pos_emb) for s in self.stages)}"
        )


# ----------------------------------------------------------------------------------------------
# Unwrapping


def unwrap_state_dict(obj: object) -> StateDict:
    """Return the flat ``name -> tensor`` dict inside a loaded checkpoint.

    Accepts a state dict or a training checkpoint that wraps one under ``state_dict``, ``model``
    or ``state_dict_ema`` (first found, in that order), and strips a ``module.`` (DataParallel)
    or ``_orig_mod.`` (torch.compile) prefix shared by every key.
    """
    for _ in range(4):  # wrappers can nest, e.g. {"model": {"state_dict": ...}}
        if not isinstance(obj, Mapping):
            break
        inner = next(
            (
                obj[k]
                for k in ("state_dict", "model", "state_dict_ema")
                if isinstance(obj.get(k), Mapping)
            ),
            None,
        )
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not obj:
        what = "an empty dict" if isinstance(obj, Mapping) else f"a {type(obj).__name__}"
        raise CheckpointError(
            f"checkpoint holds {what}, not a state dict; pass a state dict or a file saved "
            "with torch.save(model.state_dict())"
        )
    bad = [k for k, v in obj.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(
            f"checkpoint entries are not all tensors ({_few(bad)}); pass the model's state dict "
            "(or a dict wrapping it under 'state_dict', 'model' or 'state_dict_ema')"
        )
    sd: StateDict = {str(k): v for k, v in obj.items()}
    for prefix in ("module.", "_orig_mod."):
        while sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return image_tower(sd)


# MobileCLIP checkpoints hold a whole CLIP model: (prefix of the image tower, its layout).
_CLIP_TOWERS = (
    ("image_encoder.model.", "official MobileCLIP"),  # apple/ml-mobileclip mobileclip_s*.pt
    ("visual.trunk.", "open_clip"),  # open_clip MobileCLIP / MobileCLIP2 (timm trunk)
)


def image_tower(sd: StateDict) -> StateDict:
    """The FastViT image tower of a full MobileCLIP checkpoint (else ``sd`` unchanged).

    Official MobileCLIP files keep the tower under ``image_encoder.model.`` with the CLIP
    projection as a bias-free matrix ``head.proj`` of shape (features, embed_dim), applied as
    ``x @ proj``: it becomes the linear head ``head.weight = proj.T`` with a zero bias.
    open_clip files keep a timm-layout tower under ``visual.trunk.`` (its classifier is the
    projection). The text tower and ``logit_scale`` are left out.
    """
    for prefix, what in _CLIP_TOWERS:
        if not any(k.startswith(prefix) for k in sd):
            continue
        tower = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
        owner = prefix.split(".", 1)[0] + "."
        other = [k for k in sd if k.startswith(owner) and not k.startswith(prefix)]
        if other:
            raise CheckpointError(
                f"{what} checkpoint has image-tower weights outside '{prefix}' "
                f"({_few(other, 3)}) that a FastViT cannot hold; load the tower's weights only"
            )
        proj = tower.pop("head.proj", None)
        if proj is not None:
            if proj.dim() != 2:
                raise CheckpointError(
                    f"'{prefix}head.proj' must be a matrix, got shape {tuple(proj.shape)}"
                )
            tower["head.weight"] = proj.t().contiguous()
            tower["head.bias"] = torch.zeros(proj.shape[1], dtype=proj.dtype)
        return tower
    return sd


# ----------------------------------------------------------------------------------------------
# Layout and form detection


def detect_layout(sd: Mapping[str, Tensor]) -> str:
    """Return ``"official"`` or ``"timm"``; raise CheckpointError for anything else."""
    official = any(k.split(".", 1)[0] in ("patch_embed", "network", "conv_exp") for k in sd)
    timm = any(k.split(".", 1)[0] in ("stem", "stages", "final_conv") for k in sd)
    if official != timm:
        return OFFICIAL if official else TIMM
    what = "mix" if official else "match neither"
    joiner = "and" if official else "nor"
    raise CheckpointError(
        f"unknown checkpoint layout: its keys ({_few(sorted(sd))}) {what} the official FastViT "
        f"layout (patch_embed./network./conv_exp.) {joiner} timm's (stem./stages./final_conv.)"
    )


def detect_form(sd: Mapping[str, Tensor]) -> str:
    """Return ``"unfused"``, ``"fused"`` or ``"fused_full"`` for a state dict of either layout.

    Decided by structure, not by module names: the stem's first block has BatchNorm
    statistics only in training form; a fused checkpoint with BatchNorm statistics or layer
    scales left (the ConvFFN/attention BatchNorms, the layer scales) is the official/timm fused
    form, one without any is ours. A stem fused while the branch modules of some other block
    are still there is a partially reparameterized model, an error.
    """
    stem0 = ("patch_embed.0.", "stem.0.")
    segs = [set(k.split(".")) for k in sd]
    if any(k.startswith(stem0) for k in sd):
        stem_bn = any(k.startswith(stem0) and k.endswith(".running_var") for k in sd)
    else:  # no stem (an incomplete checkpoint): go by the branch modules
        stem_bn = any(s & _UNFUSED_MARKERS for s in segs)
    if stem_bn:
        fused_parts = [k for k, s in zip(sd, segs) if s & _FUSED_MARKERS]
        if fused_parts:
            raise CheckpointError(
                f"checkpoint is partially reparameterized (e.g. {_few(fused_parts, 2)} next to "
                "training-form branches); save it either before or after reparameterizing the "
                "whole model"
            )
        return UNFUSED
    if any(s & _UNFUSED_MARKERS for s in segs):
        raise CheckpointError(
            "checkpoint is partially reparameterized (a fused stem next to training-form "
            f"branches, e.g. {_few([k for k, s in zip(sd, segs) if s & _UNFUSED_MARKERS], 2)}); "
            "save it either before or after reparameterizing the whole model"
        )
    leftovers = any(
        k.endswith(".running_var")
        or k.split(".")[-1] in _LAYER_SCALES
        or (k.endswith(".gamma") and k.split(".")[-2] in _LAYER_SCALES)
        for k in sd
    )
    return FUSED if leftovers else FUSED_FULL


def detect(sd: Mapping[str, Tensor]) -> CheckpointInfo:
    """Detect layout, form, architecture and variant of a (possibly wrapped) state dict.

    ``variant`` is None when the architecture matches none of the registered variants.
    """
    sd = unwrap_state_dict(sd)
    layout = detect_layout(sd)
    form = detect_form(sd)
    off = sd if layout == OFFICIAL else _rename_to_official(sd)
    try:
        stages = _stage_specs(off)
    except CheckpointError:  # incomplete: the caller must name the variant, loading lists the gaps
        stages = ()
    stem = off.get(
        "patch_embed.0.reparam_conv.weight", off.get("patch_embed.0.rbr_conv.0.conv.weight")
    )
    in_chans = int(stem.shape[1]) if stem is not None else 3
    head = off.get("head.weight")
    num_classes = int(head.shape[0]) if head is not None else 0
    partial = CheckpointInfo(layout, form, None, num_classes, in_chans, stages)
    return CheckpointInfo(layout, form, match_variant(partial), num_classes, in_chans, stages)


def _network_parts(keys: Iterable[str]) -> dict[int, tuple[int, str]]:
    """Map each official ``network.N`` index to (stage index, "downsample"|"pos_emb"|"blocks").

    The official model is a flat list: stage s is ``[PatchEmbed if s > 0] [RepCPE] blocks``.
    """
    kinds: dict[int, str] = {}
    for k in keys:
        m = re.match(r"network\.(\d+)\.([^.]+)", k)
        if not m:
            continue
        sub = m.group(2)
        kind = (
            "downsample"
            if sub == "proj"
            else "pos_emb"
            if sub in ("pe", "reparam_conv")
            else "blocks"
        )
        kinds[int(m.group(1))] = kind
    parts: dict[int, tuple[int, str]] = {}
    stage, seen = 0, set()
    for idx in sorted(kinds):
        kind = kinds[idx]
        # a new stage starts at a downsample, or when this stage already has this part / its blocks
        if seen and (kind == "downsample" or kind in seen or "blocks" in seen):
            stage, seen = stage + 1, set()
        seen.add(kind)
        parts[idx] = (stage, kind)
    return parts


def _stage_specs(off: Mapping[str, Tensor]) -> tuple[StageConfig, ...]:
    parts = _network_parts(off)
    specs = []
    for stage in sorted({s for s, _ in parts.values()}):
        idx = {kind: i for i, (s, kind) in parts.items() if s == stage}
        if "blocks" not in idx:
            raise CheckpointError(f"checkpoint has no blocks for stage {stage}; it is incomplete")
        b = f"network.{idx['blocks']}."
        depth = 1 + max(int(k[len(b) :].split(".", 1)[0]) for k in off if k.startswith(b))
        fc1 = off.get(b + "0.convffn.fc1.weight")
        fc2 = off.get(b + "0.convffn.fc2.weight")
        if fc1 is None or fc2 is None:
            raise CheckpointError(
                f"checkpoint lacks '{b}0.convffn.fc1/fc2' weights; it is incomplete"
            )
        dim = int(fc2.shape[0])
        attn = (b + "0.token_mixer.qkv.weight") in off
        try:
            spec = StageConfig(
                depth=depth,
                dim=dim,
                mlp_ratio=int(fc1.shape[0]) / dim,
                token_mixer="attention" if attn else "repmixer",
                pos_emb="pos_emb" in idx,
                downsample="downsample" in idx,
                se="downsample" in idx
                and f"network.{idx['downsample']}.proj.0.se.reduce.weight" in off,
            )
        except ConfigError as e:
            raise CheckpointError(f"checkpoint stage {stage} is not a FastViT stage: {e}") from None
        specs.append(spec)
    if not specs:
        raise CheckpointError(
            "checkpoint has no 'network.*' blocks; it is not a full FastViT model"
        )
    return tuple(specs)


def match_variant(info: CheckpointInfo) -> str | None:
    """Name of the registered variant whose configuration matches ``info``, else None."""
    for name, sig in _variant_signatures().items():
        if sig == _signature(info):
            return name
    return None


def _signature(info: CheckpointInfo) -> tuple:
    return tuple(
        (s.depth, s.dim, float(s.mlp_ratio), s.token_mixer, s.pos_emb, s.downsample, s.se)
        for s in info.stages
    )


def _variant_signatures() -> dict[str, tuple]:
    return {
        name: _signature(CheckpointInfo(OFFICIAL, UNFUSED, name, 0, 3, get_config(name).stages))
        for name in list_models()
    }


def variant_description(name: str) -> str:
    """Architecture summary of a registered variant, in the format of CheckpointInfo.describe."""
    return CheckpointInfo(OFFICIAL, UNFUSED, name, 0, 3, get_config(name).stages).describe()


# ----------------------------------------------------------------------------------------------
# Key renaming between the layouts (shape-preserving)


def _rename_to_timm(sd: Mapping[str, Tensor]) -> StateDict:
    parts = _network_parts(sd)
    out: StateDict = {}
    for key, value in sd.items():
        segs = key.split(".")
        if segs[0] == "patch_embed":
            segs[0] = "stem"
        elif segs[0] == "conv_exp":
            segs[0] = "final_conv"
        elif segs[0] == "head":
            segs = ["head", "fc", *segs[1:]]
        elif segs[0] == "dist_head":
            segs[0] = "head_dist"
        elif segs[0] == "network" and len(segs) > 2:
            stage, kind = parts[int(segs[1])]
            if kind == "downsample":  # network.N.proj.* -> stages.S.downsample.proj.*
                segs = ["stages", str(stage), "downsample", *segs[2:]]
            elif kind == "pos_emb":  # network.N.pe.* -> pos_emb.pos_enc.*; reparam_conv stays
                rest = ["pos_enc", *segs[3:]] if segs[2] == "pe" else segs[2:]
                segs = ["stages", str(stage), "pos_emb", *rest]
            else:
                segs = ["stages", str(stage), "blocks", *segs[2:]]
        for i, s in enumerate(segs):
            segs[i] = _SEGMENTS_TO_TIMM.get(s, s)
            if i > 0 and segs[i - 1] == "se":
                segs[i] = _SE_TO_TIMM.get(s, s)
        if segs[-1] in _LAYER_SCALES:
            segs.append("gamma")
        out[".".join(segs)] = value
    return out


def _rename_to_official(sd: Mapping[str, Tensor]) -> StateDict:
    # assign consecutive network indices: per stage [downsample] [pos_emb] blocks
    present: dict[int, set[str]] = {}
    for k in sd:
        m = re.match(r"stages\.(\d+)\.(downsample|pos_emb|blocks)\.", k)
        if m:
            present.setdefault(int(m.group(1)), set()).add(m.group(2))
    net_idx: dict[tuple[int, str], int] = {}
    n = 0
    for stage in sorted(present):
        for kind in ("downsample", "pos_emb", "blocks"):
            if kind in present[stage]:
                net_idx[(stage, kind)] = n
                n += 1
    out: StateDict = {}
    for key, value in sd.items():
        segs = key.split(".")
        if segs[-1] == "gamma" and len(segs) > 1 and segs[-2] in _LAYER_SCALES:
            segs = segs[:-1]
        if segs[0] == "stem":
            segs[0] = "patch_embed"
        elif segs[0] == "final_conv":
            segs[0] = "conv_exp"
        elif segs[0] == "head" and len(segs) > 2 and segs[1] == "fc":
            segs = ["head", *segs[2:]]
        elif segs[0] == "head_dist":
            segs[0] = "dist_head"
        elif segs[0] == "stages" and len(segs) > 3 and (int(segs[1]), segs[2]) in net_idx:
            idx = str(net_idx[(int(segs[1]), segs[2])])
            rest = segs[3:]
            if segs[2] == "pos_emb" and rest[0] == "pos_enc":
                rest = ["pe", *rest[1:]]
            elif segs[2] == "downsample" and rest[:3] == ["proj", "0", "reparam_conv"]:
                rest = ["proj", "0", "lkb_reparam", *rest[3:]]
            segs = ["network", idx, *rest]
        for i, s in enumerate(segs):
            segs[i] = _SEGMENTS_TO_OFFICIAL.get(s, s)
            if i > 0 and segs[i - 1] == "se":
                segs[i] = _SE_TO_OFFICIAL.get(s, s)
        out[".".join(segs)] = value
    return out


# ----------------------------------------------------------------------------------------------
# Folding (official fused -> fully fused) and unfolding (fully fused -> official fused)


def _block_prefixes(off: Mapping[str, Tensor]) -> list[str]:
    return sorted({m.group(0) for k in off if (m := re.match(r"network\.\d+\.\d+\.", k))})


def _pop_bn_affine(sd: StateDict, prefix: str) -> tuple[Tensor, Tensor] | None:
    """Remove the BatchNorm ``prefix{weight,bias,running_*,num_batches_tracked}`` from ``sd``
    and return its ``(a, c)`` (``bn(x) = a*x + c``) in float64; None (``sd`` untouched) when
    its entries are not all there. Files do not store eps: FastViT's :data:`BN_EPS` is used."""
    if not all(prefix + k in sd for k in ("weight", "bias", "running_mean", "running_var")):
        return None
    t = {k: sd.pop(prefix + k).double() for k in ("weight", "bias", "running_mean", "running_var")}
    sd.pop(prefix + "num_batches_tracked", None)
    return fuse.affine_from_stats(
        t["running_mean"], t["running_var"], t["weight"], t["bias"], BN_EPS
    )


def _set_folded(sd: StateDict, prefix: str, like: Tensor, w: Tensor, b: Tensor) -> None:
    sd[prefix + "weight"], sd[prefix + "bias"] = w.to(like.dtype), b.to(like.dtype)


def _fold_block(sd: StateDict, p: str) -> None:
    """One official-layout *fused* block at prefix ``p`` -> our fully fused block, in ``sd``.

    ConvFFN conv+BN -> ``convffn.conv.reparam_conv`` (W' = a W, b' = c); the layer scales
    ``layer_scale``/``layer_scale_2`` scale the rows of ``convffn.fc2`` and ``layer_scale_1``
    those of ``token_mixer.proj``; the attention BatchNorm ``norm`` (x -> a*x + c) folds into
    qkv: W' = W diag(a), b' = W c (+ b); a LayerNorm ``norm`` folds its affine part
    (a, c) = (weight, bias) the same way. Float64, cast back to the checkpoint's dtype.
    """
    conv = p + "convffn.conv."
    if conv + "conv.weight" in sd and (affine := _pop_bn_affine(sd, conv + "bn.")) is not None:
        w = sd.pop(conv + "conv.weight")
        b = sd.pop(conv + "conv.bias", None)
        kernel, bias = fuse.scale_shift_conv(w.double(), None if b is None else b.double(), *affine)
        _set_folded(sd, conv + "reparam_conv.", w, kernel, bias)
    for scale_key, layer in (
        ("layer_scale", "convffn.fc2."),
        ("layer_scale_2", "convffn.fc2."),
        ("layer_scale_1", "token_mixer.proj."),
    ):
        if p + scale_key in sd and p + layer + "weight" in sd:
            scale = sd.pop(p + scale_key).double()
            w, b = sd[p + layer + "weight"], sd.get(p + layer + "bias")
            _set_folded(
                sd,
                p + layer,
                w,
                *fuse.scale_output(w.double(), None if b is None else b.double(), scale),
            )
    qkv, norm = p + "token_mixer.qkv.", p + "norm."
    affine = _pop_bn_affine(sd, norm) if qkv + "weight" in sd else None
    if affine is None and qkv + "weight" in sd and norm + "weight" in sd and norm + "bias" in sd:
        # a LayerNorm: only its affine part folds (an affine-free LayerNorm stays in the model)
        affine = (sd.pop(norm + "weight").double(), sd.pop(norm + "bias").double())
    if affine is not None:
        w, b = sd[qkv + "weight"], sd.get(qkv + "bias")
        _set_folded(
            sd,
            qkv,
            w,
            *fuse.fold_affine_into_linear_input(
                w.double(), None if b is None else b.double(), *affine
            ),
        )


def fold_to_full(off: Mapping[str, Tensor]) -> StateDict:
    """Official-layout *fused* state dict -> our fully fused form (same outputs).

    Only the entries that the official fused form keeps and ours folds change (see
    :func:`_fold_block`); the math is :mod:`fastvit.reparam.fuse`, the same the blocks'
    ``reparameterize()`` uses.
    """
    sd: StateDict = dict(off)
    for p in _block_prefixes(off):
        _fold_block(sd, p)
    return sd


def _identity_ln(p: str, shift: Tensor, out: StateDict) -> None:
    """LayerNorm affine at prefix ``p`` computing n(x) + shift (weight 1)."""
    out[p + "weight"] = torch.ones_like(shift)
    out[p + "bias"] = shift


def _identity_bn(p: str, shift: Tensor, out: StateDict) -> None:
    """BatchNorm at prefix ``p`` computing x + shift in eval mode (weight 1, mean 0, var 1-eps)."""
    out[p + "weight"] = torch.ones_like(shift)
    out[p + "bias"] = shift
    out[p + "running_mean"] = torch.zeros_like(shift)
    out[p + "running_var"] = torch.full_like(shift, 1.0 - BN_EPS)
    out[p + "num_batches_tracked"] = torch.tensor(0, dtype=torch.long, device=shift.device)


def unfold_from_full(off: Mapping[str, Tensor], norm_layer: str = "batchnorm") -> StateDict:
    """Our fully fused form -> the official fused layout (same outputs).

    Emits identity BatchNorms and unit layer scales; with ``norm_layer="layernorm2d"`` the
    attention norm becomes a LayerNorm affine (weight 1, bias beta). The attention norm's shift
    beta is recovered from the folded qkv bias by solving W' beta = b' (least squares, float64):
    exact when the bias came from folding a norm, which is the only way our form gets one.
    """
    sd: StateDict = dict(off)
    for p in _block_prefixes(off):
        conv = p + "convffn.conv."
        if conv + "reparam_conv.weight" in sd:
            sd[conv + "conv.weight"] = sd.pop(conv + "reparam_conv.weight")
            _identity_bn(conv + "bn.", sd.pop(conv + "reparam_conv.bias"), sd)
        fc2 = sd[p + "convffn.fc2.weight"]
        dim, like = fc2.shape[0], {"dtype": fc2.dtype, "device": fc2.device}
        attention = p + "token_mixer.qkv.weight" in sd
        scales = ("layer_scale_1", "layer_scale_2") if attention else ("layer_scale",)
        for ls_key in scales:
            if p + ls_key not in sd:
                sd[p + ls_key] = torch.ones(dim, 1, 1, **like)
        if attention and p + "norm.weight" not in sd:
            w = sd[p + "token_mixer.qkv.weight"]
            b = sd.pop(p + "token_mixer.qkv.bias", None)
            if b is None:
                beta = torch.zeros(dim, dtype=torch.float64, device=fc2.device)
            else:
                beta = torch.linalg.lstsq(w.double(), b.double().unsqueeze(1)).solution.squeeze(1)
                resid = (w.double() @ beta - b.double()).abs().max().item()
                if resid > 1e-4 * max(1.0, b.double().abs().max().item()):
                    raise CheckpointError(
                        f"'{p}token_mixer.qkv.bias' is not the fold of a BatchNorm "
                        f"(residual {resid:.2e}); "
                        "this checkpoint cannot be expressed in the official/timm fused layout"
                    )
            if norm_layer == "layernorm2d":
                _identity_ln(p + "norm.", beta.to(fc2.dtype), sd)
            else:
                _identity_bn(p + "norm.", beta.to(fc2.dtype), sd)
    return sd


# ----------------------------------------------------------------------------------------------
# Public conversion


def to_official_layout(sd: Mapping[str, Tensor]) -> StateDict:
    """Any supported state dict -> the same form in the official key layout (pure rename)."""
    sd = unwrap_state_dict(sd)
    return dict(sd) if detect_layout(sd) == OFFICIAL else _rename_to_official(sd)


def convert_state_dict(
    sd: Mapping[str, Tensor], to: str = "timm", *, norm_layer: str | None = None
) -> StateDict:
    """Convert a FastViT state dict between layouts, without building a model.

    ``to="timm"`` / ``to="official"``: the layout of that implementation, same form as the input
    (our fully fused form becomes their fused form, with identity BatchNorms / unit layer scales, so
    it loads ``strict=True`` into their inference models with the same outputs). ``to="fastvit"``:
    our native form (official keys; their fused forms get folded into our fully fused one).
    Wrapped checkpoints and ``module.`` prefixes are accepted, and full MobileCLIP checkpoints
    give their image tower. ``norm_layer`` (``"batchnorm"``/``"layernorm2d"``) is the attention
    norm that our fully fused form leaves affine-free; by default that of the detected variant.
    Tensors are shared, not copied, where they are unchanged.
    """
    if to not in (TIMM, OFFICIAL, NATIVE):
        raise CheckpointError(f"unknown target layout {to!r}; use 'timm', 'official' or 'fastvit'")
    off = to_official_layout(sd)
    form = detect_form(off)
    if to == NATIVE:
        return fold_to_full(off) if form == FUSED else off
    if form == FUSED_FULL:
        if norm_layer is None:
            variant = detect(off).variant
            norm_layer = get_config(variant).norm_layer if variant else "batchnorm"
        off = unfold_from_full(off, norm_layer)
    return off if to == OFFICIAL else _rename_to_timm(off)


def _few(items: Iterable[str], n: int = 5) -> str:
    items = list(items)
    shown = ", ".join(f"'{i}'" for i in items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")
