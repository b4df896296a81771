"""Embedded default dataset: scikit-learn's bundled 8x8 handwritten digits.

1,797 real scanned digits in 10 classes ship inside scikit-learn, so training works with no
download. The split is fixed and stratified (every fifth image of each class, in file order,
goes to validation: 1,438 train / 359 val) so results are comparable between runs and machines.
Images are upscaled to the model's input size and replicated to 3 channels. This is the one
digits loader: training, eval, export parity checks and int8 calibration all use it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from fastvit.errors import DataError

DIGITS_CLASSES: list[str] = [str(i) for i in range(10)]
_VAL_EVERY = 5  # 1 image in 5 of each class goes to validation (20%)
_VAL_OFFSET = 2


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    """Return (images uint8-range float in [0, 16] of shape (N, 8, 8), labels (N,))."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images.astype(np.float32), bunch.target.astype(np.int64)


def digits_split_indices(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fixed stratified split: per class, every fifth image (in dataset order) is validation."""
    train_idx, val_idx = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        is_val = (np.arange(len(idx)) % _VAL_EVERY) == _VAL_OFFSET
        val_idx.append(idx[is_val])
        train_idx.append(idx[~is_val])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(val_idx))


class DigitsDataset(Dataset):
    """The scikit-learn digits as PIL images of ``input_size`` pixels (train or val split).

    Each 8x8 digit is upscaled here (bilinear, on the 0..16 intensities) rather than in the
    transform, so per-sample augmentation works at the final resolution. Upscaling happens
    per item, so a large input size costs no memory up front. Images are RGB, or grayscale
    ("L") with ``in_chans=1``. ``limit`` keeps the first ``limit`` images of the split.
    """

    def __init__(
        self,
        split: str = "train",
        input_size: int = 32,
        transform: Callable | None = None,
        *,
        in_chans: int = 3,
        limit: int | None = None,
    ) -> None:
        if split not in ("train", "val"):
            raise DataError(f"digits split must be 'train' or 'val', got {split!r}")
        if input_size < 8:
            raise DataError(f"digits input size must be at least 8, got {input_size}")
        if in_chans not in (1, 3):
            raise DataError(f"digits images have 1 or 3 channels, not {in_chans}")
        images, labels = _load_digits()
        train_idx, val_idx = digits_split_indices(labels)
        idx = (train_idx if split == "train" else val_idx)[:limit]
        self._digits = torch.from_numpy(images[idx] / 16.0).unsqueeze(1)  # (N, 1, 8, 8) in [0, 1]
        self.targets: list[int] = labels[idx].tolist()
        self.classes: list[str] = list(DIGITS_CLASSES)
        self.split = split
        self.input_size = int(input_size)
        self.mode = "RGB" if in_chans == 3 else "L"
        self.transform = transform
        self.root = "sklearn-digits"

    def __len__(self) -> int:
        return len(self.targets)

    def pixels(self, index: int) -> np.ndarray:
        """The upscaled digit ``index`` as a uint8 ``(H, W)`` array."""
        size = (self.input_size, self.input_size)
        x = F.interpolate(
            self._digits[index : index + 1], size=size, mode="bilinear", align_corners=False
        )
        return (x.clamp(0, 1) * 255).round().to(torch.uint8)[0, 0].numpy()

    def __getitem__(self, index: int) -> tuple[object, int]:
        img = Image.fromarray(self.pixels(index)).convert(self.mode)
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[index]
