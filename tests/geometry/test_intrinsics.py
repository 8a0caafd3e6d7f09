"""Intrinsics from pointmaps: exact on pinhole data, robust to outliers and noise, fused over keyframes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mslam_ns.geometry.intrinsics import (
    IntrinsicsFuser,
    estimate_focal,
    estimate_intrinsics,
    weighted_median,
)


def pinhole_pointmap(fx: float, fy: float, cx: float, cy: float, H: int = 48, W: int = 64, seed: int = 0) -> np.ndarray:
    """Back-project a smooth random depth through K: X [H, W, 3] with pixel centres at integers."""
    rng = np.random.default_rng(seed)
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    z = 2.0 + np.sin(u / 9.0 + rng.uniform(0, 6)) + 0.5 * np.cos(v / 7.0) + rng.uniform(0, 0.3, size=(H, W))
    return np.stack([(u - cx) / fx * z, (v - cy) / fy * z, z], axis=-1)


def test_exact_recovery_shared_focal() -> None:
    X = pinhole_pointmap(71.3, 71.3, 31.5, 23.5)
    assert estimate_focal(X) == pytest.approx(71.3, rel=1e-9)
    fx, fy, cx, cy = estimate_intrinsics(X)
    assert (fx, fy) == pytest.approx((71.3, 71.3), rel=1e-9) and (cx, cy) == (31.5, 23.5)


def test_exact_recovery_with_given_pp_and_torch_input() -> None:
    X = pinhole_pointmap(120.0, 120.0, 30.0, 20.0)
    f = estimate_focal(torch.from_numpy(X).float(), pp=(30.0, 20.0))
    assert f == pytest.approx(120.0, rel=1e-5)  # float32 input


def test_exact_recovery_of_all_four_parameters() -> None:
    X = pinhole_pointmap(80.0, 95.0, 35.2, 20.1)
    fx, fy, cx, cy = estimate_intrinsics(X, fit_pp=True, shared_focal=False)
    np.testing.assert_allclose([fx, fy, cx, cy], [80.0, 95.0, 35.2, 20.1], rtol=1e-8)


def corrupt(X: np.ndarray, outlier_frac: float, noise: float, seed: int = 1) -> np.ndarray:
    """Depth noise along the ray, 3D noise proportional to depth, and gross outliers."""
    rng = np.random.default_rng(seed)
    H, W = X.shape[:2]
    X = X * rng.uniform(0.8, 1.2, size=(H, W, 1))  # depth scaling along the ray: no effect on (x/z, y/z)
    X = X + noise * X[..., 2:3] * rng.normal(size=X.shape)
    out = rng.random((H, W)) < outlier_frac
    X[out] = rng.uniform([-3, -3, 0.5], [3, 3, 5], size=(out.sum(), 3))
    return X


def test_robust_to_outliers_and_noise() -> None:
    f = 90.0
    X = corrupt(pinhole_pointmap(f, f, 31.5, 23.5), outlier_frac=0.10, noise=0.005)
    est = estimate_focal(X)
    assert est == pytest.approx(f, rel=0.005)
    # plain least squares (no re-weighting) is visibly worse: the robustness comes from the fit
    from mslam_ns.geometry.intrinsics import fit_pinhole

    assert abs(fit_pinhole(X, iters=0, refine_iters=0)[0] - f) > 3 * abs(est - f)


def test_outliers_only_with_exact_inliers_are_ignored() -> None:
    X = corrupt(pinhole_pointmap(60.0, 60.0, 31.5, 23.5), outlier_frac=0.10, noise=0.0)
    assert estimate_focal(X, iters=30) == pytest.approx(60.0, rel=1e-4)


@pytest.mark.parametrize("fit_pp", [False, True])
def test_the_fits_early_stops_give_what_more_iterations_give(fit_pp) -> None:
    """Weiszfeld stops once it moves the parameters by < 1e-10 of their size, and the trimmed least squares once
    the same pixels are kept twice: more iterations of either give the same result (the trimmed one exactly)."""
    from mslam_ns.geometry.intrinsics import fit_pinhole

    X = corrupt(pinhole_pointmap(60.0, 62.0, 31.5, 23.5, seed=3), outlier_frac=0.10, noise=0.002)
    kw = dict(fit_pp=fit_pp, shared_focal=False)
    base = fit_pinhole(X, **kw)
    assert base == pytest.approx(fit_pinhole(X, iters=200, **kw), rel=1e-8)
    assert fit_pinhole(X, iters=200, **kw) == fit_pinhole(X, iters=200, refine_iters=50, **kw)
    assert base[0] == pytest.approx(60.0, rel=4e-4) and base[1] == pytest.approx(62.0, rel=4e-4)  # measured 2.6e-4


def test_confidence_downweights_bad_pixels() -> None:
    X = pinhole_pointmap(75.0, 75.0, 31.5, 23.5)
    bad = np.zeros(X.shape[:2], dtype=bool)
    bad[:, :40] = True  # the majority of pixels: only the confidence can save the fit
    X[bad] *= np.array([1.5, 1.0, 1.0])  # a wrong block: x stretched
    C = np.where(bad, 1e-6, 10.0)
    assert estimate_focal(X, C) == pytest.approx(75.0, rel=1e-4)
    assert abs(estimate_focal(X) - 75.0) > 0.5


def test_invalid_points_are_skipped_and_too_few_raise() -> None:
    X = pinhole_pointmap(70.0, 70.0, 31.5, 23.5)
    X[::2, ::3, 2] = -1.0
    X[1, 1] = np.nan
    assert estimate_focal(X) == pytest.approx(70.0, rel=1e-9)
    with pytest.raises(ValueError):
        estimate_focal(np.zeros((8, 8, 3)))


def test_weighted_median() -> None:
    assert weighted_median(np.array([1.0, 2.0, 3.0]), np.array([1.0, 1.0, 1.0])) == 2.0
    assert weighted_median(np.array([1.0, 2.0, 100.0]), np.array([1.0, 5.0, 1.0])) == 2.0
    assert weighted_median(np.array([5.0, 1.0]), np.array([1.0, 10.0])) == 1.0


def test_fuser_rejects_a_bad_keyframe_and_keeps_per_keyframe_values() -> None:
    fuser = IntrinsicsFuser()
    assert fuser.estimate() is None and fuser.K() is None and fuser.per_keyframe() == {}
    for seed in range(4):
        X = corrupt(pinhole_pointmap(88.0, 88.0, 31.5, 23.5, seed=seed), 0.05, 0.003, seed=seed)
        fuser.update(X, np.full(X.shape[:2], 5.0), kf_id=10 + seed)
    fuser.add(400.0, 400.0, 31.5, 23.5, weight=1e4, kf_id=99)  # one wild estimate, heavy but a minority
    fuser.add(np.nan, 1.0, 1.0, 1.0)  # ignored
    assert fuser.count == 5 and sorted(fuser.per_keyframe()) == [10, 11, 12, 13, 99]
    K = fuser.K()
    assert K is not None and K[0, 0] == pytest.approx(88.0, rel=0.01)
    assert K[0, 2] == pytest.approx(31.5, abs=0.3) and K[1, 2] == pytest.approx(23.5, abs=0.3)
    assert fuser.per_keyframe()[99][0, 0] == 400.0
    for reducer in ("median", "robust"):
        est = IntrinsicsFuser(reducer=reducer, samples=dict(fuser.samples)).estimate()
        assert est is not None and est[0] == pytest.approx(88.0, rel=0.01)
    mean = IntrinsicsFuser(reducer="mean", samples=dict(fuser.samples)).estimate()
    assert mean is not None and mean[0] > 100.0  # the mean is pulled; the median and the robust mean are not
    # the same keyframe again replaces its estimate
    fuser.add(300.0, 300.0, 31.5, 23.5, weight=1.0, kf_id=99)
    assert fuser.count == 5 and fuser.per_keyframe()[99][0, 0] == 300.0


def test_fuser_extra_passes_join_the_estimate_but_not_the_keyframes() -> None:
    """Samples of further decoder passes (`extra`, the backend's edge decodes) are fused with the keyframes'
    ones, are not counted as keyframes, and can be left out (`K(extra=False)`, what tracking uses)."""
    fuser = IntrinsicsFuser(reducer="mean")
    fuser.add(100.0, 100.0, 32.0, 24.0, weight=1.0, kf_id=0)
    fuser.add(110.0, 110.0, 34.0, 26.0, weight=3.0, extra=True)
    fuser.update(pinhole_pointmap(88.0, 88.0, 31.5, 23.5), extra=True)
    assert fuser.count == 1 and sorted(fuser.per_keyframe()) == [0] and len(fuser.extra) == 2
    assert fuser.K(extra=False)[0, 0] == pytest.approx(100.0)
    w_img = fuser.extra[1][4]  # the pointmap's sample: weight = its number of valid pixels (no confidence)
    assert fuser.extra[1][0] == pytest.approx(88.0, rel=1e-6)
    assert fuser.K()[0, 0] == pytest.approx((100.0 + 330.0 + 88.0 * w_img) / (4.0 + w_img))
    only_extra = IntrinsicsFuser(extra=[(90.0, 91.0, 30.0, 20.0, 1.0)])
    assert only_extra.count == 0 and only_extra.K()[1, 1] == 91.0 and only_extra.K(extra=False) is None


def test_fit_on_a_spread_subset_of_pixels_recovers_k_and_the_weight() -> None:
    """`max_pixels` (a tracked frame's cheap sample): the fit looks at only that many pixels, spread over the
    whole image (rows and columns), so the principal point stays determined; the weight is scaled back to
    the image's."""
    X = pinhole_pointmap(80.0, 80.0, 33.7, 21.2)
    C = np.random.default_rng(3).uniform(1.0, 3.0, size=X.shape[:2])
    full, sub = IntrinsicsFuser(), IntrinsicsFuser()
    est_full = full.update(X, C, extra=True)
    est_sub = sub.update(X, C, extra=True, max_pixels=500)
    np.testing.assert_allclose(est_sub, est_full, rtol=1e-7)
    np.testing.assert_allclose(est_sub, [80.0, 80.0, 33.7, 21.2], rtol=1e-7)
    assert sub.extra[0][4] == pytest.approx(full.extra[0][4], rel=0.02) and full.extra[0][4] == pytest.approx(C.sum())
    # too few pixels looked at: no sample rather than a guess
    assert IntrinsicsFuser().update(X, C, max_pixels=6) is None


def test_fuser_falls_back_to_the_centre_for_a_degenerate_principal_point() -> None:
    X = pinhole_pointmap(70.0, 70.0, 31.5, 23.5)
    X[..., 0] += 3.0 * X[..., 2]  # rays all shifted sideways: the fitted cx would be far outside the image
    fuser = IntrinsicsFuser()
    est = fuser.update(X, kf_id=0)
    assert est is not None and est[2] == 31.5 and est[3] == 23.5


# ------------------------------------------------------------------- oracle runs with MASt3R-like camera errors
@pytest.fixture(scope="module")
def loop_source(tmp_path_factory):
    from mslam_ns.io.sources import open_source
    from mslam_ns.io.synthetic import generate_sequence

    return open_source(
        generate_sequence(tmp_path_factory.mktemp("intr") / "s", n_frames=60, width=160, height=120, seed=0)
    )


@pytest.mark.parametrize("noise, f_tol, pp_tol", [("mast3r", 0.0035, 0.0035), ("hard", 0.007, 0.01)])
def test_fused_intrinsics_on_oracle_runs(loop_source, noise: str, f_tol: float, pp_tol: float) -> None:
    """Keyframes every 3rd frame, each with the confidence-weighted average of its own view over a mono pass
    and three pair passes as canonical pointmap (as the SLAM fuses it); every pass has its own perturbed
    pinhole (3% / 1% for mast3r, doubled for hard). The fused K, mapped back to the ORIGINAL 160x120 image
    through the crop/scale, is near what was measured (seed 0: focal error 0.23% / 0.47%, principal point
    0.22% / 0.68% of the image size; README.md's oracle section quotes these), far better than one keyframe
    alone."""
    from mslam_ns.model.preprocess import preprocess_image, to_unit_float
    from mslam_ns.prior.oracle import OraclePrior

    src = loop_source
    prior = OraclePrior.from_source(src, size=128, noise=noise, seed=0)
    assert prior.transform.network_size == (128, 96)
    enc = [prior.encode(to_unit_float(preprocess_image(src[i].image, size=128)[0]), i) for i in range(len(src))]
    fuser = IntrinsicsFuser()
    single = []
    for k in range(0, len(src) - 3, 3):
        p = prior.decode_mono(enc[k])
        X, C = p.ii.X * p.ii.C[..., None], p.ii.C.clone()
        for f in (k + 1, k + 2, k + 3):
            q = prior.decode(enc[k], enc[f])
            X += q.ii.X * q.ii.C[..., None]
            C += q.ii.C
        single.append(fuser.update(X / C[..., None], C, kf_id=k))
    assert len(fuser.per_keyframe()) == len(single) == 19
    K_true = src.intrinsics.K
    W, H = src.image_size
    K = prior.transform.K_to_original(fuser.K())
    f_err = abs(K[0, 0] / K_true[0, 0] - 1.0)
    pp_err = max(abs(K[0, 2] - K_true[0, 2]) / W, abs(K[1, 2] - K_true[1, 2]) / H)
    assert f_err < min(f_tol, 0.02) and pp_err < min(pp_tol, 0.02), (f_err, pp_err)
    one = np.array([s[0] for s in single]) / prior.K[0, 0] - 1.0
    assert np.sqrt(np.mean(one**2)) > 3.0 * f_err  # one keyframe: 1.8% / 3.7% RMS
