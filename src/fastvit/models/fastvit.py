"""The FastViT network (Vasu et al., "FastViT: A Fast Hybrid Vision Transformer using
Structural Reparameterization", ICCV 2023) and its builder.

Module names follow the official implementation so official checkpoints load without key
conversion: ``patch_embed`` (the stem), ``network`` (a flat list of stages interleaved with
downsampling and positional-encoding modules), ``conv_exp`` + ``head`` (the classifier).
Stage boundaries are derived from the config at build time (``stage_ends``), not hard-coded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from timm.layers import LayerNorm2d, trunc_normal_
from timm.models._features import FeatureInfo, feature_take_indices
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from fastvit.card import ModelCard, Preprocessing
from fastvit.errors import ConfigError
from fastvit.layers.mobileone import MobileOneBlock, RepStem
from fastvit.models.blocks import AttentionBlock, PatchEmbed, RepCPE, RepMixerBlock
from fastvit.models.config import FastViTConfig, get_config
from fastvit.reparam.base import ReparamContainer


def norm_layer_class(name: str, eps: float = 1e-5) -> type[nn.Module]:
    """The attention blocks' norm layer class for a config's ``norm_layer`` name."""
    if name == "batchnorm":
        return partial(nn.BatchNorm2d, eps=eps)  # type: ignore[return-value]
    if name == "layernorm2d":
        return partial(LayerNorm2d, eps=eps)  # type: ignore[return-value]
    raise ConfigError(f"unknown norm_layer '{name}'; use 'batchnorm' or 'layernorm2d'")


def _block_drop_path_rates(layers: Sequence[int], rate: float) -> list[list[float]]:
    """Drop-path rate per block, rising linearly over all blocks (official schedule)."""
    total = sum(layers)
    rates, start = [], 0
    for depth in layers:
        rates.append([rate * (start + j) / max(total - 1, 1) for j in range(depth)])
        start += depth
    return rates


def _check_global_pool(global_pool: str, num_classes: int) -> None:
    if global_pool not in ("avg", ""):
        raise ConfigError(f"global_pool must be 'avg' or '' (no pooling), got {global_pool!r}")
    if global_pool == "" and num_classes > 0:
        raise ConfigError("global_pool='' (unpooled features) needs num_classes=0")


class FastViT(ReparamContainer):
    """FastViT classifier / backbone built from a :class:`FastViTConfig`.

    ``features_only=True`` drops the classifier and makes ``forward`` return the stage
    outputs selected by ``out_indices`` (strides 4, 8, 16, 32), described by
    ``feature_info``.

    ``preprocessing`` (a :class:`~fastvit.card.Preprocessing`) and ``class_names`` describe the
    inputs and outputs; ``card`` bundles them with the variant, form and class count, and
    ``pretrained_cfg`` is the timm-style dict derived from the card.
    """

    # properties TorchScript must not compile (they build Python objects or are derived)
    __jit_unused_properties__ = [  # noqa: RUF012
        "card",
        "pretrained_cfg",
        "default_cfg",
        "inference_mode",
    ]

    def __init__(
        self,
        cfg: FastViTConfig | str,
        num_classes: int | None = None,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        inference_mode: bool = False,
        features_only: bool = False,
        out_indices: Sequence[int] | None = None,
        act_layer: type[nn.Module] = nn.GELU,
        norm_layer: type[nn.Module] | None = None,
        use_layer_scale: bool = True,
        layer_scale_init_value: float | None = None,
        lkc_apply_act: bool | None = None,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        cfg = get_config(cfg)
        if num_classes is None:
            num_classes = cfg.num_classes
        _check_global_pool(global_pool, num_classes)
        if num_classes < 0:
            raise ConfigError(f"num_classes must be >= 0, got {num_classes}")
        if in_chans < 1:
            raise ConfigError(f"in_chans must be >= 1, got {in_chans}")
        n_stages = len(cfg.stages)
        if out_indices is None:
            out_indices = tuple(range(n_stages))
        bad = [i for i in out_indices if not -n_stages <= int(i) < n_stages]
        if bad:
            raise ConfigError(f"out_indices {bad} out of range for {n_stages} stages")
        out_indices = tuple(int(i) % n_stages for i in out_indices)
        if features_only and not out_indices:
            raise ConfigError(f"features_only needs at least one out index in 0..{n_stages - 1}")
        ls_init = (
            cfg.layer_scale_init_value
            if layer_scale_init_value is None
            else (layer_scale_init_value)
        )
        if norm_layer is None:
            norm_layer = norm_layer_class(cfg.norm_layer, cfg.norm_eps)
        if lkc_apply_act is None:
            lkc_apply_act = cfg.lkc_apply_act

        self.cfg = cfg
        self.variant = cfg.name
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.features_only = features_only
        self.out_indices = out_indices
        self.grad_checkpointing = False
        self.global_pool = global_pool
        self.class_names: list[str] | None = None
        self.preprocessing = cfg.preprocessing.with_in_chans(in_chans)
        # where the weights come from (tag/url/hf_hub_id/license): set by the pretrained
        # factory (fastvit.create_model / load_model); a bare builder reports none
        self._pretrained_source = {}

        self.patch_embed = RepStem(
            in_chans,
            cfg.stages[0].dim,
            inference_mode,
            act_layer,
            use_scale_branch=cfg.stem_scale_branch,
        )

        network: list[nn.Module] = []
        stage_ends: list[int] = []
        feature_info: list[dict] = []
        dpr = _block_drop_path_rates(cfg.layers, drop_path_rate)
        prev_dim = cfg.stages[0].dim
        for i, (st, reduction) in enumerate(zip(cfg.stages, cfg.reductions)):
            dim = st.dim
            if st.downsample:
                network.append(
                    PatchEmbed(
                        cfg.down_patch_size,
                        cfg.down_stride,
                        prev_dim,
                        dim,
                        inference_mode,
                        act_layer,
                        lkc_apply_act,
                        use_se=st.se,
                    )
                )
            if st.pos_emb:
                k = cfg.pos_emb_kernel_size
                network.append(RepCPE(dim, dim, (k, k), inference_mode))
            if st.token_mixer == "repmixer":
                blocks = [
                    RepMixerBlock(
                        dim,
                        cfg.repmixer_kernel_size,
                        st.mlp_ratio,
                        act_layer,
                        drop_rate,
                        dpr[i][j],
                        use_layer_scale,
                        ls_init,
                        inference_mode,
                    )
                    for j in range(st.depth)
                ]
            else:
                blocks = [
                    AttentionBlock(
                        dim,
                        st.mlp_ratio,
                        act_layer,
                        norm_layer,
                        drop_rate,
                        dpr[i][j],
                        use_layer_scale,
                        ls_init,
                        inference_mode,
                    )
                    for j in range(st.depth)
                ]
            stage_ends.append(len(network))
            network.append(nn.Sequential(*blocks))
            feature_info.append(
                dict(
                    num_chs=dim, reduction=reduction, module=f"network.{len(network) - 1}", stage=i
                )
            )
            prev_dim = dim
        self.network = nn.ModuleList(network)
        self.stage_ends = stage_ends
        self.feature_end = stage_ends[max(out_indices)]  # last module a features_only run needs

        last_dim = cfg.stages[-1].dim
        # (pooling and dropout exist in every form, so forward_head scripts for features_only)
        self.gap = nn.AdaptiveAvgPool2d(1) if global_pool == "avg" else nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        if features_only:
            self.conv_exp = None
            self.head = None
            self.num_classes = 0
            self.num_features = self.head_hidden_size = cfg.embed_dims[max(out_indices)]
            self.feature_info = FeatureInfo(feature_info, out_indices)
        else:
            self.num_features = self.head_hidden_size = int(last_dim * cfg.cls_ratio)
            self.conv_exp = MobileOneBlock(
                last_dim,
                self.num_features,
                3,
                stride=1,
                padding=1,
                groups=last_dim,
                inference_mode=inference_mode,
                use_se=True,
                activation=act_layer,
            )
            self.num_classes = num_classes
            # "classifier" and "clip" heads are both a linear layer on the pooled features;
            # a CLIP projection (official ``head.proj``, no bias) loads with a zero bias.
            self.head = (
                nn.Linear(self.num_features, num_classes) if num_classes > 0 else (nn.Identity())
            )
            self.feature_info = feature_info
        self.apply(self._init_linear)

    @staticmethod
    def _init_linear(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    # ---------------------------------------------------------------- timm model API
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Layer scales are excluded from weight decay (norms and biases are by ndim)."""
        return {n for n, _ in self.named_parameters() if "layer_scale" in n}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r"^patch_embed",
            blocks=r"^network\.(\d+)"
            if coarse
            else [(r"^network\.(\d+)\.(\d+)", None), (r"^network\.(\d+)", (0,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    @property
    def default_cfg(self) -> dict:
        """timm's older name for :attr:`pretrained_cfg`."""
        return self.pretrained_cfg

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the linear classifier (``num_classes=0``: pooled features; with
        ``global_pool=''`` too: the unpooled feature map, as in timm)."""
        if self.features_only:
            raise ConfigError("a features_only model has no classifier to reset")
        if global_pool is not None:
            _check_global_pool(global_pool, num_classes)
            self.global_pool = global_pool
            self.gap = nn.AdaptiveAvgPool2d(1) if global_pool == "avg" else nn.Identity()
        else:
            _check_global_pool(self.global_pool, num_classes)
        p = next(self.parameters())
        self.num_classes = num_classes
        self.head = (
            nn.Linear(self.num_features, num_classes, device=p.device, dtype=p.dtype)
            if num_classes > 0
            else nn.Identity()
        )
        if num_classes > 0:
            self._init_linear(self.head)
        if self.class_names is not None and len(self.class_names) != num_classes:
            self.class_names = None  # they named the old classifier's outputs

    # -- what the model says about itself -------------------------------------------------------
    @property
    def card(self) -> ModelCard:
        """The model card: variant, form, classes and preprocessing (read by every file writer)."""
        return ModelCard(
            variant=self.variant,
            num_classes=self.num_classes,
            form="fused" if self.inference_mode else "unfused",
            class_names=None if self.class_names is None else tuple(self.class_names),
            preprocessing=self.preprocessing,
        )

    @card.setter
    def card(self, card: ModelCard) -> None:
        """Adopt a card's preprocessing and class names (variant and classes must match)."""
        if card.num_classes != self.num_classes:
            raise ConfigError(
                f"the card describes {card.num_classes} classes but the model has "
                f"{self.num_classes}; call reset_classifier first"
            )
        self.preprocessing = card.preprocessing.with_in_chans(self.in_chans)
        self.class_names = None if card.class_names is None else list(card.class_names)

    @property
    def pretrained_cfg(self) -> dict[str, Any]:
        """timm-style pretrained config, derived from :attr:`preprocessing` and the current
        form (``first_conv`` names the convolution(s) that read the image in this form)."""
        p = self.preprocessing
        src = self._pretrained_source
        return {
            "architecture": self.variant,
            "tag": src.get("tag"),
            "url": src.get("url", ""),
            "hf_hub_id": src.get(
                "hf_hub_id", f"timm/{self.variant}.{src['tag']}" if src.get("tag") else None
            ),
            "license": src.get("license"),
            "custom_load": False,
            "num_classes": self.num_classes,
            "input_size": p.input_size,
            "fixed_input_size": False,
            "pool_size": tuple(math.ceil(s / self.cfg.reductions[-1]) for s in p.input_size[1:]),
            "crop_pct": p.crop_pct,
            "crop_mode": p.crop_mode,
            "interpolation": p.interpolation,
            "mean": p.mean,
            "std": p.std,
            "first_conv": self._first_conv(),
            "classifier": "head" if isinstance(self.head, nn.Linear) else None,
        }

    @pretrained_cfg.setter
    def pretrained_cfg(self, cfg: dict[str, Any]) -> None:
        """Set preprocessing (and the weights' source keys) from a timm-style dict."""
        self.preprocessing = Preprocessing.from_dict(
            cfg, in_chans=self.in_chans, default=self.preprocessing
        )
        self._pretrained_source = {
            k: cfg[k] for k in ("tag", "url", "hf_hub_id", "license") if k in cfg
        }

    def _first_conv(self) -> str | tuple[str, ...]:
        """Names of the convolutions that read the input image (one when fused)."""
        names = tuple(
            f"patch_embed.0.{n}"
            for n, m in self.patch_embed[0].named_modules()
            if isinstance(m, nn.Conv2d) and m.in_channels == self.in_chans
        )
        return names[0] if len(names) == 1 else names

    def _run_network(self, x: Tensor, last: int) -> tuple[Tensor, list[Tensor]]:
        """Run ``network[: last + 1]``; also return the outputs of the stage modules."""
        stage_outs: list[Tensor] = []
        for i, module in enumerate(self.network):
            if i <= last:  # (no `break`: TorchScript unrolls loops over module lists)
                if self.grad_checkpointing and self.training and not torch.jit.is_scripting():
                    x = checkpoint(module, x, use_reentrant=False)
                else:
                    x = module(x)
                if i in self.stage_ends:
                    stage_outs.append(x)
        return x, stage_outs

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Stage outputs (timm semantics: int = last n stages, list = those indices)."""
        if output_fmt != "NCHW":
            raise ConfigError("forward_intermediates supports output_fmt='NCHW' only")
        take_indices, max_index = feature_take_indices(len(self.stage_ends), indices)
        last = (
            self.stage_ends[max_index]
            if stop_early or intermediates_only
            else (len(self.network) - 1)
        )
        x = self.patch_embed(x)
        x, stage_outs = self._run_network(x, last)
        intermediates = [stage_outs[i] for i in take_indices]
        if intermediates_only:
            return intermediates
        if self.conv_exp is not None and last == len(self.network) - 1:
            x = self.conv_exp(x)
        return x, intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the modules after the last requested stage (and the head if asked)."""
        take_indices, max_index = feature_take_indices(len(self.stage_ends), indices)
        self.network = self.network[: self.stage_ends[max_index] + 1]
        if prune_head or max_index < len(self.stage_ends) - 1:
            self.conv_exp = None
            self.num_features = self.head_hidden_size = self.cfg.embed_dims[max_index]
            self.num_classes = 0
            self.head = nn.Identity()
        return take_indices

    def forward_features(self, x: Tensor) -> Tensor:
        """Stem, stages and the expanding conv: the map that the head pools."""
        x, _ = self._run_network(self.patch_embed(x), len(self.network) - 1)
        if self.conv_exp is not None:
            x = self.conv_exp(x)
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Global average pool, dropout, classifier (``pre_logits``: stop before it).

        With ``global_pool=''`` (and no classifier) the map is returned unpooled."""
        x = self.gap(x)
        if self.global_pool == "avg":
            x = x.flatten(1)
        x = self.head_drop(x)
        if pre_logits or self.head is None:
            return x
        return self.head(x)

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        if self.features_only:
            _, stage_outs = self._run_network(self.patch_embed(x), self.feature_end)
            return [stage_outs[i] for i in self.out_indices]
        return self.forward_head(self.forward_features(x))


def create_model(
    name: str | FastViTConfig,
    pretrained: bool = False,
    *,
    num_classes: int | None = None,
    in_chans: int = 3,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    inference_mode: bool = False,
    features_only: bool = False,
    out_indices: Sequence[int] | None = None,
    feature_cls: str | None = None,
    **kwargs,
) -> nn.Module:
    """Build a FastViT from a variant name (see :func:`fastvit.list_models`) or a config.

    This is the architecture builder (random weights); :func:`fastvit.create_model` adds
    pretrained tags and weights on top. ``num_classes`` defaults to the config's (1000 for the
    ImageNet variants, the CLIP embedding width for the MobileCLIP towers); ``out_indices`` to
    every stage. ``inference_mode=True`` builds the fully fused form directly (load fused
    weights into it). Extra keyword arguments go to :class:`FastViT` (``act_layer``,
    ``layer_scale_init_value``, ``lkc_apply_act``, ...). ``pretrained=True`` is refused here:
    weights are the job of :func:`fastvit.create_model` (the pretrained layer above models).

    ``features_only=True`` returns our native feature model; with ``feature_cls="getter"``
    (timm's ``FeatureGetterNet`` over :meth:`FastViT.forward_intermediates`) or ``"fx"``
    (timm's ``FeatureGraphNet``, a torch.fx graph cut at the stage outputs) timm's wrappers.
    """
    if pretrained:
        raise ConfigError(
            "fastvit.models.create_model builds random weights; use "
            "fastvit.create_model(name, pretrained=True) for published weights"
        )
    if feature_cls is not None:
        if not features_only:
            raise ConfigError("feature_cls needs features_only=True")
        if feature_cls not in ("getter", "fx"):
            raise ConfigError(f"feature_cls must be 'getter' or 'fx', got {feature_cls!r}")
        from timm.models._features import FeatureGetterNet
        from timm.models._features_fx import FeatureGraphNet

        full = create_model(
            name,
            num_classes=0,
            in_chans=in_chans,
            drop_rate=drop_rate,
            drop_path_rate=drop_path_rate,
            inference_mode=inference_mode,
            **kwargs,
        )
        idx = tuple(range(len(full.stage_ends))) if out_indices is None else tuple(out_indices)
        wrapper = FeatureGetterNet if feature_cls == "getter" else FeatureGraphNet
        return wrapper(full, out_indices=idx)
    model = FastViT(
        get_config(name),
        num_classes=num_classes,
        in_chans=in_chans,
        drop_rate=drop_rate,
        drop_path_rate=drop_path_rate,
        inference_mode=inference_mode,
        features_only=features_only,
        out_indices=out_indices,
        **kwargs,
    )
    if inference_mode:  # fused weights in NHWC, as fastvit.reparameterize leaves them
        model.to(memory_format=torch.channels_last)
    return model
