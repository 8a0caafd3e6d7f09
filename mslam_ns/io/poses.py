"""Conversions between TUM pose rows `(tx ty tz qx qy qz qw)` and 4x4 rigid matrices (numpy, float64).

Only what the file formats need; the SLAM's Sim(3) algebra lives in `mslam_ns.geometry`.
"""

from __future__ import annotations

import numpy as np

__all__ = ["quat_to_matrix", "matrix_to_quat", "pose7_to_matrix", "matrix_to_pose7"]


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """Unit quaternions `(qx, qy, qz, qw)` [..., 4] -> rotation matrices [..., 3, 3] (normalises first)."""
    q = np.asarray(q, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    x, y, z, w = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    r = np.empty(q.shape[:-1] + (3, 3), dtype=np.float64)
    r[..., 0, 0] = 1 - 2 * (y * y + z * z)
    r[..., 0, 1] = 2 * (x * y - z * w)
    r[..., 0, 2] = 2 * (x * z + y * w)
    r[..., 1, 0] = 2 * (x * y + z * w)
    r[..., 1, 1] = 1 - 2 * (x * x + z * z)
    r[..., 1, 2] = 2 * (y * z - x * w)
    r[..., 2, 0] = 2 * (x * z - y * w)
    r[..., 2, 1] = 2 * (y * z + x * w)
    r[..., 2, 2] = 1 - 2 * (x * x + y * y)
    return r


def matrix_to_quat(r: np.ndarray) -> np.ndarray:
    """Rotation matrices [..., 3, 3] -> unit quaternions `(qx, qy, qz, qw)` [..., 4] with qw >= 0.

    Uses the largest-diagonal branch for each matrix, so it is accurate near 180 degrees as well.
    """
    r = np.asarray(r, dtype=np.float64)
    shape = r.shape[:-2]
    m = r.reshape(-1, 3, 3)
    tr = m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2]
    # 4 * {w^2, x^2, y^2, z^2} candidates; pick the largest for numerical stability.
    cand = np.stack([1 + tr, 1 + 2 * m[:, 0, 0] - tr, 1 + 2 * m[:, 1, 1] - tr, 1 + 2 * m[:, 2, 2] - tr], axis=-1)
    k = np.argmax(cand, axis=-1)
    q = np.empty((m.shape[0], 4), dtype=np.float64)  # x y z w
    s = 2.0 * np.sqrt(np.maximum(cand[np.arange(len(k)), k], 1e-300))  # = 4 * |component|
    a = k == 0
    q[a, 3] = s[a] / 4
    q[a, 0] = (m[a, 2, 1] - m[a, 1, 2]) / s[a]
    q[a, 1] = (m[a, 0, 2] - m[a, 2, 0]) / s[a]
    q[a, 2] = (m[a, 1, 0] - m[a, 0, 1]) / s[a]
    a = k == 1
    q[a, 0] = s[a] / 4
    q[a, 3] = (m[a, 2, 1] - m[a, 1, 2]) / s[a]
    q[a, 1] = (m[a, 0, 1] + m[a, 1, 0]) / s[a]
    q[a, 2] = (m[a, 0, 2] + m[a, 2, 0]) / s[a]
    a = k == 2
    q[a, 1] = s[a] / 4
    q[a, 3] = (m[a, 0, 2] - m[a, 2, 0]) / s[a]
    q[a, 0] = (m[a, 0, 1] + m[a, 1, 0]) / s[a]
    q[a, 2] = (m[a, 1, 2] + m[a, 2, 1]) / s[a]
    a = k == 3
    q[a, 2] = s[a] / 4
    q[a, 3] = (m[a, 1, 0] - m[a, 0, 1]) / s[a]
    q[a, 0] = (m[a, 0, 2] + m[a, 2, 0]) / s[a]
    q[a, 1] = (m[a, 1, 2] + m[a, 2, 1]) / s[a]
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    q[q[:, 3] < 0] *= -1
    return q.reshape(shape + (4,))


def pose7_to_matrix(poses: np.ndarray) -> np.ndarray:
    """TUM rows `(tx ty tz qx qy qz qw)` [..., 7] -> rigid transforms [..., 4, 4] (float64)."""
    poses = np.asarray(poses, dtype=np.float64)
    t = np.zeros(poses.shape[:-1] + (4, 4), dtype=np.float64)
    t[..., :3, :3] = quat_to_matrix(poses[..., 3:7])
    t[..., :3, 3] = poses[..., :3]
    t[..., 3, 3] = 1.0
    return t


def matrix_to_pose7(t: np.ndarray) -> np.ndarray:
    """Transforms [..., 4, 4] -> TUM rows `(tx ty tz qx qy qz qw)` [..., 7].

    A similarity transform (rotation block `s R`) is accepted: the scale `s = cbrt(det)` is divided out of the
    rotation and dropped; the translation is kept as is.
    """
    t = np.asarray(t, dtype=np.float64)
    rs = t[..., :3, :3]
    det = np.linalg.det(rs)
    scale = np.cbrt(np.where(np.abs(det) > 0, det, 1.0))
    r = rs / scale[..., None, None]
    out = np.empty(t.shape[:-2] + (7,), dtype=np.float64)
    out[..., :3] = t[..., :3, 3]
    out[..., 3:] = matrix_to_quat(r)
    return out
