"""Model-wide reparameterization and its verification."""

from __future__ import annotations

import copy
import logging

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
    raise ReparamError("cannot verify: the model has no Conv2d to infer input channels from; "
                       "pass input_shape=(N, C, H, W)")


@torch.no_grad()
def max_abs_diff(
    reference: nn.Module,
    fused: nn.Module,
    input_shape: tuple[int, ...] | None = None,
    *,
    seed: int = 0,
) -> float:
    """Max absolute output difference of two models on one random input (both in eval mode)."""
    if input_shape is None:
        input_shape = (2, _input_channels(reference), 96, 96)
    p = next(iter(fused.parameters()), None)
    dtype = p.dtype if p is not None else torch.float32
    device = p.device if p is not None else torch.device("cpu")
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(input_shape, generator=gen, dtype=dtype).to(device)
    was_training = reference.training
    reference.eval()
    try:
        ref_out = reference(x)
    finally:
        reference.train(was_training)
    out = fused(x)
    if isinstance(ref_out, (list, tuple)):
        return max(float((a - b).abs().max()) for a, b in zip(ref_out, out))
    return float((ref_out - out).abs().max())


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
) -> nn.Module:
    """Convert every reparameterizable block in ``model`` to its fused inference form.

    Args:
        model: any module tree containing fastvit blocks (a FastViT, or a user's network
            that uses e.g. :class:`~fastvit.layers.RepStem`); DDP/DataParallel and
            ``torch.compile`` wrappers are unwrapped.
        inplace: modify ``model`` itself; by default a deep copy is converted and ``model``
            is left untouched so it can keep training.
        verify: run one random input through both forms and raise :class:`ReparamError`
            when the max abs difference exceeds ``atol`` (else log it at INFO level).
        atol: tolerance for ``verify``; default 1e-4 for float32 and 1e-10 for float64.
        input_shape: input for ``verify``; default ``(2, C, 96, 96)``.
        channels_last: store conv weights in channels-last (NHWC) memory format, which
            oneDNN/cuDNN run faster (NCHW inputs still work; outputs are unchanged).

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
        diff = max_abs_diff(reference, target, input_shape)
        p = next(iter(target.parameters()), None)
        if atol is None:
            atol = 1e-10 if p is not None and p.dtype == torch.float64 else 1e-4
        if not diff <= atol:
            raise ReparamError(
                f"reparameterized model differs from the original by {diff:.3g} (> {atol:.1g}); "
                "check custom modules for layers that cannot be fused")
        logger.info("reparameterize: verified, max abs difference %.3g", diff)
    return target
