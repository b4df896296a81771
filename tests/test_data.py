"""Datasets and transforms: the embedded digits split, checked ImageFolder scans, transforms."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastvit.data import (
    DigitsDataset,
    build_datasets,
    build_eval_dataset,
    create_eval_transform,
    create_mixup,
    create_train_transform,
    digits_split_indices,
    load_rgb,
    scan_image_folder,
)
from fastvit.errors import ConfigError, DataError


# --------------------------------------------------------------------------- helpers
def _png(path: Path, value: int = 128, size: int = 12, mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    color = {"RGB": (value, value // 2, 255 - value), "L": value, "RGBA": (value, 0, 0, 255)}[mode]
    Image.new(mode, (size, size), color).save(path)
    return path


def make_folder(root: Path, classes=("a", "b"), n: int = 3, splits=("train", "val")) -> Path:
    for split in splits:
        for ci, c in enumerate(classes):
            for i in range(n):
                _png(root / split / c / f"{i}.png", value=40 + 80 * ci + i)
    return root


# --------------------------------------------------------------------------- digits
def test_digits_split_is_fixed_stratified_and_disjoint():
    from sklearn.datasets import load_digits

    labels = load_digits().target
    train_idx, val_idx = digits_split_indices(labels)
    assert len(train_idx) == 1438 and len(val_idx) == 359
    assert len(set(train_idx) & set(val_idx)) == 0
    assert sorted(np.concatenate([train_idx, val_idx]).tolist()) == list(range(1797))
    counts = np.bincount(labels[val_idx], minlength=10)
    assert counts.min() == 35 and counts.max() == 37  # every class ~20%
    again_train, again_val = digits_split_indices(labels)
    assert np.array_equal(train_idx, again_train) and np.array_equal(val_idx, again_val)


def test_digits_dataset_images_are_rgb_at_input_size():
    ds = DigitsDataset("val", input_size=40)
    assert len(ds) == 359 and ds.classes == [str(i) for i in range(10)]
    img, target = ds[0]
    assert img.mode == "RGB" and img.size == (40, 40)
    arr = np.asarray(img)
    assert np.array_equal(arr[..., 0], arr[..., 1]) and arr.max() > 200 and arr.min() == 0
    assert target == ds.targets[0]
    t = create_eval_transform(40, crop_pct=1.0, interpolation="bilinear")
    x, _ = DigitsDataset("train", 40, transform=t)[3]
    assert x.shape == (3, 40, 40) and x.dtype == torch.float32


def test_default_build_datasets_is_digits():
    splits = build_datasets(input_size=32)
    assert splits.name == "digits" and splits.num_classes == 10
    assert len(splits.train) == 1438 and len(splits.val) == 359


# --------------------------------------------------------------------------- image folders
def test_image_folder_scan_and_load(tmp_path):
    root = make_folder(tmp_path / "ds", classes=("cat", "dog"), n=2)
    # a validation/ folder is accepted instead of val/
    (root / "val").rename(root / "validation")
    tf = create_eval_transform(32, crop_pct=1.0)
    splits = build_datasets(root, input_size=32, train_transform=tf, val_transform=tf)
    assert splits.classes == ["cat", "dog"]
    assert len(splits.train) == 4 and len(splits.val) == 4
    x, y = splits.train[3]
    assert x.shape == (3, 32, 32) and y == 1


def test_modes_are_converted_to_rgb(tmp_path):
    gray = _png(tmp_path / "g.png", 77, mode="L")
    assert load_rgb(gray).mode == "RGB" and load_rgb(gray).getpixel((0, 0)) == (77, 77, 77)
    rgba = tmp_path / "t.png"
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 255))
    img.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent black -> white background
    img.save(rgba)
    out = load_rgb(rgba)
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 1)) == (255, 0, 0)
    pal = tmp_path / "p.png"
    Image.new("RGB", (4, 4), (10, 200, 30)).convert("P", palette=Image.Palette.ADAPTIVE).save(pal)
    assert load_rgb(pal).getpixel((2, 2)) == (10, 200, 30)
    i16 = tmp_path / "i16.png"
    Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16)).save(i16)
    assert load_rgb(i16).getpixel((0, 0)) == (255, 255, 255)


def test_missing_and_empty_dirs(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        build_datasets(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no train/ folder"):
        build_datasets(tmp_path / "empty")
    (tmp_path / "empty" / "train").mkdir()
    (tmp_path / "empty" / "val").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        build_datasets(tmp_path / "empty")
    with pytest.raises(DataError, match="--train-dir and --val-dir"):
        build_datasets(train_dir=tmp_path / "empty" / "train")


def test_class_folders_must_match(tmp_path):
    root = make_folder(tmp_path / "ds", classes=("a", "b"), n=1)
    _png(root / "train" / "c" / "0.png")
    with pytest.raises(DataError, match=r"differ between train and val.*only in train: c"):
        build_datasets(root)


def test_class_without_images(tmp_path):
    root = make_folder(tmp_path / "ds", n=1)
    (root / "train" / "c").mkdir()
    (root / "val" / "c").mkdir()
    _png(root / "val" / "c" / "0.png")
    with pytest.raises(DataError, match=r"train/c has no images"):
        build_datasets(root)


def test_non_image_files(tmp_path, caplog):
    root = make_folder(tmp_path / "ds", n=200)
    (root / "train" / "a" / "notes.txt").write_text("hello")
    (root / "train" / "a" / ".DS_Store").write_text("ignored silently")
    with caplog.at_level(logging.WARNING, logger="fastvit"):
        splits = build_datasets(root)
    assert len(splits.train) == 400  # the text file is skipped (1 of 401 < 1%)
    assert "skipped 1 of 401 files in train" in caplog.text and "notes.txt" in caplog.text
    # a class with only non-image files is an error
    (root / "val" / "z").mkdir()
    (root / "train" / "z").mkdir()
    (root / "train" / "z" / "readme.md").write_text("x")
    _png(root / "val" / "z" / "0.png")
    with pytest.raises(DataError, match=r"has no images .only non-image files such as readme.md"):
        build_datasets(root)


def test_truncated_and_unreadable_images(tmp_path, caplog):
    root = make_folder(tmp_path / "ds", n=60)
    good = root / "train" / "a" / "0.png"
    jpg = root / "train" / "a" / "big.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        jpg, quality=95
    )
    data = jpg.read_bytes()
    jpg.write_bytes(data[: len(data) // 2])  # truncated JPEG: header fine, pixels missing
    (root / "train" / "b" / "fake.png").write_text("not a png")  # image extension, not an image
    # 2 bad of 122 files: more than 1% -> stop with one line
    with pytest.raises(DataError, match=r"2 of 122 files .* unreadable or not images"):
        build_datasets(root)
    # with a larger allowed share they are skipped and counted
    with caplog.at_level(logging.WARNING, logger="fastvit"):
        splits = build_datasets(root, max_bad_share=0.05)
    assert len(splits.train) == 120 and "skipped 2 of 122" in caplog.text
    # a header-only check cannot see the truncation (only the fake file)
    rep = scan_image_folder(root / "train", check_images="header", max_bad_share=0.05)
    assert [Path(p).name for p, _ in rep.skipped] == ["fake.png"]
    assert good.exists()


def test_eval_dataset_from_root_or_class_dir(tmp_path):
    root = make_folder(tmp_path / "ds", classes=("x", "y", "z"), n=2)
    ds, classes, name = build_eval_dataset(root)
    assert classes == ["x", "y", "z"] and len(ds) == 6 and name.endswith("val")
    ds2, classes2, _ = build_eval_dataset(root / "train")
    assert classes2 == classes and len(ds2) == 6
    ds3, classes3, name3 = build_eval_dataset(None, input_size=32)
    assert name3 == "digits" and len(ds3) == 359 and len(classes3) == 10


# --------------------------------------------------------------------------- transforms
def test_train_transform_and_mixup():
    tf = create_train_transform(
        32, scale=(0.5, 1.0), hflip=0.0, auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25
    )
    img = Image.new("RGB", (50, 40), (200, 10, 10))
    torch.manual_seed(0)
    x = tf(img)
    assert x.shape == (3, 32, 32)
    with pytest.raises(ConfigError, match="invalid --auto-augment"):
        create_train_transform(32, auto_augment="bogus-m9")
    with pytest.raises(ConfigError, match="unknown interpolation"):
        create_train_transform(32, interpolation="lanczos9")
    assert create_mixup(0.0, 0.0, num_classes=10) is None
    mix = create_mixup(0.8, 1.0, num_classes=10, label_smoothing=0.1)
    _, yb = mix(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]))
    assert yb.shape == (4, 10)
    assert torch.allclose(yb.sum(1), torch.ones(4))
    assert float(yb.min()) >= 0.1 / 10 - 1e-6  # smoothing floor


def test_eval_transform_crop_pct():
    tf = create_eval_transform(
        32, crop_pct=0.5, interpolation="bilinear", mean=(0, 0, 0), std=(1, 1, 1)
    )
    img = Image.new("RGB", (64, 64), (0, 0, 0))
    img.paste((255, 255, 255), (16, 16, 48, 48))  # white centre square, half the width
    x = tf(img)
    # resize to 64 (32 / 0.5), center crop 32 -> only the white square remains
    assert x.shape == (3, 32, 32) and float(x.min()) > 0.99
