"""The crop/scale map between an original image and the network image made from it.

Pre-processing (``mslam_ns.model.preprocess``) resizes the source image (W_s x H_s) to W_r x H_r and then
crops the box ``(x0, y0, x1, y1)`` (pixel edges, x1/y1 exclusive) out of the resized image. This module
records those numbers and maps pixel coordinates and intrinsics both ways.

Pixel convention (used everywhere in mslam_ns): continuous coordinates in which the CENTRE of pixel
(column i, row j) is at (u, v) = (i, j); the image covers [-0.5, W - 0.5] x [-0.5, H - 0.5]. A resize by
s = W_r / W_s (per axis; Pillow maps pixel edges to pixel edges, so centres move by half a pixel) and the
crop give

    u_net = (u_src + 0.5) * s_x - 0.5 - x0        v_net = (v_src + 0.5) * s_y - 0.5 - y0

and the inverse ``u_src = (u_net + x0 + 0.5) / s_x - 0.5``. The two axes have their own scale because the
resized size is rounded to integers. This map is affine, ``uv_net = A uv_src`` with
``A = [[s_x, 0, t_x], [0, s_y, t_y], [0, 0, 1]]``, so pinhole intrinsics map as ``K_net = A K_src``
(also for a skewed K): a 3D point projected with ``K_net`` lands where ``to_network`` sends its projection
with ``K_src``.

"Source" means the image as the pre-processing saw it: for image files, after EXIF orientation was applied.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

import numpy as np

if TYPE_CHECKING:
    import torch

ArrayLike = Union[np.ndarray, "torch.Tensor"]


@dataclass(frozen=True)
class ImageTransform:
    """Resize (source -> resized) followed by a crop box in the resized image. All sizes are (W, H)."""

    source_size: tuple[int, int]
    """(W, H) of the source image (after EXIF orientation)."""
    resized_size: tuple[int, int]
    """(W, H) after the resize, before the crop."""
    crop_box: tuple[int, int, int, int]
    """(x0, y0, x1, y1) in the resized image, pixel edges, x1/y1 exclusive (Pillow's crop box)."""

    def __post_init__(self) -> None:
        sw, sh = self.source_size
        rw, rh = self.resized_size
        x0, y0, x1, y1 = self.crop_box
        if min(sw, sh, rw, rh) <= 0:
            raise ValueError(
                f"ImageTransform: sizes must be positive, got source {self.source_size}, resized {self.resized_size}"
            )
        if not (x1 > x0 and y1 > y0):
            raise ValueError(f"ImageTransform: empty crop box {self.crop_box}")
        # Normalise to plain ints (JSON, hashing, equality).
        object.__setattr__(self, "source_size", (int(sw), int(sh)))
        object.__setattr__(self, "resized_size", (int(rw), int(rh)))
        object.__setattr__(self, "crop_box", (int(x0), int(y0), int(x1), int(y1)))

    # ----------------------------------------------------------------------------------------------- sizes
    @classmethod
    def identity(cls, width: int, height: int) -> ImageTransform:
        """No resize, no crop: the network image is the source image."""
        return cls((width, height), (width, height), (0, 0, width, height))

    @property
    def network_size(self) -> tuple[int, int]:
        """(W, H) of the network image (the crop)."""
        x0, y0, x1, y1 = self.crop_box
        return (x1 - x0, y1 - y0)

    @property
    def scale(self) -> tuple[float, float]:
        """(s_x, s_y) = resized / source size, per axis."""
        return (self.resized_size[0] / self.source_size[0], self.resized_size[1] / self.source_size[1])

    def affine(self) -> np.ndarray:  # [3, 3] float64
        """A with uv_net = A @ [u_src, v_src, 1] (see the module docstring)."""
        sx, sy = self.scale
        x0, y0 = self.crop_box[:2]
        return np.array(
            [[sx, 0.0, 0.5 * sx - 0.5 - x0], [0.0, sy, 0.5 * sy - 0.5 - y0], [0.0, 0.0, 1.0]], dtype=np.float64
        )

    # ------------------------------------------------------------------------------------------ pixel maps
    def to_network(self, uv: ArrayLike) -> ArrayLike:  # [..., 2] -> [..., 2]
        """Source-image pixel coordinates -> network-image pixel coordinates."""
        sx, sy = self.scale
        x0, y0 = self.crop_box[:2]
        return _apply_axes(uv, (sx, sy), (0.5 * sx - 0.5 - x0, 0.5 * sy - 0.5 - y0))

    def to_original(self, uv: ArrayLike) -> ArrayLike:  # [..., 2] -> [..., 2]
        """Network-image pixel coordinates -> source-image pixel coordinates."""
        sx, sy = self.scale
        x0, y0 = self.crop_box[:2]
        return _apply_axes(uv, (1.0 / sx, 1.0 / sy), ((x0 + 0.5) / sx - 0.5, (y0 + 0.5) / sy - 0.5))

    # ---------------------------------------------------------------------------------------- intrinsics
    def K_to_network(self, K: ArrayLike) -> ArrayLike:  # [..., 3, 3] -> [..., 3, 3]
        """Intrinsics of the source image -> intrinsics of the network image (K_net = A K)."""
        return _left_multiply(self.affine(), K)

    def K_to_original(self, K: ArrayLike) -> ArrayLike:  # [..., 3, 3] -> [..., 3, 3]
        """Intrinsics of the network image -> intrinsics of the source image (K_src = A^-1 K)."""
        return _left_multiply(np.linalg.inv(self.affine()), K)

    # ------------------------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (lists of ints)."""
        return {
            "source_size": list(self.source_size),
            "resized_size": list(self.resized_size),
            "crop_box": list(self.crop_box),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImageTransform:
        """Inverse of ``to_dict``; also accepts the dict after a JSON round trip."""
        try:
            sw, sh = d["source_size"]
            rw, rh = d["resized_size"]
            x0, y0, x1, y1 = d["crop_box"]
            return cls((sw, sh), (rw, rh), (x0, y0, x1, y1))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"ImageTransform.from_dict: bad dict {d!r}: {e}") from e

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, s: str) -> ImageTransform:
        return cls.from_dict(json.loads(s))


def _is_tensor(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "dtype") and hasattr(x, "device")


def _apply_axes(uv: ArrayLike, scale: tuple[float, float], offset: tuple[float, float]) -> ArrayLike:
    """uv * scale + offset per last-axis component; keeps the array type (float64 for integer input)."""
    if _is_tensor(uv):
        import torch

        t = uv if uv.is_floating_point() else uv.to(torch.float64)
        if t.shape[-1] != 2:
            raise ValueError(f"expected [..., 2] coordinates, got shape {tuple(t.shape)}")
        s = torch.tensor(scale, dtype=t.dtype, device=t.device)
        o = torch.tensor(offset, dtype=t.dtype, device=t.device)
        return t * s + o
    a = np.asarray(uv)
    if not np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float64)
    if a.shape[-1] != 2:
        raise ValueError(f"expected [..., 2] coordinates, got shape {a.shape}")
    return a * np.asarray(scale, dtype=a.dtype) + np.asarray(offset, dtype=a.dtype)


def _left_multiply(A: np.ndarray, K: ArrayLike) -> ArrayLike:  # A [3, 3] float64, K [..., 3, 3]
    """A @ K computed in float64, returned in K's float dtype (float64 for integer K)."""
    if _is_tensor(K):
        import torch

        k = K if K.is_floating_point() else K.to(torch.float64)
        if tuple(k.shape[-2:]) != (3, 3):
            raise ValueError(f"expected [..., 3, 3] intrinsics, got shape {tuple(k.shape)}")
        return (torch.as_tensor(A, dtype=torch.float64, device=k.device) @ k.to(torch.float64)).to(k.dtype)
    k = np.asarray(K)
    if not np.issubdtype(k.dtype, np.floating):
        k = k.astype(np.float64)
    if k.shape[-2:] != (3, 3):
        raise ValueError(f"expected [..., 3, 3] intrinsics, got shape {k.shape}")
    return (A @ k.astype(np.float64)).astype(k.dtype)
