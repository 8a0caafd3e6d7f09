"""Ground-truth poses at frame timestamps (interpolated between neighbouring GT samples)."""

from __future__ import annotations

import numpy as np

from mslam_ns.io.poses import matrix_to_quat, quat_to_matrix

__all__ = ["poses_at_times"]


def _slerp(q0: np.ndarray, q1: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Spherical interpolation of unit quaternions q0, q1 [N, 4] with weights a [N] in [0, 1]."""
    dot = np.sum(q0 * q1, axis=1)
    q1 = np.where(dot[:, None] < 0, -q1, q1)
    dot = np.abs(dot).clip(max=1.0)
    theta = np.arccos(dot)
    s = np.sin(theta)
    small = s < 1e-9
    w0 = np.where(small, 1 - a, np.sin((1 - a) * theta) / np.where(small, 1, s))
    w1 = np.where(small, a, np.sin(a * theta) / np.where(small, 1, s))
    q = w0[:, None] * q0 + w1[:, None] * q1
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def poses_at_times(
    ts_query: np.ndarray,  # [N] seconds
    ts_gt: np.ndarray,  # [M] seconds
    poses_gt: np.ndarray,  # [M, 4, 4] T_WC
    max_dt: float = 0.02,
) -> np.ndarray:  # [N, 4, 4]
    """GT pose for each query time: interpolated (linear translation, slerp rotation) between the two GT samples
    around it when both are within `max_dt`, else the nearest sample within `max_dt`, else all-NaN."""
    tq = np.asarray(ts_query, dtype=np.float64).reshape(-1)
    out = np.full((len(tq), 4, 4), np.nan)
    tg = np.asarray(ts_gt, dtype=np.float64).reshape(-1)
    if len(tg) == 0 or len(tq) == 0:
        return out
    order = np.argsort(tg, kind="stable")
    tg = tg[order]
    pg = np.asarray(poses_gt, dtype=np.float64)[order]
    right = np.clip(np.searchsorted(tg, tq, side="left"), 0, len(tg) - 1)
    left = np.clip(right - 1, 0, len(tg) - 1)
    dl = np.abs(tq - tg[left])
    dr = np.abs(tg[right] - tq)
    nearest = np.where(dl <= dr, left, right)
    near_ok = np.minimum(dl, dr) <= max_dt
    out[near_ok] = pg[nearest[near_ok]]
    interp = (left != right) & (tg[left] <= tq) & (tq <= tg[right]) & (dl <= max_dt) & (dr <= max_dt)
    if interp.any():
        li, ri = left[interp], right[interp]
        span = tg[ri] - tg[li]
        a = np.where(span > 0, (tq[interp] - tg[li]) / np.where(span > 0, span, 1), 0.0)
        q = _slerp(matrix_to_quat(pg[li, :3, :3]), matrix_to_quat(pg[ri, :3, :3]), a)
        t = (1 - a)[:, None] * pg[li, :3, 3] + a[:, None] * pg[ri, :3, 3]
        m = np.tile(np.eye(4), (len(li), 1, 1))
        m[:, :3, :3] = quat_to_matrix(q)
        m[:, :3, 3] = t
        out[interp] = m
    return out
