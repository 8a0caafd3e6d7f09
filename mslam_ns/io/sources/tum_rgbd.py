"""TUM RGB-D sequences: `rgb.txt`, `depth.txt`, `groundtruth.txt` (also the synthetic sequences).

* Frames: the entries of `rgb.txt` (paths relative to the sequence folder), timestamps from the list.
* Depth: `depth.txt` entries associated to the RGB timestamps (nearest, one-to-one, |dt| < 0.02 s);
  16-bit PNGs divided by 5000 (metres); frames without a depth partner get `depth(i) = None`.
* Ground truth: `groundtruth.txt` (T_WC, `tx ty tz qx qy qz qw`) interpolated at the frame timestamps
  (neighbours within 0.02 s), NaN where there is none.
* Intrinsics: `calibration.txt` in the folder (`mslam_ns.io.calibration` formats), else the published
  fr1/fr2/fr3 calibration chosen from the folder name (only for 640x480 frames), else None.
  A `calib` argument overrides both.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mslam_ns.errors import UserError
from mslam_ns.io.calibration import load_calibration, tum_default_intrinsics
from mslam_ns.io.frames import FrameSource
from mslam_ns.io.gt import poses_at_times
from mslam_ns.io.images import check_same_size, read_depth, read_rgb
from mslam_ns.io.poses import pose7_to_matrix
from mslam_ns.io.tum import associate, read_file_list, read_tum_trajectory

__all__ = ["TumRgbdSource", "TUM_DEPTH_SCALE", "ASSOC_MAX_DT"]

TUM_DEPTH_SCALE = 5000.0
ASSOC_MAX_DT = 0.02


def _entries(folder: Path, list_file: Path) -> tuple[np.ndarray, list[Path]]:
    """Timestamps [N] and existing file paths from a TUM file list; UserError on a missing file."""
    ts, files = [], []
    for t, rest in read_file_list(list_file):
        if not rest:
            raise UserError(f"{list_file}: entry at t={t:.6f} has no file name")
        f = folder / rest[0]
        if not f.is_file():
            raise UserError(f"{f}: file listed in {list_file.name} is missing")
        ts.append(t)
        files.append(f)
    return np.asarray(ts, dtype=np.float64), files


class TumRgbdSource(FrameSource):
    """A TUM RGB-D sequence folder."""

    kind = "tum"

    def __init__(self, path: Path, stride: int = 1, max_frames: int | None = None, calib: Path | None = None):
        path = Path(path)
        ts, files = _entries(path, path / "rgb.txt")
        if not files:
            raise UserError(f"{path / 'rgb.txt'}: no frames listed")
        gt = None
        if (path / "groundtruth.txt").is_file():
            gt_ts, gt_poses = read_tum_trajectory(path / "groundtruth.txt")
            gt = poses_at_times(ts, gt_ts, pose7_to_matrix(gt_poses), ASSOC_MAX_DT)
        default = None
        if (path / "calibration.txt").is_file():
            intr = load_calibration(path / "calibration.txt")
        else:
            intr = default = tum_default_intrinsics(path.resolve().name)
        super().__init__(
            path,
            timestamps=ts,
            names=[f.name for f in files],
            intrinsics=intr,
            gt_poses=gt,
            depth_scale=TUM_DEPTH_SCALE,
            stride=stride,
            max_frames=max_frames,
            name=path.resolve().name,
        )
        self._files = files
        self._depth_files: dict[int, Path] = {}
        if (path / "depth.txt").is_file():
            dts, dfiles = _entries(path, path / "depth.txt")
            self._depth_files = {i: dfiles[j] for i, j in associate(ts, dts, ASSOC_MAX_DT)}
        if not self._depth_files:
            self.depth_scale = None
        self._size = check_same_size(files[k] for k in self._sel)
        if default is not None and (default.width, default.height) != self._size:
            self.intrinsics = None  # resized copy of a TUM sequence: the published calibration does not apply
        self._finish_intrinsics(load_calibration(calib) if calib is not None else None, calib)

    def _read_image(self, k: int) -> np.ndarray:  # [H, W, 3] uint8
        return read_rgb(self._files[k])

    def _read_depth(self, k: int) -> np.ndarray | None:  # [H, W] float32 metres
        f = self._depth_files.get(k)
        return None if f is None else read_depth(f, TUM_DEPTH_SCALE)
