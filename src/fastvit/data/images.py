"""Image files: which files are images, decoding, and conversion to what a model takes.

Every part of fastvit that reads pixels (training datasets, eval, predict, export parity
checks, int8 calibration) goes through here, so an image means the same thing everywhere:

* grayscale, palette and CMYK images become RGB;
* images with transparency (RGBA, LA, palette + transparency) are composited onto white
  (a plain ``convert('RGB')`` would expose whatever colour transparent pixels store);
* 16/32-bit and float grayscale is rescaled to 8 bits (65535 is white for 16-bit data);
* a 1-channel model gets grayscale ("L") images.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from fastvit.errors import DataError

IMG_EXTENSIONS: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".ppm",
    ".pgm",
    ".tif",
    ".tiff",
    ".webp",
    ".gif",
)
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_HIGH_DEPTH_MODES = ("I", "I;16", "I;16B", "I;16L", "F")


def is_image_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` has an image extension (case-insensitive)."""
    return Path(path).suffix.lower() in IMG_EXTENSIONS


def to_model_mode(img: Image.Image, in_chans: int = 3, name: str = "image") -> Image.Image:
    """Convert a PIL image to "RGB" (``in_chans=3``) or "L" (``in_chans=1``)."""
    if in_chans not in (1, 3):
        raise DataError(
            f"the model takes {in_chans}-channel input but images have 1 (grayscale) "
            "or 3 (RGB) channels; use a model built with in_chans=1 or 3"
        )
    target = "RGB" if in_chans == 3 else "L"
    if img.mode == target:
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode in _HIGH_DEPTH_MODES:
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray((np.clip(arr / hi, 0, 1) * 255).round().astype(np.uint8), "L")
    try:
        return img.convert(target)
    except (ValueError, OSError) as e:
        raise DataError(
            f"cannot convert {name} (mode {img.mode}) to {target} ({e}); "
            "save it as an RGB or grayscale image"
        ) from None


def open_image(path: str | os.PathLike) -> Image.Image:
    """Decode an image file fully (PIL's own exceptions for bad files, for scanners)."""
    with Image.open(path) as im:
        im.load()
        return im.copy()


def load_image(path: str | os.PathLike, in_chans: int = 3) -> Image.Image:
    """Open an image as a PIL image with ``in_chans`` channels (1 -> "L", 3 -> "RGB").

    Raises :class:`DataError` (one line) for missing or unreadable files.
    """
    path = Path(path)
    try:
        img = open_image(path)
    except FileNotFoundError:
        raise DataError(f"image {path} does not exist; check the path") from None
    except Image.DecompressionBombError:  # far beyond PIL's pixel limit: refuse to decode
        raise DataError(
            f"cannot read image {path}: it is too large to decode safely (a decompression bomb?)"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"cannot read image {path} ({reason}); is it a valid image file?") from None
    return to_model_mode(img, in_chans, name=str(path))


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Open an image file as RGB (see the module docstring for the conversions)."""
    return load_image(path, 3)


def list_images(path: str | os.PathLike) -> list[Path]:
    """One image file, or every image in a folder (recursively, sorted; hidden files skipped)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist; give an image file or a folder of images")
    if path.is_file():
        return [path]
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file() and not p.name.startswith(".") and is_image_file(p)
    )
    if not files:
        raise DataError(f"no images ({', '.join(IMG_EXTENSIONS)}) found in {path}")
    return files


def pil_from_array(arr: Any, in_chans: int = 3) -> Image.Image:
    """A uint8 ``(H, W)`` array as a PIL image in the model's mode."""
    return to_model_mode(Image.fromarray(np.asarray(arr, dtype=np.uint8), "L"), in_chans)
