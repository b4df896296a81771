"""The oneDNN post-op fast path (GELU / residual add inside the conv or GEMM) of fused models:
same outputs as the plain ops, really used in inference, never used where it must not be."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import fastvit.layers.fused_ops as fused_ops
import fastvit.layers.mobileone as mobileone_mod
import fastvit.models.blocks as blocks_mod
from conftest import randomize_bn_and_scales
from fastvit import create_model, reparameterize


@pytest.fixture
def kernel_calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count calls of the three fused kernels, as the model modules see them."""
    calls = {"linear_gelu": 0, "linear_add": 0, "conv_gelu": 0}
    for mod, name in ((blocks_mod, "linear_gelu"), (blocks_mod, "linear_add"),
                      (mobileone_mod, "conv_gelu")):
        orig = getattr(mod, name)

        def counted(*args, _orig=orig, _name=name, **kwargs):
            calls[_name] += 1
            return _orig(*args, **kwargs)

        monkeypatch.setattr(mod, name, counted)
    return calls


def _fused(variant: str) -> nn.Module:
    model = create_model(variant, num_classes=10).eval()
    randomize_bn_and_scales(model, seed=3)
    return reparameterize(model)


def test_probe_finds_the_kernels_on_this_build() -> None:
    # If this fails, the torch build lacks the oneDNN post-op ops: the fast path is off and
    # the tests below would only compare the plain path with itself.
    assert torch.backends.mkldnn.is_available()
    assert fused_ops._ops_work()
    # The cached answer must not depend on the caller's default dtype at the first call.
    fused_ops._ops_work.cache_clear()
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        assert fused_ops._ops_work()
    finally:
        torch.set_default_dtype(old)


@pytest.mark.parametrize("variant,ffns,stem_convs", [("fastvit_t8", 10, 6),
                                                     ("fastvit_sa12", 12, 6)])
def test_fast_path_matches_plain_ops(variant: str, ffns: int, stem_convs: int,
                                     kernel_calls: dict[str, int]) -> None:
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


def test_training_form_in_eval_uses_gelu_fusion_only(kernel_calls: dict[str, int]) -> None:
    model = create_model("fastvit_t8", num_classes=10).eval().to(memory_format=torch.channels_last)
    randomize_bn_and_scales(model, seed=4)
    x = torch.randn(1, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.enable_grad():
        ref = model(x).detach()
    with torch.no_grad():
        fast = model(x)
    # Layer scales are still separate multiplies: no residual fusion, and no single conv to
    # fuse GELU into in the multi-branch MobileOne blocks.
    assert kernel_calls == {"linear_gelu": 10, "linear_add": 0, "conv_gelu": 0}
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)


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
    assert sum(kernel_calls.values()) == 0


def test_hooked_modules_are_called_not_bypassed(kernel_calls: dict[str, int]) -> None:
    model = _fused("fastvit_t8")
    ffn = model.network[0][0].convffn
    stem0 = model.patch_embed[0]
    seen: list[tuple[int, ...]] = []
    ffn.fc1.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
    stem0.reparam_conv.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        model(x)
    assert seen == [(1, 48, 32, 32), (1, 144, 16, 16)]  # stem conv, then the first fc1
    # The other FFNs and MobileOne blocks still take the fast path.
    assert kernel_calls == {"linear_gelu": 9, "linear_add": 9, "conv_gelu": 5}


def test_traced_graph_has_no_private_ops() -> None:
    model = _fused("fastvit_t8")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        graph = str(torch.jit.trace(model, x, check_trace=False).inlined_graph)
    assert "mkldnn::_" not in graph and "aten::_convolution" in graph
