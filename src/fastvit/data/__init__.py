"""Datasets and transforms: checked ImageFolder datasets and the embedded digits default."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset

from fastvit.data.digits import DIGITS_CLASSES, DigitsDataset, digits_split_indices
from fastvit.data.folder import (
    IMG_EXTENSIONS,
    ImageFolderDataset,
    ScanReport,
    check_same_classes,
    list_classes,
    load_rgb,
    report_skipped,
    resolve_split_dirs,
    scan_image_folder,
)
from fastvit.data.transforms import create_eval_transform, create_mixup, create_train_transform
from fastvit.errors import DataError

__all__ = [
    "DIGITS_CLASSES",
    "IMG_EXTENSIONS",
    "DataSplits",
    "DigitsDataset",
    "ImageFolderDataset",
    "ScanReport",
    "build_datasets",
    "build_eval_dataset",
    "check_same_classes",
    "create_eval_transform",
    "create_mixup",
    "create_train_transform",
    "digits_split_indices",
    "list_classes",
    "load_rgb",
    "resolve_split_dirs",
    "scan_image_folder",
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
) -> tuple[Dataset, list[str], str]:
    """Validation dataset for ``fastvit eval``: a data root (its val split), a class-folder
    directory itself, or the digits val split when ``data`` is None."""
    if data is None:
        return DigitsDataset("val", input_size, transform), list(DIGITS_CLASSES), "digits"
    root = Path(data)
    if not root.exists():
        raise DataError(f"data directory {root} does not exist; check the path")
    split_dir = next((root / n for n in ("val", "validation") if (root / n).is_dir()), root)
    scan = scan_image_folder(split_dir, None, check_images, max_bad_share)
    report_skipped(scan, "val")
    return ImageFolderDataset(scan, transform), list(scan.classes), str(split_dir)
