"""Bad input to `fastvit train` / `fastvit eval`: one line on stderr, exit code 2, no traceback.

Every case fails before any training step, so these run in well under a second each.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastvit.cli.main import main

FAST = [
    "--epochs",
    "1",
    "--batch-size",
    "4",
    "--limit-train-batches",
    "1",
    "--limit-val-batches",
    "1",
    "--no-tensorboard",
    "--no-plot",
    "--no-progress",
]


def _folder(root: Path, classes=("a", "b"), n: int = 2, splits=("train", "val")) -> Path:
    for split in splits:
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.new("RGB", (36, 36), (10 * i, 90, 200)).save(d / f"{i}.png")
    return root


def _one_line_error(argv: list, capsys, expect: str) -> str:
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse usage errors exit directly (still code 2, one line)
        rc = e.code
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert expect in err, err
    return err


@pytest.fixture(scope="module")
def digits_teacher(tmp_path_factory) -> Path:
    """An untrained 10-class fastvit_t8 checkpoint (a digits teacher / init source)."""
    import fastvit

    path = tmp_path_factory.mktemp("teacher") / "t8_10.safetensors"
    fastvit.save_model(fastvit.create_model("fastvit_t8", num_classes=10), path)
    return path


def _case_missing(tmp: Path) -> list:
    return ["--data", tmp / "does-not-exist"]


def _case_empty(tmp: Path) -> list:
    (tmp / "empty").mkdir()
    return ["--data", tmp / "empty"]


def _case_no_class_folders(tmp: Path) -> list:
    (tmp / "d" / "train").mkdir(parents=True)
    (tmp / "d" / "val").mkdir()
    return ["--data", tmp / "d"]


def _case_classes_differ(tmp: Path) -> list:
    root = _folder(tmp / "d")
    _folder(tmp / "d", classes=("zebra",), splits=("val",))
    return ["--data", root]


def _case_class_without_images(tmp: Path) -> list:
    root = _folder(tmp / "d")
    (root / "train" / "c").mkdir()
    (root / "val" / "c").mkdir()
    return ["--data", root]


def _case_unreadable(tmp: Path) -> list:
    root = _folder(tmp / "d", n=3)
    jpg = root / "train" / "a" / "cut.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(
        jpg
    )
    jpg.write_bytes(jpg.read_bytes()[:300])  # truncated
    (root / "train" / "b" / "x.png").write_bytes(b"garbage")  # not really a PNG
    return ["--data", root]


def _case_non_image_files(tmp: Path) -> list:
    root = _folder(tmp / "d")
    (root / "train" / "c").mkdir()
    (root / "train" / "c" / "labels.csv").write_text("a,b\n")
    _folder(tmp / "d", classes=("c",), splits=("val",))
    return ["--data", root]


def _case_output_not_writable(tmp: Path) -> list:
    blocker = tmp / "a-file"
    blocker.write_text("not a directory")
    return ["--output", blocker / "run"]  # (tests run as root, so chmod would not stop us)


CASES = [
    (_case_missing, "does not exist"),
    (_case_empty, "has no train/ folder"),
    (_case_no_class_folders, "has no class folders"),
    (_case_classes_differ, "class folders differ between train and val"),
    (_case_class_without_images, "has no images"),
    (_case_unreadable, "unreadable or not images"),
    (_case_non_image_files, "only non-image files such as labels.csv"),
    (_case_output_not_writable, "is not writable"),
    (lambda tmp: ["--input-size", "16"], "input size 16 is too small"),
    (lambda tmp: ["--batch-size", "0"], "batch size must be at least 1"),
    (lambda tmp: ["--model", "fastvit_xx"], "unknown model"),
    (lambda tmp: ["--amp", "fp8"], "invalid choice: 'fp8'"),
    (lambda tmp: ["--recipe", "cifar"], "invalid choice: 'cifar'"),
    (lambda tmp: ["--opt", "adamw9"], "unknown optimizer 'adamw9'"),
    (lambda tmp: ["--auto-augment", "bogus-m9"], "invalid --auto-augment"),
    (lambda tmp: ["--epochs", "many"], "invalid int value: 'many'"),
    (lambda tmp: ["--resume", tmp / "nope.pt"], "does not exist"),
    (lambda tmp: ["--init", tmp / "nope.safetensors"], "nope.safetensors"),
    (lambda tmp: ["--distill", "hard"], "needs --teacher"),
]


@pytest.mark.parametrize(
    ("make", "expect"),
    CASES,
    ids=[
        "missing-dir",
        "empty-dir",
        "no-class-folders",
        "classes-differ",
        "class-without-images",
        "unreadable-images",
        "non-image-files",
        "output-not-writable",
        "input-size",
        "batch-size-0",
        "unknown-variant",
        "unknown-amp",
        "unknown-recipe",
        "unknown-optimizer",
        "bad-auto-augment",
        "non-integer",
        "resume-missing",
        "init-missing",
        "distill-without-teacher",
    ],
)
def test_train_bad_input(make, expect, tmp_path, capsys):
    argv = ["train", *FAST, "--output", tmp_path / "out", *make(tmp_path)]
    err = _one_line_error(argv, capsys, expect)
    assert err.startswith("fastvit train: error:")


@pytest.mark.slow  # (quick suite <= 4 min; .ci/run runs the slow tests too)
def test_resume_with_another_variant(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *FAST, "--output", str(out)]) == 0
    capsys.readouterr()
    _one_line_error(
        ["train", "--resume", out / "last.pt", "--model", "fastvit_t12"],
        capsys,
        "is a fastvit_t8 run but --model is fastvit_t12",
    )
    # a model file is not a training checkpoint: point the user to --init
    _one_line_error(["train", "--resume", out / "model.safetensors"], capsys, "use --init")


def test_teacher_with_other_classes(digits_teacher, tmp_path, capsys):
    data = _folder(tmp_path / "d", classes=("a", "b", "c"))
    _one_line_error(
        [
            "train",
            *FAST,
            "--output",
            tmp_path / "o",
            "--data",
            data,
            "--distill",
            "hard",
            "--teacher",
            digits_teacher,
        ],
        capsys,
        "predicts 10 classes but the data has 3",
    )


def test_fused_init_checkpoint_is_refused(digits_teacher, tmp_path, capsys):
    import fastvit

    fused = tmp_path / "fused.safetensors"
    fastvit.save_model(fastvit.reparameterize(fastvit.load_model(digits_teacher)), fused)
    _one_line_error(
        ["train", *FAST, "--output", tmp_path / "o", "--init", fused],
        capsys,
        "is a fused (reparameterized) checkpoint, which cannot be trained",
    )


def test_eval_bad_input(digits_teacher, tmp_path, capsys):
    _one_line_error(["eval", tmp_path / "none.safetensors"], capsys, "does not exist")
    _one_line_error(
        ["eval", digits_teacher, "--data", tmp_path / "nothing"], capsys, "does not exist"
    )
    data = _folder(tmp_path / "d", classes=("a", "b", "c"))
    _one_line_error(["eval", digits_teacher, "--data", data], capsys, "predicts 10 classes but")
    _one_line_error(["eval", digits_teacher, "--input-size", "8"], capsys, "too small")
    _one_line_error(["eval", digits_teacher, "--batch-size", "0"], capsys, "at least 1")
    bad = tmp_path / "bad.pt"
    torch.save({"weights": torch.zeros(3)}, bad)
    _one_line_error(["eval", bad], capsys, "unknown checkpoint layout")


@pytest.mark.slow
def test_bad_input_through_a_subprocess(tmp_path):
    """The installed entry point behaves the same: exit 2, one line, no traceback."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fastvit.cli.main",
            "train",
            "--data",
            str(tmp_path / "missing"),
            "--output",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert err.startswith("fastvit train: error: data directory") and "does not exist" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    proc = subprocess.run(
        [sys.executable, "-m", "fastvit.cli.main", "train", "--input-size", "16"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
