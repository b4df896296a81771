"""FastViT as a detection / segmentation backbone with a feature pyramid (torchvision style).

:func:`fpn_backbone` follows torchvision's ``resnet_fpn_backbone`` conventions (trainable
stages counted from the top, frozen BatchNorm by default, 1-based returned stages, FPN with a
max-pool extra level, ``out_channels`` attribute), so its result goes unchanged into
torchvision's ``FasterRCNN``, ``RetinaNet`` and ``MaskRCNN``. torchvision's own
``BackboneWithFPN`` cannot wrap FastViT (it needs the stages as sequential top-level children;
ours keep the official flat ``network`` list so official checkpoints load), so the body here is
a ``features_only`` FastViT.

``fastvit.reparameterize(detector)`` fuses the backbone inside a detector like any model; frozen
(torchvision/timm ``FrozenBatchNorm2d``) and synchronised BatchNorms fuse like ``BatchNorm2d``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from fastvit.errors import ConfigError
from fastvit.models.config import get_config
from fastvit.models.fastvit import FastViT, create_model

NORMS = ("frozen", "bn", "sync")


def stage_prefixes(model: FastViT) -> list[list[str]]:
    """Parameter-name prefixes of the stem and of each stage (a stage owns the downsampling
    and positional-encoding modules in front of its blocks, as in timm)."""
    prefixes: list[list[str]] = [["patch_embed."]]
    start = 0
    for end in model.stage_ends:
        prefixes.append([f"network.{k}." for k in range(start, end + 1)])
        start = end + 1
    return prefixes


def freeze_stages(model: FastViT, trainable_stages: int) -> None:
    """Stop gradients for everything but the last ``trainable_stages`` stages (counting the stem
    as the first stage, so ``len(stages) + 1`` trains everything and 0 nothing)."""
    groups = stage_prefixes(model)
    if not 0 <= trainable_stages <= len(groups):
        raise ConfigError(
            f"trainable_stages must be in 0..{len(groups)} (stem + {len(groups) - 1} stages), "
            f"got {trainable_stages}"
        )
    train = [p for g in groups[len(groups) - trainable_stages :] for p in g]
    for name, param in model.named_parameters():
        if not any(name.startswith(p) for p in train):
            param.requires_grad_(False)


def convert_norms(model: nn.Module, norm: str) -> nn.Module:
    """``"frozen"``: every BatchNorm (inside MobileOne branches too) becomes torchvision's
    ``FrozenBatchNorm2d``; ``"sync"``: ``nn.SyncBatchNorm``; ``"bn"``: unchanged."""
    if norm == "frozen":
        from timm.layers import freeze_batch_norm_2d

        return freeze_batch_norm_2d(model)
    if norm == "sync":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if norm == "bn":
        return model
    raise ConfigError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")


class FastViTFPN(nn.Module):
    """A ``features_only`` FastViT body plus torchvision's ``FeaturePyramidNetwork``.

    ``forward`` returns an ``OrderedDict`` of pyramid levels (``"0"``, ``"1"``, ... and the
    extra block's names, e.g. ``"pool"``), each with ``out_channels`` channels.
    """

    def __init__(
        self,
        body: FastViT,
        out_channels: int = 256,
        extra_blocks: nn.Module | None = None,
        norm_layer: type[nn.Module] | None = None,
    ) -> None:
        super().__init__()
        from torchvision.ops.feature_pyramid_network import (
            FeaturePyramidNetwork,
            LastLevelMaxPool,
        )

        if not body.features_only:
            raise ConfigError("FastViTFPN needs a features_only FastViT body")
        self.body = body
        self.in_channels_list = list(body.feature_info.channels())
        self.fpn = FeaturePyramidNetwork(
            in_channels_list=self.in_channels_list,
            out_channels=out_channels,
            extra_blocks=LastLevelMaxPool() if extra_blocks is None else extra_blocks,
            norm_layer=norm_layer,
        )
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        feats = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))


def fpn_backbone(
    name: str,
    *,
    pretrained: bool = False,
    trainable_stages: int = 3,
    norm: str = "frozen",
    returned_stages: Sequence[int] | None = None,
    extra_blocks: nn.Module | None = None,
    out_channels: int = 256,
    fpn_norm_layer: type[nn.Module] | None = None,
    body: FastViT | None = None,
    **kwargs: Any,
) -> FastViTFPN:
    """A FastViT + FPN backbone for torchvision detectors (``resnet_fpn_backbone`` conventions).

    This builder makes random weights (the models layer loads no files): for published ones
    use :func:`fastvit.fpn_backbone` (``pretrained=True``), which loads the body and passes it
    here as ``body``.

    Args:
        name: a variant (``fastvit_t8``) or pretrained tag (``fastvit_t8.apple_in1k``).
        pretrained: refused here, with a pointer to :func:`fastvit.fpn_backbone`.
        trainable_stages: how many stages, counted from the last and with the stem as the first
            stage, keep gradients (torchvision's ``trainable_layers``; default 3).
        norm: ``"frozen"`` (default, the usual detection recipe), ``"bn"`` or ``"sync"``.
        returned_stages: 1-based stages fed to the FPN (default: all).
        extra_blocks: torchvision FPN extra block (default ``LastLevelMaxPool``).
        out_channels: FPN width.
        body: a ``features_only`` FastViT returning ``returned_stages`` (built from ``name``
            when None).
        **kwargs: passed to :func:`fastvit.models.create_model` (e.g. ``inference_mode``).
    """
    if pretrained:
        raise ConfigError(
            "fastvit.models.backbones.fpn_backbone builds random weights; for published ones "
            "use fastvit.fpn_backbone(name, pretrained=True)"
        )
    n_stages = len(get_config(name.split(".", 1)[0]).layers)
    stages = list(range(1, n_stages + 1)) if returned_stages is None else list(returned_stages)
    if not stages or min(stages) < 1 or max(stages) > n_stages or len(set(stages)) != len(stages):
        raise ConfigError(
            f"returned_stages must be distinct stages in 1..{n_stages}, got {returned_stages}"
        )
    if body is None:
        body = create_model(
            name.split(".", 1)[0],
            features_only=True,
            out_indices=tuple(s - 1 for s in sorted(stages)),
            **kwargs,
        )
    freeze_stages(body, trainable_stages)
    body = convert_norms(body, norm)
    return FastViTFPN(body, out_channels, extra_blocks, fpn_norm_layer)
