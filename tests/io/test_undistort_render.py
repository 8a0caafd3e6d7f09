"""Undistortion proven on frames rendered through a known lens (images AND depth), end to end.

* The renderer: a frame rendered through the lens, undistorted by `Undistorter`, is the pinhole frame
  (colour and depth) wherever the lens saw the scene; OpenCV's remap of the same frame with OpenCV's own maps
  (`initUndistortRectifyMap`) gives the same image.
* The SLAM: on a sequence rendered through the lens, a run that knows the distortion (calibration file with
  the coefficients: frames undistorted before the SLAM) has nearly the pinhole run's ATE and intrinsics; a
  run that ignores the distortion is measurably worse.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from mslam_ns.io.synth_scene import SyntheticRoom, default_intrinsics
from mslam_ns.io.synth_trajectory import make_trajectory
from mslam_ns.io.undistort import Undistorter

W, H = 160, 120
DIST = (-0.28, 0.09, 0.0015, -0.001, 0.0)  # barrel: ~9 px at the corners of a 160x120 frame (f = 131 px)


def _lens() -> tuple:
    pin = default_intrinsics(W, H)
    return pin, dataclasses.replace(pin, dist=DIST)


def test_distorted_rendering_undistorts_to_the_pinhole_rendering() -> None:
    pin, lens = _lens()
    room = SyntheticRoom(0)
    T = make_trajectory(30).poses[4]
    rgb_pin, depth_pin = room.render(T, pin)
    rgb_d, depth_d = room.render(T, lens)
    und = Undistorter(lens)
    assert float(np.abs(und.map_u - np.arange(W)[None]).max()) > 8  # the lens really moves pixels
    rgb_u, depth_u = und.image(rgb_d), und.depth(depth_d)
    seen = (und.map_u >= 1) & (und.map_u <= W - 2) & (und.map_v >= 1) & (und.map_v <= H - 2)
    # depth: nearest-neighbour remap; smooth surfaces, so the error is the depth change over <= 0.5 px
    rel = np.abs(depth_u - depth_pin)[seen] / depth_pin[seen]
    assert np.median(rel) < 2e-3 and np.percentile(rel, 95) < 0.02, (np.median(rel), np.percentile(rel, 95))
    # colour: bilinear resampling of a textured image; compare the mean absolute difference
    diff = np.abs(rgb_u.astype(np.int16) - rgb_pin.astype(np.int16))[seen]
    ref = np.abs(rgb_d.astype(np.int16) - rgb_pin.astype(np.int16))[seen]  # ignoring the lens
    assert diff.mean() < 0.35 * ref.mean(), (diff.mean(), ref.mean())


def test_undistortion_of_a_rendered_frame_matches_opencv() -> None:
    cv2 = pytest.importorskip("cv2", reason="OpenCV (opencv-python-headless, the dev extra) is the reference")
    _, lens = _lens()
    rgb_d, depth_d = SyntheticRoom(0).render(make_trajectory(30).poses[9], lens)
    und = Undistorter(lens)
    mx, my = cv2.initUndistortRectifyMap(lens.K, np.array(lens.dist), None, lens.K, (W, H), cv2.CV_32FC1)
    np.testing.assert_allclose(und.map_u, mx, atol=2e-3)
    np.testing.assert_allclose(und.map_v, my, atol=2e-3)
    ref = cv2.remap(rgb_d, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    ours = und.image(rgb_d)
    inner = (mx >= 1) & (mx <= W - 2) & (my >= 1) & (my <= H - 2)
    d = np.abs(ours.astype(np.int16) - ref.astype(np.int16))[inner]
    assert d.max() <= 3 and d.mean() < 0.2, (d.max(), d.mean())  # OpenCV interpolates in fixed point (measured 3, 0.14)
    ref_d = cv2.remap(depth_d, np.rint(mx), np.rint(my), cv2.INTER_NEAREST)
    np.testing.assert_array_equal(und.depth(depth_d)[inner], ref_d[inner])


# ---------------------------------------------------------------------------------------------- the SLAM
N_FRAMES, IMG = 10, 128


def _run(seq: Path, calib: Path | None = None) -> tuple[float, np.ndarray]:
    """(ATE RMSE of all frames in metres, estimated intrinsics [3, 3] in original pixels) of one run."""
    from mslam_ns.config import SlamConfig
    from mslam_ns.eval.ate import ate
    from mslam_ns.io.sources import open_source
    from mslam_ns.io.undistort import undistorted
    from mslam_ns.prior.oracle import OraclePrior
    from mslam_ns.slam.system import SlamSystem

    source = undistorted(open_source(seq, calib=calib))
    prior = OraclePrior.from_source(source, size=IMG, noise="none", seed=0)
    system = SlamSystem(prior, SlamConfig(img_size=IMG, mode="rays"))
    system.run(source)
    ts, _, T_WC = system.frame_poses()
    gt = source.gt_poses
    res = ate(ts.numpy(), T_WC.double().numpy()[:, :7], source.timestamps, gt)
    return res.rmse, system.intrinsics()


def test_slam_through_a_lens_matches_pinhole_and_ignoring_it_is_worse(tmp_path: Path) -> None:
    from mslam_ns.io.synthetic import generate_sequence

    pin_seq = generate_sequence(tmp_path / "pinhole", N_FRAMES, W, H, 0)
    lens_seq = generate_sequence(tmp_path / "lens", N_FRAMES, W, H, 0, dist=DIST)
    assert "-0.28 0.09" in (lens_seq / "calibration.txt").read_text()
    ignore = tmp_path / "pinhole_calib.txt"  # the same camera without its distortion coefficients
    ignore.write_text((pin_seq / "calibration.txt").read_text())

    ate_pin, K_pin = _run(pin_seq)
    ate_lens, K_lens = _run(lens_seq)
    ate_ignored, _ = _run(lens_seq, calib=ignore)
    K_true = default_intrinsics(W, H).K
    print(f"ATE pinhole {ate_pin:.5f} m, undistorted {ate_lens:.5f} m, distortion ignored {ate_ignored:.5f} m")
    np.testing.assert_allclose(K_pin, K_true, rtol=5e-3)
    np.testing.assert_allclose(K_lens, K_pin, rtol=5e-3)  # same camera after undistortion
    # measured (noise-free oracle, 10 frames): pinhole 0.0149 m, undistorted 0.0131 m, ignored 0.0701 m
    assert ate_lens < 1.3 * ate_pin
    assert ate_ignored > 3.5 * ate_lens
