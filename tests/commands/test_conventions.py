"""`mslam_ns.geometry.conventions`: each conversion against an independent construction."""

from __future__ import annotations

import numpy as np
import torch

from mslam_ns.geometry import conventions as cv
from mslam_ns.io.poses import quat_to_matrix


def _random_c2w(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(n, 4))
    M = np.tile(np.eye(4), (n, 1, 1))
    M[:, :3, :3] = quat_to_matrix(q)
    M[:, :3, 3] = rng.normal(size=(n, 3))
    return M


def test_colmap_is_world_to_camera_wxyz():
    M = _random_c2w(20)
    q, t = cv.c2w_to_colmap(M)
    X = np.random.default_rng(1).normal(size=(20, 3))
    for i in range(20):  # a world point mapped by COLMAP's (q, t) lands at inv(c2w) X
        R = quat_to_matrix(np.r_[q[i, 1:], q[i, 0]])
        np.testing.assert_allclose(R @ X[i] + t[i], np.linalg.inv(M[i])[:3] @ np.r_[X[i], 1], atol=1e-12)
    np.testing.assert_allclose(cv.colmap_to_c2w(q, t), M, atol=1e-12)


def test_nerfstudio_c2w_opengl_axes_and_applied_transform():
    M = _random_c2w(10)
    G = cv.to_nerfstudio_c2w(M)
    A = np.vstack([cv.APPLIED_TRANSFORM, [0, 0, 0, 1]])
    for i in range(10):
        # camera forward: OpenCV +z, OpenGL -z; same direction in the saved world
        np.testing.assert_allclose(G[i, :3, :3] @ [0, 0, -1], A[:3, :3] @ M[i, :3, :3] @ [0, 0, 1], atol=1e-12)
        np.testing.assert_allclose(G[i, :3, 3], (A @ M[i])[:3, 3], atol=1e-12)
    np.testing.assert_allclose(cv.from_nerfstudio_c2w(G), M, atol=1e-12)
    X = np.random.default_rng(2).normal(size=(5, 3))
    np.testing.assert_allclose(cv.to_nerfstudio_points(X), X @ A[:3, :3].T, atol=1e-12)


def test_flip_is_an_involution_for_numpy_and_torch():
    R = _random_c2w(4)[:, :3, :3]
    np.testing.assert_allclose(cv.flip_camera_axes(cv.flip_camera_axes(R)), R)
    Rt = torch.as_tensor(R, dtype=torch.float32)
    out = cv.flip_camera_axes(Rt)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), cv.flip_camera_axes(R), atol=1e-6)


def test_tum_rows_and_pixel_centres():
    M = _random_c2w(6)
    np.testing.assert_allclose(cv.pose7_to_c2w(cv.c2w_to_pose7(M)), M, atol=1e-12)
    T8 = np.concatenate([cv.c2w_to_pose7(M), np.full((6, 1), 2.5)], axis=1)  # Sim(3) with scale 2.5
    np.testing.assert_allclose(cv.sim3_to_matrix(T8), M, atol=1e-12)  # the scale is not part of a pose
    assert cv.principal_point_from_corner_origin(*cv.principal_point_to_corner_origin(79.5, 59.5)) == (79.5, 59.5)
    assert cv.principal_point_to_corner_origin(79.5, 59.5) == (80.0, 60.0)  # centre of a 160x120 image


def test_quaternion_orders_for_numpy_and_torch():
    q = np.array([0.1, 0.2, 0.3, 0.9])  # (qx qy qz qw)
    assert np.array_equal(cv.xyzw_to_wxyz(q), [0.9, 0.1, 0.2, 0.3])
    assert np.array_equal(cv.wxyz_to_xyzw(cv.xyzw_to_wxyz(q)), q)
    qt = torch.tensor([[0.1, 0.2, 0.3, 0.9]], dtype=torch.float32)
    out = cv.xyzw_to_wxyz(qt)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert torch.equal(out, qt[:, [3, 0, 1, 2]])
    assert torch.equal(cv.wxyz_to_xyzw(out), qt)
    # A EuRoC row: position, then the quaternion scalar first.
    row = np.array([1.0, 2.0, 3.0, 0.9, 0.1, 0.2, 0.3])
    assert np.array_equal(cv.euroc_row_to_pose7(row), [1.0, 2.0, 3.0, 0.1, 0.2, 0.3, 0.9])
