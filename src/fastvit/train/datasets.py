"""The datasets of a run: train/val splits with the configured transforms.

Besides the layouts :func:`fastvit.data.build_datasets` reads (``ROOT/train`` + ``ROOT/val``,
explicit directories, the embedded digits), a run accepts one folder of class folders
(``ROOT/<class>/<images>``, no ``train/``/``val/``) and holds out ``val_split`` of each class
for validation: a stratified split drawn per class from the run's seed and the class name, so it
is the same on every resume and does not change for one class when another is added.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

from fastvit.errors import DataError
from fastvit.train.config import TrainConfig


def is_single_folder(root: str | os.PathLike) -> bool:
    """True for a data root with class folders but no ``train/`` split folder."""
    from fastvit.data.folder import VAL_DIR_NAMES

    root = Path(root)
    if not root.is_dir() or (root / "train").is_dir():
        return False
    if any((root / n).is_dir() for n in VAL_DIR_NAMES):
        return False  # val/ without train/: reported as a missing train/ folder
    subdirs = [e for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")]
    if not subdirs:
        raise DataError(
            f"{root} has no train/ folder and no class folders; expected {root}/train/<class>/ "
            f"and {root}/val/<class>/, or {root}/<class>/ images (split with --val-split)"
        )
    return True


def stratified_split(
    samples: list[tuple[str, int]], classes: list[str], val_split: float, seed: int, root: Path
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(train, val) samples: ``round(n * val_split)`` of each class's n images (at least one,
    and at least one left for training) go to val, chosen by a per-class seeded shuffle."""
    by_class: dict[int, list[tuple[str, int]]] = {}
    for s in samples:
        by_class.setdefault(s[1], []).append(s)
    train, val = [], []
    for c, items in sorted(by_class.items()):
        if len(items) < 2:
            raise DataError(
                f"class folder {root / classes[c]} has only {len(items)} image; a train/val split "
                "needs at least 2 per class"
            )
        n_val = min(len(items) - 1, max(1, round(len(items) * val_split)))
        order = list(range(len(items)))
        random.Random(f"{seed}:{classes[c]}").shuffle(order)
        held = set(order[:n_val])
        val += [s for i, s in enumerate(items) if i in held]
        train += [s for i, s in enumerate(items) if i not in held]
    return train, val


def build_splits(cfg: TrainConfig) -> Any:
    """Train/val datasets of a run with its train and eval transforms (a DataSplits)."""
    from fastvit.data import (
        DataSplits,
        ImageFolderDataset,
        ScanReport,
        build_datasets,
        create_eval_transform,
        create_train_transform,
        scan_image_folder,
    )
    from fastvit.data.folder import report_skipped

    train_tf = create_train_transform(
        cfg.input_size,
        scale=cfg.scale,
        ratio=cfg.ratio,
        hflip=cfg.hflip,
        auto_augment=cfg.auto_augment,
        color_jitter=cfg.color_jitter,
        re_prob=cfg.reprob,
        interpolation=cfg.interpolation,
        mean=cfg.mean,
        std=cfg.std,
        no_aug=cfg.no_aug,
    )
    val_tf = create_eval_transform(
        cfg.input_size,
        crop_pct=cfg.crop_pct,
        interpolation=cfg.interpolation,
        mean=cfg.mean,
        std=cfg.std,
    )
    if cfg.data is not None and cfg.train_dir is None and is_single_folder(cfg.data):
        root = Path(cfg.data)
        scan = scan_image_folder(root, None, cfg.check_images, cfg.max_bad_share)
        report_skipped(scan, "data")
        train, val = stratified_split(scan.samples, scan.classes, cfg.val_split, cfg.seed, root)
        splits = DataSplits(
            ImageFolderDataset(ScanReport(root, scan.classes, train), train_tf),
            ImageFolderDataset(ScanReport(root, scan.classes, val), val_tf),
            list(scan.classes),
            str(root),
        )
    else:
        splits = build_datasets(
            cfg.data,
            train_dir=cfg.train_dir,
            val_dir=cfg.val_dir,
            input_size=cfg.input_size,
            train_transform=train_tf,
            val_transform=val_tf,
            check_images=cfg.check_images,
            max_bad_share=cfg.max_bad_share,
        )
    if splits.num_classes < 2:
        raise DataError(
            f"{splits.name} has only one class ({splits.classes[0]}); a classifier needs at "
            "least 2 class folders"
        )
    return splits
