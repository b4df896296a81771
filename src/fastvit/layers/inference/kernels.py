"""The oneDNN post-op kernels behind the fused modules' CPU fast path, with their guards.

A GELU or a residual add after a conv/GEMM is a separate pass over a large activation (the
FFN's hidden tensor is 4x the block width). oneDNN can apply both as *post-ops* of the conv or
GEMM while the output tile is still in cache. PyTorch exposes those kernels as
``torch.ops.mkldnn._linear_pointwise`` / ``_convolution_pointwise`` (the ops Inductor emits for
the same fusions). They are private, so this is the only module in fastvit that calls them,
and only where they are known to work (:func:`can_fuse`); everywhere else the fused modules run
the plain ops:

* torch in :data:`SUPPORTED_TORCH` (the range in ``pyproject.toml``, ``[tool.fastvit]``), a
  oneDNN build, ``torch.backends.mkldnn.enabled`` (``torch.backends.mkldnn.flags(enabled=False)``
  turns the fast path off), and a one-time probe that the ops exist and agree with the plain ops;
* CPU tensors in float32 or bfloat16 without autocast, with autograd off (``torch.no_grad`` /
  ``torch.inference_mode``): these kernels have no backward;
* not while fx-, jit- or dynamo-tracing, scripting, compiling or exporting (those graphs see
  the plain ops; Inductor makes the same fusions itself), nor under a dispatch mode (FLOP
  counters, fake tensors);
* no forward hook that the kernel would bypass (:func:`unhooked`).

The result equals the plain ops up to float rounding (oneDNN and MKL sum in different orders).

Two choices depend on the CPU alone (never on state cached at run time): plain GEMMs without
a post-op (the attention's qkv and output projections) run on oneDNN or on torch's own sgemm
(MKL), whichever is faster on the host (:func:`prefer_onednn_gemm`); and the exact GELU
runs as the GEMM's/conv's post-op or as a separate in-place pass right after it
(:func:`prefer_gelu_postop`).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as module_mod

from fastvit.host import HostInfo, host_info

#: torch versions (inclusive lower, exclusive upper ``(major, minor)``) whose private oneDNN
#: post-op kernels the fast path may use; keep equal to ``[tool.fastvit] fused-kernels-torch``
#: in pyproject.toml. Outside it the fused modules run the plain ops (same outputs, ~10% slower).
SUPPORTED_TORCH = ((2, 1), (2, 15))

_FAST_DTYPES = (torch.float32, torch.bfloat16)


def _torch_version() -> tuple[int, int]:
    major, minor = torch.__version__.split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def torch_supported(version: tuple[int, int] | None = None) -> bool:
    """Whether ``version`` (default: the running torch) is in :data:`SUPPORTED_TORCH`."""
    lo, hi = SUPPORTED_TORCH
    return lo <= (version or _torch_version()) < hi


@functools.cache
def kernels_available() -> bool:
    """Whether this torch build has the post-op kernels and they give the plain result."""
    if not torch_supported():
        return False
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        gen = torch.Generator().manual_seed(0)
        # (explicit dtype/device: the caller's defaults must not decide the cached answer)
        kw = {"generator": gen, "dtype": torch.float32, "device": "cpu"}
        x = torch.randn(2, 3, 3, 8, **kw)
        w = torch.randn(16, 8, **kw)
        b = torch.randn(16, **kw)
        r = torch.randn(2, 3, 3, 16, **kw)
        with torch.no_grad():
            got_gelu = torch.ops.mkldnn._linear_pointwise(x, w, b, "gelu", [], "none")
            got_none = torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "none")
            got_add = torch.ops.mkldnn._linear_pointwise.binary(x, r, w, b, "add")
            wc = w[:, :, None, None]
            xc = x.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
            got_conv = torch.ops.mkldnn._convolution_pointwise(
                xc, wc, b, [0, 0], [1, 1], [1, 1], 1, "gelu", [], "none"
            )
            ref = F.linear(x, w, b)
            ok = (
                torch.allclose(got_gelu, F.gelu(ref), atol=1e-4)
                and torch.allclose(got_none, ref, atol=1e-4)
                and torch.allclose(got_add, ref + r, atol=1e-4)
                and torch.allclose(got_conv.permute(0, 2, 3, 1), F.gelu(ref), atol=1e-4)
            )
        return bool(ok)
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def _dispatch_mode_active() -> bool:
    """A ``TorchDispatchMode`` (FLOP counters, fake tensors, ...) sees every aten op: give it
    the plain ops it knows rather than private oneDNN ones."""
    stack_len = getattr(torch._C, "_len_torch_dispatch_stack", None)
    return stack_len is None or stack_len() > 0


@torch.jit.unused
def eager(x) -> bool:  # (unannotated: TorchScript reads unused signatures)
    """True when ``x`` is a real tensor in plain eager execution: not an fx proxy, not under
    jit tracing/scripting, dynamo compiling/exporting or a dispatch mode. Speed tricks that
    change the op sequence run only then, so every graph capture sees the plain ops."""
    return (
        not isinstance(x, torch.fx.Proxy)
        and not torch.jit.is_scripting()
        and not torch.jit.is_tracing()
        and not torch.compiler.is_compiling()
        and not _dispatch_mode_active()
    )


@torch.jit.unused
def can_fuse(x, *weights) -> bool:  # (unannotated: TorchScript reads unused signatures)
    """True where the post-op kernels may run on ``x`` with ``weights``; see the module doc."""
    return eager(x) and kernels_apply(x, *weights)


@torch.jit.unused
def kernels_apply(x, *weights) -> bool:  # (unannotated: TorchScript reads unused signatures)
    """:func:`can_fuse` for a caller that has checked :func:`eager` already (hot path)."""
    return (
        x.device.type == "cpu"
        and x.dtype in _FAST_DTYPES
        and all(w.dtype == x.dtype and w.device == x.device for w in weights)
        and not torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
        and torch.backends.mkldnn.enabled
        and kernels_available()
    )


def unhooked(*modules: nn.Module) -> bool:
    """True if no forward hook would see these modules being called.

    Running a module's weights through a fused kernel bypasses its ``forward``; hooks
    (feature taps, layer-based FLOP counters) must keep seeing the module, so hooked modules
    take the plain path.
    """
    if module_mod._global_forward_hooks or module_mod._global_forward_pre_hooks:
        return False
    return not any(m._forward_hooks or m._forward_pre_hooks for m in modules)


def is_exact_gelu(act: nn.Module) -> bool:
    """The activation oneDNN's ``gelu`` post-op computes: ``nn.GELU()`` (erf form)."""
    return type(act) is nn.GELU and act.approximate == "none"


def prefer_onednn_gemm(host: HostInfo | None = None) -> bool:
    """Whether a plain fp32 GEMM (no post-op) should run on oneDNN rather than torch's sgemm.

    True on x86 CPUs with AVX2 but no AVX-512, and on non-Intel x86 CPUs with AVX-512
    (``host``: default this machine). On a 2-core AMD EPYC (AVX2 only) oneDNN's AVX2 brgemm
    computes FastViT's attention projections (64 tokens x 512-608 channels) 4-8% faster than
    MKL's sgemm on one thread, in one OpenMP parallel region where MKL's small-M sgemm
    synchronises its threads several times: the attention mixer (qkv, SDPA, proj + residual)
    takes 7% less time on 1 thread and 15% less on 2. On an AMD EPYC Zen 5 (AVX-512) MKL's sgemm
    runs those shapes at 2.5x oneDNN's time (64 x 512 -> 2048: 1.0 vs 0.39 ms), and the SA/MA
    models run 7% faster whole with oneDNN (BENCHMARKS.md, issue 20). On Intel CPUs with
    AVX-512/AMX MKL's sgemm is Intel's tuned path and was measured well there, so it is kept.
    A pure function of the CPU's ISA and vendor: callers ask per call, nothing is cached on
    modules.
    """
    host = host_info() if host is None else host
    return host.isa_level == "AVX2" or (host.avx2 and host.vendor != "GenuineIntel")


def prefer_gelu_postop(host: HostInfo | None = None) -> bool:
    """Whether the exact GELU after a GEMM/conv should run as oneDNN's post-op (else as ATen's
    in-place GELU over the fresh output, which is still in cache).

    False on x86 CPUs with AVX2 but no AVX-512: there oneDNN's AVX2 kernels evaluate the erf
    post-op slower than ATen's vectorised GELU does in a pass of its own. With the AVX2 kernels
    (Zen 5 capped by ``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2``) SA12's first fc1
    (4096 x 64 -> 256) takes 0.89 ms with the post-op and 0.81 ms with the separate pass, and
    whole fused models run 0.7% (T8) to 4.8% (SA24) faster; with AVX-512 the post-op is
    1-2% faster and is kept (BENCHMARKS.md, issue 20). Same values up to float rounding.
    """
    return (host_info() if host is None else host).isa_level != "AVX2"


def linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``x @ weight.T + bias`` as one oneDNN GEMM; call only where :func:`can_fuse`."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "none")


def linear_gelu(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``gelu(x @ weight.T + bias)``: one oneDNN GEMM, the GELU as its post-op or in place
    right after it (:func:`prefer_gelu_postop`); call only where :func:`can_fuse`."""
    if prefer_gelu_postop():
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu", [], "none")
    return torch.ops.aten.gelu_(
        torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "none")
    )


def linear_add(x: Tensor, weight: Tensor, bias: Tensor | None, residual: Tensor) -> Tensor:
    """``residual + x @ weight.T + bias`` in one oneDNN GEMM; call only where :func:`can_fuse`."""
    return torch.ops.mkldnn._linear_pointwise.binary(x, residual, weight, bias, "add")


def conv_gelu(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """``gelu(conv(x))``: one oneDNN convolution, the GELU as its post-op or in place right
    after it (:func:`prefer_gelu_postop`); call only where :func:`can_fuse`."""
    postop = prefer_gelu_postop()
    y = torch.ops.mkldnn._convolution_pointwise(
        x,
        conv.weight,
        conv.bias,
        list(conv.padding),
        list(conv.stride),
        list(conv.dilation),
        conv.groups,
        "gelu" if postop else "none",
        [],
        "none",
    )
    return y if postop else torch.ops.aten.gelu_(y)


def repeat_channels(x: Tensor, m: int) -> Tensor:
    """Repeat every channel ``m`` times in place order (c0, c0, c1, c1, ... for m=2).

    Keeps a channels-last input channels-last (an expand + reshape of the NHWC view).
    """
    if x.is_contiguous(memory_format=torch.channels_last):
        b, c, h, w = x.shape
        y = x.permute(0, 2, 3, 1).unsqueeze(-1).expand(b, h, w, c, m)
        return y.reshape(b, h, w, c * m).permute(0, 3, 1, 2)
    return x.repeat_interleave(m, dim=1)


def reach_cropped(weight: Tensor, padding: tuple[int, int], size: tuple[int, int]):
    """``(weight, padding)`` of a stride-any, dilation-1 conv with "same" padding (``k // 2``,
    odd ``k``) cut to the taps that can touch an input of spatial ``size``; None if all can.

    Output ``o`` reads input rows ``o * s + i - k // 2``: over all outputs the tap offsets
    ``i - k // 2`` that land inside ``[0, H)`` lie in ``[-(H - 1), H - 1]``, so on a map smaller
    than the kernel's reach the outer taps only ever multiply padding zeros. Dropping them (and
    shrinking the padding to match) keeps every output and every gradient: a dropped tap's
    gradient is exactly zero either way. FastViT's 7x7 depthwise convs meet 1x1 and 2x2 maps in
    its last stages at 32 px, where oneDNN's forward and weight-gradient kernels for a kernel
    larger than the map are 20-100x slower than for the cropped one (AVX2).
    """
    k_h, k_w = weight.shape[-2:]
    radii = []
    for k, p, n in ((k_h, padding[0], size[0]), (k_w, padding[1], size[1])):
        if k % 2 == 0 or p != k // 2:
            return None
        radii.append(min(k // 2, n - 1))
    r_h, r_w = radii
    if (r_h, r_w) == (k_h // 2, k_w // 2):
        return None
    c_h, c_w = k_h // 2, k_w // 2
    return weight[..., c_h - r_h : c_h + r_h + 1, c_w - r_w : c_w + r_w + 1], (r_h, r_w)


def split_multiplier_conv(
    x: Tensor,
    weight: Tensor,
    stride: tuple[int, int],
    padding: tuple[int, int],
    m: int,
) -> Tensor:
    """A channel-multiplier grouped conv (``C -> m*C``, ``groups=C``, no bias) as ``m``
    depthwise convs over the unchanged input, interleaved back into channel order.

    Output channel ``o = m*c + j`` reads input channel ``c`` with kernel ``weight[o]``: the
    ``j``-th depthwise conv takes ``weight[j::m]``. Same values and gradients as the grouped
    conv; oneDNN's depthwise forward and backward are 2-5x faster than its grouped ones for
    FastViT's patch embeddings in training (and the backward of the input repeat that
    :func:`repeat_channels` needs costs more than the interleave here). Channels-last in,
    channels-last out.
    """
    c = x.shape[1]
    outs = [F.conv2d(x, weight[j::m], None, stride, padding, 1, c) for j in range(m)]
    if x.is_contiguous(memory_format=torch.channels_last):
        nhwc = torch.stack([o.permute(0, 2, 3, 1) for o in outs], -1)  # (N, H, W, C, m)
        return nhwc.flatten(3).permute(0, 3, 1, 2)
    return torch.stack(outs, 2).flatten(1, 2)  # (N, C, m, H, W) -> channel m*c + j
