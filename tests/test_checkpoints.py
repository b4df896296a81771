"""Checkpoints: official fixtures, timm parity for every variant, file round trips, errors."""

from __future__ import annotations

import argparse
import contextlib
import os
import pickle
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors
from timm.utils.model import reparameterize_model
from torch import nn

import fastvit
from fastvit.checkpoints import (
    convert_state_dict,
    detect,
    load_into,
    load_model,
    read_checkpoint,
    save_model,
)
from fastvit.errors import CheckpointError, ConfigError

TOL = 1e-5


def _randomize(model: nn.Module, seed: int) -> None:
    """Non-trivial BN statistics/affine terms, layer scales and biases (else fusion bugs hide)."""
    g = torch.Generator().manual_seed(seed)

    def rand(t: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        return torch.rand(t.shape, generator=g) * (hi - lo) + lo

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
                m.running_var.copy_(rand(m.running_var, 0.25, 1.75))
                m.weight.copy_(rand(m.weight, 0.5, 1.5))
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        for name, p in model.named_parameters():
            if name.endswith("gamma") or "layer_scale" in name:
                p.copy_(rand(p, 0.05, 0.55))
            elif name.endswith("bias") and ("mlp.fc" in name or "token_mixer.proj" in name):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.fixture(scope="module")
def _t8_official() -> dict[str, dict[str, torch.Tensor]]:
    """A full-size fastvit_t8 in the official layouts with reference outputs, made with timm's
    independent implementation (the official outputs themselves are tested in
    test_official_fixtures.py): randomized training form, its state dict, timm's own
    reparameterization (it keeps ConvFFN BatchNorms and layer scales, like the published
    ``*_reparam`` checkpoints) and the logits of both forms."""
    tm = timm.create_model("fastvit_t8").eval()
    _randomize(tm, seed=8)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        unfused = convert_state_dict(tm.state_dict(), to="official")
        logits_unfused = tm(x)
        fused = reparameterize_model(tm)
        logits_reparam = fused(x)
    reparam = convert_state_dict(fused.state_dict(), to="official")
    io = {"input": x, "logits_unfused": logits_unfused, "logits_reparam": logits_reparam}
    return {"unfused": unfused, "reparam": reparam, "io": io}


@pytest.fixture
def t8_unfused(_t8_official) -> dict[str, torch.Tensor]:
    return dict(_t8_official["unfused"])


@pytest.fixture
def t8_reparam(_t8_official) -> dict[str, torch.Tensor]:
    return dict(_t8_official["reparam"])


@pytest.fixture
def t8_io(_t8_official) -> dict[str, torch.Tensor]:
    return _t8_official["io"]


@contextlib.contextmanager
def _one_line_error(exc: type[Exception], match: str):
    """pytest.raises that also checks the message is one line (the CLI prints it as is)."""
    with pytest.raises(exc, match=match) as info:
        yield info
    assert "\n" not in str(info.value) and len(str(info.value)) < 400, str(info.value)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


# ------------------------------------------------------------------ official reference outputs


@pytest.mark.parametrize("variant", ["fastvit_t8", "fastvit_sa12"])
def test_official_unfused_checkpoint_matches_reference_logits(full_fixtures, variant: str) -> None:
    sd = load_file(full_fixtures / f"{variant}_apple_unfused.safetensors")
    io = load_file(full_fixtures / f"{variant}_apple_io.safetensors")
    info = detect(sd)
    assert (info.layout, info.form, info.variant, info.num_classes) == (
        "official",
        "unfused",
        variant,
        1000,
    )
    model = load_model(sd)
    assert model.variant == variant and not model.inference_mode and not model.training
    with torch.no_grad():
        assert _max_diff(model(io["input"]), io["logits_unfused"]) <= TOL
        fused = fastvit.reparameterize(model)
        assert _max_diff(fused(io["input"]), io["logits_reparam"]) <= TOL


def test_official_reparam_checkpoint_loads_into_our_fused_form(
    t8_unfused, t8_reparam, t8_io
) -> None:
    info = detect(t8_reparam)
    assert (info.layout, info.form, info.variant) == ("official", "fused", "fastvit_t8")
    model = load_model(t8_reparam)
    assert model.inference_mode and not _has_batchnorm(model)
    assert not any("layer_scale" in k for k in model.state_dict())
    with torch.no_grad():
        assert _max_diff(model(t8_io["input"]), t8_io["logits_reparam"]) <= TOL
    # unfused checkpoint + inference_mode=True: loaded, then reparameterized
    fused = load_model(t8_unfused, inference_mode=True)
    assert fused.inference_mode and not _has_batchnorm(fused)
    with torch.no_grad():
        assert _max_diff(fused(t8_io["input"]), t8_io["logits_reparam"]) <= TOL


def test_official_fused_converts_to_timm_fused(t8_reparam, t8_io) -> None:
    """timm's own converter drops the official fused keys; ours maps them."""
    timm_fused = reparameterize_model(timm.create_model("fastvit_t8").eval())
    timm_fused.load_state_dict(convert_state_dict(t8_reparam, to="timm"), strict=True)
    with torch.no_grad():
        assert _max_diff(timm_fused(t8_io["input"]), t8_io["logits_reparam"]) <= TOL


def test_our_fused_form_converts_to_the_official_fused_layout(t8_reparam, t8_io) -> None:
    ours = load_model(t8_reparam)
    info = detect(ours.state_dict())
    assert (info.layout, info.form, info.variant) == ("official", "fused_full", "fastvit_t8")
    official = convert_state_dict(ours.state_dict(), to="official")
    assert set(official) == set(t8_reparam)
    for k, v in t8_reparam.items():
        assert official[k].shape == v.shape and official[k].dtype == v.dtype, k
    # identity BatchNorms / unit layer scales: loads back with the reference outputs
    back = load_model(official)
    with torch.no_grad():
        assert _max_diff(back(t8_io["input"]), t8_io["logits_reparam"]) <= TOL
    assert torch.equal(official["network.0.0.layer_scale"], torch.ones(48, 1, 1))
    assert torch.equal(official["network.0.0.convffn.conv.bn.running_mean"], torch.zeros(48))


# ------------------------------------------------------------------ timm parity, all variants


@pytest.mark.parametrize(
    "variant",
    [
        v
        if v in ("fastvit_t8", "fastvit_t12", "fastvit_s12", "fastvit_sa12")
        else pytest.param(v, marks=pytest.mark.slow)
        for v in fastvit.list_models()[:7]
    ],
)  # mci*: test_family.py
def test_timm_checkpoints_round_trip_for_every_variant(variant: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 3, 64, 64)
    tm = timm.create_model(variant, num_classes=10).eval()
    _randomize(tm, seed=len(variant))
    with torch.no_grad():
        ref = tm(x)

    # timm unfused -> ours, training form
    ours = load_model(tm.state_dict())
    assert (ours.variant, ours.num_classes, ours.inference_mode) == (variant, 10, False)
    with torch.no_grad():
        assert _max_diff(ours(x), ref) <= TOL

    # ours unfused -> timm: strict and value-identical
    back = convert_state_dict(ours.state_dict(), to="timm")
    tm.load_state_dict(back, strict=True)
    tm_sd = tm.state_dict()
    assert all(torch.equal(back[k], tm_sd[k]) for k in tm_sd)

    # timm's reparameterized model -> ours, fully fused; and our own reparameterization
    tf = reparameterize_model(tm, inplace=True)
    with torch.no_grad():
        ref_fused = tf(x)
    ours_fused = load_model(tf.state_dict())
    assert ours_fused.inference_mode and not _has_batchnorm(ours_fused)
    mine = fastvit.reparameterize(ours, inplace=True)
    with torch.no_grad():
        out_fused = ours_fused(x)
        assert _max_diff(out_fused, ref_fused) <= TOL and _max_diff(out_fused, ref) <= TOL
        assert _max_diff(mine(x), ref_fused) <= TOL

    # ours fully fused -> timm fused (identity BNs, unit layer scales, recovered norm shift)
    tf.load_state_dict(convert_state_dict(mine.state_dict(), to="timm"), strict=True)
    with torch.no_grad():
        assert _max_diff(tf(x), ref_fused) <= TOL
    # ... and -> the official fused layout (= timm's fused layout renamed), which converts on
    official = convert_state_dict(ours_fused.state_dict(), to="official")
    assert detect(official).form == "fused"
    assert set(official) == set(convert_state_dict(tf.state_dict(), to="official"))
    tf.load_state_dict(convert_state_dict(official, to="timm"), strict=True)
    with torch.no_grad():
        assert _max_diff(tf(x), ref_fused) <= TOL


# ------------------------------------------------------------------ files and metadata


def _same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_torch_files_wrapped_prefixed_and_timm_layout_round_trip(tmp_path, t8_unfused) -> None:
    ref = load_model(t8_unfused)
    wrapped = {
        "epoch": 7,
        "arch": "fastvit_t8",
        "state_dict": {f"module.{k}": v for k, v in t8_unfused.items()},
    }
    torch.save(wrapped, tmp_path / "a.pth")
    torch.save(
        {"state_dict_ema": convert_state_dict(t8_unfused, to="timm")}, tmp_path / "b.pth.tar"
    )
    torch.save(
        {
            "model": dict(t8_unfused),
            "epoch": 1,
            "version": 2,  # timm train.py style
            "args": argparse.Namespace(model="fastvit_t8", lr=1e-3, img_size=None),
        },
        tmp_path / "c.pt",
    )
    # torch.compile prefix; a safetensors file under a .pth name is recognised by its header
    torch.save({f"_orig_mod.{k}": v for k, v in t8_unfused.items()}, tmp_path / "d.pth")
    (tmp_path / "e.pth").write_bytes(save_safetensors(t8_unfused))
    for name in ("a.pth", "b.pth.tar", "c.pt", "d.pth", "e.pth"):
        model = load_model(tmp_path / name)
        assert _same_state(model, ref), name
    sd, meta = read_checkpoint(tmp_path / "a.pth")
    assert meta == {"variant": "fastvit_t8"} and set(sd) == set(t8_unfused)


def test_save_model_safetensors_with_metadata(tmp_path, t8_unfused, t8_io) -> None:
    model = load_model(t8_unfused)
    names = [f"class {i}" for i in range(1000)]
    path = save_model(
        model,
        tmp_path / "sub" / "t8.safetensors",
        class_names=names,
        metadata={"epochs": 3, "note": "digits"},
    )
    assert sorted(os.listdir(path.parent)) == ["t8.safetensors"]  # no temp file left behind
    sd, meta = read_checkpoint(path)
    assert sd.keys() == model.state_dict().keys()
    assert meta["variant"] == "fastvit_t8" and meta["form"] == "unfused"
    assert meta["num_classes"] == "1000" and meta["layout"] == "official"
    assert meta["fastvit_version"] == fastvit.__version__
    assert meta["epochs"] == "3" and meta["note"] == "digits"
    loaded = load_model(path)
    assert loaded.class_names == names and _same_state(loaded, model)

    # fused model, class names taken from the model attribute
    fused = fastvit.reparameterize(model)
    fused.class_names = names
    save_model(fused, tmp_path / "t8_fused.safetensors")
    back = load_model(tmp_path / "t8_fused.safetensors")
    assert back.inference_mode and back.class_names == names and _same_state(back, fused)
    assert read_checkpoint(tmp_path / "t8_fused.safetensors")[1]["form"] == "fused"
    with torch.no_grad():
        assert _max_diff(back(t8_io["input"]), t8_io["logits_reparam"]) <= TOL


def test_save_model_rejects_bad_arguments(tmp_path) -> None:
    model = fastvit.create_model("fastvit_t8", num_classes=3)
    with _one_line_error(CheckpointError, match="ending in .safetensors"):
        save_model(model, tmp_path / "m.pth")
    with _one_line_error(ConfigError, match="2 names but the model has 3 classes"):
        save_model(model, tmp_path / "m.safetensors", class_names=["a", "b"])
    with _one_line_error(ConfigError, match="'variant' is reserved"):
        save_model(model, tmp_path / "m.safetensors", metadata={"variant": "x"})
    assert not list(tmp_path.iterdir())


def test_headless_grayscale_and_features_only(t8_unfused) -> None:
    headless = fastvit.create_model("fastvit_t8", num_classes=0)
    loaded = load_model(headless.state_dict())
    assert loaded.num_classes == 0 and _same_state(loaded, headless)
    gray = fastvit.create_model("fastvit_t8", num_classes=5, in_chans=1)
    loaded = load_model(convert_state_dict(gray.state_dict(), to="timm"))
    assert (loaded.in_chans, loaded.num_classes) == (1, 5) and _same_state(loaded, gray)
    feats = load_model(t8_unfused, features_only=True)
    outs = feats(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [48, 96, 192, 384]
    again = load_model(feats.state_dict())  # a backbone checkpoint loads as a backbone
    assert again.features_only and _same_state(again, feats)


def test_conversion_is_pure_and_rejects_unknown_targets(t8_unfused) -> None:
    before = {k: v.clone() for k, v in t8_unfused.items()}
    timm_sd = convert_state_dict(t8_unfused, to="timm")
    assert convert_state_dict(timm_sd, to="official").keys() == t8_unfused.keys()
    assert t8_unfused.keys() == before.keys()
    assert all(torch.equal(t8_unfused[k], before[k]) for k in before)
    with _one_line_error(CheckpointError, match="unknown target layout 'onnx'"):
        convert_state_dict(t8_unfused, to="onnx")


# ------------------------------------------------------------------ errors


def test_missing_truncated_and_corrupt_files(tmp_path, t8_unfused) -> None:
    with _one_line_error(CheckpointError, match="checkpoint not found: .*nope.pth"):
        load_model(tmp_path / "nope.pth")
    torch.save(t8_unfused, tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with _one_line_error(CheckpointError, match="truncated or corrupt torch checkpoint"):
        load_model(tmp_path / "cut.pth")
    (tmp_path / "junk.pth").write_bytes(b"this is not a checkpoint at all")
    with _one_line_error(CheckpointError, match=r"junk.pth is a text file, not a checkpoint"):
        load_model(tmp_path / "junk.pth")
    st = save_safetensors(t8_unfused)
    (tmp_path / "cut.safetensors").write_bytes(st[: len(st) // 2])
    with _one_line_error(CheckpointError, match="truncated or corrupt safetensors"):
        load_model(tmp_path / "cut.safetensors")
    (tmp_path / "empty.pt").write_bytes(b"")
    with _one_line_error(CheckpointError, match="empty"):
        load_model(tmp_path / "empty.pt")


class _Evil:
    """Unpickling this would create a directory: weights_only must refuse it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_malicious_pickle_is_refused(tmp_path, t8_unfused) -> None:
    marker = tmp_path / "pwned"
    with (tmp_path / "evil.pth").open("wb") as f:
        torch.save({"state_dict": dict(t8_unfused), "extra": _Evil(marker)}, f)
    with _one_line_error(
        CheckpointError, match=r"refusing to load .*evil.pth: .*other than tensors \(\S*mkdir\)"
    ):
        load_model(tmp_path / "evil.pth")
    assert not marker.exists()
    # the same payload in a plain pickle with a .pt name
    (tmp_path / "evil2.pt").write_bytes(pickle.dumps(_Evil(marker)))
    with _one_line_error(CheckpointError, match="refusing to load .*evil2.pt"):
        load_model(tmp_path / "evil2.pt")
    assert not marker.exists()


def test_wrong_variant_unknown_layout_and_undetectable_architecture(t8_unfused) -> None:
    with _one_line_error(
        CheckpointError, match="looks like a fastvit_t8 checkpoint, not fastvit_t12"
    ):
        load_model(t8_unfused, name="fastvit_t12")
    with _one_line_error(
        CheckpointError, match="looks like a fastvit_t8 checkpoint but the model is fastvit_s12"
    ):
        load_into(fastvit.create_model("fastvit_s12"), t8_unfused)
    with _one_line_error(CheckpointError, match="unknown checkpoint layout: .*'fc.weight'"):
        load_model({"fc.weight": torch.zeros(2, 2)})
    with _one_line_error(ConfigError, match="unknown model 'fastvit_xl'"):
        load_model(t8_unfused, name="fastvit_xl")
    # one block fewer in stage 0: no registered variant has this architecture
    custom = {k: v for k, v in t8_unfused.items() if not k.startswith("network.0.1.")}
    with _one_line_error(
        CheckpointError, match=r"cannot tell which FastViT variant .*layers=\(1, 2, 4, 2\)"
    ):
        load_model(custom)
    with _one_line_error(
        CheckpointError,
        match=r"does not match fastvit_t8: .*layers=\(1, 2, 4, 2\).*layers=\(2, 2, 4, 2\)",
    ):
        load_model(custom, name="fastvit_t8")
    with _one_line_error(CheckpointError, match="cannot load a checkpoint from a int"):
        load_model(12345)
    with _one_line_error(CheckpointError, match="not all tensors .*'epoch'"):
        load_model({"epoch": 3, "patch_embed.0.reparam_conv.weight": torch.zeros(1)})


def test_form_mismatches_are_errors(t8_unfused, t8_reparam) -> None:
    with _one_line_error(
        CheckpointError,
        match="reparameterized \\(fused\\) checkpoint; it cannot be loaded into a training-form",
    ):
        load_model(t8_reparam, inference_mode=False)
    with _one_line_error(
        CheckpointError, match="fused\\) checkpoint but the model is in training form"
    ):
        load_into(fastvit.create_model("fastvit_t8"), t8_reparam)
    with _one_line_error(
        CheckpointError, match="unfused\\) checkpoint but the model is reparameterized"
    ):
        load_into(fastvit.create_model("fastvit_t8", inference_mode=True), t8_unfused)
    partial = dict(t8_unfused)
    for k in [k for k in partial if k.startswith("patch_embed.0.")]:
        del partial[k]
    partial["patch_embed.0.reparam_conv.weight"] = torch.zeros(48, 3, 3, 3)
    partial["patch_embed.0.reparam_conv.bias"] = torch.zeros(48)
    with _one_line_error(CheckpointError, match="partially reparameterized"):
        load_model(partial)
    # fused checkpoints go into fused models of the right variant
    model = load_into(fastvit.create_model("fastvit_t8", inference_mode=True), t8_reparam)
    assert _same_state(model, load_model(t8_reparam))


def test_missing_unexpected_and_misshaped_keys_are_listed(t8_unfused) -> None:
    missing = dict(t8_unfused)
    del missing["conv_exp.se.reduce.bias"]
    with _one_line_error(CheckpointError, match="missing keys 'conv_exp.se.reduce.bias'"):
        load_model(missing)
    extra = dict(
        t8_unfused, **{"network.0.0.extra.weight": torch.zeros(1), "aux.bias": torch.zeros(1)}
    )
    with _one_line_error(
        CheckpointError, match="unexpected keys 'network.0.0.extra.weight', 'aux.bias'"
    ):
        load_model(extra)
    bad = dict(t8_unfused, **{"conv_exp.se.reduce.weight": torch.zeros(5, 768, 1, 1)})
    with _one_line_error(
        CheckpointError, match=r"shape mismatch for conv_exp.se.reduce.weight \(5, 768, 1, 1\)"
    ):
        load_model(bad)
    many = {k: v for k, v in t8_unfused.items() if "token_mixer.mixer" not in k}
    with _one_line_error(CheckpointError, match=r"missing keys ('[^']+', ){4}'[^']+' and \d+ more"):
        load_model(many)


def test_num_classes_mismatch_and_qkv_bias_that_is_no_bn_fold(t8_unfused) -> None:
    with _one_line_error(
        CheckpointError,
        match=r"has 1000 classes but num_classes=10 was requested; .*reset_classifier\(10\)",
    ):
        load_model(t8_unfused, num_classes=10)
    assert load_model(t8_unfused, num_classes=1000).num_classes == 1000
    with _one_line_error(CheckpointError, match="takes 3 input channels but in_chans=1"):
        load_model(t8_unfused, in_chans=1)
    sa = fastvit.create_model("fastvit_sa12", num_classes=0, inference_mode=True)
    sd = sa.state_dict()
    torch.manual_seed(0)
    sd["network.7.0.token_mixer.qkv.bias"] = torch.randn_like(
        sd["network.7.0.token_mixer.qkv.bias"]
    )
    with _one_line_error(
        CheckpointError, match="'network.7.0.token_mixer.qkv.bias' is not the fold of a BatchNorm"
    ):
        convert_state_dict(sd, to="timm")


def test_preprocessing_metadata_round_trip(tmp_path):
    model = fastvit.create_model("fastvit_t8", num_classes=2)
    model.pretrained_cfg = dict(
        model.pretrained_cfg,
        input_size=(3, 48, 48),
        crop_pct=1.0,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
    )
    path = tmp_path / "m.safetensors"
    fastvit.save_model(model, path)
    cfg = fastvit.load_model(path).pretrained_cfg
    assert cfg["input_size"] == (3, 48, 48) and cfg["crop_pct"] == 1.0
    assert cfg["mean"] == (0.5, 0.5, 0.5) and cfg["std"] == (0.25, 0.25, 0.25)
    fastvit.save_model(model, path, metadata={"input_size": 32, "interpolation": "bilinear"})
    cfg = fastvit.load_model(path).pretrained_cfg
    assert cfg["input_size"] == (3, 32, 32) and cfg["interpolation"] == "bilinear"


def test_form_detection_is_structural_and_the_filter_folds(t8_unfused, t8_reparam) -> None:
    from fastvit.checkpoints.layouts import detect_form

    # The official fused form keeps BatchNorm statistics and layer scales; the one filter
    # (convert_state_dict to="fastvit") folds them into our form, which has neither.
    assert detect_form(t8_reparam) == "fused"
    native = convert_state_dict(t8_reparam, to="fastvit")
    assert detect_form(native) == "fused_full"
    assert not [k for k in native if k.endswith("running_var") or "layer_scale" in k]
    assert set(native) == set(fastvit.create_model("fastvit_t8", inference_mode=True).state_dict())
    # the timm layout of the same checkpoint is detected the same way
    assert detect_form(convert_state_dict(t8_reparam, to="timm")) == "fused"
    assert detect_form(convert_state_dict(t8_unfused, to="timm")) == "unfused"
    # a training-form stem next to a fused block is a partially fused model
    partial = {k: v for k, v in t8_unfused.items() if not k.startswith("network.0.0.token_mixer.")}
    partial["network.0.0.token_mixer.reparam_conv.weight"] = torch.zeros(48, 1, 3, 3)
    partial["network.0.0.token_mixer.reparam_conv.bias"] = torch.zeros(48)
    with _one_line_error(CheckpointError, match="partially reparameterized"):
        detect_form(partial)
