"""The MobileCLIP towers (fastvit_mci0-4) as config data: timm parity, fusion, JSON configs.

Full-size mci models are large (mci4: 322 M parameters), so outputs are compared on reduced
configs that keep every architectural feature (SE downsampling, five stages, LayerNorm2d
attention, stem without 1x1 branch), built identically with timm's ``FastVit`` class; the
full-size variants are checked for parameter counts and structure on the meta device.
"""

from __future__ import annotations

import json
from functools import partial

import pytest
import timm
import torch
from timm.layers import LayerNorm2d
from timm.models.fastvit import FastVit, RepConditionalPosEnc
from timm.utils.model import reparameterize_model
from torch import nn

import fastvit
from conftest import randomize_bn_and_scales
from fastvit.checkpoints import convert_state_dict, load_into, load_model, save_model
from fastvit.models import FastViTConfig, StageConfig, get_config
from fastvit.models.complexity import count_params

NEW = ["fastvit_mci0", "fastvit_mci1", "fastvit_mci2", "fastvit_mci3", "fastvit_mci4"]
TOL = 1e-5


def _tiny(kind: str) -> tuple[FastViTConfig, nn.Module]:
    """A reduced mci0-style (4 stages, SE) or mci3-style (5 stages, LayerNorm) pair:
    our config and timm's FastVit built with the same architecture arguments."""
    cpe = partial(RepConditionalPosEnc, spatial_shape=(7, 7))
    if kind == "mci0":
        dims, mixers = (16, 32, 64, 64), ("repmixer",) * 3 + ("attention",)
        tm = FastVit(
            layers=(1, 2, 1, 1),
            embed_dims=dims,
            mlp_ratios=(3,) * 4,
            se_downsamples=(False, False, True, True),
            pos_embs=(None,) * 3 + (cpe,),
            token_mixers=mixers,
            lkc_use_act=True,
            num_classes=24,
        )
        base = get_config("fastvit_mci0")
        stages = tuple(
            StageConfig(d, w, 3.0, m, i == 3, i > 0, i >= 2)
            for i, (d, w, m) in enumerate(zip((1, 2, 1, 1), dims, mixers))
        )
    else:
        dims = (16, 32, 64, 64, 128)
        mixers = ("repmixer",) * 3 + ("attention",) * 2
        tm = FastVit(
            layers=(1, 1, 1, 2, 1),
            embed_dims=dims,
            mlp_ratios=(4,) * 5,
            se_downsamples=(False,) * 5,
            downsamples=(False,) + (True,) * 4,
            pos_embs=(None,) * 3 + (cpe, cpe),
            token_mixers=mixers,
            lkc_use_act=True,
            norm_layer=partial(LayerNorm2d, eps=1e-5),
            stem_use_scale_branch=False,
            num_classes=24,
        )
        base = get_config("fastvit_mci3")
        stages = tuple(
            StageConfig(d, w, 4.0, m, i >= 3, i > 0)
            for i, (d, w, m) in enumerate(zip((1, 1, 1, 2, 1), dims, mixers))
        )
    return base.replace(name=f"tiny_{kind}", stages=stages, num_classes=24), tm.eval()


def _randomize(model: nn.Module, seed: int) -> None:
    """BN statistics, layer scales, LayerNorm affines and biases far from their init."""
    randomize_bn_and_scales(model, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm) and m.weight is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
        for name, p in model.named_parameters():
            if name.endswith("bias") and ("fc" in name or "proj" in name or "qkv" in name):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def _norms(model: nn.Module) -> list[nn.Module]:
    return [
        m
        for m in model.modules()
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm))
    ]


@pytest.mark.parametrize("kind", ["mci0", "mci3"])
def test_timm_parity_both_forms_and_state_dicts_both_ways(kind: str) -> None:
    torch.manual_seed(0)
    cfg, tm = _tiny(kind)
    _randomize(tm, seed=7)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = tm(x)
    ours = fastvit.models.create_model(cfg)
    assert count_params(ours) == count_params(tm)
    load_into(ours, tm.state_dict())
    ours.eval()
    with torch.no_grad():
        assert _diff(ours(x), ref) <= TOL * ref.abs().max()
    back = convert_state_dict(ours.state_dict(), to="timm")
    tm.load_state_dict(back, strict=True)
    assert all(torch.equal(back[k], v) for k, v in tm.state_dict().items())

    # timm's reparameterized model -> our fused form, and our own fusion
    tf = reparameterize_model(tm, inplace=True)
    with torch.no_grad():
        ref_fused = tf(x)
    mine = fastvit.reparameterize(ours)
    loaded = load_into(
        fastvit.models.create_model(cfg, inference_mode=True), tf.state_dict()
    ).eval()
    with torch.no_grad():
        scale = ref.abs().max()
        assert _diff(mine(x), ref) <= TOL * scale and _diff(loaded(x), ref_fused) <= TOL * scale
    # ours fully fused -> timm's fused layout (identity norms, unit layer scales)
    tf.load_state_dict(
        convert_state_dict(mine.state_dict(), to="timm", norm_layer=cfg.norm_layer), strict=True
    )
    with torch.no_grad():
        assert _diff(tf(x), ref_fused) <= TOL * scale


def test_fused_mci3_keeps_only_affine_free_layernorms() -> None:
    cfg, _ = _tiny("mci3")
    model = fastvit.models.create_model(cfg).double()
    _randomize(model, seed=3)
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    fused = fastvit.reparameterize(model, verify=True, input_shape=(1, 3, 64, 64))
    with torch.no_grad():
        assert _diff(fused(x), model.eval()(x)) <= 1e-10
    norms = _norms(fused)
    assert len(norms) == 3 and all(isinstance(n, LayerNorm2d) for n in norms)
    assert all(n.weight is None and n.bias is None for n in norms)
    assert not [k for k in fused.state_dict() if "layer_scale" in k or "gamma" in k]
    # built directly in the fused form: the same modules and keys
    direct = fastvit.models.create_model(cfg, inference_mode=True).double()
    assert direct.state_dict().keys() == fused.state_dict().keys()
    direct.load_state_dict(fused.state_dict())
    with torch.no_grad():
        assert _diff(direct(x), fused(x)) == 0
        assert _diff(torch.jit.script(fused)(x), fused(x)) <= 1e-12  # TorchScript-able


def test_unfoldable_norm_is_kept_not_an_error() -> None:
    """An attention norm without a foldable affine (here Identity) stays in the fused block."""
    from fastvit.models.blocks import AttentionBlock

    blk = AttentionBlock(32, norm_layer=lambda d: nn.Identity()).eval()
    x = torch.randn(1, 32, 5, 6)
    with torch.no_grad():
        ref = blk(x)
        blk.reparameterize()
        assert isinstance(blk.norm, nn.Identity) and _diff(blk(x), ref) <= 1e-6


@pytest.mark.parametrize(
    "name", [NEW[0], *(pytest.param(n, marks=pytest.mark.slow) for n in NEW[1:])]
)
def test_full_size_params_and_fused_structure_match_timm(name: str) -> None:
    with torch.device("meta"):
        tm = timm.create_model(name)
        ours = fastvit.models.create_model(name)
        fused = fastvit.models.create_model(name, inference_mode=True)
    assert count_params(ours) == count_params(tm)
    assert ours.num_classes == tm.num_classes == get_config(name).num_classes
    assert [f["reduction"] for f in ours.feature_info] == [f["reduction"] for f in tm.feature_info]
    assert set(convert_state_dict(ours.state_dict(), to="timm")) == set(tm.state_dict())
    assert not [k for k in fused.state_dict() if "layer_scale" in k]
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fused.modules())
    norms = _norms(fused)
    if name in ("fastvit_mci3", "fastvit_mci4"):
        assert norms and all(n.weight is None for n in norms)
    else:
        assert not norms


def test_config_json_round_trip_for_every_variant() -> None:
    for name in fastvit.list_models():
        cfg = get_config(name)
        text = cfg.to_json()
        assert FastViTConfig.from_json(text) == cfg
        assert json.loads(text)["stages"][0]["downsample"] is False
    with pytest.raises(fastvit.ConfigError, match="unknown FastViT config fields"):
        FastViTConfig.from_dict({**get_config("fastvit_t8").to_dict(), "depths": [1]})
    with pytest.raises(fastvit.ConfigError, match="needs downsample=True"):
        get_config("fastvit_t8").replace(
            stages=(StageConfig(1, 16, downsample=False), StageConfig(1, 32, downsample=False))
        )
    with pytest.raises(fastvit.ConfigError, match="unknown token mixer"):
        StageConfig(1, 16, token_mixer="conv")
    bad = get_config("fastvit_t8").to_dict()
    bad["stages"][1]["depth"] = "two"
    with pytest.raises(fastvit.ConfigError, match="invalid FastViT config"):
        FastViTConfig.from_dict(bad)
    with pytest.raises(fastvit.ConfigError, match="not valid JSON"):
        FastViTConfig.from_json("{stages")
    # a custom architecture through the top-level API
    custom = get_config("fastvit_sa12").replace(
        name="my_vit",
        stages=(
            StageConfig(1, 32, downsample=False),
            StageConfig(1, 64, 2.0, "attention", True, se=True),
        ),
    )
    m = fastvit.create_model(custom, num_classes=3)
    assert m.variant == "my_vit" and m(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    assert [f["reduction"] for f in m.feature_info] == [4, 8]


def test_custom_config_reloads_without_code(tmp_path) -> None:
    cfg, _ = _tiny("mci3")
    model = fastvit.models.create_model(cfg, num_classes=5).eval()
    _randomize(model, seed=1)
    path = save_model(model, tmp_path / "custom.safetensors")
    back = load_model(path)
    assert back.cfg == cfg and back.num_classes == 5
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(back(x), model(x))
    fused_path = save_model(fastvit.reparameterize(model), tmp_path / "fused.safetensors")
    fused = load_model(fused_path)
    assert fused.inference_mode and fused.cfg == cfg
    with torch.no_grad():
        assert _diff(fused(x), model(x)) <= 1e-5


@pytest.mark.slow
def test_full_size_mci0_outputs_match_timm_in_both_forms() -> None:
    torch.manual_seed(0)
    tm = timm.create_model("fastvit_mci0").eval()
    _randomize(tm, seed=5)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = tm(x)
    ours = load_model(tm.state_dict())
    assert ours.variant == "fastvit_mci0" and ours.num_classes == 512
    fused = fastvit.reparameterize(ours)
    with torch.no_grad():
        assert _diff(ours(x), ref) <= TOL * ref.abs().max()
        assert _diff(fused(x), ref) <= TOL * ref.abs().max()


@pytest.mark.parametrize("kind", ["mci0", "mci3"])
def test_fx_symbolic_trace_both_forms(kind: str) -> None:
    cfg, _ = _tiny(kind)
    model = fastvit.models.create_model(cfg).eval()
    _randomize(model, seed=2)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(torch.fx.symbolic_trace(model)(x), model(x))
        fused = fastvit.reparameterize(model)
        torch.testing.assert_close(
            torch.fx.symbolic_trace(fused)(x), fused(x), atol=1e-5, rtol=1e-5
        )
