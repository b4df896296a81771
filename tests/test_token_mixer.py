"""RepMixer as a token mixer: TokenRepMixer exactness, RepMixer-ViT, `fastvit bench --mixers`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

import fastvit
from conftest import randomize_bn_and_scales
from fastvit.bench.mixers import (
    MIXER_KINDS,
    format_mixer_table,
    loglog_slope,
    run_mixer_benchmark,
    write_mixer_json,
    write_mixer_png,
)
from fastvit.cli.main import main
from fastvit.errors import ConfigError
from fastvit.layers import RepMixer, TokenRepMixer
from fastvit.models import RepMixerViTBlock, repmixer_vit


def _tokens(b: int, p: int, h: int, w: int, c: int, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(b, p + h * w, c, generator=torch.Generator().manual_seed(3), dtype=dtype)


def _grid_reference(rep: RepMixer, x: torch.Tensor, p: int, h: int, w: int) -> torch.Tensor:
    """RepMixer on the (B, C, H, W) map built the obvious way (row-major patch order)."""
    b, _, c = x.shape
    grid = x[:, p:].reshape(b, h, w, c).permute(0, 3, 1, 2)
    out = rep(grid).permute(0, 2, 3, 1).reshape(b, h * w, c)
    return torch.cat([x[:, :p], out], dim=1)


def _rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max abs difference relative to the output scale (at least 1)."""
    return ((a - b).abs().max() / b.abs().max().clamp(min=1.0)).item()


# (grid, prefix tokens, kernel): square, odd and non-square grids, 1xN, class/register tokens.
CASES = [
    ((8, 8), 0, 3),
    ((5, 7), 1, 3),
    ((7, 5), 3, 5),
    ((1, 9), 0, 3),
    ((3, 3), 2, 7),
    ((1, 1), 1, 3),
]


@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("grid,prefix,k", CASES)
def test_token_mixer_fused_is_exact(grid, prefix, k, dtype, atol):
    h, w = grid
    m = TokenRepMixer(12, grid, kernel_size=k, num_prefix_tokens=prefix).to(dtype)
    randomize_bn_and_scales(m, seed=1)
    m.train()  # fusion uses running statistics whatever the mode
    fused = fastvit.reparameterize(m)
    assert m.training and not m.inference_mode, "the input module must be left untouched"
    assert fused.inference_mode and fused.repmixer.inference_mode
    assert not any(isinstance(x, nn.modules.batchnorm._BatchNorm) for x in fused.modules())
    x = _tokens(2, prefix, h, w, 12, dtype)
    with torch.no_grad():
        ref = m.eval()(x)
        out = fused(x)
        grid_ref = _grid_reference(m.repmixer, x, prefix, h, w)
    assert out.shape == x.shape and out.dtype == dtype
    assert torch.equal(out[:, :prefix], x[:, :prefix])  # prefix tokens bypass the mixer
    assert _rel_diff(ref, grid_ref) <= atol  # token order is timm's row-major patch order
    assert _rel_diff(out, ref) <= atol
    assert (ref - x).abs().max() > 1e-2  # it does mix: not an identity that passes trivially


def test_grid_size_at_call_time():
    m = TokenRepMixer(8, (4, 4), num_prefix_tokens=1).double()
    randomize_bn_and_scales(m, seed=2)
    m.eval()
    fused = fastvit.reparameterize(m)
    for h, w in ((4, 4), (6, 3), (9, 11), (2, 2)):
        x = _tokens(1, 1, h, w, 8)
        ref = _grid_reference(m.repmixer, x, 1, h, w)
        with torch.no_grad():
            out = m(x, grid_size=(h, w))
            out_fused = fused(x, (h, w))
        assert _rel_diff(out, ref) <= 1e-12
        assert _rel_diff(out_fused, ref) <= 1e-10


def test_wrong_token_count_names_the_fix():
    m = TokenRepMixer(8, (4, 4), num_prefix_tokens=1)
    with pytest.raises(ValueError, match=r"got 16 tokens but expects 1 prefix \+ 4x4 grid = 17"):
        m(torch.randn(1, 16, 8))
    with pytest.raises(ValueError, match="grid_size"):
        m(torch.randn(1, 17, 8), grid_size=(3, 4))
    with pytest.raises(ValueError, match="grid_size must be"):
        TokenRepMixer(8, (4, 0))
    with pytest.raises(ValueError, match="odd"):
        TokenRepMixer(8, 4, kernel_size=4)
    with pytest.raises(ValueError, match="num_prefix_tokens"):
        TokenRepMixer(8, 4, num_prefix_tokens=-1)


def test_inference_form_built_directly_and_idempotent():
    m = TokenRepMixer(8, (3, 5), num_prefix_tokens=2).double()
    randomize_bn_and_scales(m, seed=4)
    fused = fastvit.reparameterize(m)
    direct = TokenRepMixer(8, (3, 5), num_prefix_tokens=2, inference_mode=True).double()
    assert direct.inference_mode
    assert (
        set(direct.state_dict())
        == set(fused.state_dict())
        == {"repmixer.reparam_conv.weight", "repmixer.reparam_conv.bias"}
    )
    direct.load_state_dict(fused.state_dict())
    x = _tokens(2, 2, 3, 5, 8)
    before = fused(x)
    fused.reparameterize()  # idempotent
    fastvit.reparameterize(fused, inplace=True)
    assert torch.equal(fused(x), before)
    assert _rel_diff(direct.eval()(x), before) <= 1e-12


@pytest.mark.parametrize("prefix", [0, 1])
def test_gradients_train_and_fused(prefix):
    torch.manual_seed(0)
    m = TokenRepMixer(6, (3, 4), num_prefix_tokens=prefix).double()
    randomize_bn_and_scales(m, seed=5)
    x = _tokens(2, prefix, 3, 4, 6).requires_grad_()
    m.train()(x).square().sum().backward()  # training mode: batch statistics
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    if prefix:
        assert torch.equal(x.grad[:, :1], 2 * x[:, :1].detach())  # identity's gradient
    # Analytic gradients against finite differences, w.r.t. the input, at batch 1 (where a
    # (B, C, H, W) view with batch stride C made torch's BatchNorm backward wrong), in
    # training mode, eval mode and fused.
    xs = _tokens(1, prefix, 3, 4, 6).requires_grad_()
    assert torch.autograd.gradcheck(m.train(), (xs,))
    assert torch.autograd.gradcheck(m.eval(), (xs,))
    assert torch.autograd.gradcheck(fastvit.reparameterize(m), (xs,))


def test_scriptable_and_fx_traceable():
    m = TokenRepMixer(8, (3, 5), num_prefix_tokens=1).double()
    randomize_bn_and_scales(m, seed=6)
    m.eval()
    x = _tokens(2, 1, 3, 5, 8)
    ref = m(x)
    for form in (m, fastvit.reparameterize(m)):
        scripted = torch.jit.script(form)
        assert _rel_diff(scripted(x), ref) <= 1e-10
        assert (
            _rel_diff(
                scripted(_tokens(1, 1, 2, 6, 8), (2, 6)), form(_tokens(1, 1, 2, 6, 8), (2, 6))
            )
            <= 1e-12
        )
        traced = torch.fx.symbolic_trace(form, concrete_args={"grid_size": None})
        assert _rel_diff(traced(x), ref) <= 1e-10
        with pytest.raises(ValueError, match="tokens"):  # the check survives tracing
            traced(x[:, :-1])


def test_token_view_needs_no_copy():
    # A contiguous (B, N, C) tensor is the channels-last layout of its (B, C, H, W) map.
    fused = TokenRepMixer(8, (4, 4), inference_mode=True).eval()
    x = torch.randn(2, 16, 8)
    seen = {}
    fused.repmixer.register_forward_pre_hook(lambda mod, a: seen.setdefault("x", a[0]))
    out = fused(x)
    assert seen["x"].data_ptr() == x.data_ptr()
    assert seen["x"].is_contiguous(memory_format=torch.channels_last)
    assert out.shape == x.shape


# ---------------------------------------------------------------------------- RepMixer-ViT


def _vit(mixers, **kw) -> VisionTransformer:
    args = dict(img_size=16, patch_size=4, embed_dim=16, depth=4, num_heads=2, num_classes=5)
    args.update(kw)
    torch.manual_seed(0)
    return repmixer_vit(mixers, **args)


@pytest.mark.parametrize(
    "mixers,kinds", [("all", "RRRR"), ([0, 1], "RRAA"), ("none", "AAAA"), ([-1], "AAAR")]
)
def test_repmixer_vit_layout_and_exact_reparameterization(mixers, kinds):
    model = _vit(mixers).double()
    assert isinstance(model, VisionTransformer)
    got = "".join("R" if isinstance(b, RepMixerViTBlock) else "A" for b in model.blocks)
    assert got == kinds
    assert all(isinstance(b, Block) for b in model.blocks if not isinstance(b, RepMixerViTBlock))
    randomize_bn_and_scales(model, seed=7)
    model.train()
    fused = fastvit.reparameterize(model, verify=True, atol=1e-10, input_shape=(2, 3, 16, 16))
    assert fastvit.is_fused(fused) and model.training and not fused.training
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fused.modules())
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        ref = model.eval()(x)
        out = fused(x)
    assert out.shape == (3, 5)
    assert _rel_diff(out, ref) <= 1e-10
    # float32 as well, relative to the output scale
    m32, f32 = model.float(), fused.float()
    with torch.no_grad():
        assert _rel_diff(f32(x.float()), m32(x.float())) <= 1e-5


def test_repmixer_vit_prefix_tokens_bypass_and_reach_attention():
    model = _vit([0, 1], class_token=True, reg_tokens=2, global_pool="token").eval()
    mixer = model.blocks[0].token_mixer
    assert mixer.num_prefix_tokens == 3 and mixer.grid_size == (4, 4)
    tokens = model._pos_embed(model.patch_embed(torch.randn(2, 3, 16, 16)))
    mixed = mixer(tokens)
    assert torch.equal(mixed[:, :3], tokens[:, :3])
    # Every parameter, the class token included, gets a gradient through the attention blocks.
    model.train()
    model(torch.randn(2, 3, 16, 16)).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
    fused = fastvit.reparameterize(model)
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert _rel_diff(fused(x), model.eval()(x)) <= 1e-5


def test_repmixer_vit_timm_api_script_and_fx():
    model = _vit([0, 2]).eval()
    x = torch.randn(2, 3, 16, 16)
    assert model.forward_features(x).shape == (2, 16, 16)
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, 16)
    model.reset_classifier(7)
    ref = model(x)
    assert ref.shape == (2, 7)
    for form in (model, fastvit.reparameterize(model)):
        assert _rel_diff(torch.jit.script(form)(x), ref) <= 1e-5
        assert _rel_diff(torch.fx.symbolic_trace(form)(x), ref) <= 1e-5
    with pytest.raises(ValueError, match="attention mask"):
        model.blocks[0](torch.randn(1, 16, 16), attn_mask=torch.zeros(16, 16))


def test_repmixer_vit_inference_mode_loads_fused_weights():
    model = _vit([1, 3])
    randomize_bn_and_scales(model, seed=8)
    fused = fastvit.reparameterize(model)
    direct = _vit([1, 3], inference_mode=True)
    direct.load_state_dict(fused.state_dict())  # strict: same keys and shapes
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():  # (fused weights are channels-last: other kernels, same math)
        assert _rel_diff(direct.eval()(x), fused(x)) <= 1e-6


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(mixers="all", class_token=True, global_pool="token"), "class token"),
        (dict(mixers=[4]), "out of range"),
        (dict(mixers="some"), "'all', 'none'"),
        (dict(mixers="all", dynamic_img_size=True), "dynamic_img_size"),
        (dict(mixers="all", img_size=18), "multiple of patch_size"),
    ],
)
def test_repmixer_vit_rejects_bad_configs(kwargs, match):
    mixers = kwargs.pop("mixers")
    with pytest.raises(ConfigError, match=match):
        _vit(mixers, **kwargs)


# ---------------------------------------------------------------------------- bench --mixers


def test_loglog_slope():
    xs = [196, 784, 3136, 16384]
    assert loglog_slope(xs, [3 * x**2 for x in xs]) == pytest.approx(2.0)
    assert loglog_slope(xs, [0.5 * x for x in xs]) == pytest.approx(1.0)
    assert loglog_slope([10], [1.0]) is None


def test_bench_mixers_smoke(tmp_path: Path):
    result = run_mixer_benchmark(
        [2, 3], dim=16, num_heads=2, threads=1, warmup=1, rounds=1, round_time=0.001, memory=False
    )
    assert [(r.kind, r.tokens) for r in result.rows] == [
        (k, n) for n in (4, 9) for k in MIXER_KINDS
    ]
    assert all(r.median_ms > 0 and r.samples >= 1 for r in result.rows)
    assert set(result.slopes) == set(MIXER_KINDS)
    assert all(s["all"] is not None and s["large_n"] is None for s in result.slopes.values())
    text = format_mixer_table(result)
    assert "slope" in text and "2x2" in text and "3x3" in text
    j = json.loads(write_mixer_json(result, tmp_path / "m.json").read_text())
    assert len(j["rows"]) == 6 and j["config"]["dim"] == 16
    png = write_mixer_png(result, tmp_path / "m.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.png"]  # no temp files


def test_bench_mixers_cli(tmp_path: Path, capsys):
    out = tmp_path / "out"
    argv = [
        "bench",
        "--mixers",
        "--mixer-grids",
        "2,3",
        "--mixer-dim",
        "16",
        "--threads",
        "1",
        "--rounds",
        "1",
        "--warmup",
        "1",
        "--round-time",
        "0.001",
        "--no-memory",
        "--quiet",
    ]
    assert main([*argv, "--out", str(out)]) == 0
    assert "slope" in capsys.readouterr().out
    assert (out / "mixers.json").is_file() and (out / "mixers.png").is_file()
    assert main([*argv[:2], "--mixer-grids", "2,x", "--no-memory", "--quiet"]) == 2
    assert main([*argv[:2], "--mixer-grids", "0", "--no-memory", "--quiet"]) == 2
    assert "--mixer-grids" in capsys.readouterr().err
