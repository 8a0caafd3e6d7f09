"""TUM trajectory / file-list reading and writing, timestamp association, quaternion conversions."""

from __future__ import annotations

import numpy as np
import pytest

from mslam_ns.cli import UserError
from mslam_ns.io.poses import matrix_to_pose7, matrix_to_quat, pose7_to_matrix, quat_to_matrix
from mslam_ns.io.tum import associate, read_file_list, read_tum_trajectory, write_tum_trajectory


def _random_rotations(n: int, rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=(n, 4))
    return quat_to_matrix(q)


def test_quaternion_round_trip_float64():
    rng = np.random.default_rng(0)
    r = _random_rotations(200, rng)
    # include rotations by ~180 degrees about each axis (the hard branch of matrix_to_quat)
    r = np.concatenate([r, np.diag([1.0, -1, -1])[None], np.diag([-1.0, 1, -1])[None], np.diag([-1.0, -1, 1])[None]])
    np.testing.assert_allclose(r @ np.swapaxes(r, 1, 2), np.broadcast_to(np.eye(3), r.shape), atol=1e-12)
    q = matrix_to_quat(r)
    assert np.all(q[:, 3] >= 0)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(quat_to_matrix(q), r, atol=1e-12)


def test_quaternion_known_value():
    # 90 degrees about z: x -> y
    q = np.array([0.0, 0.0, np.sin(np.pi / 4), np.cos(np.pi / 4)])
    r = quat_to_matrix(q)
    np.testing.assert_allclose(r @ [1.0, 0, 0], [0, 1.0, 0], atol=1e-15)


def test_matrix_to_pose7_removes_sim3_scale():
    rng = np.random.default_rng(1)
    t = np.eye(4)
    t[:3, :3] = 2.5 * _random_rotations(1, rng)[0]
    t[:3, 3] = [1, 2, 3]
    p = matrix_to_pose7(t)
    np.testing.assert_allclose(p[:3], [1, 2, 3])
    np.testing.assert_allclose(quat_to_matrix(p[3:]) * 2.5, t[:3, :3], atol=1e-12)


def test_trajectory_round_trip_matrices(tmp_path):
    rng = np.random.default_rng(2)
    n = 50
    t = np.tile(np.eye(4), (n, 1, 1))
    t[:, :3, :3] = _random_rotations(n, rng)
    t[:, :3, 3] = rng.normal(size=(n, 3))
    ts = 1305031102.175304 + np.arange(n) / 30.0
    path = tmp_path / "traj.txt"
    write_tum_trajectory(path, ts, t)
    assert path.read_text().startswith("#")
    ts2, p2 = read_tum_trajectory(path)
    assert ts2.shape == (n,) and p2.shape == (n, 7)
    np.testing.assert_allclose(ts2, ts, atol=1e-6)
    np.testing.assert_allclose(pose7_to_matrix(p2), t, atol=1e-8)
    # the 7-vector path reads back to the same poses
    path7 = tmp_path / "traj7.txt"
    write_tum_trajectory(path7, ts, p2)
    ts3, p3 = read_tum_trajectory(path7)
    np.testing.assert_array_equal(ts3, ts2)
    np.testing.assert_allclose(p3, p2, atol=2e-9)


def test_trajectory_skips_nan_rows(tmp_path):
    t = np.tile(np.eye(4), (3, 1, 1))
    t[1] = np.nan
    write_tum_trajectory(tmp_path / "t.txt", [0.0, 1.0, 2.0], t)
    ts, p = read_tum_trajectory(tmp_path / "t.txt")
    np.testing.assert_array_equal(ts, [0.0, 2.0])
    np.testing.assert_allclose(p, [[0, 0, 0, 0, 0, 0, 1]] * 2)


def test_trajectory_reads_commas_tabs_comments(tmp_path):
    path = tmp_path / "gt.txt"
    path.write_text("# ground truth\n\n1.0,1,2,3,0,0,0,1\n2.0\t1 2 3 0 0 0 1\n")
    ts, p = read_tum_trajectory(path)
    np.testing.assert_array_equal(ts, [1.0, 2.0])
    np.testing.assert_array_equal(p[0], [1, 2, 3, 0, 0, 0, 1])


def test_trajectory_bad_rows_name_file_and_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("# c\n1 2 3 4 5 6 7 8\n1 2 3\n")
    with pytest.raises(UserError, match=r"bad\.txt: line 3"):
        read_tum_trajectory(path)
    path.write_text("1 2 3 4 5 6 7 x\n")
    with pytest.raises(UserError, match=r"bad\.txt: line 1: not a number"):
        read_tum_trajectory(path)
    with pytest.raises(UserError, match=r"missing\.txt: file not found"):
        read_tum_trajectory(tmp_path / "missing.txt")


def test_write_trajectory_is_atomic_on_bad_input(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("keep\n")
    with pytest.raises(ValueError):
        write_tum_trajectory(path, [0.0, 1.0], np.zeros((3, 7)))
    assert path.read_text() == "keep\n"
    assert list(tmp_path.iterdir()) == [path]


def test_read_file_list(tmp_path):
    path = tmp_path / "rgb.txt"
    path.write_text(
        "# color images\n# timestamp filename\n1305031102.175304 rgb/1305031102.175304.png\n"
        "1305031102.211214 rgb/1305031102.211214.png\n"
    )
    entries = read_file_list(path)
    assert entries == [
        (1305031102.175304, ["rgb/1305031102.175304.png"]),
        (1305031102.211214, ["rgb/1305031102.211214.png"]),
    ]
    path.write_text("abc rgb/x.png\n")
    with pytest.raises(UserError, match=r"rgb\.txt: line 1"):
        read_file_list(path)


def test_associate_nearest_one_to_one():
    a = np.array([0.00, 0.033, 0.066, 0.100, 0.500])
    b = np.array([0.001, 0.030, 0.040, 0.099, 0.2])
    pairs = associate(a, b, max_dt=0.02)
    # 0.033 is closest to 0.030 (dt 0.003); 0.066 has no partner within 0.02 except none (0.040 is 0.026 away)
    assert pairs == [(0, 0), (1, 1), (3, 3)]


def test_associate_matches_bruteforce_greedy():
    rng = np.random.default_rng(3)
    a = np.sort(rng.uniform(0, 10, 300))
    b = np.sort(rng.uniform(0, 10, 280))
    pairs = associate(a, b, max_dt=0.02)
    # brute force reference, TUM associate.py style
    cands = sorted((abs(x - y), i, j) for i, x in enumerate(a) for j, y in enumerate(b) if abs(x - y) < 0.02)
    ua, ub, ref = set(), set(), []
    for _, i, j in cands:
        if i not in ua and j not in ub:
            ua.add(i)
            ub.add(j)
            ref.append((i, j))
    assert pairs == sorted(ref)
    assert len(pairs) > 10
    assert associate(a, np.array([]), 0.02) == []


def test_written_trajectory_reads_back_in_evo(tmp_path):
    """Independent check of the quaternion order/convention against evo's TUM reader."""
    file_interface = pytest.importorskip("evo.tools.file_interface", reason="evo is the reference TUM reader")
    rng = np.random.default_rng(4)
    t = np.tile(np.eye(4), (5, 1, 1))
    t[:, :3, :3] = _random_rotations(5, rng)
    t[:, :3, 3] = rng.normal(size=(5, 3))
    path = tmp_path / "traj.txt"
    write_tum_trajectory(path, np.arange(5) * 0.1, t)
    traj = file_interface.read_tum_trajectory_file(str(path))
    np.testing.assert_allclose(np.stack(traj.poses_se3), t, atol=1e-8)
    np.testing.assert_allclose(traj.timestamps, np.arange(5) * 0.1)
