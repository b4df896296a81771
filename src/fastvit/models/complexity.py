"""Parameter and multiply-accumulate counts, measured by running the model once."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from fastvit.models.blocks import Attention


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(
    model: nn.Module,
    input_size: int | tuple[int, int] = 256,
    in_chans: int = 3,
    include_attention: bool = False,
) -> int:
    """Multiply-accumulates of one forward pass on a ``1 x C x H x W`` input.

    Counts convolution and linear layers as executed (every branch of a training-form
    model). The attention matmuls (q @ k^T, attn @ v) are added only with
    ``include_attention``: the published FastViT GMACs (the convention of layer-based
    counters) leave them out. Element-wise ops, norms and activations are not counted.
    """
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    # Count on an NCHW copy: channels-last ConvFFNs run their 1x1 convs as F.linear, which
    # module hooks would not see.
    model = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    total = 0

    def conv_hook(m: nn.Conv2d, _inp: tuple[Tensor], out: Tensor) -> None:
        nonlocal total
        total += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear_hook(m: nn.Linear, _inp: tuple[Tensor], out: Tensor) -> None:
        nonlocal total
        total += out.numel() * m.in_features

    def attn_hook(m: Attention, inp: tuple[Tensor], _out: Tensor) -> None:
        nonlocal total
        b, c, hh, ww = inp[0].shape
        n = hh * ww
        total += 2 * b * n * n * c  # q @ k^T and attn @ v, summed over heads

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
        elif include_attention and isinstance(m, Attention):
            handles.append(m.register_forward_hook(attn_hook))
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters())
        model(torch.zeros(1, in_chans, h, w, dtype=p.dtype, device=p.device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return total


def model_summary(name: str, input_size: int = 256) -> dict:
    """Params of both forms and the deployed (fused) GMACs of variant ``name``."""
    from fastvit.models.fastvit import create_model
    from fastvit.reparam.walk import reparameterize

    model = create_model(name)
    fused = reparameterize(model, inplace=False)
    return {
        "variant": name,
        "params_train_m": count_params(model) / 1e6,
        "params_fused_m": count_params(fused) / 1e6,
        "gmacs": count_macs(fused, input_size) / 1e9,
        "gmacs_train": count_macs(model, input_size) / 1e9,
        "gmacs_with_attention": count_macs(fused, input_size, include_attention=True) / 1e9,
        "input_size": model.preprocessing.input_size[-1],
    }
