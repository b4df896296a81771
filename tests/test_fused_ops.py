"""The inference package (fastvit.layers.inference): the fused modules' speed paths (oneDNN
post-op kernels, NHWC GEMMs, channel-repeat convs) give the plain ops' outputs, are really used
in inference, and never used where they must not be; training-form models never use them."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import fastvit.layers.inference.conv as conv_mod
import fastvit.layers.inference.ffn as ffn_mod
import fastvit.layers.inference.kernels as kernels
import fastvit.layers.inference.linear as linear_mod
from conftest import randomize_bn_and_scales
from fastvit import create_model, reparameterize
from fastvit.host import HostInfo
from fastvit.layers.inference import FusedConv2d, FusedConvFFN, FusedLinear
from fastvit.models.blocks import AttentionBlock


def _count_calls(monkeypatch: pytest.MonkeyPatch, targets: list[tuple[object, str]]) -> dict:
    """Wrap each ``module.name`` so that calls are counted in the returned dict."""
    calls = {name: 0 for _, name in targets}
    for mod, name in targets:
        orig = getattr(mod, name)

        def counted(*args, _orig=orig, _name=name, **kwargs):
            calls[_name] += 1
            return _orig(*args, **kwargs)

        monkeypatch.setattr(mod, name, counted)
    return calls


@pytest.fixture
def kernel_calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count calls of the three fused kernels, as the inference modules see them."""
    return _count_calls(
        monkeypatch, [(ffn_mod, "linear_gelu"), (ffn_mod, "linear_add"), (conv_mod, "conv_gelu")]
    )


def _fused(variant: str) -> nn.Module:
    model = create_model(variant, num_classes=10).eval()
    randomize_bn_and_scales(model, seed=3)
    return reparameterize(model)


def test_probe_finds_the_kernels_on_this_build() -> None:
    # If this fails, the torch build lacks the oneDNN post-op ops: the fast path is off and
    # the tests below would only compare the plain path with itself.
    assert torch.backends.mkldnn.is_available()
    assert kernels.kernels_available()
    # The cached answer must not depend on the caller's default dtype at the first call.
    kernels.kernels_available.cache_clear()
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        assert kernels.kernels_available()
    finally:
        torch.set_default_dtype(old)


def test_supported_torch_range_is_the_documented_one(monkeypatch: pytest.MonkeyPatch) -> None:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    meta = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    lo, hi = kernels.SUPPORTED_TORCH
    assert meta["tool"]["fastvit"]["fused-kernels-torch"] == (f">={lo[0]}.{lo[1]},<{hi[0]}.{hi[1]}")
    assert kernels.torch_supported()  # the torch this project runs on
    assert not kernels.torch_supported((2, 0)) and not kernels.torch_supported(hi)
    # Outside the range the private ops are never called (plain ops, same outputs).
    monkeypatch.setattr(kernels, "_torch_version", lambda: hi)
    kernels.kernels_available.cache_clear()
    try:
        assert not kernels.kernels_available()
    finally:
        monkeypatch.undo()
        kernels.kernels_available.cache_clear()


def test_only_the_inference_package_touches_private_ops() -> None:
    src = Path(sys.modules["fastvit"].__file__).parent
    model_code = [p for d in ("reparam", "layers", "models") for p in (src / d).rglob("*.py")]
    users = sorted(
        str(p.relative_to(src))
        for p in model_code
        if "torch.ops.mkldnn" in p.read_text()
        or "_global_forward_hooks" in p.read_text()
        or "_len_torch_dispatch_stack" in p.read_text()
    )
    assert users == ["layers/inference/kernels.py"]


@pytest.mark.parametrize(
    "variant,ffns,stem_convs", [("fastvit_t8", 10, 6), ("fastvit_sa12", 12, 6)]
)
def test_fast_path_matches_plain_ops(
    variant: str, ffns: int, stem_convs: int, kernel_calls: dict[str, int]
) -> None:
    model = _fused(variant)
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.enable_grad():  # autograd on: the plain ops
        ref = model(x).detach()
    assert sum(kernel_calls.values()) == 0
    with torch.inference_mode():
        fast = model(x)
    # Every FFN runs fc1+GELU and fc2+residual as fused GEMMs; the stem's three MobileOne
    # blocks and the three patch embeddings' 1x1 blocks run conv+GELU fused.
    assert kernel_calls == {"linear_gelu": ffns, "linear_add": ffns, "conv_gelu": stem_convs}
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    assert fast.argmax(1).tolist() == ref.argmax(1).tolist()


@pytest.mark.skipif(
    not torch.ops.mkldnn._is_mkldnn_bf16_supported(),
    reason="torch runs bf16 convs on the CPU only with AVX-512 BW/VL/DQ or AVX-NE-CONVERT",
)
def test_fast_path_bf16_matches_plain_bf16(kernel_calls: dict[str, int]) -> None:
    model = _fused("fastvit_t8").to(torch.bfloat16)
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1)).bfloat16()
    with torch.enable_grad():
        ref = model(x).detach().float()
    with torch.no_grad():
        fast = model(x).float()
    assert kernel_calls["linear_gelu"] == 10
    # bf16 keeps ~3 significant digits; the two paths round at different points.
    assert (fast - ref).abs().max().item() < 0.05 * ref.abs().max().item()


def test_training_form_is_plain(kernel_calls: dict[str, int]) -> None:
    model = create_model("fastvit_t8", num_classes=10).eval().to(memory_format=torch.channels_last)
    assert not any(isinstance(m, (FusedConv2d, FusedConvFFN)) for m in model.modules())
    randomize_bn_and_scales(model, seed=4)
    x = torch.randn(1, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        model(x)
    assert sum(kernel_calls.values()) == 0
    # reparameterize and inference_mode=True build the fused form from the inference modules
    for fused in (reparameterize(model), create_model("fastvit_t8", inference_mode=True)):
        ffns = [m for m in fused.modules() if isinstance(m, FusedConvFFN)]
        assert len(ffns) == 10
        # every conv is a FusedConv2d but the FFNs' 1x1s (run by FusedConvFFN) and the SE's
        plain = {id(c) for f in ffns for c in (f.fc1, f.fc2)}
        plain |= {id(m) for m in fused.conv_exp.se.modules() if isinstance(m, nn.Conv2d)}
        assert {id(m) for m in fused.modules() if type(m) is nn.Conv2d} == plain


def test_fallbacks_keep_plain_ops(kernel_calls: dict[str, int]) -> None:
    model = _fused("fastvit_t8")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        kernel_calls.update(dict.fromkeys(kernel_calls, 0))

        with torch.backends.mkldnn.flags(enabled=False):  # the user's off switch
            torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=1e-5)
        model.train()  # dropout/drop-path semantics belong to the plain path
        model(x)
        model.eval()
        with FlopCounterMode(display=False) as counter:  # dispatch modes see plain aten ops
            model(x)
        assert counter.get_total_flops() > 0
        torch.jit.trace(model, x, check_trace=False)  # exports see plain ops
        graph = torch.fx.symbolic_trace(model)  # so does fx
        torch.testing.assert_close(graph(x), ref, atol=1e-5, rtol=1e-5)
    assert sum(kernel_calls.values()) == 0


def test_hooked_modules_are_called_not_bypassed(kernel_calls: dict[str, int]) -> None:
    model = _fused("fastvit_t8")
    ffn = model.network[0][0].convffn
    stem0 = model.patch_embed[0]
    seen: list[tuple[int, ...]] = []
    ffn.fc1.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
    stem0.reparam_conv.act.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        model(x)
    assert seen == [(1, 48, 32, 32), (1, 144, 16, 16)]  # stem GELU, then the first fc1
    # The other FFNs and MobileOne blocks still take the fast path.
    assert kernel_calls == {"linear_gelu": 9, "linear_add": 9, "conv_gelu": 5}


def test_traced_graph_has_no_private_ops() -> None:
    model = _fused("fastvit_t8")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        graph = str(torch.jit.trace(model, x, check_trace=False).inlined_graph)
    assert "mkldnn::_" not in graph and "aten::_convolution" in graph
    assert "mkldnn" not in str(torch.fx.symbolic_trace(model).graph)
    exported = torch.export.export(model, (x,))
    assert "mkldnn" not in str(exported.graph) and "repeat" not in str(exported.graph)
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), model(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
def test_channel_repeat_conv_equals_grouped_conv(channels_last: bool) -> None:
    torch.manual_seed(0)
    conv = FusedConv2d(6, 18, 7, stride=2, padding=3, groups=6).double().eval()
    assert conv.channel_multiplier == 3
    x = torch.randn(2, 6, 13, 11, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    plain = F.conv2d(x, conv.weight, conv.bias, 2, 3, 1, 6)
    with torch.no_grad():
        assert torch.allclose(conv(x), plain, atol=1e-12, rtol=0)
        scripted = torch.jit.script(conv)  # the plain path
        assert torch.allclose(scripted(x), plain, atol=1e-12, rtol=0)
    assert FusedConv2d(6, 6, 3, groups=6).channel_multiplier == 1
    assert FusedConv2d(6, 12, 3, groups=2).channel_multiplier == 1


def test_fused_conv_gelu_matches_plain(kernel_calls: dict[str, int]) -> None:
    torch.manual_seed(0)
    conv = FusedConv2d(8, 16, 3, padding=1, act=nn.GELU()).eval()
    x = torch.randn(1, 8, 9, 9)
    plain = F.gelu(F.conv2d(x, conv.weight, conv.bias, padding=1))
    with torch.no_grad():
        torch.testing.assert_close(conv(x), plain, atol=1e-5, rtol=1e-5)
    assert kernel_calls["conv_gelu"] == 1
    tanh = FusedConv2d(8, 16, 3, padding=1, act=nn.GELU(approximate="tanh")).eval()
    with torch.no_grad():
        tanh(x)  # not what oneDNN's gelu post-op computes: plain ops
    assert kernel_calls["conv_gelu"] == 1


# --------------------------------------------------------------------- attention GEMMs per host

_AVX2 = HostInfo("AMD EPYC", "AuthenticAMD", "x86_64", 2, "/proc/cpuinfo", fma=True, avx2=True)
_AVX512 = dataclasses.replace(
    _AVX2, model="Xeon", vendor="GenuineIntel", avx512f=True, avx512_vnni=True
)
_AMX = dataclasses.replace(_AVX512, avx512_bf16=True, amx_tile=True, amx_bf16=True, amx_int8=True)
_ZEN5 = dataclasses.replace(_AVX512, model="AMD EPYC", vendor="AuthenticAMD", avx512_bf16=True)


def test_onednn_gemm_choice_is_a_function_of_the_isa(monkeypatch: pytest.MonkeyPatch) -> None:
    assert kernels.prefer_onednn_gemm(_AVX2)
    assert kernels.prefer_onednn_gemm(dataclasses.replace(_AVX2, vendor="GenuineIntel"))
    assert not kernels.prefer_onednn_gemm(_AVX512) and not kernels.prefer_onednn_gemm(_AMX)
    assert kernels.prefer_onednn_gemm(_ZEN5)  # AVX-512 but not Intel: MKL's sgemm is slow there
    arm = HostInfo("Neoverse-N1", "ARM", "aarch64", 4, "/proc/cpuinfo", neon=True, dotprod=True)
    assert not kernels.prefer_onednn_gemm(arm)
    assert not kernels.prefer_onednn_gemm(HostInfo("?", "", "x86_64", 1))  # flags unknown
    monkeypatch.setattr(kernels, "host_info", lambda: _AVX2)  # default: this machine
    assert kernels.prefer_onednn_gemm()
    monkeypatch.setattr(kernels, "host_info", lambda: _AVX512)
    assert not kernels.prefer_onednn_gemm()


@pytest.fixture
def gemm_calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count the oneDNN GEMMs FusedLinear runs (plain ``linear`` and ``linear_add``)."""
    return _count_calls(monkeypatch, [(linear_mod, "linear"), (linear_mod, "linear_add")])


def _attention_block() -> tuple[nn.Module, nn.Module]:
    """A training-form attention block with random BN statistics and layer scales, and its
    fused form (FusedLinear qkv/proj)."""
    torch.manual_seed(0)
    block = AttentionBlock(64, mlp_ratio=2.0).eval()
    randomize_bn_and_scales(block, seed=5)
    fused = reparameterize(block)
    attn = fused.token_mixer
    assert type(attn.qkv) is FusedLinear and type(attn.proj) is FusedLinear
    assert attn.qkv.bias is not None  # (the BatchNorm folded into it)
    return block, fused


@pytest.mark.parametrize(
    "host,channels_last,calls",
    [
        (_AVX2, True, {"linear": 1, "linear_add": 1}),
        (_AVX2, False, {"linear": 1, "linear_add": 0}),
        (_AVX512, True, {"linear": 0, "linear_add": 0}),
        (_AMX, True, {"linear": 0, "linear_add": 0}),
        (_ZEN5, True, {"linear": 1, "linear_add": 1}),
    ],
    ids=["avx2", "avx2-nchw", "avx512", "amx", "amd-avx512"],
)
def test_attention_gemms_follow_the_host(
    host: HostInfo,
    channels_last: bool,
    calls: dict[str, int],
    gemm_calls: dict[str, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kernels, "host_info", lambda: host)
    block, fused = _attention_block()
    x = torch.randn(2, 64, 5, 7, generator=torch.Generator().manual_seed(0))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        unfused = block(x)
    with torch.enable_grad():  # autograd on: the plain ops
        plain = fused(x).detach()
    assert gemm_calls == {"linear": 0, "linear_add": 0}
    with torch.inference_mode():
        out = fused(x)
    # AVX2-only and non-Intel CPUs: qkv as one oneDNN GEMM and proj with the residual added
    # inside it (for an NCHW input the tokens are strided, so qkv runs F.linear, and proj's GEMM
    # leaves the add to the plain op). Intel AVX-512/AMX: F.linear.
    assert gemm_calls == calls
    torch.testing.assert_close(out, plain, atol=1e-5, rtol=1e-5)
    scale = unfused.abs().max().item()
    assert (out - unfused).abs().max().item() <= 1e-5 * scale  # the project's fp32 tolerance


def test_attention_fast_path_keeps_hooks_and_graphs_plain(
    gemm_calls: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kernels, "host_info", lambda: _AVX2)
    _, fused = _attention_block()
    x = torch.randn(1, 64, 4, 4).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = fused(x)
        assert gemm_calls == {"linear": 1, "linear_add": 1}
        gemm_calls.update(linear=0, linear_add=0)
        traced = torch.jit.trace(fused, x, check_trace=False)
        graph = torch.fx.symbolic_trace(fused)
        scripted = torch.jit.script(fused)
        assert gemm_calls == {"linear": 0, "linear_add": 0}
        assert "mkldnn" not in str(traced.inlined_graph) and "mkldnn" not in str(graph.graph)
        for g in (traced, graph, scripted):
            torch.testing.assert_close(g(x), ref, atol=1e-5, rtol=1e-5)
        assert gemm_calls == {"linear": 0, "linear_add": 0}
        # A hook on proj must see proj called: its residual add is then done apart.
        seen: list[tuple[int, ...]] = []
        fused.token_mixer.proj.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
        torch.testing.assert_close(fused(x), ref, atol=1e-5, rtol=1e-5)
    assert seen == [(1, 16, 64)] and gemm_calls == {"linear": 2, "linear_add": 0}


# --------------------------------------------------------------------- GELU placement per host


def test_gelu_postop_choice_is_a_function_of_the_isa(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not kernels.prefer_gelu_postop(_AVX2)
    assert not kernels.prefer_gelu_postop(dataclasses.replace(_AVX2, vendor="GenuineIntel"))
    assert kernels.prefer_gelu_postop(_AVX512) and kernels.prefer_gelu_postop(_AMX)
    assert kernels.prefer_gelu_postop(_ZEN5)
    arm = HostInfo("Neoverse-N1", "ARM", "aarch64", 4, "/proc/cpuinfo", neon=True, dotprod=True)
    assert kernels.prefer_gelu_postop(arm)
    assert kernels.prefer_gelu_postop(HostInfo("?", "", "x86_64", 1))  # flags unknown
    monkeypatch.setattr(kernels, "host_info", lambda: _AVX2)  # default: this machine
    assert not kernels.prefer_gelu_postop()
    monkeypatch.setattr(kernels, "host_info", lambda: _AVX512)
    assert kernels.prefer_gelu_postop()


@pytest.fixture
def postops(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The post-op of every oneDNN GEMM/conv the kernels run, in call order."""
    assert kernels.kernels_available()  # (probe first: it runs the ops too, and is cached)
    seen: list[str] = []
    real = torch.ops.mkldnn

    class Recorded:
        """A oneDNN op that records its ``attr`` argument (at ``index``) before running."""

        def __init__(self, op, index: int) -> None:
            self.op, self.index = op, index

        def __call__(self, *args):
            seen.append(args[self.index])
            return self.op(*args)

    class Ops:  # torch.ops as the kernels module sees it
        class mkldnn:
            _linear_pointwise = Recorded(real._linear_pointwise, 3)
            _linear_pointwise.binary = Recorded(real._linear_pointwise.binary, 4)
            _convolution_pointwise = Recorded(real._convolution_pointwise, 7)

        aten = torch.ops.aten

    monkeypatch.setattr(kernels.torch, "ops", Ops)
    return seen


@pytest.mark.parametrize(
    "host,attr", [(_AVX2, "none"), (_AVX512, "gelu"), (_AMX, "gelu")], ids=["avx2", "avx512", "amx"]
)
def test_gelu_runs_where_the_host_prefers_with_the_same_outputs(
    host: HostInfo, attr: str, postops: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kernels, "host_info", lambda: host)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 8, 6, 5, generator=gen).contiguous(memory_format=torch.channels_last)
    conv = FusedConv2d(8, 16, 3, padding=1, act=nn.GELU()).eval()
    ffn = _fused("fastvit_t8").network[0][0].convffn
    assert type(ffn) is FusedConvFFN
    xf = torch.randn(1, ffn.fc1.in_channels, 9, 7, generator=gen)
    xf = xf.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        conv_ref = F.gelu(F.conv2d(x, conv.weight, conv.bias, padding=1))
        ffn_ref = xf + ffn.fc2(F.gelu(ffn.fc1(ffn.conv(xf))))
        conv_out, ffn_out = conv(x), ffn(xf, residual=xf)
    # AVX2-only: the conv and fc1 run without a post-op and the GELU in place after them;
    # elsewhere the GELU is their post-op. fc2 adds the residual as its post-op either way.
    assert postops == [attr, attr, "add"]
    torch.testing.assert_close(conv_out, conv_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ffn_out, ffn_ref, atol=1e-5, rtol=1e-5)
