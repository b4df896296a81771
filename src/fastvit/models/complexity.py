"""Parameter and multiply-accumulate counts.

Counts come from one forward pass with hooks. :func:`model_summary` builds and runs the model on
PyTorch's ``meta`` device: shapes only, no memory and no arithmetic, so a whole ``fastvit info``
table takes a second instead of half a minute (the counts are identical: they depend on shapes
alone).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from fastvit.errors import ConfigError
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
    # Count on an NCHW copy: channels-last ConvFFNs run their 1x1 convs as F.linear, which
    # module hooks would not see.
    model = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    macs, attn = _count(model, input_size, in_chans)
    return macs + attn if include_attention else macs


@torch.no_grad()
def _count(model: nn.Module, input_size: int | tuple[int, int], in_chans: int) -> tuple[int, int]:
    """(conv + linear MACs, attention-matmul MACs) of one forward pass of an NCHW model."""
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    total = 0
    attn_total = 0

    def conv_hook(m: nn.Conv2d, _inp: tuple[Tensor], out: Tensor) -> None:
        nonlocal total
        total += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear_hook(m: nn.Linear, _inp: tuple[Tensor], out: Tensor) -> None:
        nonlocal total
        total += out.numel() * m.in_features

    def attn_hook(m: Attention, inp: tuple[Tensor], _out: Tensor) -> None:
        nonlocal attn_total
        b, c, hh, ww = inp[0].shape
        n = hh * ww
        attn_total += 2 * b * n * n * c  # q @ k^T and attn @ v, summed over heads

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
        elif isinstance(m, Attention):
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
    return total, attn_total


def model_summary(name: str, input_size: int = 256, *, train_macs: bool = False) -> dict:
    """Params of both forms and the deployed (fused) GMACs of variant ``name``.

    Built and run on the meta device (shapes only). ``train_macs`` adds ``gmacs_train``, the
    MACs of the multi-branch training form (its forward is the slow part, so it is optional).
    """
    from fastvit.models.fastvit import create_model
    from fastvit.reparam.walk import reparameterize

    with torch.device("meta"):  # shapes only: no weights allocated, no arithmetic
        model = create_model(name)
    row = {"variant": name, "params_train_m": count_params(model) / 1e6}
    if train_macs:
        row["gmacs_train"] = _count(model, input_size, model.in_chans)[0] / 1e9
    fused = reparameterize(model, inplace=True, channels_last=False)  # NCHW: hooks see all
    macs, attn = _count(fused, input_size, fused.in_chans)
    row.update(
        {
            "params_fused_m": count_params(fused) / 1e6,
            "gmacs": macs / 1e9,
            "gmacs_with_attention": (macs + attn) / 1e9,
            "input_size": fused.preprocessing.input_size[-1],
        }
    )
    return row


@torch.no_grad()
def activation_bytes(name: str, input_size: int, batch: int = 1, *, training: bool) -> int:
    """Rough float32 activation memory of one forward pass of variant ``name``, in bytes.

    Measured on the meta device (shapes only, instant at any size). Training keeps every
    module's output for the backward pass (their sum, plus the attention matrices); inference
    needs only a few live tensors at a time (3x the largest output or attention matrix). It is
    an estimate meant to refuse sizes that cannot fit, not an exact peak.
    """
    from fastvit.models.fastvit import create_model

    with torch.device("meta"):
        model = create_model(name).eval()
    outputs: list[int] = []
    attn: list[int] = []

    def leaf_hook(_m: nn.Module, _inp: tuple[Tensor], out: Tensor) -> None:
        if isinstance(out, Tensor):
            outputs.append(out.numel())

    def attn_hook(m: Attention, inp: tuple[Tensor], _out: Tensor) -> None:
        b, _c, hh, ww = inp[0].shape
        attn.append(b * m.num_heads * (hh * ww) ** 2)  # the (N x N) map per head

    handles = [
        m.register_forward_hook(attn_hook if isinstance(m, Attention) else leaf_hook)
        for m in model.modules()
        if isinstance(m, Attention) or not list(m.children())
    ]
    try:
        model(torch.zeros(1, model.in_chans, input_size, input_size, device="meta"))
    finally:
        for h in handles:
            h.remove()
    elems = sum(outputs) + 2 * sum(attn) if training else 3 * max(outputs + attn)
    return int(elems) * 4 * int(batch)


def memory_limit(device: str = "cpu") -> tuple[int | None, str]:
    """(total bytes this process may use on ``device``, a name for it); None when unknown.

    CPU: physical memory, or the cgroup (container) limit when lower. CUDA: the GPU's memory.
    The total rather than what is free now, so a busy moment never refuses a run that fits.
    """
    if device != "cpu" and torch.cuda.is_available():
        try:
            idx = torch.device(device if device.startswith("cuda") else "cuda").index or 0
            return int(torch.cuda.get_device_properties(idx).total_memory), f"cuda:{idx}"
        except (RuntimeError, ValueError, AssertionError):
            pass
    total = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    total = int(line.split()[1]) * 1024
    except OSError:
        pass
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(limit_file) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:
            total = min(total, int(text)) if total is not None else int(text)
        break
    return total, "this machine"


def check_activation_memory(
    variant: str,
    size: int,
    batch: int,
    *,
    training: bool,
    option: str = "--input-size",
    device: str = "cpu",
) -> None:
    """Refuse an input size whose activations cannot fit in memory, with the estimate."""
    need = activation_bytes(variant, size, batch, training=training)
    have, where = memory_limit(device)
    if have is not None and need > have:
        raise ConfigError(
            f"{option} {size} needs about {need / 2**30:.1f} GiB of activation memory for "
            f"{variant} at batch {batch} ({where} has {have / 2**30:.1f} GiB in all); "
            f"use a smaller {option} or batch size"
        )
