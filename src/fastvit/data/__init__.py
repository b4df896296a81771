"""Everything that touches pixels: image files, the Preprocessing type, transforms, datasets.

Image decoding and mode conversion (:mod:`fastvit.data.images`), checked ImageFolder datasets,
the embedded digits default, the one definition of a data root's val split
(:func:`eval_split_dir`), and labelled arrays for int8 calibration and accuracy checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from fastvit.card import IMAGENET_MEAN, IMAGENET_STD, ModelCard, Preprocessing
from fastvit.data.digits import DIGITS_CLASSES, DigitsDataset, digits_split_indices
from fastvit.data.folder import (
    ImageFolderDataset,
    ScanReport,
    check_same_classes,
    eval_split_dir,
    find_val_dir,
    list_classes,
    report_skipped,
    resolve_split_dirs,
    scan_image_folder,
)
from fastvit.data.images import (
    IMG_EXTENSIONS,
    is_image_file,
    list_images,
    load_image,
    load_rgb,
    to_model_mode,
)
from fastvit.data.transforms import (
    create_eval_transform,
    create_mixup,
    create_train_transform,
    eval_transform,
)
from fastvit.errors import DataError

__all__ = [
    "DIGITS_CLASSES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMG_EXTENSIONS",
    "DataSplits",
    "DigitsDataset",
    "ImageFolderDataset",
    "LabelledImages",
    "ModelCard",
    "Preprocessing",
    "ScanReport",
    "build_datasets",
    "build_eval_dataset",
    "calibration_images",
    "check_same_classes",
    "create_eval_transform",
    "create_mixup",
    "create_train_transform",
    "digits_split_indices",
    "eval_split_dir",
    "eval_transform",
    "find_val_dir",
    "is_image_file",
    "list_classes",
    "list_images",
    "load_image",
    "load_labelled",
    "load_rgb",
    "read_class_names",
    "resolve_split_dirs",
    "scan_image_folder",
    "to_model_mode",
]


@dataclass
class DataSplits:
    """Train and val datasets plus what a run records about them."""

    train: Dataset
    val: Dataset
    classes: list[str]
    name: str  # 'digits' or the data root

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def build_datasets(
    data: str | Path | None = None,
    *,
    train_dir: str | Path | None = None,
    val_dir: str | Path | None = None,
    input_size: int = 32,
    train_transform=None,
    val_transform=None,
    check_images: str = "auto",
    max_bad_share: float = 0.01,
) -> DataSplits:
    """Build train/val datasets from ``data`` (ImageFolder root), explicit dirs, or digits.

    With no ``data``, ``train_dir`` or ``val_dir`` the embedded scikit-learn digits are used.
    """
    if data is None and train_dir is None and val_dir is None:
        return DataSplits(
            DigitsDataset("train", input_size, train_transform),
            DigitsDataset("val", input_size, val_transform),
            list(DIGITS_CLASSES),
            "digits",
        )
    tdir, vdir = resolve_split_dirs(data, train_dir, val_dir)
    train_scan = scan_image_folder(tdir, None, check_images, max_bad_share)
    check_same_classes(train_scan.classes, list_classes(vdir))
    val_scan = scan_image_folder(vdir, train_scan.classes, check_images, max_bad_share)
    report_skipped(train_scan, "train")
    report_skipped(val_scan, "val")
    return DataSplits(
        ImageFolderDataset(train_scan, train_transform),
        ImageFolderDataset(val_scan, val_transform),
        list(train_scan.classes),
        str(data if data is not None else tdir.parent),
    )


def build_eval_dataset(
    data: str | Path | None = None,
    *,
    input_size: int = 32,
    transform=None,
    check_images: str = "auto",
    max_bad_share: float = 0.01,
    in_chans: int = 3,
    classes: list[str] | None = None,
    limit: int | None = None,
) -> tuple[Dataset, list[str], str]:
    """The val split used by ``fastvit eval`` and ``export --val``: a data root's val split
    (:func:`eval_split_dir`), a folder of class folders itself, or the digits val split
    (``data`` None or ``'digits'``).

    ``classes`` (a model's class names) label the folders when every folder is one of them
    (a model trained on more classes than the folder holds); otherwise the sorted folder names
    are the classes. ``limit`` keeps the first images of the digits split.
    """
    if data is None or str(data) == "digits":
        ds = DigitsDataset("val", input_size, transform, in_chans=in_chans, limit=limit)
        return ds, list(DIGITS_CLASSES), "digits"
    split_dir = eval_split_dir(data)
    found = list_classes(split_dir)
    use = list(classes) if classes and set(found) <= set(classes) else None
    scan = scan_image_folder(split_dir, use, check_images, max_bad_share)
    report_skipped(scan, "val")
    return ImageFolderDataset(scan, transform, in_chans), list(scan.classes), str(split_dir)


@dataclass
class LabelledImages:
    """Preprocessed images ``(N, C, H, W)`` float32 with integer labels (-1: unlabelled)."""

    images: np.ndarray
    labels: np.ndarray


def _stack(dataset: Dataset) -> LabelledImages:
    xs, ys = zip(*(dataset[i] for i in range(len(dataset)))) if len(dataset) else ((), ())
    if not xs:
        raise DataError("no images to load")
    return LabelledImages(torch.stack(list(xs)).numpy(), np.asarray(ys, dtype=np.int64))


def load_labelled(
    source: str | Path | None,
    prep: Preprocessing | ModelCard,
    *,
    split: str = "val",
    limit: int | None = None,
    check_images: str = "auto",
) -> LabelledImages:
    """A labelled split of ``source`` preprocessed with ``prep``, as arrays: what accuracy
    checks (int8 vs fp32) score on. ``split='val'`` is the val split exactly as ``fastvit
    eval`` reads it (:func:`build_eval_dataset`); ``'train'`` is the digits train split or a
    data root's ``train/``. A :class:`ModelCard` also supplies the class names that label
    the folders. ``limit`` keeps the first images of the digits splits."""
    if split not in ("train", "val"):
        raise DataError(f"unknown split {split!r}; use train or val")
    card = prep if isinstance(prep, ModelCard) else None
    prep = card.preprocessing if card is not None else prep
    transform = eval_transform(prep)
    names = list(card.class_names or []) if card is not None else None
    if split == "val":
        ds, _, _ = build_eval_dataset(
            source,
            input_size=prep.input_size[-1],
            transform=transform,
            check_images=check_images,
            in_chans=prep.in_chans,
            limit=limit,
            classes=names,
        )
    elif source is None or str(source) == "digits":
        ds = DigitsDataset(
            "train", prep.input_size[-1], transform, in_chans=prep.in_chans, limit=limit
        )
    else:
        tdir, _ = resolve_split_dirs(source)
        found = list_classes(tdir)
        scan = scan_image_folder(
            tdir, names if names and set(found) <= set(names) else None, check_images
        )
        report_skipped(scan, "train")
        ds = ImageFolderDataset(scan, transform, prep.in_chans)
    return _stack(ds)


def calibration_images(
    source: str | Path, prep: Preprocessing, *, limit: int | None = None
) -> np.ndarray:
    """Preprocessed images ``(N, C, H, W)`` for int8 calibration: ``'digits'`` (the digits
    train split), a data root (its ``train/`` split), or any folder of images (recursively).
    ``limit`` keeps a spread-out subset (fixed seed), not just the first class."""
    transform = eval_transform(prep)
    if str(source) == "digits":
        ds = DigitsDataset(
            "train", prep.input_size[-1], transform, in_chans=prep.in_chans, limit=limit
        )
        return _stack(ds).images
    root = Path(source)
    folder = root / "train" if (root / "train").is_dir() else root
    paths = list_images(folder)
    if limit is not None and limit < len(paths):
        keep = np.sort(np.random.default_rng(0).permutation(len(paths))[:limit])
        paths = [paths[i] for i in keep]
    return torch.stack([transform(load_image(p, prep.in_chans)) for p in paths]).numpy()


def read_class_names(path: str | Path) -> list[str]:
    """Class names from a text file, one per line (blank lines ignored)."""
    path = Path(path)
    try:
        names = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(
            f"cannot read class names from {path} ({type(e).__name__}); "
            "give a UTF-8 text file with one name per line"
        ) from None
    names = [n for n in names if n]
    if not names:
        raise DataError(f"{path} holds no class names; give one name per line")
    return names
