"""The synthetic textured-room generator: exact depth and poses, loop closure, pure rotation, determinism."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mslam_ns.cli import UserError, main
from mslam_ns.io.sources import TumRgbdSource, open_source
from mslam_ns.io.synth_scene import SyntheticRoom, default_intrinsics
from mslam_ns.io.synth_trajectory import make_trajectory
from mslam_ns.io.synthetic import generate_sequence

W, H, N = 160, 120, 40


@pytest.fixture(scope="module")
def seq(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "room"
    generate_sequence(out, n_frames=N, width=W, height=H, seed=3)
    return out


def _rot_angle_deg(r):  # [..., 3, 3] -> degrees
    c = (np.trace(r, axis1=-2, axis2=-1) - 1) / 2
    return np.degrees(np.arccos(np.clip(c, -1, 1)))


def test_layout_and_reader(seq):
    for name in ("rgb.txt", "depth.txt", "groundtruth.txt", "calibration.txt", "segments.json"):
        assert (seq / name).is_file(), name
    assert len(list((seq / "rgb").iterdir())) == N and len(list((seq / "depth").iterdir())) == N
    assert not [p for p in seq.parent.iterdir() if p.name.startswith(".")]  # no temp folders left
    src = open_source(seq)
    assert isinstance(src, TumRgbdSource) and len(src) == N
    np.testing.assert_allclose(src.timestamps, np.arange(N) / 30, atol=1e-6)
    intr = src.intrinsics
    assert (intr.width, intr.height) == (W, H) and intr.dist == ()
    ref = default_intrinsics(W, H)
    np.testing.assert_allclose(intr.K, ref.K, atol=1e-6)
    f = src[0]
    assert f.image.shape == (H, W, 3) and f.image.dtype == np.uint8
    assert f.image.std() > 20  # textured, not flat
    d = src.depth(0)
    assert d.shape == (H, W) and (d > 0).all()  # closed room: every pixel valid
    gt = src.gt_poses
    assert gt.shape == (N, 4, 4) and np.isfinite(gt).all()
    np.testing.assert_allclose(
        gt[:, :3, :3] @ np.swapaxes(gt[:, :3, :3], 1, 2), np.broadcast_to(np.eye(3), (N, 3, 3)), atol=1e-6
    )


def _reprojection_check(src, a, b):
    """Back-project frame a's depth, move it to frame b with the GT poses, compare with b's depth.

    b's depth is sampled bilinearly in *inverse* depth, which is affine in pixels on a plane, so wherever the
    4x4 pixel window of b around the projection lies on one plane (checked: all second differences of its
    inverse depths vanish) the comparison is exact up to the 0.2 mm depth quantisation.
    Returns a dict: fraction of in-view points that agree within 1 mm ("agree"), fraction of planar-cell points
    where b sees *further* than the point ("see_through", impossible with consistent depth and poses; occlusion
    can only make b's depth shorter), median abs error ("median"), median colour difference of agreeing points
    ("colour"), and the in-view fraction ("visible").
    """
    K = src.intrinsics.K
    da, db = src.depth(a).astype(np.float64), src.depth(b).astype(np.float64)
    Ta, Tb = src.gt_poses[a], src.gt_poses[b]
    v, u = np.mgrid[0:H, 0:W]
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u, dtype=float)], -1)
    Xa = (rays * da[..., None]).reshape(-1, 3)
    T_ba = np.linalg.inv(Tb) @ Ta
    Xb = Xa @ T_ba[:3, :3].T + T_ba[:3, 3]
    z = Xb[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        ub = K[0, 0] * Xb[:, 0] / z + K[0, 2]
        vb = K[1, 1] * Xb[:, 1] / z + K[1, 2]
    inview = (z > 0.1) & (ub >= 1) & (ub <= W - 2.001) & (vb >= 1) & (vb <= H - 2.001)
    ub, vb, z = ub[inview], vb[inview], z[inview]
    u0, v0 = np.floor(ub).astype(int), np.floor(vb).astype(int)
    fu, fv = ub - u0, vb - v0
    inv = 1.0 / db
    i00, i10, i01, i11 = inv[v0, u0], inv[v0, u0 + 1], inv[v0 + 1, u0], inv[v0 + 1, u0 + 1]
    s = i00 * (1 - fu) * (1 - fv) + i10 * fu * (1 - fv) + i01 * (1 - fu) * fv + i11 * fu * fv
    win = inv[(v0[:, None] + np.arange(-1, 3))[:, :, None], (u0[:, None] + np.arange(-1, 3))[:, None, :]]  # [P, 4, 4]
    second = np.concatenate(
        [
            np.diff(win, 2, axis=1).reshape(len(win), -1),
            np.diff(win, 2, axis=2).reshape(len(win), -1),
            np.diff(np.diff(win, axis=1), axis=2).reshape(len(win), -1),
        ],
        axis=1,
    )
    planar = np.abs(second).max(axis=1) < 1e-4
    err = 1.0 / s - z  # > 0: b sees further than the point
    ok = np.abs(err) < 1e-3
    ca = src[a].image.reshape(-1, 3)[inview][ok].astype(float)
    cb = src[b].image[np.rint(vb[ok]).astype(int), np.rint(ub[ok]).astype(int)].astype(float)
    return {
        "agree": ok.mean(),
        "see_through": (planar & (err > 1e-3)).sum() / max(planar.sum(), 1),
        "median": np.median(np.abs(err)),
        "colour": np.median(np.abs(ca - cb)),
        "visible": inview.mean(),
    }


def test_depth_consistent_between_frames(seq):
    src = open_source(seq)
    for a, b in ((0, 3), (10, 14), (5, N - 1)):
        r = _reprojection_check(src, a, b)
        assert r["visible"] > 0.3, (a, b, r)
        assert r["see_through"] < 0.002, (a, b, r)  # exact where the geometry allows an exact comparison
        assert r["agree"] > 0.75, (a, b, r)  # the rest: occlusions and cells straddling depth edges
        assert r["median"] < 3e-4, (a, b, r)  # depth quantisation is 0.2 mm
        assert r["colour"] < 12, (a, b, r)  # same surface point, same colour (nearest-pixel sampling)


def test_depth_check_detects_wrong_pose(seq):
    """The consistency check above must be able to fail: a pose off by 5 cm breaks it."""
    src = open_source(seq)
    src._gt = src.gt_poses.copy()
    src._gt[3, 0, 3] += 0.05
    r = _reprojection_check(src, 0, 3)
    assert r["agree"] < 0.5 and r["median"] > 5e-3 and r["see_through"] > 0.1


def test_loop_closes_and_pure_rotation_segment():
    n = 120
    traj = make_trajectory(n)
    P = traj.poses
    # motion per frame: a few cm and about a degree
    step = np.linalg.norm(np.diff(P[:, :3, 3], axis=0), axis=1)
    turn = _rot_angle_deg(np.swapaxes(P[:-1, :3, :3], 1, 2) @ P[1:, :3, :3])
    assert step.max() < 0.06 and turn.max() < 2.0
    assert 2.0 < step.sum() < 6.0  # a few metres
    # loop: the last pose is near the first
    assert np.linalg.norm(P[-1, :3, 3] - P[0, :3, 3]) < 0.06
    assert _rot_angle_deg(P[-1, :3, :3].T @ P[0, :3, :3]) < 3.0
    # ... after going somewhere else
    assert np.linalg.norm(P[:, :3, 3] - P[0, :3, 3], axis=1).max() > 0.8
    # pure rotation: constant position, real rotation
    ((a, b),) = traj.segments["rotation"]
    assert b - a >= 0.25 * n
    np.testing.assert_allclose(P[a:b, :3, 3], np.broadcast_to(P[a, :3, 3], (b - a, 3)), atol=1e-12)
    assert _rot_angle_deg(P[a, :3, :3].T @ P[a:b, :3, :3]).max() > 10.0
    # travel segments do translate
    for s, e in traj.segments["travel"]:
        assert np.linalg.norm(np.diff(P[s:e, :3, 3], axis=0), axis=1).min() > 0.005


def test_written_gt_matches_trajectory_and_segments(seq):
    meta = json.loads((seq / "segments.json").read_text())
    traj = make_trajectory(N)
    assert meta["segments"]["rotation"] == [list(r) for r in traj.segments["rotation"]]
    np.testing.assert_allclose(open_source(seq).gt_poses, traj.poses, atol=1e-6)


def test_camera_stays_in_free_space_and_sees_surfaces():
    room = SyntheticRoom(seed=7)
    traj = make_trajectory(200)
    intr = default_intrinsics(48, 36)
    for T in traj.poses[::10]:
        assert room.inside_free_space(T[:3, 3], margin=0.3)
        _, depth = room.render(T, intr)
        assert depth.min() > 0.5 and depth.max() < 8.0


def test_render_is_exact_against_ray_cast():
    """Depth at a pixel equals the z of the analytic ray/plane hit (float64 check of the renderer's geometry)."""
    room = SyntheticRoom(seed=1)
    intr = default_intrinsics(64, 48)
    T = make_trajectory(30).poses[4]
    _, depth = room.render(T, intr)
    v, u = 20, 40
    ray_c = np.array([(u - intr.cx) / intr.fx, (v - intr.cy) / intr.fy, 1.0])
    d = T[:3, :3] @ ray_c
    o = T[:3, 3]
    # the hit must lie on one of the scene's planes, and nothing is closer along the ray
    ts = []
    for f in room.faces:
        if abs(d[f.axis]) > 1e-12:
            t = (f.value - o[f.axis]) / d[f.axis]
            p = o + t * d
            ax = [i for i in range(3) if i != f.axis]
            inside = all(f.lo[k] - 1e-9 <= p[ax[k]] <= f.lo[k] + f.size[k] + 1e-9 for k in range(2))
            if t > 0 and inside:
                ts.append(t)
    assert abs(depth[v, u] - min(ts)) < 1e-5


def test_deterministic_by_seed():
    intr = default_intrinsics(40, 30)
    T = make_trajectory(10).poses[0]
    a1, d1 = SyntheticRoom(seed=5).render(T, intr)
    a2, d2 = SyntheticRoom(seed=5).render(T, intr)
    b, _ = SyntheticRoom(seed=6).render(T, intr)
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(d1, d2)
    assert np.abs(a1.astype(int) - b.astype(int)).mean() > 10


def test_generator_rejects_bad_arguments(tmp_path):
    with pytest.raises(UserError, match="at least 2 frames"):
        generate_sequence(tmp_path / "a", n_frames=1)
    with pytest.raises(UserError, match="unknown trajectory"):
        generate_sequence(tmp_path / "a", n_frames=4, trajectory="spiral")
    with pytest.raises(UserError, match="image size"):
        generate_sequence(tmp_path / "a", n_frames=4, width=8)
    assert list(tmp_path.iterdir()) == []


def test_generator_failure_leaves_nothing(tmp_path, monkeypatch):
    import mslam_ns.io.synthetic as synth

    calls = {"n": 0}
    real = synth.SyntheticRoom.render

    def flaky(self, T, intr):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("disk full")
        return real(self, T, intr)

    monkeypatch.setattr(synth.SyntheticRoom, "render", flaky)
    with pytest.raises(RuntimeError):
        generate_sequence(tmp_path / "out", n_frames=5, width=32, height=24)
    assert list(tmp_path.iterdir()) == []


def test_synth_command_replaces_earlier_sequence(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["synth", str(out), "--frames", "6", "--width", "32", "--height", "24"]) == 0
    assert main(["synth", str(out), "--frames", "4", "--width", "32", "--height", "24", "--seed", "2"]) == 0
    assert len(list((out / "rgb").iterdir())) == 4  # old frames gone, not merged
    assert len(open_source(out)) == 4
    assert "wrote 4 frames" in capsys.readouterr().out
