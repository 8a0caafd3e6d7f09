"""A folder of images (png, jpg, jpeg, webp, bmp, tif, tiff), in natural order (`img2 < img10`).

Timestamps come from the file names when every name (without extension) is a timestamp and they increase:
a decimal number (`1305031102.175304.png`, TUM style) is seconds, an integer of 16 or more digits
(`1403636579763555584.png`, EuRoC style) is nanoseconds. Otherwise (e.g. `frame_0001.png`, `00012.jpg`)
timestamps are `index / 30` s. Frames must all have the same resolution.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from mslam_ns.errors import UserError
from mslam_ns.io.calibration import load_calibration
from mslam_ns.io.frames import FrameSource
from mslam_ns.io.images import IMAGE_EXTS, check_same_size, list_images, read_rgb

__all__ = ["ImageFolderSource", "timestamps_from_names", "DEFAULT_FPS"]

DEFAULT_FPS = 30.0

_SECONDS = re.compile(r"^\d+\.\d+$")
_NANOSECONDS = re.compile(r"^\d{16,}$")


def timestamps_from_names(stems: list[str], fps: float = DEFAULT_FPS) -> np.ndarray:  # [N] seconds
    """Timestamps parsed from file stems (rules in the module docstring), else `index / fps`."""
    if stems and all(_SECONDS.match(s) for s in stems):
        ts = np.array([float(s) for s in stems])
    elif stems and all(_NANOSECONDS.match(s) for s in stems):
        ts = np.array([int(s) for s in stems], dtype=np.float64) * 1e-9
    else:
        ts = None
    if ts is None or np.any(np.diff(ts) <= 0):
        return np.arange(len(stems), dtype=np.float64) / fps
    return ts


class ImageFolderSource(FrameSource):
    """Images directly inside one folder."""

    kind = "images"

    def __init__(self, path: Path, stride: int = 1, max_frames: int | None = None, calib: Path | None = None):
        path = Path(path)
        files = list_images(path)
        if not files:
            others = [p for p in path.iterdir() if not p.name.startswith(".")]
            exts = ", ".join(e.lstrip(".") for e in IMAGE_EXTS)
            what = "empty folder" if not others else f"no images ({exts}) in the folder"
            raise UserError(f"{path}: {what}")
        self._files = files
        super().__init__(
            path,
            timestamps=timestamps_from_names([p.stem for p in files]),
            names=[p.name for p in files],
            stride=stride,
            max_frames=max_frames,
            name=path.name,
        )
        self._size = check_same_size(files[k] for k in self._sel)
        self._finish_intrinsics(load_calibration(calib) if calib is not None else None, calib)

    def _read_image(self, k: int) -> np.ndarray:  # [H, W, 3] uint8
        img = read_rgb(self._files[k])
        if (img.shape[1], img.shape[0]) != self._size:  # header lied (e.g. EXIF-less odd formats)
            raise UserError(
                f"{self._files[k]}: image is {img.shape[1]}x{img.shape[0]}, expected {self._size[0]}x{self._size[1]}"
            )
        return img
