"""Ground truth from the official implementation (apple/ml-fastvit 8af5928).

``tests/fixtures/apple-mini/`` (always present, 6 MB) holds the official model's outputs for two
narrow configurations with the T- and SA-family block structure; every test here runs against
it. The full-size ``fastvit_t8`` / ``fastvit_sa12`` fixtures are an optional extra check
(tests taking ``full_fixtures`` in test_models.py / test_checkpoints.py skip without them).
"""

from __future__ import annotations

import re
from functools import partial

import pytest
import torch
from timm.models.fastvit import FastVit, RepConditionalPosEnc
from timm.utils.model import reparameterize_model
from torch import nn

import fastvit
from conftest import MINI_FIXTURES, MINI_NAMES, mini_config, mini_fixture
from fastvit.checkpoints import convert_state_dict, detect, load_into
from fastvit.models.fastvit import FastViT

TOL = 1e-5  # official logits are of order 1 (max |logit| 1.6 / 2.5); forms agree to ~1e-7


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _build(name: str, inference_mode: bool = False) -> FastViT:
    """Our model built from the configuration stored in the fixture's metadata."""
    cfg, num_classes = mini_config(name)
    return FastViT(cfg, num_classes=num_classes, inference_mode=inference_mode).eval()


def test_mini_fixtures_are_the_official_ones() -> None:
    """The copies carry the official source and the configuration they were made with."""
    assert sorted(p.name for p in MINI_FIXTURES.glob("*.safetensors")) == sorted(
        f"{n}_apple_{kind}.safetensors" for n in MINI_NAMES for kind in ("io", "reparam", "unfused")
    )
    t_cfg, t_classes = mini_config("mini_t")
    sa_cfg, sa_classes = mini_config("mini_sa")
    assert t_classes == sa_classes == 10
    assert t_cfg.layers == (2, 2, 2, 2) and t_cfg.token_mixers == ("repmixer",) * 4
    assert sa_cfg.layers == (1, 2, 2, 1) and sa_cfg.token_mixers[-1] == "attention"
    assert sa_cfg.pos_embs == (False, False, False, True) and sa_cfg.layer_scale_init_value == 1e-6
    io = mini_fixture("mini_t", "io")
    assert io["input"].shape == (2, 3, 96, 128) and io["logits_unfused"].shape == (2, 10)


@pytest.mark.parametrize("name", MINI_NAMES)
def test_official_unfused_logits_and_our_reparameterization(name: str) -> None:
    io = mini_fixture(name, "io")
    model = _build(name)
    model.load_state_dict(mini_fixture(name, "unfused"), strict=True)
    with torch.no_grad():
        assert _max_diff(model(io["input"]), io["logits_unfused"]) <= TOL
        fused = fastvit.reparameterize(model)
        assert fused.inference_mode and not _has_batchnorm(fused)
        assert _max_diff(fused(io["input"]), io["logits_reparam"]) <= TOL
        # the fused form built directly takes our fused weights strictly, same outputs
        direct = _build(name, inference_mode=True)
        direct.load_state_dict(fused.state_dict(), strict=True)
        assert _max_diff(direct(io["input"]), io["logits_reparam"]) <= TOL


# What our fused form folds further than the official one (ConvFFN conv+BN, layer scales into
# fc2 / proj, the attention BatchNorm into qkv): these official fused entries differ by design.
_FOLDED_FURTHER = re.compile(
    r"\.(convffn\.conv\.|convffn\.fc2\.weight|layer_scale|norm\.|token_mixer\.(qkv|proj)\.weight)"
)


@pytest.mark.parametrize("name", MINI_NAMES)
def test_our_fused_weights_equal_the_official_ones(name: str) -> None:
    """Every branch fusion the official code does (MobileOne stem / patch embeddings / conv_exp,
    RepMixer, large-kernel conv, RepCPE) gives the same weights as ours, entry by entry."""
    model = _build(name)
    model.load_state_dict(mini_fixture(name, "unfused"), strict=True)
    ours = convert_state_dict(fastvit.reparameterize(model).state_dict(), to="official")
    official = mini_fixture(name, "reparam")
    assert ours.keys() == official.keys()
    same = [k for k in official if not _FOLDED_FURTHER.search(k)]
    for k in same:
        scale = max(float(official[k].abs().max()), 1e-6)
        assert _max_diff(ours[k], official[k]) <= TOL * scale, k
    kinds = {
        "patch_embed.0.reparam_conv",
        "token_mixer.reparam_conv",
        "conv_exp.reparam_conv",
        "lkb_reparam",
        "network.1.proj.1.reparam_conv",
    }
    if "attention" in mini_config(name)[0].token_mixers:
        kinds.add("network.6.reparam_conv")  # RepCPE
    assert all(any(kind in k for k in same) for kind in kinds), kinds


@pytest.mark.parametrize("name", MINI_NAMES)
def test_official_fused_state_dict_loads_strict(name: str) -> None:
    io = mini_fixture(name, "io")
    official = mini_fixture(name, "reparam")
    model = _build(name, inference_mode=True)
    # The official fused form keeps ConvFFN BatchNorms and layer scales, ours folds them: the
    # one checkpoint filter converts it (there is no loading side door in the modules).
    with pytest.raises(RuntimeError, match=r"convffn\.conv\.bn"):
        model.load_state_dict(official, strict=True)
    model.load_state_dict(convert_state_dict(official, to="fastvit"), strict=True)
    assert not _has_batchnorm(model)
    assert not any("layer_scale" in k for k in model.state_dict())
    with torch.no_grad():
        assert _max_diff(model(io["input"]), io["logits_reparam"]) <= TOL


@pytest.mark.parametrize("name", MINI_NAMES)
def test_checkpoint_api_on_a_custom_architecture(name: str) -> None:
    """detect / load_into / convert_state_dict work on configurations no variant has."""
    io = mini_fixture(name, "io")
    unfused, official = mini_fixture(name, "unfused"), mini_fixture(name, "reparam")
    cfg, num_classes = mini_config(name)
    for sd, form in ((unfused, "unfused"), (official, "fused")):
        info = detect(sd)
        assert (info.layout, info.form, info.variant, info.num_classes) == (
            "official",
            form,
            None,
            num_classes,
        )
        assert tuple(s.depth for s in info.stages) == cfg.layers
        assert tuple(s.dim for s in info.stages) == cfg.embed_dims
        assert tuple(s.token_mixer for s in info.stages) == cfg.token_mixers
        assert tuple(s.pos_emb for s in info.stages) == cfg.pos_embs
    model = load_into(_build(name), unfused)
    fused = load_into(_build(name, inference_mode=True), official)
    with torch.no_grad():
        assert _max_diff(model(io["input"]), io["logits_unfused"]) <= TOL
        assert _max_diff(fused(io["input"]), io["logits_reparam"]) <= TOL
    # our fully fused form converts back to the official fused layout, key for key
    back = convert_state_dict(fused.state_dict(), to="official")
    assert back.keys() == official.keys()
    assert all(back[k].shape == v.shape and back[k].dtype == v.dtype for k, v in official.items())
    again = _build(name, inference_mode=True)
    again.load_state_dict(convert_state_dict(back, to="fastvit"), strict=True)
    with torch.no_grad():
        assert _max_diff(again(io["input"]), io["logits_reparam"]) <= TOL


@pytest.mark.parametrize("name", MINI_NAMES)
def test_official_checkpoints_convert_to_timm(name: str) -> None:
    """timm's FastVit with the same configuration takes our conversions strictly."""
    io = mini_fixture(name, "io")
    cfg, num_classes = mini_config(name)
    pos = partial(RepConditionalPosEnc, spatial_shape=(7, 7))
    timm_model = FastVit(
        layers=cfg.layers,
        embed_dims=cfg.embed_dims,
        mlp_ratios=cfg.mlp_ratios,
        token_mixers=cfg.token_mixers,
        pos_embs=tuple(pos if p else None for p in cfg.pos_embs),
        layer_scale_init_value=cfg.layer_scale_init_value,
        num_classes=num_classes,
        cls_ratio=cfg.cls_ratio,
        down_patch_size=cfg.down_patch_size,
        down_stride=cfg.down_stride,
        repmixer_kernel_size=cfg.repmixer_kernel_size,
    ).eval()
    timm_model.load_state_dict(convert_state_dict(mini_fixture(name, "unfused"), to="timm"))
    with torch.no_grad():
        assert _max_diff(timm_model(io["input"]), io["logits_unfused"]) <= TOL
    timm_fused = reparameterize_model(timm_model)
    timm_fused.load_state_dict(convert_state_dict(mini_fixture(name, "reparam"), to="timm"))
    with torch.no_grad():
        assert _max_diff(timm_fused(io["input"]), io["logits_reparam"]) <= TOL
