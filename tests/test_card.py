"""One Preprocessing type and one model card, read and written the same way by every model
file (safetensors, ONNX, TorchScript, training run files), the timm-style pretrained_cfg
derived from it, the package surface (``dir(fastvit)``, ``--version``), and the layering of
the packages (no import cycles; export never imports infer or bench)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fastvit
from fastvit.card import IMAGENET_MEAN, IMAGENET_STD, ModelCard, Preprocessing
from fastvit.checkpoints.io import read_checkpoint, write_safetensors
from fastvit.cli.main import main
from fastvit.errors import CheckpointError, ConfigError

SIZE = 32
CLASSES = ["cat", "dog", "emu"]


def _model(seed: int = 0, **prep) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = fastvit.create_model("fastvit_t8", num_classes=len(CLASSES)).eval()
    m.preprocessing = Preprocessing((3, SIZE, SIZE), **prep)
    m.class_names = list(CLASSES)
    return m


# ----------------------------------------------------------------------------- the types
def test_preprocessing_dict_round_trip_and_lenient_reading() -> None:
    p = Preprocessing((3, 48, 64), 0.875, "squash", "bilinear", (0.5, 0.4, 0.3), (0.2, 0.2, 0.1))
    assert Preprocessing.from_dict(p.to_dict()) == p
    assert Preprocessing.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    # training configs store one integer, timm (H, W) or (C, H, W)
    assert Preprocessing.from_dict({"input_size": 40}).input_size == (3, 40, 40)
    assert Preprocessing.from_dict({"input_size": [40, 50]}).input_size == (3, 40, 50)
    # a grayscale model gets one mean/std value (ImageNet's averaged)
    g = Preprocessing.from_dict({"input_size": 40}, in_chans=1)
    assert g.input_size == (1, 40, 40) and g.mean == (pytest.approx(sum(IMAGENET_MEAN) / 3),)
    with pytest.raises(ConfigError, match="crop mode"):
        Preprocessing(crop_mode="diagonal")


def test_imagenet_statistics_are_timms() -> None:
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    assert (
        tuple(IMAGENET_DEFAULT_MEAN) == IMAGENET_MEAN
        and tuple(IMAGENET_DEFAULT_STD) == IMAGENET_STD
    )
    for name in fastvit.list_models():  # the ImageNet variants; MobileCLIP towers use CLIP's
        mean = fastvit.get_config(name).preprocessing.mean
        assert mean == IMAGENET_MEAN if "_mci" not in name else mean != IMAGENET_MEAN


def test_one_metadata_encoding_no_double_json(tmp_path: Path) -> None:
    """Same strings in safetensors and ONNX; strings are not JSON-encoded twice, and
    input_size is always [C, H, W] (training used to store '32')."""
    from fastvit.export import export_onnx

    m = _model(1)
    st = tmp_path / "m.safetensors"
    fastvit.save_model(m, st, metadata={"input_size": SIZE})
    st_meta = read_checkpoint(st)[1]
    onnx_path = tmp_path / "m.onnx"
    export_onnx(st, onnx_path, verify=False)
    import onnx

    onnx_meta = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    assert st_meta["interpolation"] == onnx_meta["interpolation"] == "bicubic"
    assert st_meta["input_size"] == onnx_meta["input_size"] == f"[3, {SIZE}, {SIZE}]"
    assert st_meta["variant"] == onnx_meta["variant"] == "fastvit_t8"
    for key in ("num_classes", "class_names", "crop_pct", "crop_mode", "mean", "std"):
        assert st_meta[key] == onnx_meta[key], key
    assert json.loads(st_meta["class_names"]) == CLASSES
    assert (st_meta["form"], onnx_meta["form"]) == ("unfused", "fused")


def test_metadata_of_earlier_versions_still_loads(tmp_path: Path) -> None:
    """Version-1 ONNX props (JSON-encoded strings, 'extra.' keys) and the safetensors keys the
    previous code wrote (input_size as one integer, raw interpolation) read back correctly."""
    v1_onnx = {
        "fastvit_metadata_version": "1",
        "variant": '"fastvit_t8"',
        "num_classes": "3",
        "input_size": "[3, 64, 64]",
        "crop_pct": "0.95",
        "interpolation": '"bilinear"',
        "mean": "[0.5, 0.5, 0.5]",
        "std": "[0.25, 0.25, 0.25]",
        "class_names": json.dumps(CLASSES),
        "extra.quantization": "int8",
    }
    card = ModelCard.from_metadata(v1_onnx)
    assert card.variant == "fastvit_t8" and card.preprocessing.interpolation == "bilinear"
    assert card.input_size == (3, 64, 64) and card.preprocessing.crop_pct == 0.95
    assert card.class_names == tuple(CLASSES) and card.extra == {"quantization": "int8"}
    v1_nonames = dict(v1_onnx, class_names="null")
    assert ModelCard.from_metadata(v1_nonames).class_names is None

    m = _model(2)
    old = {
        "form": "unfused",
        "num_classes": "3",
        "fastvit_version": "0.1.0",
        "layout": "official",
        "variant": "fastvit_t8",
        "class_names": json.dumps(CLASSES),
        "input_size": "48",
        "crop_pct": "1.0",
        "interpolation": "bilinear",
        "mean": "[0.5, 0.5, 0.5]",
        "std": "[0.25, 0.25, 0.25]",
        "val_top1": "97.3",
    }
    path = tmp_path / "old.safetensors"
    write_safetensors(m.state_dict(), path, old)
    back = fastvit.load_model(path)
    assert back.preprocessing == Preprocessing(
        (3, 48, 48), 1.0, interpolation="bilinear", mean=(0.5,) * 3, std=(0.25,) * 3
    )
    assert back.class_names == CLASSES
    assert ModelCard.from_metadata(old).extra == {"val_top1": "97.3"}
    with pytest.raises(CheckpointError, match="malformed 'mean'"):
        ModelCard.from_metadata({"mean": "[0.5, oops"})


def test_card_survives_every_format(tmp_path: Path) -> None:
    from fastvit.export import export_onnx, export_torchscript, load_torchscript
    from fastvit.export.onnx import read_onnx_metadata

    m = _model(3, crop_pct=1.0, interpolation="bilinear")
    st = tmp_path / "m.safetensors"
    fastvit.save_model(m, st)
    want = m.card
    assert fastvit.load_model(st).card == want
    export_onnx(st, tmp_path / "m.onnx", verify=False)
    export_torchscript(st, tmp_path / "m.pt", verify=False)
    fused = want.replace(form="fused")
    assert read_onnx_metadata(tmp_path / "m.onnx") == fused
    assert load_torchscript(tmp_path / "m.pt")[1] == fused


# ----------------------------------------------------------------------------- pretrained_cfg
TIMM_KEYS = {
    "url",
    "hf_hub_id",
    "num_classes",
    "input_size",
    "pool_size",
    "crop_pct",
    "crop_mode",
    "interpolation",
    "mean",
    "std",
    "first_conv",
    "classifier",
    "tag",
    "license",
}


@pytest.mark.parametrize("name", ["fastvit_t8"])
def test_pretrained_cfg_has_timms_keys_and_values(name: str) -> None:
    import timm

    ours = fastvit.create_model(name).pretrained_cfg
    theirs = timm.create_model(name, pretrained=False).pretrained_cfg
    assert set(ours) >= TIMM_KEYS and set(theirs) <= set(ours)
    for key in (
        "num_classes",
        "input_size",
        "pool_size",
        "crop_pct",
        "crop_mode",
        "interpolation",
        "mean",
        "std",
        "tag",
        "license",
        "hf_hub_id",
    ):
        assert (
            tuple(ours[key]) == tuple(theirs[key])
            if isinstance(ours[key], tuple)
            else (ours[key] == theirs[key])
        ), key


def test_pretrained_cfg_first_conv_exists_in_the_current_form() -> None:
    model = fastvit.create_model("fastvit_t8", num_classes=5)
    for m in (
        model,
        fastvit.reparameterize(model),
        fastvit.create_model("fastvit_t8", inference_mode=True),
    ):
        names = dict(m.named_modules())
        first = m.pretrained_cfg["first_conv"]
        for conv in (first,) if isinstance(first, str) else first:
            assert isinstance(names[conv], torch.nn.Conv2d) and names[conv].in_channels == 3
        assert isinstance(names[m.pretrained_cfg["classifier"]], torch.nn.Linear)
    assert (
        fastvit.reparameterize(model).pretrained_cfg["first_conv"] == "patch_embed.0.reparam_conv"
    )


def test_grayscale_model_cfg_and_timm_data_config() -> None:
    from timm.data import resolve_data_config

    m = fastvit.create_model("fastvit_t8", in_chans=1, num_classes=2)
    assert m.pretrained_cfg["input_size"] == (1, 256, 256)
    assert len(m.pretrained_cfg["mean"]) == 1 and len(m.pretrained_cfg["std"]) == 1
    rgb = fastvit.create_model("fastvit_t8")
    rgb.preprocessing = rgb.preprocessing.replace(crop_pct=0.95, interpolation="bilinear")
    cfg = resolve_data_config(model=rgb)
    assert cfg["input_size"] == (3, 256, 256) and cfg["crop_pct"] == 0.95
    assert cfg["interpolation"] == "bilinear"
    # setting a timm-style dict updates the one Preprocessing
    rgb.pretrained_cfg = dict(rgb.pretrained_cfg, input_size=(3, 64, 64), crop_pct=1.0)
    assert rgb.preprocessing.input_size == (3, 64, 64) and rgb.card.preprocessing.crop_pct == 1.0


# ----------------------------------------------------------------------------- package surface
def test_dir_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    names = dir(fastvit)
    assert {"load_model", "save_model", "convert_state_dict", "create_model"} <= set(names)
    assert "Any" not in names and "annotations" not in names
    assert set(fastvit.__all__) <= set(names)
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"fastvit {fastvit.__version__}"


def _imports(path: Path, root: Path) -> set[str]:
    mod = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            out |= {base} | {f"{base}.{a.name}" for a in node.names}
    return {n for n in out if n.startswith("fastvit.")}


def test_layering_no_cycles_and_export_never_imports_infer_or_bench() -> None:
    root = Path(fastvit.__file__).parent.parent
    files = {
        p: ".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        for p in (root / "fastvit").rglob("*.py")
    }
    mods = set(files.values())
    graph: dict[str, set[str]] = {}
    for path, mod in files.items():
        deps = set()
        for n in _imports(path, root):
            while n and n not in mods:
                n = n.rpartition(".")[0]
            if n and n != mod and not mod.startswith(n + ".") and not n.startswith(mod + "."):
                deps.add(n)
        graph[mod] = deps
    for mod, deps in graph.items():
        if mod.startswith(
            (
                "fastvit.export",
                "fastvit.data",
                "fastvit.checkpoints",
                "fastvit.models",
                "fastvit.card",
            )
        ):
            assert not {
                d
                for d in deps
                if d.startswith(("fastvit.infer", "fastvit.bench", "fastvit.cli", "fastvit.train"))
            }, mod
        if mod.startswith(("fastvit.models", "fastvit.card")):
            assert not {
                d
                for d in deps
                if d.startswith(("fastvit.data", "fastvit.export", "fastvit.checkpoints"))
            }, mod
    # no module reaches itself again (depth-first search for a back edge)
    state: dict[str, int] = {}

    def visit(m: str, trail: list[str]) -> None:
        state[m] = 1
        for d in graph.get(m, ()):
            assert state.get(d) != 1, "import cycle: " + " -> ".join([*trail, m, d])
            if d not in state:
                visit(d, [*trail, m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


# ----------------------------------------------------------------------------- eval of exports
@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 3-class model saved with 32px/bilinear preprocessing, its ONNX/TorchScript exports,
    and a data root whose train/ and val/ splits differ in size."""
    from fastvit.export import export_onnx, export_torchscript

    d = tmp_path_factory.mktemp("small")
    m = _model(4, crop_pct=1.0, interpolation="bilinear")
    st = d / "m.safetensors"
    fastvit.save_model(m, st)
    export_onnx(st, d / "m.onnx", verify=False)
    export_torchscript(st, d / "m.torchscript.pt", verify=False)
    rng = np.random.default_rng(0)
    for split, n in (("train", 5), ("val", 2)):
        for ci, c in enumerate(CLASSES):
            (d / "data" / split / c).mkdir(parents=True)
            for i in range(n):
                arr = (rng.random((40, 40, 3)) * 80 + 60 * ci).astype(np.uint8)
                Image.fromarray(arr).save(d / "data" / split / c / f"{i}.png")
    return {
        "dir": d,
        "st": st,
        "onnx": d / "m.onnx",
        "ts": d / "m.torchscript.pt",
        "data": d / "data",
    }


def test_eval_scores_exports_like_the_checkpoint(
    small: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    results = {}
    for key in ("st", "onnx", "ts"):
        assert main(["eval", str(small[key]), "--data", str(small["data"]), "--json"]) == 0
        results[key] = json.loads(capsys.readouterr().out)
    ref = results["st"]
    assert ref["images"] == 6 and ref["input_size"] == SIZE
    for key in ("onnx", "ts"):
        got = results[key]
        assert got["form"] == "fused" and got["images"] == 6
        assert got["top1"] == ref["top1"]
        assert got["loss"] == pytest.approx(ref["loss"], abs=1e-4)


def test_predict_size_floor_matches_its_message(small: dict[str, Path]) -> None:
    from fastvit.infer import load_predictor

    with pytest.raises(ConfigError, match="--size 16 is too small; FastViT downsamples by 32"):
        load_predictor(small["st"], size=16)  # the old check let 8..31 through


def test_top5_not_reported_for_five_classes_or_fewer(
    small: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["eval", str(small["st"]), "--data", str(small["data"]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["top5"] is None
    assert main(["eval", str(small["st"]), "--data", str(small["data"])]) == 0
    text = capsys.readouterr().out
    assert "top-1" in text and "top-5" not in text


@pytest.mark.slow  # int8 quantization + interleaved latency check (~5 s unloaded)
def test_export_val_scores_the_val_split_only(
    small: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from fastvit.data import build_eval_dataset, load_labelled

    card = fastvit.load_model(small["st"]).card
    assert (
        len(load_labelled(small["data"], card).labels)
        == len(build_eval_dataset(small["data"])[0])
        == 6
    )
    out = small["dir"] / "q.int8.onnx"
    assert (
        main(
            [
                "export",
                str(small["st"]),
                "--format",
                "onnx-int8",
                "-o",
                str(out),
                "--val",
                str(small["data"]),
                "--calibration",
                str(small["data"]),
                "--calibration-count",
                "4",
                "--max-drop",
                "100",  # 6 images: one flip is 17 points (the gate has its own test)
                "--threads",
                "1",
                "--no-verify",
            ]
        )
        == 0
    )
    assert f"top-1 on {small['data']} (6 images)" in capsys.readouterr().out


# ----------------------------------------------------------------------------- run files
@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A real (tiny) digits run: trained at 32 px, crop 1.0, bilinear - not the variant's
    256 px / 0.9 / bicubic - plus 30 of its val images as class-folder PNG files."""
    from fastvit.data import DigitsDataset
    from fastvit.train import recipe_config, train

    d = tmp_path_factory.mktemp("run")
    out = d / "run"
    train(
        recipe_config(
            "digits",
            output=str(out),
            epochs=1,
            warmup_epochs=0,
            limit_train_batches=3,
            limit_val_batches=1,
            tensorboard=False,
            plot=False,
            progress=False,
        ),
        echo=None,
    )
    ds = DigitsDataset("val", 32)
    for i in range(30):
        img, label = ds[i]
        (d / "images" / str(label)).mkdir(parents=True, exist_ok=True)
        img.save(d / "images" / str(label) / f"{i}.png")
    return {"out": out, "images": d / "images", "dir": d}


def _top1(preds: list) -> float:
    return float(np.mean([p.labels[0] == Path(p.path).parent.name for p in preds]))


@pytest.mark.slow  # trains a tiny run (~5 s unloaded)
def test_every_command_reads_a_run_file_through_the_one_loader(
    run: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from fastvit.data import list_images
    from fastvit.export.onnx import read_onnx_metadata
    from fastvit.infer import load_predictor, predict_images

    out = run["out"]
    digits = tuple(str(i) for i in range(10))
    want = Preprocessing((3, 32, 32), 1.0, interpolation="bilinear")
    paths = list_images(run["images"])
    st_meta = read_checkpoint(out / "model.safetensors")[1]  # what training wrote: one encoding
    assert st_meta["input_size"] == "[3, 32, 32]" and st_meta["interpolation"] == "bilinear"
    final = load_predictor(out / "model.safetensors")
    assert final.card.preprocessing == want and final.card.class_names == digits
    ref = predict_images(final, paths, top_k=10)
    for name in ("best.pt", "last.pt"):
        pred = load_predictor(out / name)
        assert pred.card.preprocessing == want and pred.card.class_names == digits
    best = predict_images(load_predictor(out / "best.pt"), paths, top_k=10)
    assert [p.indices for p in best] == [p.indices for p in ref]
    np.testing.assert_allclose([p.probs for p in best], [p.probs for p in ref], atol=1e-6)
    assert _top1(best) == _top1(ref)
    # not vacuous: the variant's default preprocessing (what best.pt used to get) differs
    model = fastvit.load_model(out / "best.pt")
    model.preprocessing = fastvit.get_config("fastvit_t8").preprocessing
    wrong = predict_images(load_predictor(model), paths, top_k=10)
    assert np.abs(np.array([p.probs for p in wrong]) - [p.probs for p in ref]).max() > 1e-4

    # predict CLI, eval, export and reparam on best.pt see the run's preprocessing and names
    assert main(["predict", str(out / "best.pt"), str(paths[0]), "--json", "--top-k", "1"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["predictions"][0]["top_k"][0]["label"] == ref[0].labels[0]
    evals = []
    for name in ("best.pt", "model.safetensors"):
        assert main(["eval", str(out / name), "--data", str(run["images"]), "--json"]) == 0
        evals.append(json.loads(capsys.readouterr().out))
    assert evals[0]["top1"] == evals[1]["top1"] == pytest.approx(100 * _top1(ref))
    assert evals[0]["input_size"] == 32
    onnx_path = run["dir"] / "best.onnx"
    assert main(["export", str(out / "best.pt"), "-o", str(onnx_path), "--no-verify"]) == 0
    card = read_onnx_metadata(onnx_path)
    assert card.preprocessing == want and card.class_names == digits
    fused = run["dir"] / "best_fused.safetensors"
    assert main(["reparam", str(out / "best.pt"), "-o", str(fused), "--size", "32"]) == 0
    back = fastvit.load_model(fused)
    assert back.preprocessing == want and back.class_names == list(digits)
    capsys.readouterr()
