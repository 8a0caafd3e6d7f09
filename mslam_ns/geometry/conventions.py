"""The ONE place that knows camera-axis and frame conventions; nothing else in mslam_ns flips an axis.

(The conventions themselves, in prose: docs/conventions.md.)

mslam_ns itself works in ONE convention: OpenCV camera axes (x right, y down, z forward), poses `T_WC`
(camera -> world), Sim(3) 8-vectors `(tx ty tz qx qy qz qw s)` acting as `x -> s R x + t`, quaternions in
`(qx, qy, qz, qw)` order. The SLAM world is the first keyframe's camera frame (so world y points down).
Every other convention is reached from here:

- TUM rows `(tx ty tz qx qy qz qw)`: T_WC, rigid (the camera scale s is not part of a pose);
- nerfstudio `transforms.json`: camera-to-world 4x4 with OpenGL camera axes (x right, y up, z backward),
  in a "saved" world that is ours re-oriented by `APPLIED_TRANSFORM` (world y up, z towards the viewer
  of the first frame) and recorded as `applied_transform` (nerfstudio's meaning: original -> saved);
- COLMAP: world-to-camera `(qw qx qy qz, tx ty tz)`, OpenCV camera axes, in OUR world frame;
- pixels: ours put the CENTRE of pixel (column i, row j) at (i, j) (`mslam_ns.geometry.image_transform`);
  nerfstudio and COLMAP put it at (i + 0.5, j + 0.5): `cx, cy` move by `PIXEL_CENTER_OFFSET`.
"""

from __future__ import annotations

import numpy as np

from mslam_ns.io.poses import matrix_to_quat, quat_to_matrix

__all__ = [
    "CV_TO_GL",
    "APPLIED_TRANSFORM",
    "sim3_to_matrix",
    "sim3_to_pose7",
    "pose7_to_c2w",
    "c2w_to_pose7",
    "flip_camera_axes",
    "cv_to_gl_c2w",
    "gl_to_cv_c2w",
    "to_nerfstudio_c2w",
    "from_nerfstudio_c2w",
    "to_nerfstudio_points",
    "xyzw_to_wxyz",
    "wxyz_to_xyzw",
    "euroc_row_to_pose7",
    "CV_CAMERA_UP",
    "c2w_to_colmap",
    "colmap_to_c2w",
    "PIXEL_CENTER_OFFSET",
    "principal_point_to_corner_origin",
    "principal_point_from_corner_origin",
]

PIXEL_CENTER_OFFSET = 0.5
"""nerfstudio / COLMAP pixel coordinate of the centre of pixel 0 (ours: 0)."""


def principal_point_to_corner_origin(cx: float, cy: float) -> tuple[float, float]:
    """Our principal point -> nerfstudio's / COLMAP's (image corner at 0, pixel centres at +0.5)."""
    return float(cx) + PIXEL_CENTER_OFFSET, float(cy) + PIXEL_CENTER_OFFSET


def principal_point_from_corner_origin(cx: float, cy: float) -> tuple[float, float]:
    """nerfstudio's / COLMAP's principal point -> ours."""
    return float(cx) - PIXEL_CENTER_OFFSET, float(cy) - PIXEL_CENTER_OFFSET


CV_TO_GL = np.diag([1.0, -1.0, -1.0])
"""[3, 3] OpenCV <-> OpenGL camera axes (its own inverse): flips y and z."""

APPLIED_TRANSFORM = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0]])
"""[3, 4] our world -> the world written to transforms.json (nerfstudio's `applied_transform`): the first
camera's y-down / z-forward world becomes y-up / z-backward, as nerfstudio's viewer expects."""


def sim3_to_matrix(T: np.ndarray) -> np.ndarray:  # [..., 8] -> [..., 4, 4]
    """Sim(3) 8-vectors -> RIGID 4x4 camera-to-world matrices (the camera scale is dropped)."""
    T = np.asarray(T, dtype=np.float64)
    M = np.zeros(T.shape[:-1] + (4, 4))
    M[..., :3, :3] = quat_to_matrix(T[..., 3:7])
    M[..., :3, 3] = T[..., :3]
    M[..., 3, 3] = 1.0
    return M


def sim3_to_pose7(T: np.ndarray) -> np.ndarray:  # [..., 8] -> [..., 7]
    """Sim(3) 8-vectors -> TUM rows `(tx ty tz qx qy qz qw)` (both xyzw: the scale is dropped)."""
    return np.asarray(T, dtype=np.float64)[..., :7].copy()


def pose7_to_c2w(p: np.ndarray) -> np.ndarray:  # [..., 7] -> [..., 4, 4]
    """TUM rows -> camera-to-world 4x4 (OpenCV axes)."""
    p = np.asarray(p, dtype=np.float64)
    M = np.zeros(p.shape[:-1] + (4, 4))
    M[..., :3, :3] = quat_to_matrix(p[..., 3:7])
    M[..., :3, 3] = p[..., :3]
    M[..., 3, 3] = 1.0
    return M


def c2w_to_pose7(M: np.ndarray) -> np.ndarray:  # [..., 4, 4] -> [..., 7]
    """Camera-to-world 4x4 (OpenCV axes, rigid) -> TUM rows."""
    M = np.asarray(M, dtype=np.float64)
    out = np.empty(M.shape[:-2] + (7,))
    out[..., :3] = M[..., :3, 3]
    out[..., 3:] = matrix_to_quat(M[..., :3, :3])
    return out


def flip_camera_axes(R):  # [..., 3, 3] numpy array or torch tensor -> same type
    """Rotation columns of a camera-to-world with OpenCV axes <-> OpenGL axes (flip camera y and z).

    Works on numpy arrays and torch tensors (same device and dtype); its own inverse.
    """
    if hasattr(R, "new_tensor"):  # torch, without importing it here
        return R * R.new_tensor([1.0, -1.0, -1.0])
    return np.asarray(R) * np.array([1.0, -1.0, -1.0])


def cv_to_gl_c2w(M: np.ndarray) -> np.ndarray:  # [..., 4, 4]
    """Camera-to-world with OpenCV camera axes -> the same camera with OpenGL axes (world unchanged)."""
    M = np.array(M, dtype=np.float64)
    M[..., :3, :3] = flip_camera_axes(M[..., :3, :3])
    return M


gl_to_cv_c2w = cv_to_gl_c2w  # the flip is its own inverse
"""OpenGL camera axes -> OpenCV camera axes (world unchanged)."""


def _applied4() -> np.ndarray:
    return np.vstack([APPLIED_TRANSFORM, [0.0, 0.0, 0.0, 1.0]])


def to_nerfstudio_c2w(M_cv: np.ndarray) -> np.ndarray:  # [..., 4, 4] -> [..., 4, 4]
    """Our camera-to-world (OpenCV axes, our world) -> transforms.json `transform_matrix`."""
    return _applied4() @ cv_to_gl_c2w(M_cv)


def from_nerfstudio_c2w(M_gl: np.ndarray) -> np.ndarray:  # [..., 4, 4] -> [..., 4, 4]
    """transforms.json `transform_matrix` -> our camera-to-world (OpenCV axes, our world)."""
    return gl_to_cv_c2w(np.linalg.inv(_applied4()) @ np.asarray(M_gl, dtype=np.float64))


def to_nerfstudio_points(X_W: np.ndarray) -> np.ndarray:  # [N, 3] -> [N, 3]
    """Points in our world -> the saved world of transforms.json (what `ply_file_path` holds)."""
    X = np.asarray(X_W, dtype=np.float64)
    return X @ APPLIED_TRANSFORM[:, :3].T + APPLIED_TRANSFORM[:, 3]


def xyzw_to_wxyz(q):  # [..., 4] numpy array (float64) or torch tensor (same dtype) -> same type
    """Quaternion `(qx qy qz qw)` (ours, TUM) -> `(qw qx qy qz)` (COLMAP, EuRoC, gsplat, viser)."""
    if not isinstance(q, np.ndarray) and hasattr(q, "roll"):  # a torch tensor
        return q.roll(1, dims=-1)
    return np.roll(np.asarray(q, dtype=np.float64), 1, axis=-1)


def wxyz_to_xyzw(q):  # [..., 4] numpy array (float64) or torch tensor (same dtype) -> same type
    """Quaternion `(qw qx qy qz)` (COLMAP, EuRoC, gsplat, viser) -> `(qx qy qz qw)` (ours, TUM)."""
    if not isinstance(q, np.ndarray) and hasattr(q, "roll"):
        return q.roll(-1, dims=-1)
    return np.roll(np.asarray(q, dtype=np.float64), -1, axis=-1)


def euroc_row_to_pose7(row: np.ndarray) -> np.ndarray:  # [..., 7] (p, qw qx qy qz) -> [..., 7] (p, qx qy qz qw)
    """A EuRoC ground-truth row's pose part (position, then the quaternion scalar first) -> our pose7."""
    row = np.asarray(row, dtype=np.float64)
    return np.concatenate([row[..., :3], wxyz_to_xyzw(row[..., 3:7])], axis=-1)


# The world "up" direction of an OpenCV camera: image rows grow downwards (+y down), so up is -y.
CV_CAMERA_UP = np.array([0.0, -1.0, 0.0])


def c2w_to_colmap(M: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # [N, 4, 4] -> ([N, 4], [N, 3])
    """Camera-to-world (OpenCV axes) -> COLMAP world-to-camera `(qw qx qy qz)`, `(tx ty tz)`."""
    M = np.asarray(M, dtype=np.float64).reshape(-1, 4, 4)
    R_cw = np.swapaxes(M[:, :3, :3], 1, 2)
    t_cw = -np.einsum("nij,nj->ni", R_cw, M[:, :3, 3])
    return xyzw_to_wxyz(matrix_to_quat(R_cw)), t_cw


def colmap_to_c2w(q_wxyz: np.ndarray, t: np.ndarray) -> np.ndarray:  # ([N, 4], [N, 3]) -> [N, 4, 4]
    """COLMAP world-to-camera -> camera-to-world 4x4 (OpenCV axes)."""
    R_cw = quat_to_matrix(wxyz_to_xyzw(np.asarray(q_wxyz).reshape(-1, 4)))
    t = np.asarray(t, dtype=np.float64).reshape(-1, 3)
    M = np.zeros((len(t), 4, 4))
    M[:, :3, :3] = np.swapaxes(R_cw, 1, 2)
    M[:, :3, 3] = -np.einsum("nji,nj->ni", R_cw, t)
    M[:, 3, 3] = 1.0
    return M
