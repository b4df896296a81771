"""Semantic FPN segmentation on any FastViT (the FastViT paper's ADE20k setup).

The head is Kirillov et al.'s semantic FPN ("Panoptic Feature Pyramid Networks", CVPR 2019),
as the FastViT paper uses it through mmsegmentation: an FPN neck over the stage outputs
(torchvision's ``FeaturePyramidNetwork``, via :class:`~fastvit.models.backbones.FastViTFPN`);
then for every pyramid level ``log2(stride / 4)`` (at least one) blocks of 3x3 conv - norm -
ReLU, each but the stride-4 level's followed by a 2x bilinear upsampling, so every level
arrives at stride 4; the levels are summed, a 1x1 classifier gives the class logits, and they
are bilinearly upsampled to the input size.

``forward`` returns logits ``(N, num_classes, H, W)`` at the input size, like mmsegmentation's
``inference`` and torchvision's ``out`` (without the dict). Upsampling targets are the real
sizes of the finer maps, so any input size works, and an exported graph keeps H/W dynamic.

The head's conv - norm pairs are :class:`~fastvit.layers.ConvBN`, so
``fastvit.reparameterize(segmenter)`` fuses the whole model (backbone branches, frozen or
trained BatchNorms, head) into plain convolutions with the same masks.

:func:`segmentation_loss` and :func:`check_masks` define what a mask is: one class index per
pixel, ``0 .. num_classes - 1``, and :data:`IGNORE_INDEX` (255) for pixels that count neither
in the loss nor in the metric (mmsegmentation's and torchvision's convention).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock

from fastvit.card import ModelCard
from fastvit.errors import ConfigError, DataError
from fastvit.layers.conv_bn import ConvBN
from fastvit.models.backbones import FastViTFPN, convert_norms, freeze_stages
from fastvit.models.config import get_config
from fastvit.models.fastvit import FastViT
from fastvit.models.fastvit import create_model as build_fastvit

#: Mask value of pixels that count neither in the loss nor in the metric.
IGNORE_INDEX = 255
#: Names under which a segmenter's :class:`~fastvit.card.ModelCard` says what it is.
TASK_KEY, TASK = "task", "segmentation"


class _NoExtraLevel(ExtraFPNBlock):
    """No pyramid level beyond the last stage (torchvision's FPN adds a max-pooled one for
    detection by default; the semantic head does not read it)."""

    def forward(
        self, results: list[Tensor], x: list[Tensor], names: list[str]
    ) -> tuple[list[Tensor], list[str]]:
        return results, names


class SemanticFPNHead(nn.Module):
    """Per-level 3x3 conv-norm-ReLU (+ 2x upsampling) blocks to the finest stride, summed,
    dropout, 1x1 classifier.

    Args:
        in_channels: width of every pyramid level (the FPN's ``out_channels``).
        strides: stride of each level, finest first (FastViT: 4, 8, 16, 32).
        num_classes: output classes (background included when there is one).
        channels: width of the per-level blocks (mmsegmentation's ``FPNHead``: 128).
        dropout: channel dropout before the classifier (mmsegmentation: 0.1).
        inference_mode: build the conv - norm pairs fused (load fused weights into it).
    """

    def __init__(
        self,
        in_channels: int,
        strides: Sequence[int],
        num_classes: int,
        channels: int = 128,
        dropout: float = 0.1,
        inference_mode: bool = False,
    ) -> None:
        super().__init__()
        base = strides[0]
        self.scale_heads = nn.ModuleList()
        for stride in strides:
            n = max(1, round(math.log2(stride / base)))
            blocks = []
            for k in range(n):
                blocks.append(
                    nn.Sequential(
                        ConvBN(
                            in_channels if k == 0 else channels,
                            channels,
                            3,
                            padding=1,
                            inference_mode=inference_mode,
                        ),
                        nn.ReLU(inplace=True),
                    )
                )
            self.scale_heads.append(nn.ModuleList(blocks))
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: list[Tensor]) -> Tensor:
        """Logits at the finest level's resolution from the pyramid levels (finest first)."""
        out: Tensor | None = None
        for i, blocks in enumerate(self.scale_heads):
            x = feats[i]
            for k, block in enumerate(blocks):
                x = block(x)
                if i - k - 1 >= 0:  # one level finer: that map's real size (odd inputs too)
                    size = feats[i - k - 1].shape[-2:]
                    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            out = x if out is None else out + x
        assert out is not None
        return self.classifier(self.dropout(out))


class SemanticFPN(nn.Module):
    """A FastViT + FPN backbone and a :class:`SemanticFPNHead`: image to per-pixel logits.

    ``forward(x)`` returns ``(N, num_classes, H, W)`` logits at the input's size.
    ``card`` describes it for model files (variant, classes, preprocessing, ``task:
    segmentation``).
    """

    def __init__(
        self,
        backbone: FastViTFPN,
        num_classes: int,
        *,
        head_channels: int = 128,
        dropout: float = 0.1,
        class_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ConfigError(f"num_classes must be at least 1, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ConfigError(
                f"{len(class_names)} class names for {num_classes} classes; give one per class"
            )
        self.backbone = backbone
        self.num_classes = int(num_classes)
        self.class_names = None if class_names is None else [str(c) for c in class_names]
        self.strides = list(backbone.body.feature_info.reduction())
        self.head = SemanticFPNHead(
            backbone.out_channels,
            self.strides,
            num_classes,
            head_channels,
            dropout,
            inference_mode=backbone.body.inference_mode,
        )

    @property
    def body(self) -> FastViT:
        """The FastViT feature extractor."""
        return self.backbone.body

    @property
    def card(self) -> ModelCard:
        """Variant, form, classes and preprocessing of the body, tagged ``task:
        segmentation`` (what exporters and benchmarks read)."""
        body = self.body.card
        return ModelCard(
            variant=body.variant,
            num_classes=self.num_classes,
            form=body.form,
            class_names=None if self.class_names is None else tuple(self.class_names),
            preprocessing=body.preprocessing,
            extra={
                TASK_KEY: TASK,
                "head": "semantic_fpn",
                "fpn_channels": str(self.backbone.out_channels),
                "head_channels": str(self.head.classifier.in_channels),
            },
        )

    @property
    def inference_mode(self) -> bool:
        """Whether the body is fused (the head's ConvBNs fuse together with it)."""
        return self.body.inference_mode

    def forward(self, x: Tensor) -> Tensor:
        if not torch.jit.is_tracing() and (x.dim() != 4 or x.shape[1] != self.body.in_chans):
            raise DataError(
                f"the segmenter takes images (N, {self.body.in_chans}, H, W), got shape "
                f"{tuple(x.shape)}; add a batch dimension with x[None] or fix the channels"
            )
        levels = list(self.backbone(x).values())
        logits = self.head(levels)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def create_segmenter(
    name: str,
    num_classes: int,
    *,
    pretrained: bool = False,
    norm: str = "bn",
    trainable_stages: int | None = None,
    fpn_channels: int = 256,
    head_channels: int = 128,
    dropout: float = 0.1,
    class_names: Sequence[str] | None = None,
    body: FastViT | None = None,
    **kwargs: Any,
) -> SemanticFPN:
    """A semantic FPN segmenter on FastViT ``name`` with random weights.

    Args:
        name: a variant (``fastvit_t8``, ``fastvit_sa12``, ...).
        num_classes: classes of the masks (with the background, when there is one).
        pretrained: refused here (the models layer builds architectures); use
            :func:`fastvit.create_segmenter` for an ImageNet-initialised backbone.
        norm: backbone BatchNorms: ``"bn"`` (default, trained as in mmsegmentation's
            FastViT configs), ``"frozen"`` (torchvision's ``FrozenBatchNorm2d``: statistics and
            affine terms fixed, the usual choice for small batches on pretrained weights) or
            ``"sync"``. The head always uses trainable BatchNorm.
        trainable_stages: backbone stages that keep gradients, counted from the last with the
            stem as the first stage (default: all).
        fpn_channels: FPN width (the paper: 256).
        head_channels: width of the head's conv blocks (the paper: 128).
        dropout: channel dropout before the classifier (the paper: 0.1).
        class_names: optional names of the classes (stored in exported model cards).
        body: a ``features_only`` FastViT to use (e.g. with pretrained weights); built from
            ``name`` when None.
        **kwargs: passed to :func:`fastvit.models.create_model` (``drop_path_rate``,
            ``inference_mode``, ...).
    """
    if pretrained:
        raise ConfigError(
            "fastvit.models.segmentation.create_segmenter builds random weights; use "
            "fastvit.create_segmenter(name, num_classes, pretrained=True) for ImageNet weights"
        )
    if body is None:
        n_stages = len(get_config(name).layers)
        body = build_fastvit(name, features_only=True, out_indices=tuple(range(n_stages)), **kwargs)
    elif not getattr(body, "features_only", False):
        raise ConfigError("create_segmenter needs a features_only FastViT as body")
    n_groups = len(body.stage_ends) + 1
    freeze_stages(body, n_groups if trainable_stages is None else trainable_stages)
    body = convert_norms(body, norm)
    backbone = FastViTFPN(body, fpn_channels, extra_blocks=_NoExtraLevel())
    return SemanticFPN(
        backbone,
        num_classes,
        head_channels=head_channels,
        dropout=dropout,
        class_names=class_names,
    )


def is_segmentation_card(card: ModelCard) -> bool:
    """Whether a model card (e.g. read from an exported file) describes a segmenter."""
    return card.extra.get(TASK_KEY) == TASK


def segmenter_from_card(card: ModelCard, *, inference_mode: bool = True) -> SemanticFPN:
    """The architecture a segmentation card describes, with random weights (fused by
    default): what a benchmark counts FLOPs on for an exported segmenter."""
    if not is_segmentation_card(card):
        raise ConfigError(f"the model card of {card.variant} does not describe a segmenter")
    try:
        widths = {k: int(card.extra[k]) for k in ("fpn_channels", "head_channels")}
    except (KeyError, ValueError):
        raise ConfigError(
            "the segmentation card lacks fpn_channels/head_channels; re-export the model"
        ) from None
    model = create_segmenter(
        card.variant,
        card.num_classes,
        fpn_channels=widths["fpn_channels"],
        head_channels=widths["head_channels"],
        in_chans=card.in_chans,
        inference_mode=inference_mode,
    )
    model.body.preprocessing = card.preprocessing
    return model.eval()


def check_masks(
    masks: Tensor,
    num_classes: int,
    *,
    shape: Sequence[int] | None = None,
    ignore_index: int | None = IGNORE_INDEX,
) -> None:
    """Raise :class:`DataError` unless ``masks`` is an integer ``(N, H, W)`` tensor of class
    indices in ``0 .. num_classes - 1`` (or ``ignore_index``), of ``shape`` when given."""
    if masks.is_floating_point() or masks.is_complex() or masks.dtype == torch.bool:
        raise DataError(
            f"masks must hold integer class indices, got {masks.dtype}; "
            "convert them with masks.long()"
        )
    if masks.dim() != 3:
        raise DataError(
            f"masks must have shape (N, H, W) (one class index per pixel), got "
            f"{tuple(masks.shape)}; for one-hot masks use masks.argmax(1)"
        )
    if shape is not None and tuple(masks.shape) != tuple(shape):
        raise DataError(
            f"masks have shape {tuple(masks.shape)} but the logits need {tuple(shape)} "
            "(N, H, W); resize masks with nearest-neighbour interpolation to the input size"
        )
    if masks.numel() == 0:
        return
    valid = (masks >= 0) & (masks < num_classes)
    if ignore_index is not None:
        valid |= masks == ignore_index
    if not bool(valid.all()):
        bad = masks[~valid]
        allowed = f"0..{num_classes - 1}" + (
            f" and {ignore_index} (ignored)" if ignore_index is not None else ""
        )
        raise DataError(
            f"masks hold label {int(bad[0])} ({bad.numel()} pixels) outside {allowed}; "
            f"fix the labels or build the model with more classes"
        )


def segmentation_loss(
    logits: Tensor,
    masks: Tensor,
    *,
    ignore_index: int | None = IGNORE_INDEX,
    label_smoothing: float = 0.0,
) -> Tensor:
    """Per-pixel cross-entropy averaged over the pixels not marked ``ignore_index``.

    ``logits`` are ``(N, C, H, W)``, ``masks`` ``(N, H, W)`` class indices, checked with
    :func:`check_masks` (wrong shapes and out-of-range labels raise one-line errors instead of
    a CUDA assert or a silently wrong loss). A batch whose pixels are all ignored gives 0.
    """
    if logits.dim() != 4:
        raise DataError(f"logits must be (N, C, H, W), got shape {tuple(logits.shape)}")
    n, c, h, w = logits.shape
    check_masks(masks, c, shape=(n, h, w), ignore_index=ignore_index)
    masks = masks.long()
    if ignore_index is not None and not bool((masks != ignore_index).any()):
        return logits.sum() * 0.0  # (keeps the graph; cross_entropy would give NaN)
    return F.cross_entropy(
        logits,
        masks,
        ignore_index=-100 if ignore_index is None else ignore_index,
        label_smoothing=label_smoothing,
    )


__all__ = [
    "IGNORE_INDEX",
    "SemanticFPN",
    "SemanticFPNHead",
    "check_masks",
    "create_segmenter",
    "is_segmentation_card",
    "segmentation_loss",
    "segmenter_from_card",
]
