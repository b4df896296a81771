"""FastViT as a torchvision detection backbone: FPN helper, frozen BN, detectors, fusion."""

from __future__ import annotations

import pytest
import torch
from timm.layers import LayerNorm2d
from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN, RetinaNet
from torchvision.ops import FrozenBatchNorm2d

import fastvit
from conftest import assert_same_detections, randomize_bn_and_scales
from fastvit.errors import ConfigError
from fastvit.models.backbones import convert_norms, fpn_backbone, stage_prefixes

SIZE = 128
DETECTOR_KW = dict(min_size=SIZE, max_size=SIZE)


def _targets(n: int, masks: bool = False) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        xy = torch.rand(3, 2, generator=g) * 80
        wh = torch.rand(3, 2, generator=g) * 30 + 10
        boxes = torch.cat([xy, xy + wh], dim=1)
        t = {"boxes": boxes, "labels": torch.tensor([1, 2, 3])}
        if masks:
            m = torch.zeros(3, SIZE, SIZE, dtype=torch.uint8)
            for i, (x0, y0, x1, y1) in enumerate(boxes.round().long().tolist()):
                m[i, y0:y1, x0:x1] = 1
            t["masks"] = m
        out.append(t)
    return out


def test_frozen_and_sync_batchnorm_fuse_exactly():
    torch.manual_seed(0)
    model = fastvit.create_model("fastvit_sa12", num_classes=7).double()
    randomize_bn_and_scales(model)
    n_bn_before = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    model = convert_norms(model, "frozen")
    n_frozen = sum(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert (
        n_bn_before == 74 and n_frozen == 74 and n_bn == 0
    )  # MobileOne branch BNs and the attention norms too
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        ref = model.eval()(x)
        fused = fastvit.reparameterize(model)
        out = fused(x)
    assert fastvit.is_fused(fused)
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in fused.modules())
    assert (out - ref).abs().max().item() < 1e-10

    sync = nn.SyncBatchNorm.convert_sync_batchnorm(fastvit.create_model("fastvit_t8").double())
    randomize_bn_and_scales(sync)
    with torch.no_grad():
        ref = sync.eval()(x)
        out = fastvit.reparameterize(sync)(x)
    assert (out - ref).abs().max().item() < 1e-10


def test_fpn_backbone_levels_channels_and_trainable_stages():
    bb = fpn_backbone("fastvit_t8", trainable_stages=2, out_channels=64)
    assert bb.out_channels == 64
    assert bb.in_channels_list == [48, 96, 192, 384]
    with torch.no_grad():
        out = bb.eval()(torch.randn(1, 3, 96, 128))
    assert list(out) == ["0", "1", "2", "3", "pool"]
    assert [tuple(v.shape[2:]) for v in out.values()] == [
        (24, 32),
        (12, 16),
        (6, 8),
        (3, 4),
        (2, 2),
    ]
    assert all(v.shape[1] == 64 for v in out.values())
    groups = stage_prefixes(bb.body)
    trainable = {n for n, p in bb.body.named_parameters() if p.requires_grad}
    # the last two stages train, the stem and the first two stages are frozen
    assert trainable and all(any(n.startswith(p) for p in groups[3] + groups[4]) for n in trainable)
    assert any(n.startswith(groups[4][0]) for n in trainable)
    assert not any(n.startswith("patch_embed.") for n in trainable)
    # frozen BN by default: the backbone has no BatchNorm left, only FrozenBatchNorm2d
    assert not any(isinstance(m, nn.BatchNorm2d) for m in bb.body.modules())

    sub = fpn_backbone("fastvit_t8", returned_stages=[2, 4], norm="bn", out_channels=32)
    assert sub.in_channels_list == [96, 384]
    assert any(isinstance(m, nn.BatchNorm2d) for m in sub.body.modules())
    with pytest.raises(ConfigError, match="returned_stages"):
        fpn_backbone("fastvit_t8", returned_stages=[0, 5])
    with pytest.raises(ConfigError, match=r"trainable_stages must be in 0\.\.5"):
        fpn_backbone("fastvit_t8", trainable_stages=6)
    with pytest.raises(ConfigError, match="norm must be one of"):
        fpn_backbone("fastvit_t8", norm="group")


def _detection_case(kind: str, variant: str):
    torch.manual_seed(0)
    bb = fpn_backbone(variant, trainable_stages=5, out_channels=64)
    randomize_bn_and_scales(bb.body)
    if kind == "faster":
        det = FasterRCNN(bb, num_classes=4, box_detections_per_img=30, **DETECTOR_KW)
    elif kind == "retina":
        det = RetinaNet(bb, num_classes=4, detections_per_img=30, **DETECTOR_KW)
        # spread the scores (the focal-loss prior starts every anchor at ~0.01)
        for m in det.head.classification_head.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
    else:
        det = MaskRCNN(bb, num_classes=4, box_detections_per_img=30, **DETECTOR_KW)
    return det


@pytest.mark.parametrize(
    ("kind", "variant"),
    [
        ("faster", "fastvit_t8"),
        ("retina", "fastvit_t8"),
        pytest.param("mask", "fastvit_t8", marks=pytest.mark.slow),
        pytest.param("faster", "fastvit_sa12", marks=pytest.mark.slow),
    ],
)
def test_torchvision_detectors_train_and_fuse(kind, variant):
    det = _detection_case(kind, variant)
    images = [
        torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(i)) for i in range(2)
    ]
    det.train()
    losses = det(images, _targets(2, masks=kind == "mask"))
    total = sum(losses.values())
    assert all(torch.isfinite(v) for v in losses.values()), losses
    total.backward()
    grads = [p.grad for n, p in det.backbone.body.named_parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum().item() for g in grads) > 0

    det.eval()
    if kind == "retina":
        det.score_thresh = 0.0
    else:
        det.roi_heads.score_thresh = 0.0
    with torch.no_grad():
        ref = det(images)
        fused = fastvit.reparameterize(det)
        out = fused(images)
    assert fastvit.is_fused(fused.backbone.body)
    for r, o in zip(ref, out):
        assert_same_detections(r, o)


def test_verify_compares_nested_outputs_and_names_the_worst_leaf():
    torch.manual_seed(0)
    bb = fpn_backbone("fastvit_t8", norm="bn", out_channels=32)  # returns an OrderedDict
    randomize_bn_and_scales(bb.body)
    bb.train()  # verified in eval mode, like everything else
    fused = fastvit.reparameterize(bb, verify=True, input_shape=(1, 3, 64, 64))
    assert fastvit.is_fused(fused.body)
    feats = fastvit.create_model("fastvit_sa12", features_only=True)  # returns a list
    randomize_bn_and_scales(feats)
    fastvit.reparameterize(feats, verify=True, input_shape=(1, 3, 64, 64))

    class Broken(nn.Module):  # a fused form that is wrong in one pyramid level only
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x):
            out = self.inner(x)
            if not self.training and fastvit.is_fused(self.inner):
                out["2"] = out["2"] + 1.0
            return out

    with pytest.raises(fastvit.ReparamError, match=r"at output\['2'\]"):
        fastvit.reparameterize(Broken(bb), verify=True, input_shape=(1, 3, 64, 64))


def _assert_same(ref, got) -> None:
    """Same structure and shapes; values within 1e-5 of the output's scale (at least 1)."""
    refs = ref if isinstance(ref, list) else [ref]
    gots = got if isinstance(got, list) else [got]
    assert len(refs) == len(gots)
    for r, g in zip(refs, gots):
        assert r.shape == g.shape
        assert (r - g).abs().max().item() <= 1e-5 * max(1.0, r.abs().max().item())


_FORMS = ("train", "fused", "features")
_SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    "variant,form",
    # quick: sa12 fused, RepMixer stages and a single-token attention stage at 32 px
    [("fastvit_sa12", "fused")]
    + [pytest.param("fastvit_sa12", f, marks=_SLOW) for f in ("train", "features")]
    + [pytest.param("fastvit_t8", f, marks=_SLOW) for f in _FORMS]  # RepMixer only
    + [pytest.param("fastvit_mci0", f, marks=_SLOW) for f in _FORMS]  # MobileCLIP tower
    # five stages, output stride 64, LayerNorm2d attention (~15 s: the fused form only)
    + [pytest.param("fastvit_mci3", "fused", marks=_SLOW)],
)
def test_torch_export_dynamic_batch_and_size_down_to_32(variant, form):
    from fastvit.export import export_program

    torch.manual_seed(0)
    model = fastvit.create_model(variant, num_classes=5, features_only=form == "features")
    randomize_bn_and_scales(model)
    model.eval()
    if form == "fused":
        model = fastvit.reparameterize(model)  # channels-last weights, as for eager speed
    program = export_program(model)  # traced at 2x the output stride: 64 px (128 for mci3)
    # 32 px: the last stage (the last two for mci3) is a single token; odd, non-square sizes
    for shape in ((1, 3, 32, 32), (3, 3, 40, 72), (2, 3, 97, 65)):
        x = torch.randn(shape)
        with torch.no_grad():
            _assert_same(model(x), program.module()(x))
    static = export_program(model, torch.randn(1, 3, 64, 64), dynamic=False)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        _assert_same(model(x), static.module()(x))


def test_fused_fpn_backbone_exports_with_dynamic_batch_and_size():
    """The README's deployment path for a detector backbone: fuse, then ``export_program``;
    the one program serves other batch sizes and (odd) image sizes with the eager outputs."""
    from fastvit.export import export_program

    torch.manual_seed(0)
    bb = fpn_backbone("fastvit_t8", out_channels=32)
    randomize_bn_and_scales(bb.body)
    fused = fastvit.reparameterize(bb)
    program = export_program(fused)
    for shape in ((1, 3, 64, 64), (3, 3, 72, 104)):
        x = torch.randn(shape)
        with torch.no_grad():
            ref, got = fused(x), program.module()(x)
        assert list(got) == list(ref) == ["0", "1", "2", "3", "pool"]
        for name, r in ref.items():
            assert got[name].shape == r.shape
            assert (got[name] - r).abs().max().item() <= 1e-5 * (1 + r.abs().max().item())


@pytest.mark.parametrize(
    "norm,fused",
    [(nn.BatchNorm2d, False), (LayerNorm2d, True)],  # NCHW tokens; channels-last, qkv bias
    ids=["bn-train", "layernorm2d-fused"],
)
def test_attention_block_exports_down_to_a_single_token(norm, fused):
    """An attention block on a stride-32 map, exported once, runs on 1 token and on many.

    Before the fix, torch.export asserted the block saw more than one token (a view-or-copy
    choice of the token tensor depends on N == 1); LayerNorm2d hands attention a channels-last
    map, which asserted W != 1 instead.
    """
    from fastvit.export import export_program
    from fastvit.models.blocks import AttentionBlock

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 64, 3, stride=32, padding=1), AttentionBlock(64, 2.0, norm_layer=norm)
    )
    randomize_bn_and_scales(model)
    model.eval()
    if fused:
        fastvit.reparameterize(model)
    program = export_program(model)
    for shape in ((1, 3, 32, 32), (1, 3, 32, 96), (2, 3, 97, 33)):  # 1x1, 1x3, 4x2 tokens
        x = torch.randn(shape)
        with torch.no_grad():
            _assert_same(model(x), program.module()(x))


def test_export_program_output_stride_and_too_small_example():
    from fastvit.export import export_program
    from fastvit.export.program import _output_stride

    t8 = fastvit.create_model("fastvit_t8")
    assert _output_stride(t8) == 32
    assert _output_stride(nn.Sequential(t8)) == 32
    assert _output_stride(nn.Conv2d(3, 3, 1)) == 32  # not a FastViT: the FastViT default
    with torch.device("meta"):  # (MobileCLIP2 towers are large: only the structure counts)
        mci3 = fastvit.create_model("fastvit_mci3")
        mci3_32 = fastvit.create_model("fastvit_mci3", features_only=True, out_indices=(0, 1, 2, 3))
    assert _output_stride(mci3) == 64
    assert _output_stride(mci3_32) == 32  # the stride-64 stage is not run
    # a dynamic export traced at a size whose last stage has one row would accept only that
    with pytest.raises(ConfigError, match=r"too small for a dynamic export.*above 32"):
        export_program(t8, torch.randn(2, 3, 32, 64))
    with pytest.raises(ConfigError, match=r"above 64 .*e\.g\. 128"):
        export_program(mci3, torch.randn(2, 3, 96, 64))


def test_pretrained_fpn_backbone_loads_the_published_weights(tmp_path) -> None:
    """The README's `fastvit.fpn_backbone("fastvit_t8.apple_in1k", pretrained=True)` (it used
    to raise: the models-layer builder passed `pretrained` to a builder that refuses it). The
    weights come from a local file through pretrained_cfg_overlay: no download."""
    torch.manual_seed(3)
    classifier = fastvit.create_model("fastvit_t8")
    randomize_bn_and_scales(classifier)
    path = tmp_path / "t8.safetensors"
    fastvit.save_model(classifier, path)
    bb = fastvit.fpn_backbone(
        "fastvit_t8.apple_in1k",
        pretrained=True,
        pretrained_cfg_overlay={"file": str(path)},
        trainable_stages=2,
        returned_stages=[2, 3, 4],
        out_channels=32,
    )
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = classifier.eval().forward_intermediates(x, intermediates_only=True)[1:]
        got = bb.eval().body(x)
    assert len(got) == 3 and all(torch.allclose(a, b, atol=1e-5) for a, b in zip(want, got))
    assert any(isinstance(m, FrozenBatchNorm2d) for m in bb.body.modules())
    assert list(bb(x)) == ["0", "1", "2", "pool"] and bb.out_channels == 32
    # the models-layer builder makes random weights and says where the published ones are
    with pytest.raises(ConfigError, match=r"fastvit\.fpn_backbone\(name, pretrained=True\)"):
        fpn_backbone("fastvit_t8.apple_in1k", pretrained=True)
    assert isinstance(fastvit.fpn_backbone("fastvit_t8", out_channels=16).body, nn.Module)
