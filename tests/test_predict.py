"""`fastvit predict`: known answers on generated images, every backend, and every bad input.

The model is a FastViT-T8 whose classifier is trained for a few hundred optimizer steps on the
frozen (randomly initialised) backbone's features of three solid colours; the answers for
red/green/blue image files are therefore known by construction.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fastvit
from fastvit.cli.main import main
from fastvit.data import list_images, load_image, to_model_mode
from fastvit.errors import CheckpointError, ConfigError, DataError
from fastvit.export import export_onnx, export_torchscript
from fastvit.infer import MissingClassNamesWarning, load_predictor, predict_images

COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
SIZE = 32


def _train_color_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = fastvit.create_model("fastvit_t8", num_classes=3).eval()
    model.pretrained_cfg = dict(model.pretrained_cfg, input_size=(3, SIZE, SIZE))
    mean = torch.tensor(model.pretrained_cfg["mean"]).view(3, 1, 1)
    std = torch.tensor(model.pretrained_cfg["std"]).view(3, 1, 1)
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(24) % 3
    base = torch.tensor(list(COLORS.values()), dtype=torch.float32)[labels] / 255
    x = (base[:, :, None, None] + 0.08 * torch.randn(24, 3, SIZE, SIZE, generator=g)).clamp(0, 1)
    with torch.no_grad():
        feats = model.forward_head(model.forward_features((x - mean) / std), pre_logits=True)
    opt = torch.optim.Adam(model.head.parameters(), lr=3e-2)
    for _ in range(200):
        loss = torch.nn.functional.cross_entropy(model.head(feats), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def art(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Checkpoint (unfused, with class names and 32px preprocessing), ONNX, TorchScript, images."""
    d = tmp_path_factory.mktemp("predict")
    model = _train_color_model()
    ckpt = d / "colors.safetensors"
    fastvit.save_model(
        model, ckpt, class_names=list(COLORS), metadata={"input_size": [3, SIZE, SIZE]}
    )
    onnx_path = d / "colors.onnx"
    export_onnx(ckpt, onnx_path, verify=False)  # parity is tested in test_export.py
    ts_path = d / "colors.torchscript.pt"
    export_torchscript(ckpt, ts_path, verify=False)
    nonames = d / "nonames.safetensors"
    fastvit.save_model(model, nonames, metadata={"input_size": [3, SIZE, SIZE]})

    imgs = d / "images"
    (imgs / "sub").mkdir(parents=True)
    Image.new("RGB", (50, 40), COLORS["red"]).save(imgs / "red.png")  # non-square
    Image.new("RGB", (40, 40), COLORS["green"]).save(imgs / "green.jpg", quality=95)
    pal = Image.new("RGB", (36, 36), COLORS["blue"]).convert("P", palette=Image.ADAPTIVE)
    pal.save(imgs / "sub" / "blue_palette.gif")  # palette image, in a sub-folder
    rgba = Image.new("RGBA", (40, 44), (*COLORS["red"], 255))
    rgba.save(imgs / "red_rgba.png")
    (imgs / "notes.txt").write_text("not an image")  # ignored: not an image extension
    return {
        "dir": d,
        "ckpt": ckpt,
        "onnx": onnx_path,
        "ts": ts_path,
        "nonames": nonames,
        "images": imgs,
    }


EXPECTED = {
    "red.png": "red",
    "green.jpg": "green",
    "blue_palette.gif": "blue",
    "red_rgba.png": "red",
}


def _check(preds: list) -> None:
    assert len(preds) == len(EXPECTED)
    for p in preds:
        assert p.labels[0] == EXPECTED[Path(p.path).name], p
        assert p.probs == sorted(p.probs, reverse=True)
        assert 0.5 < p.probs[0] <= 1.0
        assert sum(p.probs) == pytest.approx(1.0, abs=1e-6)  # top-3 of 3 classes


@pytest.mark.parametrize(
    "which,backend", [("ckpt", "torch"), ("ckpt", "onnxruntime"), ("onnx", None), ("ts", None)]
)
def test_known_answers_every_backend(art: dict[str, Path], which: str, backend: str | None) -> None:
    pred = load_predictor(art[which], backend)
    assert pred.card.input_size == (3, SIZE, SIZE)
    assert pred.card.class_names == tuple(COLORS)
    preds = predict_images(pred, list_images(art["images"]), top_k=3, batch_size=3)
    _check(preds)


def test_backends_agree(art: dict[str, Path]) -> None:
    paths = list_images(art["images"])
    ref = predict_images(load_predictor(art["ckpt"]), paths, top_k=3)
    for other in (load_predictor(art["onnx"]), load_predictor(art["ts"])):
        for a, b in zip(ref, predict_images(other, paths, top_k=3)):
            assert a.indices == b.indices
            np.testing.assert_allclose(a.probs, b.probs, atol=1e-5)


def test_cli_json_and_text(art: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "predict",
                str(art["onnx"]),
                str(art["images"]),
                "--json",
                "--top-k",
                "2",
                "--no-progress",
            ]
        )
        == 0
    )
    doc = json.loads(capsys.readouterr().out)
    assert doc["backend"] == "onnxruntime" and doc["variant"] == "fastvit_t8"
    got = {Path(p["path"]).name: p["top_k"][0]["label"] for p in doc["predictions"]}
    assert got == EXPECTED
    assert all(len(p["top_k"]) == 2 for p in doc["predictions"])

    assert main(["predict", str(art["ckpt"]), str(art["images"] / "red.png")]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].split(": ", 1)[1].startswith("red (")


def test_folder_progress_bar(art: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    preds = predict_images(
        load_predictor(art["onnx"]), list_images(art["images"]), batch_size=2, progress=True
    )
    _check([p for p in preds])
    assert "img" in capsys.readouterr().err  # tqdm wrote its bar to stderr


def test_missing_class_names_warn_and_fallback(
    art: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pred = load_predictor(art["nonames"])
    assert pred.card.class_names is None
    with pytest.warns(MissingClassNamesWarning):
        preds = predict_images(pred, [art["images"] / "green.jpg"], top_k=1)
    assert preds[0].labels == ["1"]  # class index of green

    assert main(["predict", str(art["nonames"]), str(art["images"] / "green.jpg")]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip().split(": ", 1)[1].startswith("1 (")
    warn_lines = [ln for ln in captured.err.splitlines() if "warning" in ln]
    assert len(warn_lines) == 1 and "no class names" in warn_lines[0]

    names = tmp_path / "names.txt"
    names.write_text("rouge\nvert\nbleu\n")
    assert (
        main(
            [
                "predict",
                str(art["nonames"]),
                str(art["images"] / "green.jpg"),
                "--class-names",
                str(names),
            ]
        )
        == 0
    )
    assert ": vert (" in capsys.readouterr().out

    names.write_text("rouge\nvert\n")  # the user asked for names, but the list is wrong
    with pytest.raises(ConfigError, match="2 class names given for a 3-class model"):
        load_predictor(art["nonames"], class_names=["rouge", "vert"])
    assert (
        main(["predict", str(art["nonames"]), str(art["images"]), "--class-names", str(names)]) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "one name per class" in err[0]


def test_image_mode_conversions() -> None:
    rgba = Image.new("RGBA", (4, 4), (10, 20, 30, 0))  # fully transparent -> white
    assert to_model_mode(rgba).getpixel((0, 0)) == (255, 255, 255)
    gray = Image.new("L", (4, 4), 77)
    assert to_model_mode(gray).getpixel((0, 0)) == (77, 77, 77)
    assert to_model_mode(Image.new("RGB", (4, 4), (10, 20, 30)), 1).mode == "L"
    pal = Image.new("RGB", (4, 4), (200, 0, 0)).convert("P", palette=Image.ADAPTIVE)
    assert to_model_mode(pal).getpixel((0, 0)) == (200, 0, 0)
    i16 = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    assert to_model_mode(i16).getpixel((0, 0)) == (255, 255, 255)
    cmyk = Image.new("CMYK", (4, 4), (0, 0, 0, 0))
    assert to_model_mode(cmyk).mode == "RGB"


# ----------------------------------------------------------------------------- bad inputs


def _one_line_error(argv: list[str], capsys: pytest.CaptureFixture[str], needle: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert needle in err[0] and err[0].startswith("fastvit predict: error:")


def test_unreadable_image(
    art: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    with pytest.raises(DataError, match="cannot read image"):
        load_image(bad)
    _one_line_error(["predict", str(art["onnx"]), str(bad)], capsys, "cannot read image")
    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "ok.png")
    (folder / "zz_bad.jpg").write_bytes(b"garbage")
    # a folder: the good image is predicted, the bad one reported, exit status 1
    assert main(["predict", str(art["onnx"]), str(folder)]) == 1
    captured = capsys.readouterr()
    assert "ok.png" in captured.out and "zz_bad.jpg" not in captured.out
    errors = [ln for ln in captured.err.splitlines() if ": error:" in ln]
    assert len(errors) == 1 and "zz_bad.jpg" in errors[0]
    assert "Traceback" not in captured.err
    _one_line_error(
        ["predict", str(art["onnx"]), str(tmp_path / "nope.png")], capsys, "does not exist"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_error(["predict", str(art["onnx"]), str(empty)], capsys, "no images")


def test_wrong_channel_count(
    tmp_path: Path, art: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    model = fastvit.create_model("fastvit_t8", num_classes=3, in_chans=4, inference_mode=True)
    model.pretrained_cfg = dict(
        model.pretrained_cfg, input_size=(4, SIZE, SIZE), mean=(0.5,) * 4, std=(0.25,) * 4
    )
    path = tmp_path / "four.onnx"
    export_onnx(model, path, verify=False)
    pred = load_predictor(path)
    with pytest.raises(DataError, match="4-channel input"):
        predict_images(pred, [art["images"] / "red.png"])
    _one_line_error(
        ["predict", str(path), str(art["images"] / "red.png")], capsys, "4-channel input"
    )


def test_onnx_input_shape_mismatch(
    art: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(DataError, match="does not match the preprocessing"):
        load_predictor(art["onnx"], size=64)  # static 32x32 ONNX input
    _one_line_error(
        ["predict", str(art["onnx"]), str(art["images"]), "--size", "64"], capsys, "pass --size 32"
    )
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "flat",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 12])],
    )
    flat = tmp_path / "flat.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), flat)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no fastvit metadata" warning
        with pytest.raises(DataError, match="2-D input"):
            load_predictor(flat)


def test_bad_model_files_and_options(
    art: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    img = str(art["images"] / "red.png")
    with pytest.raises(ConfigError, match="--backend onnxruntime"):
        load_predictor(art["onnx"], "torch")
    _one_line_error(["predict", str(tmp_path / "missing.onnx"), img], capsys, "does not exist")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"definitely not protobuf")
    with pytest.raises(CheckpointError):
        load_predictor(junk)
    _one_line_error(["predict", str(art["onnx"]), img, "--top-k", "0"], capsys, "--top-k")
