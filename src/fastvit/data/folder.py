"""ImageFolder datasets with the checks a user needs before a long run starts.

Layout: ``root/train/<class>/<image>`` and ``root/val/<class>/<image>`` (``validation/`` is
accepted too), or separate train and val directories. Problems are found while scanning, before
any training step, and reported as one-line :class:`~fastvit.errors.DataError` messages:
missing or empty directories, class folders that differ between train and val, classes with
no images. Unreadable, truncated and non-image files are skipped with a count; when they are
more than ``max_bad_share`` of a split the scan stops, because a dataset that broken is
more likely a wrong path or a failed copy than a few bad files.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from torch.utils.data import Dataset

from fastvit.data.images import is_image_file, load_image, open_image, to_model_mode
from fastvit.errors import DataError

logger = logging.getLogger("fastvit")

VAL_DIR_NAMES: tuple[str, ...] = ("val", "validation")
FULL_CHECK_MAX_FILES = 10_000  # 'auto' decodes every image up to this many files per split


def _check_image(path: Path, full: bool) -> str | None:
    """Return None when the file is a readable image, else a short reason."""
    try:
        if full:
            to_model_mode(open_image(path), 3, name=str(path))
        else:
            with Image.open(path) as img:
                img.verify()
    except Exception as e:  # PIL raises many types for bad files; all mean "skip it"
        return f"{type(e).__name__}: {e}".splitlines()[0][:120]
    return None


@dataclass
class ScanReport:
    """What a directory scan found: kept samples and the files it skipped."""

    root: Path
    classes: list[str]
    samples: list[tuple[str, int]]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    @property
    def num_files(self) -> int:
        return len(self.samples) + len(self.skipped)


def list_classes(split_dir: Path) -> list[str]:
    """Sorted class sub-folder names of ``split_dir`` (hidden folders ignored)."""
    if not split_dir.exists():
        raise DataError(f"data directory {split_dir} does not exist; check the path")
    if not split_dir.is_dir():
        raise DataError(f"{split_dir} is not a directory; pass a folder of class sub-folders")
    classes = sorted(
        e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith(".")
    )
    if not classes:
        raise DataError(
            f"{split_dir} has no class folders; expected {split_dir}/<class_name>/<image files>"
        )
    return classes


def scan_image_folder(
    split_dir: str | os.PathLike,
    classes: list[str] | None = None,
    check_images: str = "auto",
    max_bad_share: float = 0.01,
) -> ScanReport:
    """Scan ``split_dir/<class>/*`` into (path, class index) samples, checking every file.

    ``check_images``: 'full' decodes every image (finds truncated files), 'header' only reads
    headers (fast, for very large datasets), 'none' trusts the extensions, 'auto' is 'full' up
    to ``FULL_CHECK_MAX_FILES`` files and 'header' beyond.
    """
    if check_images not in ("auto", "full", "header", "none"):
        raise DataError(
            f"unknown --check-images value {check_images!r}; use auto, full, header or none"
        )
    split_dir = Path(split_dir)
    found = list_classes(split_dir)
    classes = found if classes is None else classes
    index = {c: i for i, c in enumerate(classes)}
    candidates: list[tuple[Path, int]] = []
    skipped: list[tuple[str, str]] = []
    for cls in found:
        files = sorted(
            p for p in (split_dir / cls).rglob("*") if p.is_file() and not p.name.startswith(".")
        )
        images = [p for p in files if is_image_file(p)]
        others = [p for p in files if not is_image_file(p)]
        skipped += [(str(p), "not an image file (unknown extension)") for p in others]
        if not images:
            extra = f" (only non-image files such as {others[0].name})" if others else ""
            raise DataError(
                f"class folder {split_dir / cls} has no images{extra}; add images or remove it"
            )
        candidates += [(p, index[cls]) for p in images]

    mode = check_images
    if mode == "auto":
        mode = "full" if len(candidates) <= FULL_CHECK_MAX_FILES else "header"
    samples: list[tuple[str, int]] = []
    for path, target in candidates:
        reason = None if mode == "none" else _check_image(path, full=(mode == "full"))
        if reason is None:
            samples.append((str(path), target))
        else:
            skipped.append((str(path), f"unreadable image ({reason})"))

    report = ScanReport(split_dir, classes, samples, skipped)
    bad = len(skipped)
    if bad and bad > max_bad_share * report.num_files:
        example = skipped[0]
        raise DataError(
            f"{bad} of {report.num_files} files in {split_dir} are unreadable or not images "
            f"(more than {max_bad_share:.0%}; e.g. {example[0]}: {example[1]}); "
            f"fix or remove them, or raise --max-bad-share"
        )
    # every class must keep at least one readable image
    kept = {t for _, t in samples}
    for cls in found:
        if index[cls] not in kept:
            raise DataError(
                f"class folder {split_dir / cls} has no readable images; fix or remove it"
            )
    return report


def find_val_dir(root: str | os.PathLike) -> Path | None:
    """``root/val`` or ``root/validation`` when one exists: THE val split of a data root."""
    root = Path(root)
    return next((root / n for n in VAL_DIR_NAMES if (root / n).is_dir()), None)


def eval_split_dir(data: str | os.PathLike) -> Path:
    """The folder evaluated for ``data``: its val split (:func:`find_val_dir`), or ``data``
    itself when it is a folder of class folders with no val split."""
    root = Path(data)
    if not root.exists():
        raise DataError(f"data directory {root} does not exist; check the path")
    return find_val_dir(root) or root


def resolve_split_dirs(
    data: str | os.PathLike | None,
    train_dir: str | os.PathLike | None = None,
    val_dir: str | os.PathLike | None = None,
) -> tuple[Path, Path]:
    """Find the train and val directories from ``--data`` or ``--train-dir``/``--val-dir``."""
    if data is not None:
        root = Path(data)
        if not root.exists():
            raise DataError(f"data directory {root} does not exist; check the path")
        if not root.is_dir():
            raise DataError(f"{root} is not a directory; pass a folder with train/ and val/")
        tdir = Path(train_dir) if train_dir else root / "train"
        vdir = Path(val_dir) if val_dir else (find_val_dir(root) or root / "val")
        if not tdir.is_dir():
            raise DataError(
                f"{root} has no train/ folder; expected {root}/train/<class>/ and {root}/val/<class>/"
            )
        if not vdir.is_dir():
            raise DataError(
                f"{root} has no val/ or validation/ folder; expected {root}/val/<class>/ images"
            )
        return tdir, vdir
    if train_dir is None or val_dir is None:
        raise DataError("pass --data ROOT, or both --train-dir and --val-dir")
    return Path(train_dir), Path(val_dir)


def check_same_classes(train_classes: list[str], val_classes: list[str]) -> None:
    """Raise when train and val do not have exactly the same class folders."""
    if train_classes == val_classes:
        return
    only_train = sorted(set(train_classes) - set(val_classes))
    only_val = sorted(set(val_classes) - set(train_classes))
    parts = []
    if only_train:
        parts.append(f"only in train: {', '.join(only_train[:5])}")
    if only_val:
        parts.append(f"only in val: {', '.join(only_val[:5])}")
    raise DataError(
        f"class folders differ between train and val ({'; '.join(parts)}); "
        "make both splits have the same class folders"
    )


def report_skipped(report: ScanReport, split: str) -> None:
    """Warn (logger ``fastvit``; stderr by default) about skipped files, with a count."""
    if not report.skipped:
        return
    path, reason = report.skipped[0]
    msg = (
        f"skipped {len(report.skipped)} of {report.num_files} files in {split} "
        f"(e.g. {path}: {reason})"
    )
    logger.warning("warning: %s", msg)


class ImageFolderDataset(Dataset):
    """(image, class index) pairs from a scanned class-folder directory."""

    def __init__(
        self, report: ScanReport, transform: Callable | None = None, in_chans: int = 3
    ) -> None:
        self.in_chans = in_chans  # 1: grayscale ("L") images, 3: RGB
        self.root = str(report.root)
        self.classes = list(report.classes)
        self.samples = list(report.samples)
        self.targets = [t for _, t in self.samples]
        self.skipped = list(report.skipped)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[object, int]:
        path, target = self.samples[index]
        try:
            img = load_image(path, self.in_chans)
        except DataError:
            raise
        except Exception as e:  # file changed since the scan, or a 'header'-only check missed it
            raise DataError(
                f"cannot read image {path} ({type(e).__name__}); remove it or scan with "
                "--check-images full"
            ) from e
        if self.transform is not None:
            img = self.transform(img)
        return img, target
