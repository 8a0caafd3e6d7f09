"""EuRoC MAV sequences (ASL layout): `mav0/cam0/data.csv`, `mav0/cam0/data/*.png`, `mav0/cam0/sensor.yaml`.

* The path is the sequence folder (holding `mav0/`) or `mav0/` itself. Frames: the rows of
  `cam0/data.csv` (`timestamp [ns], filename`), timestamps converted to seconds. Grayscale -> RGB.
* Intrinsics and radial-tangential distortion from `cam0/sensor.yaml` (or a `calib` file).
* Ground truth: `state_groundtruth_estimate0/data.csv` gives the body (IMU) pose `T_WB` (position, then
  quaternion in w x y z order); the camera pose is `T_WC = T_WB @ T_BS` with `T_BS` (cam0 -> body) from
  sensor.yaml. Interpolated at the frame timestamps (neighbours within 0.02 s), NaN outside the GT span.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mslam_ns.errors import UserError
from mslam_ns.geometry.conventions import euroc_row_to_pose7
from mslam_ns.io.calibration import load_calibration
from mslam_ns.io.frames import FrameSource
from mslam_ns.io.gt import poses_at_times
from mslam_ns.io.images import check_same_size, read_rgb
from mslam_ns.io.poses import pose7_to_matrix

__all__ = ["EurocSource", "find_euroc_root"]

_MAX_DT = 0.02


def find_euroc_root(path: Path) -> Path | None:
    """The `mav0` folder of a EuRoC sequence at `path` (the sequence folder or mav0 itself), else None."""
    for cand in (path / "mav0", path):
        if (cand / "cam0" / "data.csv").is_file():
            return cand
    return None


def _read_csv(path: Path, min_cols: int) -> list[tuple[int, list[str]]]:
    """(line number, fields) of the data rows of a EuRoC csv (comments `#`), checking the column count."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    rows = []
    for n, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < min_cols:
            raise UserError(f"{path}: line {n}: expected at least {min_cols} comma-separated values")
        rows.append((n, fields))
    return rows


def _read_t_bs(sensor_yaml: Path) -> np.ndarray:  # [4, 4] cam0 -> body
    import yaml

    try:
        data = yaml.safe_load(sensor_yaml.read_text(encoding="utf-8"))
        m = np.asarray(data["T_BS"]["data"], dtype=np.float64).reshape(4, 4)
    except Exception:
        raise UserError(f"{sensor_yaml}: no valid 4x4 'T_BS: data: [...]' extrinsic") from None
    return m


def _read_gt(path: Path, t_bs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """GT timestamps [M] seconds and camera poses T_WC [M, 4, 4]."""
    rows = _read_csv(path, 8)
    try:
        vals = np.array([[float(v) for v in f[:8]] for _, f in rows], dtype=np.float64).reshape(-1, 8)
        ts = np.array([int(f[0]) for _, f in rows], dtype=np.int64) * 1e-9
    except ValueError:
        raise UserError(f"{path}: not a number in the ground-truth rows") from None
    p7 = euroc_row_to_pose7(vals[:, 1:8])  # (p, qx qy qz qw)
    return ts, pose7_to_matrix(p7) @ t_bs


class EurocSource(FrameSource):
    """The left camera (cam0) of a EuRoC sequence."""

    kind = "euroc"

    def __init__(self, path: Path, stride: int = 1, max_frames: int | None = None, calib: Path | None = None):
        path = Path(path)
        mav0 = find_euroc_root(path)
        if mav0 is None:
            raise UserError(f"{path}: not a EuRoC sequence (no mav0/cam0/data.csv)")
        cam = mav0 / "cam0"
        ts, files = [], []
        for n, fields in _read_csv(cam / "data.csv", 2):
            try:
                ts.append(int(fields[0]) * 1e-9)
            except ValueError:
                msg = f"{cam / 'data.csv'}: line {n}: timestamp {fields[0]!r} is not an integer (ns)"
                raise UserError(msg) from None
            f = cam / "data" / fields[1]
            if not f.is_file():
                raise UserError(f"{f}: file listed in data.csv is missing")
            files.append(f)
        ts_arr = np.asarray(ts, dtype=np.float64)
        sensor = cam / "sensor.yaml"
        intr = load_calibration(sensor) if sensor.is_file() else None
        gt = None
        gt_file = mav0 / "state_groundtruth_estimate0" / "data.csv"
        if gt_file.is_file():
            t_bs = _read_t_bs(sensor) if sensor.is_file() else np.eye(4)
            gt_ts, gt_poses = _read_gt(gt_file, t_bs)
            gt = poses_at_times(ts_arr, gt_ts, gt_poses, _MAX_DT)
        seq = mav0.resolve().parent if mav0.name == "mav0" else mav0.resolve()
        super().__init__(
            path,
            timestamps=ts_arr,
            names=[f.name for f in files],
            intrinsics=intr,
            gt_poses=gt,
            stride=stride,
            max_frames=max_frames,
            name=seq.name,
        )
        self._files = files
        self._size = check_same_size(files[k] for k in self._sel)
        self._finish_intrinsics(load_calibration(calib) if calib is not None else None, calib)

    def _read_image(self, k: int) -> np.ndarray:  # [H, W, 3] uint8
        return read_rgb(self._files[k])
