"""Digit canvases with per-pixel masks: an embedded, download-free segmentation task.

Real scanned digits (scikit-learn's 8x8 digits, :mod:`fastvit.data.digits`) are pasted at
random scales and places, without overlapping, onto a noisy dark canvas. Every pixel's class is
known: 0 is the background, ``d + 1`` the ink of digit ``d`` (ink above :data:`INK`), and the
soft rim of each stroke (between :data:`RIM` and :data:`INK`, where the upscaled scan is
neither clearly ink nor clearly paper) is :data:`~fastvit.models.segmentation.IGNORE_INDEX`
(255), so neither the loss nor the metric judge the arbitrary threshold there.

Canvases are deterministic per (split, seed, index) and drawn from the digits' own fixed
train / val split, so validation canvases hold digits never seen in training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from fastvit.data.digits import DIGITS_CLASSES, DigitsDataset
from fastvit.errors import DataError

#: Class names of the masks: the background, then the ten digits.
CANVAS_CLASSES: list[str] = ["background", *DIGITS_CLASSES]
#: Ink level (of 1) from which a pixel belongs to its digit.
INK = 0.5
#: Ink level above which a pixel that is not ink is ignored (the stroke's rim).
RIM = 0.2
#: Highest value of the canvas noise (well below :data:`RIM`).
NOISE = 0.15
#: Mask value of ignored pixels (= ``fastvit.models.segmentation.IGNORE_INDEX``; data does not
#: import models).
IGNORE_INDEX = 255


class DigitCanvases(Dataset):
    """``n`` canvases of ``size`` px with 1..``max_digits`` digits of ``digit_px`` px each.

    Items are ``(image, mask)``: ``image`` a ``(3, size, size)`` float tensor in [0, 1]
    (grey, replicated to 3 channels), ``mask`` a ``(size, size)`` int64 tensor of classes
    (:data:`CANVAS_CLASSES`: 0 background, ``d + 1`` digit ``d``, 255 ignored rim).
    Digits never overlap; when a digit finds no free place after a few tries it is left out.
    """

    def __init__(
        self,
        split: str,
        n: int,
        size: int = 96,
        *,
        digit_px: tuple[int, int] = (20, 40),
        max_digits: int = 4,
        seed: int = 0,
        ignore_rim: bool = True,
    ) -> None:
        lo, hi = digit_px
        if n < 0:
            raise DataError(f"the number of canvases must be >= 0, got {n}")
        if not 8 <= lo <= hi <= size:
            raise DataError(
                f"digit sizes {digit_px} must satisfy 8 <= min <= max <= canvas size {size}"
            )
        if max_digits < 1:
            raise DataError(f"max_digits must be at least 1, got {max_digits}")
        digits = DigitsDataset(split)
        self.scans = digits._digits  # (N, 1, 8, 8) in [0, 1], upscaled per paste
        self.labels = torch.tensor(digits.targets)
        self.classes = list(CANVAS_CLASSES)
        self.num_classes = len(self.classes)
        self.n, self.size, self.seed = int(n), int(size), int(seed)
        self.digit_px, self.max_digits, self.ignore_rim = (lo, hi), int(max_digits), ignore_rim
        self.split = split

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        if not 0 <= i < self.n:
            raise IndexError(f"canvas {i} out of range 0..{self.n - 1}")
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        size, (lo, hi) = self.size, self.digit_px
        canvas = torch.rand(size, size, generator=g) * NOISE
        mask = torch.zeros(size, size, dtype=torch.int64)
        taken = torch.zeros(size, size, dtype=torch.bool)
        for _ in range(int(torch.randint(1, self.max_digits + 1, (1,), generator=g))):
            k = int(torch.randint(len(self.labels), (1,), generator=g))
            s = int(torch.randint(lo, hi + 1, (1,), generator=g))
            for _try in range(10):
                x0 = int(torch.randint(0, size - s + 1, (1,), generator=g))
                y0 = int(torch.randint(0, size - s + 1, (1,), generator=g))
                if not taken[y0 : y0 + s, x0 : x0 + s].any():
                    break
            else:
                continue  # no free place for this digit
            digit = F.interpolate(
                self.scans[k : k + 1], size=(s, s), mode="bilinear", align_corners=False
            )[0, 0].clamp(0, 1)
            taken[y0 : y0 + s, x0 : x0 + s] = True
            window = canvas[y0 : y0 + s, x0 : x0 + s]
            canvas[y0 : y0 + s, x0 : x0 + s] = torch.maximum(window, digit)
            label = mask[y0 : y0 + s, x0 : x0 + s]
            if self.ignore_rim:
                label[digit > RIM] = IGNORE_INDEX
            label[digit >= INK] = int(self.labels[k]) + 1
        image = canvas.clamp(0, 1).expand(3, -1, -1).contiguous()
        return image, mask

    def stacked(self) -> tuple[Tensor, Tensor]:
        """All canvases as two tensors ``(n, 3, S, S)`` and ``(n, S, S)`` (small val sets)."""
        if self.n == 0:
            raise DataError("no canvases to stack; give n >= 1")
        images, masks = zip(*(self[i] for i in range(self.n)))
        return torch.stack(images), torch.stack(masks)


__all__ = ["CANVAS_CLASSES", "IGNORE_INDEX", "INK", "NOISE", "RIM", "DigitCanvases"]
