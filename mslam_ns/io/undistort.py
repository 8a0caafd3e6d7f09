"""Removing lens distortion (OpenCV radial-tangential model) from frames, in numpy.

The frontend works with pinhole images; sources report the distortion in `Intrinsics.dist` and return the
raw images. `Undistorter(intr)` builds the remap once (output pixel -> distorted input pixel, a closed form of
the forward model, so no iterative inversion) and keeps the same camera matrix K for the output: pixels whose
source falls outside the input become black (RGB) or 0 (depth).

Coefficients `(k1, k2, p1, p2[, k3[, k4, k5, k6]])`:
    r2 = x^2 + y^2,  radial = (1 + k1 r2 + k2 r2^2 + k3 r2^3) / (1 + k4 r2 + k5 r2^2 + k6 r2^3)
    x_d = x radial + 2 p1 x y + p2 (r2 + 2 x^2),  y_d = y radial + p1 (r2 + 2 y^2) + 2 p2 x y
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from mslam_ns.io.frames import Intrinsics

__all__ = ["Undistorter", "UndistortedSource", "distort_normalized", "undistorted"]


def distort_normalized(x: np.ndarray, y: np.ndarray, dist: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Apply the distortion model to normalised image coordinates x, y (any equal shapes)."""
    k = list(dist) + [0.0] * (8 - len(dist))
    k1, k2, p1, p2, k3, k4, k5, k6 = k[:8]
    r2 = x * x + y * y
    radial = (1 + r2 * (k1 + r2 * (k2 + r2 * k3))) / (1 + r2 * (k4 + r2 * (k5 + r2 * k6)))
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    return xd, yd


class Undistorter:
    """Undistort images / depth maps of one camera to the pinhole camera with the same K."""

    def __init__(self, intr: Intrinsics):
        if intr.width <= 0 or intr.height <= 0:
            raise ValueError("Undistorter needs the image size in the intrinsics")
        self.source = intr
        self.intrinsics = replace(intr, dist=())  # the output camera
        v, u = np.mgrid[0 : intr.height, 0 : intr.width].astype(np.float64)
        x = (u - intr.cx) / intr.fx
        y = (v - intr.cy) / intr.fy
        xd, yd = distort_normalized(x, y, intr.dist)
        self.map_u = (xd * intr.fx + intr.cx).astype(np.float32)  # [H, W] source column of each output pixel
        self.map_v = (yd * intr.fy + intr.cy).astype(np.float32)  # [H, W] source row

    def image(self, img: np.ndarray) -> np.ndarray:  # [H, W, C] -> [H, W, C], same dtype
        """Bilinear remap of an image; outside -> 0."""
        h, w = img.shape[:2]
        mu, mv = self.map_u, self.map_v
        valid = (mu >= 0) & (mu <= w - 1) & (mv >= 0) & (mv <= h - 1)
        u0 = np.clip(np.floor(mu), 0, w - 2).astype(np.int64)
        v0 = np.clip(np.floor(mv), 0, h - 2).astype(np.int64)
        fu = np.clip(mu - u0, 0, 1)[..., None]
        fv = np.clip(mv - v0, 0, 1)[..., None]
        src = img.reshape(h, w, -1).astype(np.float32)
        top = src[v0, u0] * (1 - fu) + src[v0, u0 + 1] * fu
        bot = src[v0 + 1, u0] * (1 - fu) + src[v0 + 1, u0 + 1] * fu
        out = top * (1 - fv) + bot * fv
        out[~valid] = 0
        if np.issubdtype(img.dtype, np.integer):
            out = np.clip(np.rint(out), np.iinfo(img.dtype).min, np.iinfo(img.dtype).max)
        return out.astype(img.dtype).reshape(img.shape)

    def depth(self, depth: np.ndarray) -> np.ndarray:  # [H, W] -> [H, W]
        """Nearest-neighbour remap of a depth map (no blending across depth edges); outside -> 0."""
        h, w = depth.shape
        u = np.rint(self.map_u).astype(np.int64)
        v = np.rint(self.map_v).astype(np.int64)
        valid = (u >= 0) & (u < w) & (v >= 0) & (v < h)
        out = np.zeros_like(depth)
        out[valid] = depth[v[valid], u[valid]]
        return out


class UndistortedSource:
    """A view of a `FrameSource` whose images and depth maps are undistorted to the pinhole camera with the
    same K (`intrinsics.dist` becomes empty). Timestamps, names and ground truth are those of the source."""

    def __init__(self, source) -> None:
        self.source = source
        self.undistorter = Undistorter(source.intrinsics)
        self.intrinsics = self.undistorter.intrinsics

    def __getattr__(self, name: str):  # everything else (path, name, kind, timestamps, gt_poses, ...)
        return getattr(self.source, name)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int):
        raw = self.source[i]
        return replace(raw, image=self.undistorter.image(raw.image))

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def depth(self, i: int) -> np.ndarray | None:
        d = self.source.depth(i)
        return None if d is None else self.undistorter.depth(d)


def undistorted(source):
    """`source` itself when its intrinsics have no distortion (or are unknown), else an `UndistortedSource`."""
    intr = source.intrinsics
    if intr is None or not intr.has_distortion:
        return source
    return UndistortedSource(source)
