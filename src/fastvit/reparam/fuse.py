"""Pure tensor math for structural reparameterization.

Every fusion in the package reduces to three facts about linear operators:

* A BatchNorm in eval mode is a per-channel affine map ``y = a * x + c`` with
  ``a = gamma / sqrt(running_var + eps)`` and ``c = beta - running_mean * a``.
  Following a convolution ``W * x + b`` it folds into ``(a * W) * x + (a * b + c)``.
* An identity map on ``C`` channels is a convolution whose kernel has a single 1 at the
  centre tap of each channel (respecting groups), so a BN skip branch is a conv too.
* Convolutions with the same input, stride and (centre-aligned) padding add up: their
  kernels can be summed once the smaller ones are zero-padded to the larger size.

These functions never touch modules: they take and return tensors, so every block uses the
same code and it can be tested in isolation (float64 exactness included).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def is_batchnorm(m: nn.Module) -> bool:
    """A BatchNorm that folds into a conv: ``BatchNorm1d/2d``, ``SyncBatchNorm`` and frozen
    BatchNorms (torchvision's / timm's ``FrozenBatchNorm2d``, which keep the same statistics as
    buffers), so backbones frozen for detection still reparameterize."""
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return True
    return type(m).__name__.startswith("FrozenBatchNorm") and all(
        hasattr(m, a) for a in ("running_mean", "running_var", "weight", "bias", "eps")
    )


def bn_affine(bn: nn.Module) -> tuple[Tensor, Tensor]:
    """Return ``(a, c)`` with ``bn(x) == a * x + c`` per channel, from running statistics.

    Running statistics are used whatever mode the module is in (fusion is for inference).
    Works for BatchNorm1d/2d, SyncBatchNorm and FrozenBatchNorm2d, affine or not.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(
            "cannot fuse a BatchNorm without running statistics "
            "(track_running_stats=False); train with running stats to reparameterize"
        )
    return affine_from_stats(bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps)


def affine_from_stats(
    mean: Tensor, var: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor]:
    """``(a, c)`` of a BatchNorm given as tensors (e.g. straight from a state dict)."""
    inv_std = torch.rsqrt(var + eps)
    a = inv_std if weight is None else weight * inv_std
    c = -mean * a if bias is None else bias - mean * a
    return a, c


def scale_shift_conv(
    weight: Tensor, bias: Tensor | None, a: Tensor, c: Tensor
) -> tuple[Tensor, Tensor]:
    """Fold ``a * y + c`` (per output channel) after a conv/linear ``y = W x + b``."""
    kernel = weight * a.reshape(-1, *([1] * (weight.dim() - 1)))
    return kernel, (c if bias is None else a * bias + c)


def fuse_conv_bn(
    weight: Tensor, bias: Tensor | None, bn: nn.modules.batchnorm._BatchNorm
) -> tuple[Tensor, Tensor]:
    """Fold ``bn(conv(x))`` into one conv: returns ``(kernel, bias)``.

    ``weight`` has its output channels first (conv ``(O, I/g, kh, kw)`` or linear ``(O, I)``).
    bn(W*x + b) = a*(W*x + b) + c  =>  W' = a[:, None, ...] * W,  b' = a*b + c.
    """
    a, c = bn_affine(bn)
    return scale_shift_conv(weight, bias, a, c)


def fuse_bn_alone(
    bn: nn.modules.batchnorm._BatchNorm, groups: int, kernel_size: int
) -> tuple[Tensor, Tensor]:
    """A BatchNorm on its own (a MobileOne skip branch) as a ``kernel_size`` grouped conv."""
    a, _ = bn_affine(bn)
    ident = identity_kernel(a.numel(), groups, kernel_size, dtype=a.dtype, device=a.device)
    return fuse_conv_bn(ident, None, bn)


def identity_kernel(
    channels: int,
    groups: int,
    kernel_size: int | tuple[int, int],
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Kernel of a ``channels -> channels`` grouped conv that computes the identity.

    Output channel ``i`` belongs to group ``i // (channels // groups)`` and reads input channel
    ``i`` at position ``i % (channels // groups)`` of that group; the 1 sits at the centre tap
    (odd kernel sizes, padding ``k // 2``).
    """
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"identity kernel needs an odd kernel size, got {(kh, kw)}")
    if channels % groups:
        raise ValueError(f"channels ({channels}) must be divisible by groups ({groups})")
    per_group = channels // groups
    kernel = torch.zeros(channels, per_group, kh, kw, dtype=dtype, device=device)
    idx = torch.arange(channels, device=device)
    kernel[idx, idx % per_group, kh // 2, kw // 2] = 1
    return kernel


def pad_kernel(kernel: Tensor, kernel_size: int | tuple[int, int]) -> Tensor:
    """Zero-pad a (smaller, odd) kernel symmetrically to ``kernel_size`` (centre-aligned)."""
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    dh, dw = kh - kernel.shape[-2], kw - kernel.shape[-1]
    if dh < 0 or dw < 0 or dh % 2 or dw % 2:
        raise ValueError(f"cannot centre a {tuple(kernel.shape[-2:])} kernel in {(kh, kw)}")
    if dh == 0 and dw == 0:
        return kernel
    return F.pad(kernel, [dw // 2, dw // 2, dh // 2, dh // 2])


def scale_output(weight: Tensor, bias: Tensor | None, scale: Tensor) -> tuple[Tensor, Tensor]:
    """Fold a per-output-channel multiply (layer scale) into the preceding conv/linear.

    gamma * (W x + b) = (gamma[:, None] * W) x + gamma * b.
    """
    s = scale.reshape(-1)
    w = weight * s.reshape(-1, *([1] * (weight.dim() - 1)))
    b = s * bias if bias is not None else torch.zeros_like(s)
    return w, b


def fold_affine_into_linear_input(
    weight: Tensor, bias: Tensor | None, a: Tensor, c: Tensor
) -> tuple[Tensor, Tensor]:
    """Fold a per-input-channel affine map ``x -> a * x + c`` that precedes a linear layer.

    W (a * x + c) + b = (W * a[None, :]) x + (W c + b). Used to absorb the attention block's
    BatchNorm into the qkv projection.
    """
    w = weight * a.reshape(1, -1)
    b = weight @ c
    if bias is not None:
        b = b + bias
    return w, b


def norm_affine(norm: nn.Module) -> tuple[Tensor, Tensor] | None:
    """The per-channel affine map ``x -> a * x + c`` of ``norm`` that can be folded forward.

    * BatchNorm (eval): all of it is affine, ``(a, c)`` from running statistics.
    * LayerNorm / LayerNorm2d / GroupNorm: ``y = weight * n(x) + bias`` where the
      normalisation ``n`` depends on the input's own statistics and cannot be folded; the
      elementwise affine part after it can: ``(a, c) = (weight, bias)``. What is left is the
      same norm without affine parameters.
    * Anything else (or a norm without affine parameters): ``None``, nothing to fold.
    """
    if is_batchnorm(norm):
        return bn_affine(norm)
    if isinstance(norm, (nn.LayerNorm, nn.GroupNorm)):
        w, b = norm.weight, norm.bias
        if w is None and b is None:
            return None
        if w is not None and w.dim() != 1:
            return None  # LayerNorm over several dims: not a per-channel affine
        ref = w if w is not None else b
        a = w if w is not None else torch.ones_like(ref)
        c = b if b is not None else torch.zeros_like(ref)
        return a, c
    return None
