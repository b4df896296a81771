"""timm's generic model contract, checked on our models through timm's own registry.

Our variants are registered in timm's registry (as ``ours_<variant>``, see conftest) and built
with ``timm.create_model``; each check below is one of the checks timm's ``tests/test_models.py``
runs for every timm model (forward, backward, default cfg / pool size / classifier reset,
TorchScript, features_only incl. ``feature_cls='getter'``, ``forward_intermediates``, fx forward
and backward), written against our models, plus ``timm.utils.reparameterize_model``. Inputs
are smaller than timm's (the checks do not depend on the size) to keep the suite fast.
"""

from __future__ import annotations

import math

import pytest
import timm
import torch
from timm.models import get_notrace_functions, get_notrace_modules
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import fastvit
from conftest import randomize_bn_and_scales

# the two MobileCLIP2 towers (125 M / 322 M parameters) take most of the time: slow marker
# one RepMixer, one attention and one MobileCLIP variant by default; the rest (the MobileCLIP2
# towers have 125 M / 322 M parameters) run with the slow tests
QUICK = ("fastvit_t8", "fastvit_sa12")  # (mci0 and the rest: slow suite)
VARIANTS = [
    v if v in QUICK else pytest.param(v, marks=pytest.mark.slow) for v in fastvit.list_models()
]
SIZE = 64


def _name(variant: str) -> str:
    return f"ours_{variant}"


@pytest.fixture(scope="module", autouse=True)
def _registered():
    """Register our variants in timm's registry for this module."""
    for variant in fastvit.list_models():

        def entry(
            pretrained=False,
            pretrained_cfg=None,
            pretrained_cfg_overlay=None,
            cache_dir=None,
            _variant=variant,
            **kwargs,
        ):
            if pretrained:
                raise AssertionError("the contract tests never download")
            return fastvit.create_model(_variant, **kwargs)

        entry.__name__ = _name(variant)
        entry.__module__ = __name__
        timm.models.register_model(entry)
    assert all(timm.is_model(_name(v)) for v in fastvit.list_models())
    yield


def _x(batch: int = 1, size: int = SIZE) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_and_grad_checkpointing(variant):
    model = timm.create_model(_name(variant), pretrained=False).eval()
    x = _x()
    with torch.no_grad():
        out = model(x)
        model.set_grad_checkpointing()
        out2 = model(x)
    assert out.shape == (1, fastvit.get_config(variant).num_classes)
    assert torch.isfinite(out).all()
    assert torch.allclose(out, out2, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_backward_reaches_every_parameter(variant):
    model = timm.create_model(_name(variant), pretrained=False, num_classes=42).train()
    out = model(_x(2))
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    assert out.shape == (2, 42)


@pytest.mark.parametrize("variant", VARIANTS)
def test_default_cfg_pool_size_and_classifier_reset(variant):
    model = timm.create_model(_name(variant), pretrained=False).eval()
    cfg = model.default_cfg
    assert cfg == model.pretrained_cfg
    assert model.num_classes == fastvit.get_config(variant).num_classes
    assert model.num_features > 0 and model.head_hidden_size > 0
    size = cfg["input_size"][1]
    stride = fastvit.get_config(variant).reductions[-1]  # 32, or 64 for the five-stage towers
    assert cfg["pool_size"] == (size // stride, size // stride)
    x = _x(size=size)
    with torch.no_grad():
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        assert tuple(feats.shape[2:]) == cfg["pool_size"]
        assert feats.shape[1] == model.num_features and pre.shape[1] == model.head_hidden_size
        model.reset_classifier(0)
        pooled = model(x)
        assert model.num_classes == 0 and pooled.shape == pre.shape
        model.reset_classifier(0, "")
        assert tuple(model(x).shape[2:]) == cfg["pool_size"]
        unpooled = timm.create_model(_name(variant), num_classes=0, global_pool="").eval()
        assert unpooled(x).dim() == 4
    sd = model.state_dict()
    assert f"{cfg['classifier']}.weight" in timm.create_model(_name(variant)).state_dict()
    first = cfg["first_conv"]
    for name in (first,) if isinstance(first, str) else first:
        assert f"{name}.weight" in sd


@pytest.mark.parametrize("variant", VARIANTS)
def test_torchscript(variant):
    with timm.layers.set_scriptable(True):
        model = timm.create_model(_name(variant), pretrained=False).eval()
    scripted = torch.jit.script(model)
    with torch.no_grad():
        assert torch.allclose(scripted(_x()), model(_x()), atol=1e-5)


@pytest.mark.parametrize("feature_cls", [None, "getter", "fx"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_features_only(variant, feature_cls):
    kw = {} if feature_cls is None else {"feature_cls": feature_cls}
    model = timm.create_model(_name(variant), pretrained=False, features_only=True, **kw).eval()
    channels, reductions = model.feature_info.channels(), model.feature_info.reduction()
    assert len(channels) >= 3
    with torch.no_grad():
        outs = model(_x())
    assert len(outs) == len(channels)
    for c, r, o in zip(channels, reductions, outs):
        assert o.shape[1] == c and o.shape[0] == 1
        assert o.shape[2] <= math.ceil(SIZE / r) + 1 and o.shape[3] <= math.ceil(SIZE / r) + 1


@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_intermediates(variant):
    model = timm.create_model(_name(variant), pretrained=False).eval()
    info = timm.models.FeatureInfo(model.feature_info, len(model.feature_info))
    with torch.no_grad():
        out, inter = model.forward_intermediates(_x(), output_fmt="NCHW")
        assert torch.allclose(out, model.forward_features(_x()))
        model.set_grad_checkpointing()
        out3, _ = model.forward_intermediates(_x())
    assert [o.shape[1] for o in inter] == info.channels()
    assert torch.allclose(out, out3, rtol=1e-4, atol=1e-5)


def _fx(model):
    kw = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions())
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=kw)
    return create_feature_extractor(
        model,
        train_return_nodes=[train_nodes[-1]],
        eval_return_nodes=[eval_nodes[-1]],
        tracer_kwargs=kw,
    )


@pytest.mark.parametrize("variant", VARIANTS)
def test_fx_forward_and_backward(variant):
    model = timm.create_model(_name(variant), pretrained=False, num_classes=42)
    randomize_bn_and_scales(model)
    model.eval()
    with torch.no_grad():
        ref = model(_x())
        got = next(iter(_fx(model)(_x()).values()))
    assert torch.equal(got, ref)
    model.train()
    fx = _fx(model)
    out = next(iter(fx(_x(2)).values()))
    out.mean().backward()
    assert all(p.grad is not None for p in fx.parameters())
    assert out.shape == (2, 42)


@pytest.mark.parametrize("variant", ["fastvit_t8", "fastvit_sa12"])
def test_timm_reparameterize_model_leaves_a_consistent_fused_model(variant):
    model = timm.create_model(_name(variant), pretrained=False)
    randomize_bn_and_scales(model)
    model.eval()
    fused = timm.utils.reparameterize_model(model)
    assert fastvit.is_fused(fused) and fused.inference_mode
    with torch.no_grad():
        assert torch.allclose(fused(_x()), model(_x()), atol=1e-4)
    assert fastvit.reparameterize(fused) is not None  # already fused: a no-op, no error
