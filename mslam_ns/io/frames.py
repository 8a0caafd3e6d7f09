"""Frame-source types: `Intrinsics`, `RawFrame` and the `FrameSource` base class (and nothing else).

A frame source is a random-access sequence of RGB frames with timestamps and original file names, and,
where the dataset has them, intrinsics, depth maps (metres, registered to the RGB frame) and ground-truth
camera poses `T_WC` (OpenCV camera axes). Concrete sources and `open_source` live in `mslam_ns.io.sources`;
this module imports nothing else from `mslam_ns.io`, so every reader and writer can import it (no cycle).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mslam_ns.errors import UserError

__all__ = ["Intrinsics", "RawFrame", "FrameSource"]


@dataclass
class Intrinsics:
    """Pinhole intrinsics in pixels, with optional OpenCV distortion coefficients `(k1, k2, p1, p2[, k3, ...])`.

    `width`/`height` = 0 means "not known yet" (a calibration file without a size); sources fill them in from
    the images.
    """

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    dist: tuple[float, ...] = ()

    @property
    def K(self) -> np.ndarray:
        """The 3x3 camera matrix [3, 3] float64."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def has_distortion(self) -> bool:
        return any(d != 0.0 for d in self.dist)


@dataclass
class RawFrame:
    """One input frame as read from disk."""

    index: int
    """Position in the source (after stride / max_frames)."""
    timestamp: float
    """Seconds (container time for videos, dataset time for datasets, index/30 otherwise)."""
    name: str
    """Original file name (image folders, datasets) or `frame_000123` (video, original frame number)."""
    image: np.ndarray
    """[H, W, 3] uint8 RGB."""


class FrameSource:
    """Random-access frames with timestamps; optional intrinsics, depth and ground truth.

    Subclasses pass the full (unstrided) frame list to `__init__` and implement `_read_image(k)` (and
    optionally `_read_depth(k)`) for an index k into that full list; stride / max_frames selection is done here.
    """

    kind: str = "frames"

    def __init__(
        self,
        path: Path,
        *,
        timestamps: np.ndarray,  # [M] seconds, all frames before selection
        names: list[str],  # [M]
        intrinsics: Intrinsics | None = None,
        gt_poses: np.ndarray | None = None,  # [M, 4, 4] T_WC, NaN where unknown
        depth_scale: float | None = None,
        stride: int = 1,
        max_frames: int | None = None,
        name: str | None = None,
    ) -> None:
        if stride < 1:
            raise UserError(f"{path}: stride must be >= 1, got {stride}")
        if max_frames is not None and max_frames < 1:
            raise UserError(f"{path}: max_frames must be >= 1, got {max_frames}")
        self.path = Path(path)
        self.name = name or self.path.stem
        self._sel = np.arange(0, len(names), stride)[:max_frames]  # [N] indices into the full list
        if len(self._sel) < 2:
            n = len(self._sel)
            raise UserError(f"{self.path}: only {n} frame{'s' if n != 1 else ''} (need at least 2)")
        self.timestamps = np.asarray(timestamps, dtype=np.float64)[self._sel]  # [N]
        self.names = [names[k] for k in self._sel]
        self.intrinsics = intrinsics
        self.depth_scale = depth_scale
        self._gt = None if gt_poses is None else np.asarray(gt_poses, dtype=np.float64)[self._sel]

    # -- sequence protocol -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._sel)

    def _index(self, i: int) -> int:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"frame index {i} out of range for {n} frames")
        return i % n

    def __getitem__(self, i: int) -> RawFrame:
        i = self._index(int(i))
        image = self._read_image(int(self._sel[i]))
        return RawFrame(index=i, timestamp=float(self.timestamps[i]), name=self.names[i], image=image)

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def depth(self, i: int) -> np.ndarray | None:
        """Depth [H, W] float32 metres (0 = invalid) registered to frame i, or None if the source has none."""
        return self._read_depth(int(self._sel[self._index(int(i))]))

    @property
    def gt_poses(self) -> np.ndarray | None:
        """Ground-truth `T_WC` [N, 4, 4] float64 (OpenCV axes) for the selected frames; NaN rows where unknown."""
        return self._gt

    @property
    def image_size(self) -> tuple[int, int]:
        """(width, height) of the frames."""
        return self._size

    # -- for subclasses -------------------------------------------------------------------------------------
    _size: tuple[int, int] = (0, 0)

    def _read_image(self, k: int) -> np.ndarray:  # [H, W, 3] uint8
        raise NotImplementedError

    def _read_depth(self, k: int) -> np.ndarray | None:  # [H, W] float32
        return None

    def _finish_intrinsics(self, calib: Intrinsics | None, calib_path: Path | None = None) -> None:
        """Apply a user calibration (overrides dataset defaults) and fill in / check the image size.

        `calib` is the already-loaded calibration (`mslam_ns.io.calibration.load_calibration`), `calib_path`
        the file it came from (named in errors).
        """
        if calib is not None:
            self.intrinsics = calib
        intr = self.intrinsics
        if intr is None:
            return
        w, h = self._size
        if intr.width == 0 or intr.height == 0:
            intr.width, intr.height = w, h
        elif (intr.width, intr.height) != (w, h):
            where = calib_path if calib_path is not None else self.path
            raise UserError(f"{where}: calibration is for {intr.width}x{intr.height} images but the frames are {w}x{h}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, frames={len(self)}, size={self._size})"
