"""Exactness of every fusion: per block, randomized statistics, float64 and float32."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import fastvit
from conftest import randomize_bn_and_scales
from fastvit.errors import ReparamError
from fastvit.layers import ConvBN, MobileOneBlock, ReparamLargeKernelConv, RepStem
from fastvit.models import AttentionBlock, ConvFFN, PatchEmbed, RepCPE, RepMixer, RepMixerBlock
from fastvit.reparam import fuse


def _check(module: nn.Module, x: torch.Tensor, atol: float, eps: float | None = None) -> None:
    randomize_bn_and_scales(module, seed=1, eps=eps)
    module.train()  # fusion must use running statistics whatever the mode
    fused = fastvit.reparameterize(module)
    assert module.training, "the input model must be left untouched"
    assert not fused.training
    assert fused.inference_mode
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fused.modules())
    with torch.no_grad():
        ref = module.eval()(x)
        out = fused(x)
    assert out.shape == ref.shape
    diff = (out - ref).abs().max().item()
    assert diff <= atol, diff


CASES = [
    # (in, out, k, stride, groups, conv branches)
    (8, 8, 3, 1, 1, 1),
    (8, 8, 3, 1, 8, 1),  # depthwise: identity kernel per channel
    (8, 8, 3, 1, 4, 2),  # grouped, 2 conv branches
    (8, 16, 3, 2, 1, 1),  # stride 2: no skip branch
    (8, 8, 5, 1, 2, 3),
    (8, 8, 7, 1, 8, 1),
    (8, 8, 1, 1, 1, 1),  # 1x1: skip + conv, no scale branch
    (6, 6, 1, 1, 3, 2),
    (4, 12, 7, 2, 4, 1),
]


@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("cin,cout,k,stride,groups,nb", CASES)
@pytest.mark.parametrize("use_se", [False, True])
def test_mobileone_block_exact(cin, cout, k, stride, groups, nb, use_se, dtype, atol):
    torch.manual_seed(0)
    if use_se:  # SE reduces channels by 16: widen the block so it has a hidden unit
        cin, cout = cin * 4, cout * 4
    block = MobileOneBlock(
        cin,
        cout,
        k,
        stride=stride,
        padding=k // 2,
        groups=groups,
        use_se=use_se,
        num_conv_branches=nb,
    ).to(dtype)
    x = torch.randn(2, cin, 11, 13, dtype=dtype)
    _check(block, x, atol)


@pytest.mark.parametrize("eps", [1e-3, 1e-5, 0.1])
def test_bn_eps_is_respected(eps):
    block = MobileOneBlock(8, 8, 3, padding=1, groups=2).double()
    _check(block, torch.randn(2, 8, 9, 9, dtype=torch.float64), 1e-10, eps=eps)


def test_conv_bias_is_folded():
    m = ConvBN(4, 6, 3, padding=1).double()
    m.conv = nn.Conv2d(4, 6, 3, padding=1, bias=True).double()
    nn.init.normal_(m.conv.bias)
    _check(m, torch.randn(1, 4, 8, 8, dtype=torch.float64), 1e-10)
    _, b = fuse.fuse_conv_bn(m.conv.weight, m.conv.bias, m.bn)
    # the bias term: a * b + c, checked against the closed form
    a = m.bn.weight / torch.sqrt(m.bn.running_var + m.bn.eps)
    expected = a * m.conv.bias + m.bn.bias - m.bn.running_mean * a
    assert torch.allclose(b, expected, atol=1e-14, rtol=0)


def test_identity_kernel_is_identity_for_groups():
    for groups in (1, 2, 4, 8):
        k = fuse.identity_kernel(8, groups, 3, dtype=torch.float64)
        x = torch.randn(1, 8, 5, 5, dtype=torch.float64)
        y = torch.nn.functional.conv2d(x, k, padding=1, groups=groups)
        assert torch.equal(y, x)


@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_fastvit_blocks_exact(dtype, atol):
    torch.manual_seed(0)
    x = torch.randn(2, 16, 9, 7, dtype=dtype)
    for block in (
        RepMixer(16, kernel_size=3),
        RepMixer(16, kernel_size=5, use_layer_scale=False),
        RepCPE(16, 16, (7, 7)),
        ConvFFN(16, 32),
        RepMixerBlock(16, mlp_ratio=3.0),
        AttentionBlock(16 * 2, mlp_ratio=2.0),
        PatchEmbed(7, 2, 16, 32),
        ReparamLargeKernelConv(16, 32, 7, 2, groups=16, small_kernel=3),
        ReparamLargeKernelConv(16, 16, 5, 1, groups=1, small_kernel=None),
        RepStem(16, 24),
    ):
        xin = x if not isinstance(block, AttentionBlock) else torch.randn(2, 32, 5, 6, dtype=dtype)
        _check(block.to(dtype), xin, atol)


def test_large_kernel_activation_option():
    torch.manual_seed(0)
    x = torch.randn(1, 4, 8, 8)
    official = ReparamLargeKernelConv(4, 8, 7, 2, groups=4, small_kernel=3).eval()
    with_act = ReparamLargeKernelConv(4, 8, 7, 2, groups=4, small_kernel=3, apply_act=True).eval()
    with_act.load_state_dict(official.state_dict())
    with torch.no_grad():
        raw = official(x)
        assert torch.allclose(with_act(x), torch.nn.functional.gelu(raw))
        assert raw.min() < 0  # the official form really returns the pre-activation output


def test_reparameterize_is_idempotent_and_in_place():
    block = RepMixerBlock(8)
    randomize_bn_and_scales(block)
    block.eval()
    x = torch.randn(1, 8, 6, 6)
    with torch.no_grad():
        ref = block(x)
        block.reparameterize()
        state = copy.deepcopy(block.state_dict())
        block.reparameterize()
        block.convert_to_deploy()
        assert block.state_dict().keys() == state.keys()
        assert all(torch.equal(block.state_dict()[k], v) for k, v in state.items())
        assert torch.allclose(block(x), ref, atol=1e-6)
    twice = fastvit.reparameterize(fastvit.reparameterize(block))
    assert twice.state_dict().keys() == state.keys()


def test_inference_mode_construction_matches_fused_keys():
    for cls, args in (
        (MobileOneBlock, (8, 8, 3, 1, 1)),
        (RepMixer, (8,)),
        (RepCPE, (8, 8)),
        (RepMixerBlock, (8,)),
        (AttentionBlock, (32,)),
        (PatchEmbed, (7, 2, 8, 16)),
        (RepStem, (3, 8)),
    ):
        fused = fastvit.reparameterize(cls(*args))
        direct = cls(*args, inference_mode=True)
        assert direct.inference_mode
        assert {k: v.shape for k, v in fused.state_dict().items()} == {
            k: v.shape for k, v in direct.state_dict().items()
        }, cls.__name__


def test_user_network_with_repstem():
    class Detector(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = RepStem(3, 16)
            self.neck = nn.Conv2d(16, 8, 1)

        def forward(self, x):
            return self.neck(self.stem(x))

    net = Detector()
    assert isinstance(net.stem.conv1, MobileOneBlock) and net.stem.conv3 is net.stem[2]
    assert "stem.0.rbr_conv.0.conv.weight" in net.state_dict()
    assert "stem.1.rbr_scale.bn.running_var" in net.state_dict()
    randomize_bn_and_scales(net)
    fused = fastvit.reparameterize(net, verify=True, input_shape=(2, 3, 33, 47))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert isinstance(fused.stem.conv2.reparam_conv, nn.Conv2d)


def test_verify_raises_with_the_difference():
    class Sneaky(MobileOneBlock):
        def _reparameterize(self) -> None:
            super()._reparameterize()
            with torch.no_grad():
                self.reparam_conv.bias.add_(0.5)

    block = Sneaky(4, 4, 3, padding=1)
    with pytest.raises(ReparamError, match=r"differs from the original by 0\.5"):
        fastvit.reparameterize(block, verify=True, input_shape=(1, 4, 8, 8))


def test_padding_mismatch_is_a_config_error():
    with pytest.raises(fastvit.ConfigError, match="padding=1"):
        MobileOneBlock(4, 4, 3, padding=0)


def test_syncbatchnorm_converted_model_still_fuses():
    net = nn.Sequential(RepMixerBlock(8))
    randomize_bn_and_scales(net)
    sync = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(net))
    assert any(isinstance(m, nn.SyncBatchNorm) for m in sync.modules())
    fused = fastvit.reparameterize(sync)
    x = torch.randn(1, 8, 5, 5)
    with torch.no_grad():
        assert torch.allclose(fused(x), net.eval()(x), atol=1e-5)


def test_wrappers_are_unwrapped():
    block = RepMixerBlock(8)
    randomize_bn_and_scales(block)
    fused = fastvit.reparameterize(nn.DataParallel(block))
    assert isinstance(fused, RepMixerBlock) and fused.inference_mode
    x = torch.randn(1, 8, 5, 5)
    with torch.no_grad():
        assert torch.allclose(fused(x), block.eval()(x), atol=1e-5)


def test_attention_block_with_a_layernorm_folds_its_affine_and_keeps_the_rest():
    # (MobileCLIP2-style LayerNorm2d attention: the LayerNorm's weight/bias fold into qkv, an
    # affine-free LayerNorm stays; issue 11.)
    from timm.layers import LayerNorm2d

    torch.manual_seed(0)
    block = AttentionBlock(32, mlp_ratio=2.0, norm_layer=LayerNorm2d).double()
    with torch.no_grad():
        block.norm.weight.uniform_(0.5, 1.5)
        block.norm.bias.normal_(0, 0.1)
    _check(block, torch.randn(2, 32, 5, 6, dtype=torch.float64), 1e-10)
    fused = fastvit.reparameterize(block)
    assert isinstance(fused.norm, LayerNorm2d) and fused.token_mixer.qkv.bias is not None
    assert fused.norm.weight is None and fused.norm.bias is None
    direct = AttentionBlock(32, mlp_ratio=2.0, norm_layer=LayerNorm2d, inference_mode=True)
    assert {k: v.shape for k, v in fused.state_dict().items()} == {
        k: v.shape for k, v in direct.state_dict().items()
    }
