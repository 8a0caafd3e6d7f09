"""Reading image files: RGB uint8 frames, 16-bit depth maps, header-only sizes, natural sort.

Every failure becomes a one-line `UserError` naming the file.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from mslam_ns.errors import UserError

__all__ = ["IMAGE_EXTS", "natural_key", "list_images", "read_rgb", "read_depth", "image_size", "check_same_size"]

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")

_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple:
    """Sort key with embedded numbers compared as numbers: `img2 < img10`, case-insensitive otherwise."""
    parts = _DIGITS.split(name)
    return tuple((0, int(p), p) if i % 2 else (1, p.lower(), p) for i, p in enumerate(parts))


def list_images(folder: Path) -> list[Path]:
    """Image files (by extension, any case) directly inside `folder`, naturally sorted; hidden files skipped."""
    files = [
        p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".") and p.is_file()
    ]
    return sorted(files, key=lambda p: natural_key(p.name))


def _open(path: Path) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(path)
            img.load()
        return img
    except FileNotFoundError:
        raise UserError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        what = "not an image file" if isinstance(e, UnidentifiedImageError) else "corrupt or unreadable image"
        raise UserError(f"{path}: {what}") from None


def read_rgb(path: Path) -> np.ndarray:  # [H, W, 3] uint8
    """Any supported image -> RGB uint8: grayscale replicated, alpha dropped, palettes expanded, 16-bit scaled."""
    img = _open(path)
    if img.mode in ("RGB", "L"):
        arr = np.asarray(img)
    elif img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(img).astype(np.float64)
        if img.mode == "F":
            top = max(float(np.nanmax(arr)), 1e-12) if arr.size else 1.0
            arr = np.nan_to_num(arr) / (top if top > 1.0 else 1.0) * 255.0
        elif img.mode == "I" and arr.max(initial=0) <= 255:
            pass  # 8-bit data stored as 32-bit integers
        else:
            arr = arr / 257.0  # 16-bit -> 8-bit (65535 -> 255)
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    elif img.mode == "LA":
        arr = np.asarray(img)[..., 0]
    else:  # RGBA, P, PA, CMYK, YCbCr, LAB, HSV, 1, ...
        if img.mode in ("P", "PA") and "transparency" in img.info:
            img = img.convert("RGBA")
        arr = np.asarray(img.convert("RGB"))
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return np.ascontiguousarray(arr[..., :3], dtype=np.uint8)


def read_depth(path: Path, scale: float, invalid: int | None = None) -> np.ndarray:  # [H, W] float32
    """A 16-bit depth PNG -> metres (`raw / scale`); 0 and `invalid` raw values become 0 (invalid)."""
    img = _open(path)
    raw = np.asarray(img)
    if raw.ndim != 2:
        raise UserError(f"{path}: depth image must be single-channel, got mode {img.mode}")
    raw = raw.astype(np.float32)
    if invalid is not None:
        raw[raw == invalid] = 0.0
    return raw / np.float32(scale)


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header only (fast); UserError if it is not a readable image."""
    try:
        with Image.open(path) as img:
            return img.size
    except FileNotFoundError:
        raise UserError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise UserError(f"{path}: not an image file") from None


def check_same_size(paths: Iterable[Path]) -> tuple[int, int]:
    """All images have the same size (headers only): return it, else UserError naming the first odd file."""
    size: tuple[int, int] | None = None
    first: Path | None = None
    for p in paths:
        s = image_size(p)
        if size is None:
            size, first = s, p
        elif s != size:
            raise UserError(
                f"{p}: image is {s[0]}x{s[1]} but earlier frames are {size[0]}x{size[1]} (e.g. {first.name}); "
                "all frames must have the same resolution"
            )
    if size is None:
        raise ValueError("check_same_size: no images")
    return size
