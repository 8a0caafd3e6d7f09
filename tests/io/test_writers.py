"""PLY and JSON writers (atomic) and GT interpolation helpers."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from mslam_ns.io.gt import poses_at_times
from mslam_ns.io.poses import matrix_to_quat, quat_to_matrix
from mslam_ns.io.writers import read_ply, write_json, write_ply


def test_ply_round_trip_with_colors(tmp_path, rng):
    pts = rng.normal(size=(1000, 3)).astype(np.float32)
    cols = rng.integers(0, 256, size=(1000, 3), dtype=np.uint8)
    p = write_ply(tmp_path / "cloud.ply", pts, cols)
    raw = p.read_bytes()
    assert raw.startswith(b"ply\nformat binary_little_endian 1.0\n")
    header_len = raw.index(b"end_header\n") + len(b"end_header\n")
    assert len(raw) - header_len == 1000 * (12 + 3)  # packed x y z float32 + rgb uchar
    p2, c2 = read_ply(p)
    np.testing.assert_array_equal(p2, pts)
    np.testing.assert_array_equal(c2, cols)


def test_ply_without_colors_and_float_colors(tmp_path):
    pts = np.arange(12, dtype=np.float64).reshape(4, 3)
    p2, c2 = read_ply(write_ply(tmp_path / "a.ply", pts))
    np.testing.assert_array_equal(p2, pts.astype(np.float32))
    assert c2 is None
    _, c3 = read_ply(write_ply(tmp_path / "b.ply", pts, np.full((4, 3), 0.5)))
    np.testing.assert_array_equal(c3, 128)
    _, c4 = read_ply(write_ply(tmp_path / "c.ply", np.zeros((0, 3)), np.zeros((0, 3), np.uint8)))
    assert c4.shape == (0, 3)


def test_read_ascii_ply(tmp_path):
    p = tmp_path / "ascii.ply"
    p.write_text(
        "ply\nformat ascii 1.0\nelement vertex 2\nproperty float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
        "1 2 3 4 5 6\n7 8 9 10 11 12\n"
    )
    pts, cols = read_ply(p)
    np.testing.assert_array_equal(pts, [[1, 2, 3], [7, 8, 9]])
    np.testing.assert_array_equal(cols, [[4, 5, 6], [10, 11, 12]])


def test_ply_bad_colors_leaves_nothing(tmp_path):
    with pytest.raises(ValueError):
        write_ply(tmp_path / "x.ply", np.zeros((3, 3)), np.zeros((2, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []


@dataclass
class _Info:
    name: str
    path: Path


def test_write_json_converts_numpy_and_nan(tmp_path):
    obj = {
        "a": np.float32(1.5),
        "b": np.arange(3),
        "c": float("nan"),
        "d": _Info("x", Path("/tmp/y")),
        "e": (np.int64(2), np.inf),
    }
    p = write_json(tmp_path / "summary.json", obj)
    assert json.loads(p.read_text()) == {
        "a": 1.5,
        "b": [0, 1, 2],
        "c": None,
        "d": {"name": "x", "path": "/tmp/y"},
        "e": [2, None],
    }


def test_write_json_unserialisable_leaves_old_file(tmp_path):
    p = tmp_path / "s.json"
    p.write_text('{"old": true}')
    with pytest.raises(TypeError):
        write_json(p, {"bad": object()})
    assert p.read_text() == '{"old": true}'
    assert [x.name for x in tmp_path.iterdir()] == ["s.json"]


def _pose(angle_deg, t):
    a = np.radians(angle_deg)
    T = np.eye(4)
    T[:3, :3] = [[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]]
    T[:3, 3] = t
    return T


def test_poses_at_times_interpolates_and_marks_missing():
    ts_gt = np.array([0.0, 0.01, 0.02, 0.5])
    gt = np.stack([_pose(0, [0, 0, 0]), _pose(10, [1, 0, 0]), _pose(20, [2, 0, 0]), _pose(0, [9, 9, 9])])
    q = np.array([0.005, 0.02, 0.3, 0.51, 0.49])
    out = poses_at_times(q, ts_gt, gt, max_dt=0.02)
    np.testing.assert_allclose(out[0], _pose(5, [0.5, 0, 0]), atol=1e-12)  # halfway: slerp + lerp
    np.testing.assert_allclose(out[1], gt[2], atol=1e-12)  # exact sample
    assert np.isnan(out[2]).all()  # nothing within 0.02 s
    np.testing.assert_allclose(out[3], gt[3])  # nearest (only one neighbour close)
    np.testing.assert_allclose(out[4], gt[3])


def test_quat_sign_and_slerp_shortest_path():
    r = quat_to_matrix(np.array([0.0, 0.0, np.sin(np.radians(170) / 2), np.cos(np.radians(170) / 2)]))
    assert matrix_to_quat(r)[3] >= 0
    gt = np.stack([_pose(170, [0, 0, 0]), _pose(-170, [0, 0, 0])])
    out = poses_at_times([0.005], [0.0, 0.01], gt)
    np.testing.assert_allclose(out[0], _pose(180, [0, 0, 0]), atol=1e-12)  # through 180, not through 0
