"""The reparameterization contract shared by every multi-branch module."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Reparameterizable(nn.Module):
    """Mixin for modules with a multi-branch training form and a fused inference form.

    Contract:
    * ``__init__(..., inference_mode=True)`` builds the fused form directly;
    * ``reparameterize()`` converts in place, is idempotent and sets ``inference_mode``;
      it first fuses any reparameterizable sub-modules, so calling it on any block works;
    * fusion uses BatchNorm running statistics whatever mode the module is in and never
      caches tensors on the module as a side effect.

    Subclasses implement :meth:`_reparameterize` (only called while not yet fused).
    """


    def reparameterize(self) -> None:
        """Fuse this module (and its reparameterizable children) in place."""
        if self.inference_mode:
            return
        with torch.no_grad():
            for child in self.children():
                reparameterize_tree(child)
            self._reparameterize()
        self.inference_mode = True

    def convert_to_deploy(self) -> None:
        """Alias of :meth:`reparameterize` (the name used by mmcv/timm-style code)."""
        self.reparameterize()

    def _reparameterize(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


def reparameterize_tree(module: nn.Module) -> None:
    """Fuse every :class:`Reparameterizable` in ``module``'s tree, in place (top-most first).

    A reparameterizable module fuses its own subtree, so the walk stops descending there.
    """
    if isinstance(module, Reparameterizable):
        module.reparameterize()
        return
    for child in module.children():
        reparameterize_tree(child)


def new_conv(
    weight: Tensor,
    bias: Tensor,
    *,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    groups: int = 1,
    dilation: int | tuple[int, int] = 1,
) -> nn.Conv2d:
    """A biased Conv2d holding ``weight``/``bias`` (same dtype/device), for fused forms."""
    from fastvit.layers.conv_ops import conv2d  # (layers imports reparam: import here)

    out_ch, in_per_group = weight.shape[:2]
    conv = conv2d(
        in_per_group * groups, out_ch, tuple(weight.shape[2:]), stride=stride, padding=padding,
        dilation=dilation, groups=groups, bias=True, device=weight.device, dtype=weight.dtype,
    )
    with torch.no_grad():
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
    return conv


def new_linear(weight: Tensor, bias: Tensor) -> nn.Linear:
    """A biased Linear holding ``weight``/``bias`` (same dtype/device)."""
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=True,
                    device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        lin.weight.copy_(weight)
        lin.bias.copy_(bias)
    return lin
