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


class ReparamContainer(Reparameterizable):
    """A module with no fusion of its own (a stem, a downsampling pair, a whole network).

    Its form is derived from the reparameterizable modules inside it rather than stored, so a
    tree fused child by child -- e.g. by ``timm.utils.reparameterize_model``, which calls
    ``reparameterize()`` on every child but never on the root -- reports its real form.
    """

    __jit_unused_properties__ = ["inference_mode"]  # noqa: RUF012

    @property
    @torch.jit.unused
    def inference_mode(self) -> bool:
        return all(
            m.inference_mode
            for m in self.modules()
            if isinstance(m, Reparameterizable) and not isinstance(m, ReparamContainer)
        )

    @inference_mode.setter
    def inference_mode(self, value: bool) -> None:
        pass  # derived from the modules inside (see the class docstring)

    def _reparameterize(self) -> None:
        pass  # everything inside was fused by reparameterize()


def reparameterize_tree(module: nn.Module) -> None:
    """Fuse every :class:`Reparameterizable` in ``module``'s tree, in place (top-most first).

    A reparameterizable module fuses its own subtree, so the walk stops descending there.
    """
    if isinstance(module, Reparameterizable):
        module.reparameterize()
        return
    for child in module.children():
        reparameterize_tree(child)


def new_linear(weight: Tensor, bias: Tensor) -> nn.Linear:
    """A biased Linear holding ``weight``/``bias`` (same dtype/device)."""
    lin = nn.Linear(
        weight.shape[1], weight.shape[0], bias=True, device=weight.device, dtype=weight.dtype
    )
    with torch.no_grad():
        lin.weight.copy_(weight)
        lin.bias.copy_(bias)
    return lin
