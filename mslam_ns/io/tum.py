"""TUM RGB-D text formats: trajectories (`timestamp tx ty tz qx qy qz qw`), file lists, timestamp association.

Trajectory poses are `T_WC` (camera-to-world) with the quaternion in `(qx, qy, qz, qw)` order, as in the
benchmark's `groundtruth.txt` and as evo's `file_interface.read_tum_trajectory_file` expects.
Separators may be spaces, tabs or commas; lines starting with `#` and empty lines are ignored.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mslam_ns.errors import UserError
from mslam_ns.io.atomic import atomic_write
from mslam_ns.io.poses import matrix_to_pose7

__all__ = ["read_tum_trajectory", "write_tum_trajectory", "read_file_list", "associate"]

TUM_HEADER = "# timestamp tx ty tz qx qy qz qw"


def _rows(path: Path) -> list[tuple[int, list[str]]]:
    """(1-based line number, fields) of every non-comment, non-empty line; unreadable file -> UserError."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        out.append((n, line.replace(",", " ").replace("\t", " ").split()))
    return out


def read_tum_trajectory(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a TUM trajectory file.

    Returns:
        timestamps [N] float64 (seconds) and poses [N, 7] float64 `(tx ty tz qx qy qz qw)` (T_WC), in file order.
        An empty file (or one with only comments) gives N = 0.
    Raises:
        UserError naming the file and line for a missing file or a malformed row (not 8 numbers).
    """
    path = Path(path)
    ts, poses = [], []
    for n, fields in _rows(path):
        if len(fields) != 8:
            raise UserError(f"{path}: line {n}: expected 8 values 'timestamp tx ty tz qx qy qz qw', got {len(fields)}")
        try:
            vals = [float(v) for v in fields]
        except ValueError:
            raise UserError(f"{path}: line {n}: not a number in {' '.join(fields)!r}") from None
        ts.append(vals[0])
        poses.append(vals[1:])
    return np.asarray(ts, dtype=np.float64).reshape(-1), np.asarray(poses, dtype=np.float64).reshape(-1, 7)


def write_tum_trajectory(
    path: str | os.PathLike,
    timestamps: np.ndarray,  # [N]
    poses: np.ndarray,  # [N, 7] (tx ty tz qx qy qz qw) or [N, 4, 4] T_WC
    header: bool = True,
) -> Path:
    """Write a TUM trajectory atomically (temp file + rename).

    4x4 poses may be Sim(3) matrices: their scale is divided out of the rotation (translation kept).
    Quaternions are normalised and written with qw >= 0. Rows whose timestamp or pose is not finite
    (e.g. frames without ground truth, NaN) are skipped. Timestamps get 6 decimals, poses 9.
    """
    path = Path(path)
    ts = np.asarray(timestamps, dtype=np.float64).reshape(-1)
    p = np.asarray(poses, dtype=np.float64)
    if p.ndim == 3 and p.shape[1:] == (4, 4):
        finite = np.isfinite(p).all(axis=(1, 2))
        p7 = np.full((p.shape[0], 7), np.nan)
        p7[finite] = matrix_to_pose7(p[finite])
    elif p.ndim == 2 and p.shape[1] == 7:
        p7 = p.copy()
        norm = np.linalg.norm(p7[:, 3:], axis=1, keepdims=True)
        p7[:, 3:] /= np.where(norm > 0, norm, np.nan)
        p7[p7[:, 6] < 0, 3:] *= -1
    else:
        raise ValueError(f"write_tum_trajectory: poses must be [N, 7] or [N, 4, 4], got {p.shape}")
    if len(ts) != len(p7):
        raise ValueError(f"write_tum_trajectory: {len(ts)} timestamps but {len(p7)} poses")
    keep = np.isfinite(ts) & np.isfinite(p7).all(axis=1)
    with atomic_write(path, "w") as f:
        if header:
            f.write(TUM_HEADER + "\n")
        for t, row in zip(ts[keep], p7[keep]):
            f.write(f"{t:.6f} " + " ".join(f"{v:.9f}" for v in row) + "\n")
    return path


def read_file_list(path: str | os.PathLike) -> list[tuple[float, list[str]]]:
    """Read a TUM file list (`rgb.txt`, `depth.txt`, `accelerometer.txt`, ...).

    Returns:
        `(timestamp, [remaining fields])` per data line, in file order.
    Raises:
        UserError naming the file and line when the first field is not a number.
    """
    path = Path(path)
    out: list[tuple[float, list[str]]] = []
    for n, fields in _rows(path):
        try:
            t = float(fields[0])
        except ValueError:
            raise UserError(f"{path}: line {n}: timestamp {fields[0]!r} is not a number") from None
        out.append((t, fields[1:]))
    return out


def associate(
    ts_a: np.ndarray,  # [N] seconds
    ts_b: np.ndarray,  # [M] seconds
    max_dt: float = 0.02,
    offset: float = 0.0,
) -> list[tuple[int, int]]:
    """One-to-one nearest-timestamp association, like TUM's `associate.py`.

    All pairs with `|a - (b + offset)| < max_dt` are candidates; they are taken greedily in order of
    increasing time difference, each index used at most once.

    Returns:
        `(i, j)` index pairs into `ts_a`/`ts_b`, sorted by i.
    """
    a = np.asarray(ts_a, dtype=np.float64).reshape(-1)
    b = np.asarray(ts_b, dtype=np.float64).reshape(-1) + offset
    if len(a) == 0 or len(b) == 0:
        return []
    order = np.argsort(b, kind="stable")
    bs = b[order]
    lo = np.searchsorted(bs, a - max_dt, side="left")
    hi = np.searchsorted(bs, a + max_dt, side="right")
    counts = np.maximum(hi - lo, 0)
    ii = np.repeat(np.arange(len(a)), counts)
    if len(ii) == 0:
        return []
    starts = np.repeat(lo, counts)
    within = np.arange(len(ii)) - np.repeat(np.cumsum(counts) - counts, counts)
    jj_sorted = starts + within
    jj = order[jj_sorted]
    diff = np.abs(a[ii] - b[jj])
    ok = diff < max_dt
    ii, jj, diff = ii[ok], jj[ok], diff[ok]
    cand = np.lexsort((jj, ii, diff))  # by diff, then i, then j: deterministic ties
    used_a = np.zeros(len(a), dtype=bool)
    used_b = np.zeros(len(b), dtype=bool)
    pairs: list[tuple[int, int]] = []
    for k in cand:
        i, j = int(ii[k]), int(jj[k])
        if not used_a[i] and not used_b[j]:
            used_a[i] = used_b[j] = True
            pairs.append((i, j))
    pairs.sort()
    return pairs
