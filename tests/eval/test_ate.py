"""ATE against evo (GPL, used here only as a test-time oracle) and exact-recovery checks."""

from __future__ import annotations

import numpy as np
import pytest

from mslam_ns.eval.ate import arc_length, associate_nearest, ate, umeyama

evo_traj = pytest.importorskip("evo.core.trajectory")
evo_sync = pytest.importorskip("evo.core.sync")
evo_metrics = pytest.importorskip("evo.core.metrics")


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return q


def random_quats(rng: np.random.Generator, n: int) -> np.ndarray:
    q = rng.normal(size=(n, 4))
    return q / np.linalg.norm(q, axis=1, keepdims=True)  # (qx qy qz qw)


def smooth_path(rng: np.random.Generator, ts: np.ndarray) -> np.ndarray:
    """A wiggly 3D path sampled at ts [N] -> [N, 3]."""
    f = rng.uniform(0.2, 1.0, size=(3, 3))
    ph = rng.uniform(0, 2 * np.pi, size=(3, 3))
    a = rng.uniform(0.3, 2.0, size=(3, 3))
    return sum(a[k] * np.sin(f[k] * ts[:, None] * 2 * np.pi + ph[k]) for k in range(3))


def make_pair(seed: int, noise: float):
    """GT at ~100 Hz; estimate at ~30 Hz with jitter, a gap, a Sim(3) applied and position noise."""
    rng = np.random.default_rng(seed)
    gt_ts = 1000.0 + np.cumsum(rng.uniform(0.009, 0.011, size=600))
    gt_p = smooth_path(rng, gt_ts - 1000.0)
    est_ts = 1000.0 + np.arange(0.0, 6.2, 1 / 30) + rng.uniform(-0.012, 0.012, size=len(np.arange(0.0, 6.2, 1 / 30)))
    est_ts = np.sort(est_ts)
    est_ts = est_ts[(est_ts < 1002.0) | (est_ts > 1002.5)]  # a tracking gap
    # estimate positions: GT interpolated at the estimate's stamps, then an inverse Sim(3) and noise
    p = np.stack([np.interp(est_ts, gt_ts, gt_p[:, k]) for k in range(3)], axis=1)
    s, R, t = rng.uniform(0.2, 5.0), random_rotation(rng), rng.normal(size=3) * 3
    p_est = (p - t) @ R / s + noise * rng.normal(size=p.shape)
    gt_poses = np.concatenate([gt_p, random_quats(rng, len(gt_ts))], axis=1)
    est_poses = np.concatenate([p_est, random_quats(rng, len(est_ts))], axis=1)
    return est_ts, est_poses, gt_ts, gt_poses, s


def evo_rmse(est_ts, est_poses, gt_ts, gt_poses, max_diff: float) -> tuple[float, float, int]:
    """evo_ape tum gt est -as, through evo's Python API: (rmse, scale, n_matched)."""
    wxyz = lambda p: np.roll(p[:, 3:7], 1, axis=1)  # noqa: E731
    ref = evo_traj.PoseTrajectory3D(gt_poses[:, :3], wxyz(gt_poses), gt_ts)
    est = evo_traj.PoseTrajectory3D(est_poses[:, :3], wxyz(est_poses), est_ts)
    ref, est = evo_sync.associate_trajectories(ref, est, max_diff=max_diff)
    _, _, scale = est.align(ref, correct_scale=True)
    ape = evo_metrics.APE(evo_metrics.PoseRelation.translation_part)
    ape.process_data((ref, est))
    return ape.get_statistic(evo_metrics.StatisticsType.rmse), scale, ref.num_poses


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("max_dt", [0.01, 0.02])
def test_matches_evo(seed: int, max_dt: float) -> None:
    est_ts, est_poses, gt_ts, gt_poses, _ = make_pair(seed, noise=0.05)
    r = ate(est_ts, est_poses, gt_ts, gt_poses, max_dt=max_dt)
    rmse, scale, n = evo_rmse(est_ts, est_poses, gt_ts, gt_poses, max_dt)
    assert r.n_matched == n
    assert abs(r.rmse - rmse) < 1e-9
    assert abs(r.scale - scale) < 1e-9 * scale
    assert r.rmse > 1e-3  # the noise is visible: the comparison is not trivially 0 == 0


def test_matches_evo_when_estimate_is_longer() -> None:
    """evo walks the shorter trajectory: here the (sparse) ground truth."""
    est_ts, est_poses, gt_ts, gt_poses, _ = make_pair(11, noise=0.02)
    gt_ts, gt_poses = gt_ts[::7], gt_poses[::7]
    assert len(gt_ts) < len(est_ts)
    r = ate(est_ts, est_poses, gt_ts, gt_poses, max_dt=0.02)
    rmse, _, n = evo_rmse(est_ts, est_poses, gt_ts, gt_poses, 0.02)
    assert r.n_matched == n and abs(r.rmse - rmse) < 1e-9


def test_exact_recovery_of_sim3() -> None:
    """A noise-free Sim(3)-transformed copy of the ground truth has zero ATE and the inverse scale."""
    est_ts, est_poses, gt_ts, gt_poses, s = make_pair(3, noise=0.0)
    # sample the estimate exactly at GT stamps so interpolation plays no role
    idx = np.arange(0, len(gt_ts), 3)
    rng = np.random.default_rng(0)
    R, t, s = random_rotation(rng), rng.normal(size=3), 0.37
    p_est = s * gt_poses[idx, :3] @ R.T + t
    est = np.concatenate([p_est, gt_poses[idx, 3:]], axis=1)
    r = ate(gt_ts[idx], est, gt_ts, gt_poses)
    assert r.rmse < 1e-9 and r.max < 1e-9
    assert abs(r.scale - 1 / s) < 1e-9
    assert r.n_matched == len(idx)


def test_umeyama_recovers_transform_and_handles_reflection() -> None:
    rng = np.random.default_rng(5)
    src = rng.normal(size=(50, 3))
    R = random_rotation(rng)
    dst = 2.5 * src @ R.T + np.array([1.0, -2.0, 0.5])
    s, R_est, t = umeyama(src, dst)
    np.testing.assert_allclose(R_est, R, atol=1e-12)
    np.testing.assert_allclose([s], [2.5], rtol=1e-12)
    np.testing.assert_allclose(t, [1.0, -2.0, 0.5], atol=1e-12)
    # a mirrored target must still give a proper rotation
    _, R_m, _ = umeyama(src, dst * np.array([1.0, 1.0, -1.0]))
    assert np.linalg.det(R_m) > 0
    s1, _, _ = umeyama(src, dst, with_scale=False)
    assert s1 == 1.0


def test_degenerate_and_too_few_matches_raise() -> None:
    ts = np.arange(10) * 0.1
    line = np.zeros((10, 7))
    line[:, 0] = ts  # collinear positions
    line[:, 6] = 1.0
    static = line.copy()
    static[:, :3] = 0.0
    with pytest.raises(ValueError, match="degenerate"):
        ate(ts, static, ts, line)
    with pytest.raises(ValueError, match="degenerate"):
        ate(ts, line, ts, line)  # collinear: the rotation about the line is undetermined
    with pytest.raises(ValueError, match="matched"):
        ate(ts + 5.0, line, ts, line)


def test_association_rules() -> None:
    gt = np.array([0.0, 0.010, 0.020, 0.030])
    est = np.array([0.005, 0.026, 0.5])
    ir, ie = associate_nearest(gt, est, max_dt=0.01)
    # 0.005 is equidistant from 0.0 and 0.010 -> the earlier; 0.026 -> 0.030; 0.5 -> none
    assert ir.tolist() == [0, 3] and ie.tolist() == [0, 1]


def test_path_length_over_matched_span() -> None:
    est_ts, est_poses, gt_ts, gt_poses, _ = make_pair(2, noise=0.01)
    r = ate(est_ts, est_poses, gt_ts, gt_poses)
    span = (gt_ts >= est_ts.min() - 0.011) & (gt_ts <= est_ts.max() + 0.011)
    full = arc_length(gt_poses[span, :3])
    assert 0.95 * full < r.path_length <= full + 1e-12


def test_non_finite_poses_are_dropped() -> None:
    """Frames without ground truth (NaN rows) do not poison the statistics."""
    est_ts, est_poses, gt_ts, gt_poses, _ = make_pair(4, noise=0.02)
    ref = ate(est_ts, est_poses, gt_ts, gt_poses)
    gt_nan = gt_poses.copy()
    gt_nan[::50] = np.nan
    r = ate(est_ts, est_poses, gt_ts, gt_nan)
    assert np.isfinite(r.rmse) and abs(r.rmse - ref.rmse) < 0.2 * ref.rmse
    T = np.tile(np.eye(4), (len(gt_ts), 1, 1))
    T[:, :3, 3] = gt_poses[:, :3]
    assert abs(ate(est_ts, est_poses, gt_ts, T).rmse - ref.rmse) < 1e-12  # [N, 4, 4] input
