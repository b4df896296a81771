"""The model family: official configs, the timm model API, fixtures and full fusion."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import fastvit
from conftest import randomize_bn_and_scales
from fastvit.models.complexity import count_macs, count_params

ALL = fastvit.list_models()
IMAGENET = ALL[:7]  # the MobileCLIP towers are tested in test_family.py (reduced sizes)

# (training-form params M, fused params M, deployed GMACs at 256^2)
EXPECTED = {
    "fastvit_t8": (4.03, 3.99, 0.69),
    "fastvit_t12": (7.55, 7.50, 1.39),
    "fastvit_s12": (9.47, 9.42, 1.79),
    "fastvit_sa12": (11.58, 11.54, 1.93),
    "fastvit_sa24": (21.55, 21.49, 3.75),
    "fastvit_sa36": (31.53, 31.44, 5.56),
    "fastvit_ma36": (44.07, 43.96, 7.79),
}
# Official implementation's inference forms (they keep ConvFFN BN and layer scales).
OFFICIAL_FUSED_PARAMS = {"fastvit_t8": 4.00, "fastvit_ma36": 43.98}


def test_list_models():
    assert ALL == [
        "fastvit_t8",
        "fastvit_t12",
        "fastvit_s12",
        "fastvit_sa12",
        "fastvit_sa24",
        "fastvit_sa36",
        "fastvit_ma36",
        "fastvit_mci0",
        "fastvit_mci1",
        "fastvit_mci2",
        "fastvit_mci3",
        "fastvit_mci4",
    ]
    with pytest.raises(fastvit.ConfigError, match="unknown model 'fastvit_x9'; choose one of"):
        fastvit.create_model("fastvit_x9")


@pytest.mark.parametrize("name", IMAGENET)
def test_params_and_gmacs_match_official(name):
    params, fused_params, gmacs = EXPECTED[name]
    model = fastvit.create_model(name)
    fused = fastvit.reparameterize(model)
    assert round(count_params(model) / 1e6, 2) == params
    assert round(count_params(fused) / 1e6, 2) == fused_params
    assert round(count_macs(fused, 256) / 1e9, 2) == gmacs
    if name in OFFICIAL_FUSED_PARAMS:
        assert fused_params < OFFICIAL_FUSED_PARAMS[name]  # we fold more than the official code
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fused.modules())
    assert not [k for k in fused.state_dict() if "layer_scale" in k]


def test_official_configs():
    cfg = fastvit.get_config("fastvit_ma36")
    assert cfg.layers == (6, 6, 18, 6) and cfg.embed_dims == (76, 152, 304, 608)
    assert cfg.layer_scale_init_value == 1e-6 and cfg.pos_embs == (False, False, False, True)
    assert cfg.token_mixers[-1] == "attention" and cfg.preprocessing.crop_pct == 0.95
    assert fastvit.get_config("fastvit_t8").mlp_ratios == (3, 3, 3, 3)
    assert fastvit.get_config("fastvit_sa36").layer_scale_init_value == 1e-6
    m = fastvit.create_model("fastvit_sa36")
    assert torch.all(m.network[0][0].layer_scale == 1e-6)


@pytest.mark.parametrize("variant", ["t8", "sa12"])
def test_official_fixture_logits(fixtures_dir, variant):
    io = load_file(fixtures_dir / f"fastvit_{variant}_apple_io.safetensors")
    sd = load_file(fixtures_dir / f"fastvit_{variant}_apple_unfused.safetensors")
    model = fastvit.create_model(f"fastvit_{variant}")
    model.load_state_dict(sd, strict=True)
    model.eval()
    with torch.no_grad():
        logits = model(io["input"])
        assert (logits - io["logits_unfused"]).abs().max() <= 1e-5
        fused = fastvit.reparameterize(model)
        assert (fused(io["input"]) - io["logits_reparam"]).abs().max() <= 1e-5


def test_official_reparam_checkpoint_loads_strict(fixtures_dir):
    io = load_file(fixtures_dir / "fastvit_t8_apple_io.safetensors")
    sd = load_file(fixtures_dir / "fastvit_t8_apple_reparam.safetensors")
    model = fastvit.create_model("fastvit_t8", inference_mode=True).eval()
    # The official fused form keeps the ConvFFN BN and the layer scales, ours folds them:
    # the checkpoint filter converts it (no loading side door in the modules).
    with pytest.raises(RuntimeError, match=r"convffn\.conv\.bn"):
        model.load_state_dict(sd, strict=True)
    model.load_state_dict(fastvit.convert_state_dict(sd, to="fastvit"), strict=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    with torch.no_grad():
        assert (model(io["input"]) - io["logits_reparam"]).abs().max() <= 1e-5


@pytest.mark.parametrize("name", IMAGENET)
def test_fusion_exact_per_variant(name):
    torch.manual_seed(0)
    model = fastvit.create_model(name, num_classes=10)
    randomize_bn_and_scales(model, seed=3)
    x = torch.randn(1, 3, 64, 64)
    fused = fastvit.reparameterize(model.train())
    with torch.no_grad():
        diff = (fused(x) - model.eval()(x)).abs().max().item()
    assert diff <= 1e-5, diff


def test_fusion_float64_exact():
    model = fastvit.create_model("fastvit_sa12", num_classes=10).double()
    randomize_bn_and_scales(model, seed=4)
    fused = fastvit.reparameterize(model, verify=True, input_shape=(1, 3, 32, 32))
    x = torch.randn(1, 3, 41, 35, dtype=torch.float64)
    with torch.no_grad():
        assert (fused(x) - model.eval()(x)).abs().max() <= 1e-10


@pytest.mark.parametrize("size", [(32, 32), (33, 47), (97, 64), (255, 257)])
def test_any_input_size(size):
    model = fastvit.create_model("fastvit_sa12", num_classes=5).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, *size)).shape == (1, 5)


def test_num_classes_zero_and_reset():
    model = fastvit.create_model("fastvit_t8", num_classes=0).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = model(x)
        assert feats.shape == (2, model.num_features) == (2, 768)
        assert torch.allclose(feats, model.forward_head(model.forward_features(x), pre_logits=True))
    model.reset_classifier(7)
    assert model(x).shape == (2, 7) and model.num_classes == 7
    assert model.get_classifier().out_features == 7


def test_features_only():
    model = fastvit.create_model("fastvit_sa12", features_only=True).eval()
    assert model.feature_info.channels() == [64, 128, 256, 512]
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        feats = model(x)
    assert [f.shape for f in feats] == [
        (1, 64, 24, 32),
        (1, 128, 12, 16),
        (1, 256, 6, 8),
        (1, 512, 3, 4),
    ]
    part = fastvit.create_model("fastvit_t8", features_only=True, out_indices=(1, 3))
    assert part.feature_info.channels() == [96, 384]
    assert [f.shape[1] for f in part(x)] == [96, 384]
    fused = fastvit.reparameterize(model)
    with torch.no_grad():
        for a, b in zip(fused(x), feats):
            assert torch.allclose(a, b, atol=1e-5)


def test_forward_intermediates_matches_forward_features():
    model = fastvit.create_model("fastvit_t8").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        assert torch.allclose(final, model.forward_features(x))
        assert [t.shape[1] for t in inter] == [48, 96, 192, 384]
        assert [x.shape[-1] // t.shape[-1] for t in inter] == [4, 8, 16, 32]
        only = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert [t.shape[1] for t in only] == [192, 384]
        stage1 = model.forward_intermediates(x, indices=[1], intermediates_only=True)[0]
    assert model.prune_intermediate_layers(indices=[1]) == [1]
    assert len(model.network) == model.stage_ends[1] + 1 and model.conv_exp is None
    assert model.num_features == 96 and model.num_classes == 0
    with torch.no_grad():  # the pruned model pools the stage-1 map
        assert torch.allclose(model(x), stage1.mean((2, 3)), atol=1e-6)


@pytest.mark.parametrize("name", IMAGENET)
def test_gradients_reach_every_parameter(name):
    model = fastvit.create_model(name, num_classes=4, drop_path_rate=0.1)
    model.train()
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing[:5]


def test_grad_checkpointing_same_gradients():
    torch.manual_seed(0)
    a = fastvit.create_model("fastvit_sa12", num_classes=3)
    b = fastvit.create_model("fastvit_sa12", num_classes=3)
    b.load_state_dict(a.state_dict())
    b.set_grad_checkpointing(True)
    x = torch.randn(2, 3, 32, 32)
    a(x).sum().backward()
    b(x).sum().backward()
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-6), n


def test_no_weight_decay_lists_layer_scales():
    model = fastvit.create_model("fastvit_sa12")
    names = model.no_weight_decay()
    assert "network.0.0.layer_scale" in names and "network.7.0.layer_scale_2" in names
    assert "network.0.0.token_mixer.layer_scale" in names


@pytest.mark.parametrize("name", ["fastvit_t8", "fastvit_sa12"])
def test_torchscript(name):
    model = fastvit.create_model(name, num_classes=10)
    randomize_bn_and_scales(model)
    x = torch.randn(1, 3, 64, 64)
    fused = fastvit.reparameterize(model)
    scripted = torch.jit.script(fused)
    traced = torch.jit.trace(fused, x)
    with torch.no_grad():
        ref = fused(x)
        assert torch.allclose(scripted(x), ref, atol=1e-6)
        assert torch.allclose(traced(x), ref, atol=1e-6)
    # (the training form scripts too: tests/test_timm_contract.py::test_torchscript)


def test_model_metadata():
    model = fastvit.create_model("fastvit_sa36", num_classes=3)
    assert model.variant == "fastvit_sa36" and model.class_names is None
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 256, 256) and cfg["crop_pct"] == 0.95
    assert cfg["num_classes"] == 3 and cfg["interpolation"] == "bicubic"
    assert not model.inference_mode and fastvit.reparameterize(model).inference_mode
    assert fastvit.is_fused(fastvit.create_model("fastvit_t8", inference_mode=True))


def test_in_chans():
    model = fastvit.create_model("fastvit_t8", in_chans=1, num_classes=2).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 40, 40)).shape == (1, 2)


# ------------------------------------------------------------------ fx / feature extraction
# (torch.fx failed on every form before the speed paths moved into fastvit.layers.inference:
# their guards called bool() on proxies.)

_BIG = {"fastvit_sa24", "fastvit_sa36", "fastvit_ma36"}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in _BIG else n for n in IMAGENET]
)  # mci*: test_family.py
def test_fx_symbolic_trace_both_forms(name):
    model = fastvit.create_model(name, num_classes=10).eval()
    randomize_bn_and_scales(model, seed=5)
    x = torch.randn(1, 3, 32, 32)
    graph = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        assert torch.equal(graph(x), model(x))
    fused = fastvit.reparameterize(model)
    fused_graph = torch.fx.symbolic_trace(fused)
    assert "mkldnn" not in str(fused_graph.graph)  # the plain path, no private ops
    with torch.no_grad():  # (eager may take the fused modules' speed paths: float rounding)
        torch.testing.assert_close(fused_graph(x), fused(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fused", [False, True])
def test_create_feature_extractor_matches_forward_intermediates(fused):
    from torchvision.models.feature_extraction import create_feature_extractor

    model = fastvit.create_model("fastvit_sa12", num_classes=10).eval()
    randomize_bn_and_scales(model, seed=6)
    if fused:
        model = fastvit.reparameterize(model)
    nodes = {f"network.{i}": f"stage{s}" for s, i in enumerate(model.stage_ends)}
    extractor = create_feature_extractor(model, return_nodes=nodes)  # default fx tracer
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = extractor(x)
        _, ref = model.forward_intermediates(x)
    assert list(feats) == ["stage0", "stage1", "stage2", "stage3"]
    for got, want in zip(feats.values(), ref):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_features_only_model_traces():
    model = fastvit.create_model("fastvit_t8", features_only=True, out_indices=(1, 3)).eval()
    x = torch.randn(1, 3, 64, 64)
    for m in (model, fastvit.reparameterize(model)):
        graph = torch.fx.symbolic_trace(m)
        with torch.no_grad():
            got, want = graph(x), m(x)
        assert len(got) == 2
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
