"""The exported points are in the world frame of the exported poses, pixel for pixel.

A run (`mslam-ns run`, calibrated mode, oracle prior with MASt3R-like noise) writes points.ply (with each
point's keyframe and source pixel) and keyframes.txt. Every point, mapped back through ITS keyframe's
exported pose and projected with the camera's true intrinsics, must land on the pixel it came from, and its
colour must be that pixel of the source frame (pre-processed independently here). Dropping or mixing up a
keyframe pose moves points by many pixels; calibrated fusion keeps each point on its pixel's ray, so the
only error left is float32 rounding (measured 3e-5 px).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mslam_ns.cli import main
from mslam_ns.io.poses import quat_to_matrix
from mslam_ns.io.rundir import RunDir
from mslam_ns.io.sources import open_source
from mslam_ns.io.synthetic import generate_sequence
from mslam_ns.model.preprocess import preprocess_image

W, H, IMG, N = 160, 120, 128, 10


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, RunDir]:
    root = tmp_path_factory.mktemp("points")
    seq = generate_sequence(root / "seq", N, W, H, 0)
    out = root / "out"
    assert main(["run", str(seq), "--out", str(out), "--img-size", str(IMG), "--mode", "calib", "--quiet"]) == 0
    return seq, RunDir(out)


def test_every_point_maps_back_onto_its_own_pixel_with_its_colour(run) -> None:
    seq, rd = run
    source = open_source(seq)
    K = source.intrinsics.K  # the true camera (the synthetic sequence's), in original pixels
    pc = rd.read_points()
    _, kf_rows = rd.read_keyframes()  # [K, 7] tx ty tz qx qy qz qw (T_WC, rigid)
    frames = rd.read_frames()
    summary = rd.read_summary()
    assert summary["lost_frames"] == 0 and summary["keyframes"] == len(kf_rows) >= 3
    ids = sorted(set(pc.keyframe.tolist()))
    assert ids == list(range(len(kf_rows)))  # every keyframe contributes points
    worst = 0.0
    for k in ids:
        m = pc.keyframe == k
        assert m.sum() > 0.5 * (IMG * IMG * 3 // 4)  # most pixels are confident
        t, R = kf_rows[k, :3], quat_to_matrix(kf_rows[k, 3:7][None])[0]
        Xc = (pc.xyz[m].astype(np.float64) - t) @ R  # world -> keyframe camera (scale drops out below)
        assert (Xc[:, 2] > 0).all()
        uv = Xc[:, :2] / Xc[:, 2:] * [K[0, 0], K[1, 1]] + [K[0, 2], K[1, 2]]
        err = np.linalg.norm(uv - pc.uv[m], axis=1)
        worst = max(worst, float(err.max()))
        # colour = the source frame's pixel: the keyframe's frame, pre-processed here on its own
        row = int(np.flatnonzero(frames.is_keyframe & (frames.kf_ids == k))[0])
        net, tf = preprocess_image(source[row].image, size=IMG)
        px = np.asarray(tf.to_network(pc.uv[m].astype(np.float64)))
        ij = np.rint(px).astype(np.int64)
        np.testing.assert_allclose(px, ij, atol=1e-3)  # the recorded pixels are network pixel centres
        np.testing.assert_array_equal(pc.rgb[m], net[ij[:, 1], ij[:, 0]])
    assert worst < 1e-4, f"a point lands {worst:.3g} px from its pixel"


def test_a_wrong_keyframe_pose_is_caught(run) -> None:
    """The check above can fail: with the previous keyframe's pose the points land pixels away."""
    seq, rd = run
    K = open_source(seq).intrinsics.K
    pc = rd.read_points()
    _, kf_rows = rd.read_keyframes()
    k = len(kf_rows) - 1
    m = pc.keyframe == k
    t, R = kf_rows[k - 1, :3], quat_to_matrix(kf_rows[k - 1, 3:7][None])[0]
    Xc = (pc.xyz[m].astype(np.float64) - t) @ R
    uv = Xc[:, :2] / Xc[:, 2:] * [K[0, 0], K[1, 1]] + [K[0, 2], K[1, 2]]
    assert np.median(np.linalg.norm(uv - pc.uv[m], axis=1)) > 1.0
