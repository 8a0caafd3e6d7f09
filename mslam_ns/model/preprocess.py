"""The official MASt3R/DUSt3R image pre-processing, reproduced bit-exactly (docs/network.md section 5).

``preprocess_image`` turns an image file, a PIL image or an array into the uint8 network image and the
``ImageTransform`` that maps pixels and intrinsics between the source and the network image:

1. open (files), apply the EXIF orientation, convert to 8-bit RGB (grayscale, alpha, palette and 16-bit
   images are handled; alpha is dropped as Pillow's ``convert("RGB")`` does);
2. resize so that the long side is ``size`` (each side ``round(side * size / long_side)``, Python rounding),
   with Pillow's LANCZOS filter when shrinking and BICUBIC otherwise;
3. centre crop to multiples of 16: with ``cx, cy = W // 2, H // 2`` of the resized image the half sizes are
   ``((2 cx) // 16) * 8`` and ``((2 cy) // 16) * 8``; a square resized image becomes 4:3 (half height = 3/4 of
   the half width) unless ``square_ok``.

``size=224`` follows dust3r's 224 mode instead: the SHORT side is resized to ~224 (long side
``round(224 * aspect)``) and the centre square ``min(cx, cy)`` half-size is cropped.

One deliberate difference from the official code, for sizes the official models never use: when the 4:3 crop
of a square image would not be a multiple of 16 high (the official ``3/4`` rule gives e.g. 300 for size 400),
the half height is rounded down to a multiple of 8. For every half width that is a multiple of 32 (size 512,
256, 384, ...) this is exactly the official rule.

The result must match Pillow's own resamplers, so the resize is done with Pillow (pinned behaviour: the
fixture was produced with Pillow 13.0.0).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

from mslam_ns.errors import UserError
from mslam_ns.geometry.image_transform import ImageTransform

if TYPE_CHECKING:
    import torch

ImageInput = Image.Image | np.ndarray | str | Path

PATCH_SIZE = 16
MIN_FRAME_SIDE = 32
"""Smallest source image side (pixels) accepted: a smaller frame would be enlarged more than 16x for the
512 network (a 16x12 frame 32x) and carry almost no detail per 16-pixel patch. Refused with one line."""
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class ImageSizeError(UserError, ValueError):
    """An image the network cannot use (too small, or nothing left after cropping): one line, exit code 2."""


# ------------------------------------------------------------------------------------------------ geometry
def _resized_size(width: int, height: int, long_edge: int) -> tuple[int, int]:
    """dust3r's resize rule: scale so the long side is ``long_edge``; Python ``round`` per side."""
    s = max(width, height)
    # Same operation order as the reference (x * long_edge / S) so that .5 ties round identically.
    return (int(round(width * long_edge / s)), int(round(height * long_edge / s)))


def plan_transform(
    width: int,
    height: int,
    size: int = 512,
    square_ok: bool = False,
    patch_size: int = PATCH_SIZE,
    min_side: int = MIN_FRAME_SIDE,
) -> ImageTransform:
    """The resize + crop ``preprocess_image`` applies to a ``width`` x ``height`` source, without pixels.

    Raises ValueError when a side is below ``min_side`` (`MIN_FRAME_SIDE`) or the result would be empty (an
    image far too thin for ``size``).
    """
    if size <= 0 or patch_size <= 0:
        raise ValueError(f"size and patch_size must be positive, got {size}, {patch_size}")
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if min(width, height) < min_side:
        raise ValueError(
            f"frames are {width}x{height} pixels, smaller than the minimum of {min_side} per side "
            f"(the network would see them enlarged {size / max(width, height):.0f}x)"
        )
    if size == 224:
        long_edge = int(round(224 * max(width / height, height / width)))
    else:
        long_edge = size
    rw, rh = _resized_size(width, height, long_edge)
    cx, cy = rw // 2, rh // 2
    if size == 224:
        half_w = half_h = min(cx, cy)
    else:
        half_w = ((2 * cx) // patch_size) * patch_size // 2
        half_h = ((2 * cy) // patch_size) * patch_size // 2
        if not square_ok and rw == rh:
            half_h = 3 * half_w // 4
            if (2 * half_h) % patch_size:  # only for half widths that are not multiples of 32 (see above)
                half_h = (half_h // (patch_size // 2)) * (patch_size // 2)
    if half_w <= 0 or half_h <= 0:
        raise ValueError(
            f"a {width}x{height} image is too thin to pre-process at size {size} "
            f"(resized to {rw}x{rh}, nothing left after cropping to multiples of {patch_size})"
        )
    return ImageTransform((width, height), (rw, rh), (cx - half_w, cy - half_h, cx + half_w, cy + half_h))


# ------------------------------------------------------------------------------------------ colour/decoding
def _float_to_u8(a: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> uint8 by truncation (MASt3R-SLAM's ``uint8(img * 255)``), clipped first."""
    return (np.clip(a, 0.0, 1.0) * 255).astype(np.uint8)


def _sixteen_to_u8(a: np.ndarray) -> np.ndarray:
    """0..65535 integers -> 0..255 with rounding (v * 255 / 65535)."""
    a = np.clip(a.astype(np.int64), 0, 65535)
    return ((a * 255 + 32767) // 65535).astype(np.uint8)


def _array_to_rgb_u8(a: np.ndarray) -> np.ndarray:  # [H, W] | [H, W, C] -> [H, W, 3] uint8
    """An array image to 8-bit RGB. uint8 as is; uint16 scaled; floats read as [0, 1]; alpha dropped."""
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise ValueError(f"expected an [H, W], [H, W, 1], [H, W, 3] or [H, W, 4] image array, got {a.shape}")
    if a.dtype == np.uint8:
        u8 = a
    elif a.dtype == np.bool_:
        u8 = a.astype(np.uint8) * 255
    elif a.dtype == np.uint16 or (np.issubdtype(a.dtype, np.integer) and a.size and a.max() > 255):
        u8 = _sixteen_to_u8(a)
    elif np.issubdtype(a.dtype, np.integer):
        u8 = np.clip(a, 0, 255).astype(np.uint8)
    elif np.issubdtype(a.dtype, np.floating):
        u8 = _float_to_u8(a)
    else:
        raise ValueError(f"unsupported image array dtype {a.dtype}")
    if u8.ndim == 2:
        u8 = np.repeat(u8[..., None], 3, axis=2)
    return np.ascontiguousarray(u8[..., :3])


def _pil_to_rgb(img: Image.Image) -> Image.Image:
    """A PIL image of any mode to 8-bit RGB (Pillow's conversion, except 16-bit and float modes)."""
    if img.mode == "RGB":
        return img
    if img.mode in _SIXTEEN_BIT_MODES:
        return Image.fromarray(_array_to_rgb_u8(_sixteen_to_u8(np.asarray(img))))
    if img.mode == "F":
        return Image.fromarray(_array_to_rgb_u8(_float_to_u8(np.asarray(img))))
    return img.convert("RGB")


def load_rgb(img: ImageInput) -> Image.Image:
    """Open/convert any supported input to an upright 8-bit RGB PIL image.

    Files and PIL images get their EXIF orientation applied (``ImageOps.exif_transpose``, which also removes
    the tag, so applying it twice is harmless). Arrays are taken as upright.
    """
    if isinstance(img, (str, Path)):
        path = Path(img)
        try:
            with Image.open(path) as f:
                f.load()
                pil = ImageOps.exif_transpose(f)
        except FileNotFoundError:
            raise UserError(f"{path}: no such image file") from None
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise UserError(f"{path}: cannot read image ({e})") from None
        return _pil_to_rgb(pil)
    if isinstance(img, Image.Image):
        return _pil_to_rgb(ImageOps.exif_transpose(img))
    if isinstance(img, np.ndarray):
        return Image.fromarray(_array_to_rgb_u8(img))
    raise TypeError(f"expected a PIL image, an array or a path, got {type(img).__name__}")


# ------------------------------------------------------------------------------------------------- public
def preprocess_image(
    img: ImageInput, size: int = 512, square_ok: bool = False, min_side: int = MIN_FRAME_SIDE
) -> tuple[np.ndarray, ImageTransform]:  # -> [H', W', 3] uint8, transform
    """The official ``load_images`` pre-processing of one image (see the module docstring).

    Returns the network image as a C-contiguous uint8 array [H', W', 3] and the ``ImageTransform`` from the
    (EXIF-oriented) source image to it. An image with a side below ``min_side`` is refused (a `UserError`,
    naming the file when ``img`` is a path).
    """
    pil = load_rgb(img)
    try:
        tf = plan_transform(pil.width, pil.height, size=size, square_ok=square_ok, min_side=min_side)
    except ValueError as e:
        raise ImageSizeError(f"{img}: {e}" if isinstance(img, (str, Path)) else str(e)) from None
    if tf.resized_size != (pil.width, pil.height):
        long_edge = max(tf.resized_size)
        resample = Image.Resampling.LANCZOS if max(pil.size) > long_edge else Image.Resampling.BICUBIC
        pil = pil.resize(tf.resized_size, resample)
    out = np.array(pil.crop(tf.crop_box), dtype=np.uint8)  # copy: writable, contiguous
    return out, tf


def true_shape(u8: np.ndarray) -> np.ndarray:  # [H, W, 3] -> [1, 2] int32
    """The ``true_shape`` the network is given with an image: int32 [[H, W]]."""
    return np.array([[u8.shape[0], u8.shape[1]]], dtype=np.int32)


def _as_u8_tensor(u8: np.ndarray | torch.Tensor) -> torch.Tensor:  # [H, W, 3] uint8
    import torch

    t = u8 if isinstance(u8, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(u8))
    if t.dtype != torch.uint8 or t.ndim != 3 or t.shape[2] != 3:
        raise ValueError(f"expected an [H, W, 3] uint8 image, got {tuple(t.shape)} {t.dtype}")
    return t


def to_unit_float(u8: np.ndarray | torch.Tensor) -> torch.Tensor:  # [H, W, 3] uint8 -> [3, H, W] float32
    """uint8 image -> float32 [3, H, W] in [0, 1], computed exactly as torchvision's ``ToTensor``."""
    import torch

    return _as_u8_tensor(u8).permute(2, 0, 1).contiguous().to(torch.float32).div(255)


def to_network_input(u8: np.ndarray | torch.Tensor) -> torch.Tensor:  # [H, W, 3] uint8 -> [1, 3, H, W]
    """uint8 image -> the network's float32 input in [-1, 1]: ``(u8 / 255 - 0.5) / 0.5``.

    Bit-exact with torchvision ``ToTensor()`` followed by ``Normalize((0.5,) * 3, (0.5,) * 3)`` (the same
    float32 operations in the same order).
    """
    import torch

    x = to_unit_float(u8)
    half = torch.full((3, 1, 1), 0.5, dtype=torch.float32, device=x.device)
    return x.sub_(half).div_(half)[None]
