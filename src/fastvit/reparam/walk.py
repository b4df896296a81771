"""Model-wide reparameterization and its verification."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
from torch import nn

from fastvit.errors import ReparamError
from fastvit.reparam.base import Reparameterizable, reparameterize_tree

logger = logging.getLogger("fastvit")


def is_fused(model: nn.Module) -> bool:
    """True when no :class:`Reparameterizable` module in ``model`` is still in training form."""
    return all(m.inference_mode for m in model.modules() if isinstance(m, Reparameterizable))


def _input_channels(model: nn.Module) -> int:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    raise ReparamError(
        "cannot verify: the model has no Conv2d to infer input channels from; "
        "pass input_shape=(N, C, H, W)"
    )


#: Default relative tolerances of a verification, by dtype (see :class:`OutputDiff`). Float32
#: fusion changes the order of sums: errors grow with the size of the activations, ~1e-6 of the
#: output scale on trained models, so 1e-5 leaves a margin while any real fusion bug (O(1) of
#: the scale) still fails. Float64 verifies exactness.
RTOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 2e-2}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def default_rtol(dtype: torch.dtype) -> float:
    """The relative verification tolerance for ``dtype``."""
    return RTOL.get(dtype, 1e-5)


@dataclass(frozen=True)
class OutputDiff:
    """How far two models' outputs are apart on the same inputs.

    ``max_abs`` is max |a - b|; ``scale`` is max |reference output|. The check passes when
    ``max_abs <= atol + rtol * scale``: a tolerance relative to the output scale, since logits of
    a trained model reach hundreds while float32 rounding stays ~1e-7 of the values summed. With
    the default ``atol = rtol`` small outputs are compared as if their scale were 1.
    """

    max_abs: float
    scale: float
    where: str = "output"

    @property
    def rel(self) -> float:
        """``max_abs`` relative to the output scale (at least 1, as in :meth:`tolerance`)."""
        return self.max_abs / max(self.scale, 1.0)

    def tolerance(self, rtol: float, atol: float | None = None) -> float:
        return (rtol if atol is None else atol) + rtol * self.scale

    def ok(self, rtol: float, atol: float | None = None) -> bool:
        return self.max_abs <= self.tolerance(rtol, atol)  # False for NaN

    def describe(self, rtol: float, atol: float | None = None) -> str:
        """'max |diff| 8.5e-04 (2.0e-06 of the output scale 430; tolerance 4.3e-03)'."""
        at = "" if self.where == "output" else f" at {self.where}"
        return (
            f"max |diff| {self.max_abs:.2e}{at} ({self.rel:.1e} of the output scale "
            f"{self.scale:.3g}; tolerance {self.tolerance(rtol, atol):.1e})"
        )


def image_like_inputs(
    shape: tuple[int, ...],
    *,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Random inputs drawn like preprocessed photos rather than white noise.

    Pixels in [0, 1] with smooth structure (coarse random colours bilinearly upsampled, plus a
    little fine noise), then normalized with ``mean``/``std`` as the eval transform does. The
    activations, and so the float32 rounding a verification sees, are those of real images.
    """
    n, c, h, w = shape
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, c, max(1, h // 8), max(1, w // 8), generator=g, dtype=torch.float64)
    x = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    x = (x + 0.05 * torch.randn(n, c, h, w, generator=g, dtype=torch.float64)).clamp(0, 1)
    m = torch.tensor(mean if len(mean) == c else (sum(mean) / len(mean),) * c, dtype=x.dtype)
    s = torch.tensor(std if len(std) == c else (sum(std) / len(std),) * c, dtype=x.dtype)
    x = (x - m.view(1, c, 1, 1)) / s.view(1, c, 1, 1)
    return x.to(dtype=dtype, device=device)


def _norm_stats(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))


@torch.no_grad()
def output_diff(
    reference: nn.Module,
    fused: nn.Module,
    input_shape: tuple[int, ...] | None = None,
    *,
    seed: int = 0,
) -> OutputDiff:
    """Max abs difference and output scale of two models on image-like inputs (eval mode)."""
    if input_shape is None:
        input_shape = (2, _input_channels(reference), 96, 96)
    p = next(iter(fused.parameters()), None)
    dtype = p.dtype if p is not None else torch.float32
    device = p.device if p is not None else torch.device("cpu")
    mean, std = _norm_stats(reference)
    x = image_like_inputs(input_shape, mean=mean, std=std, seed=seed, dtype=dtype, device=device)
    was_training = reference.training
    reference.eval()
    try:
        ref_out = reference(x)
    finally:
        reference.train(was_training)
    out = fused(x)
    ref_leaves, out_leaves = dict(_leaves(ref_out)), dict(_leaves(out))
    if ref_leaves.keys() != out_leaves.keys():
        raise ReparamError(
            f"the fused model returns {sorted(out_leaves)} where the original "
            f"returns {sorted(ref_leaves)}; a module changes its outputs on fusion"
        )
    worst: OutputDiff | None = None
    for where, a in ref_leaves.items():
        b = out_leaves[where]
        if a.shape != b.shape:
            raise ReparamError(
                f"{where} has shape {tuple(b.shape)} after fusion, "
                f"{tuple(a.shape)} before; a module does not fuse exactly"
            )
        if a.numel() == 0:
            continue
        a, b = a.double(), b.double()
        leaf = OutputDiff(float((a - b).abs().max()), float(a.abs().max()), where)
        if worst is None or not leaf.rel <= worst.rel:  # (NaN counts as worst)
            worst = leaf
    return worst if worst is not None else OutputDiff(0.0, 0.0)


def _leaves(obj: object, where: str = "output") -> list[tuple[str, torch.Tensor]]:
    """The floating-point tensors in a (nested) tuple/list/dict output, named by their path:
    ``output[0]['boxes']`` (a detector's), ``output[2]`` (a features_only model's)."""
    if isinstance(obj, torch.Tensor):
        return [(where, obj)] if obj.is_floating_point() else []
    if isinstance(obj, dict):
        return [leaf for k, v in obj.items() for leaf in _leaves(v, f"{where}[{k!r}]")]
    if isinstance(obj, (list, tuple)):
        return [leaf for i, v in enumerate(obj) for leaf in _leaves(v, f"{where}[{i}]")]
    return []


def max_abs_diff(
    reference: nn.Module,
    fused: nn.Module,
    input_shape: tuple[int, ...] | None = None,
    *,
    seed: int = 0,
) -> float:
    """Max absolute output difference of two models on image-like inputs (both in eval mode)."""
    return output_diff(reference, fused, input_shape, seed=seed).max_abs


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside DataParallel/DistributedDataParallel or ``torch.compile``."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def reparameterize(
    model: nn.Module,
    *,
    inplace: bool = False,
    verify: bool = False,
    atol: float | None = None,
    input_shape: tuple[int, ...] | None = None,
    channels_last: bool = True,
    rtol: float | None = None,
) -> nn.Module:
    """Convert every reparameterizable block in ``model`` to its fused inference form.

    Args:
        model: any module tree containing fastvit blocks (a FastViT, or a user's network
            that uses e.g. :class:`~fastvit.layers.RepStem`); DDP/DataParallel and
            ``torch.compile`` wrappers are unwrapped.
        inplace: modify ``model`` itself; by default a deep copy is converted and ``model``
            is left untouched so it can keep training.
        verify: run image-like inputs (:func:`image_like_inputs`, normalized with the model's
            mean/std) through both forms and raise :class:`ReparamError` when
            ``max|diff| > atol + rtol * max|output|`` (see :class:`OutputDiff`); else log the
            absolute and relative error at INFO level.
        atol: absolute part of the tolerance; default ``rtol``.
        input_shape: input for ``verify``; default ``(2, C, 96, 96)``.
        channels_last: store conv weights in channels-last (NHWC) memory format, which
            oneDNN/cuDNN run faster (NCHW inputs still work; outputs are unchanged).
        rtol: tolerance relative to the output scale; default 1e-5 for float32, 1e-10 for
            float64 (:data:`RTOL`).

    Returns:
        The fused model, in eval mode. BatchNorm running statistics are used whatever mode
        the input model is in. Calling it on an already fused model is a no-op.
    """
    model = unwrap_model(model)
    reference = copy.deepcopy(model) if verify else None
    target = model if inplace else copy.deepcopy(model)
    reparameterize_tree(target)
    target.eval()
    if channels_last:
        target.to(memory_format=torch.channels_last)
    if reference is not None:
        diff = output_diff(reference, target, input_shape)
        p = next(iter(target.parameters()), None)
        if rtol is None:
            rtol = default_rtol(p.dtype if p is not None else torch.float32)
        if not diff.ok(rtol, atol):
            at = "" if diff.where == "output" else f" at {diff.where}"
            raise ReparamError(
                f"reparameterized model differs from the original by {diff.max_abs:.3g}{at} "
                f"({diff.rel:.1e} of the output scale {diff.scale:.3g}; tolerance "
                f"{diff.tolerance(rtol, atol):.1e}); a module in it does not fuse exactly"
            )
        logger.info(
            "reparameterize: verified, max abs difference %.3g (%.1e relative)",
            diff.max_abs,
            diff.rel,
        )
    return target
