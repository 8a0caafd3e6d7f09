"""Undistortion maps agree with OpenCV's; a distorted rendering of a pattern is straightened."""

from __future__ import annotations

import numpy as np
import pytest

from mslam_ns.io.frames import Intrinsics
from mslam_ns.io.undistort import Undistorter, distort_normalized

FR1 = Intrinsics(517.3, 516.5, 318.6, 255.3, 640, 480, (0.2624, -0.9531, -0.0054, 0.0026, 1.1633))


def test_maps_match_opencv():
    cv2 = pytest.importorskip("cv2", reason="OpenCV is the reference for the distortion model")
    for intr in (
        FR1,
        Intrinsics(458.654, 457.296, 367.215, 248.375, 752, 480, (-0.28340811, 0.07395907, 0.00019359, 1.76187114e-05)),
    ):
        und = Undistorter(intr)
        mx, my = cv2.initUndistortRectifyMap(
            intr.K, np.array(intr.dist), None, intr.K, (intr.width, intr.height), cv2.CV_32FC1
        )
        np.testing.assert_allclose(und.map_u, mx, atol=2e-3)
        np.testing.assert_allclose(und.map_v, my, atol=2e-3)
        assert und.intrinsics.dist == () and und.intrinsics.fx == intr.fx


def test_undistort_image_and_depth_inverts_distortion():
    # a smooth image defined on undistorted normalised coordinates, "photographed" through the lens
    intr = FR1
    v, u = np.mgrid[0 : intr.height, 0 : intr.width].astype(np.float64)
    x, y = (u - intr.cx) / intr.fx, (v - intr.cy) / intr.fy

    def pattern(xn, yn):
        return 128 + 100 * np.sin(6 * xn) * np.cos(5 * yn)

    # invert the distortion for each raw pixel by fixed-point iteration (independent of the Undistorter)
    xu, yu = x.copy(), y.copy()
    for _ in range(30):
        xd, yd = distort_normalized(xu, yu, intr.dist)
        xu, yu = xu + (x - xd), yu + (y - yd)
    raw = pattern(xu, yu).astype(np.float32)
    und = Undistorter(intr)
    out = und.image(raw[..., None])[..., 0]
    inner = (np.abs(x) < 0.45) & (np.abs(y) < 0.35)
    np.testing.assert_allclose(out[inner], pattern(x, y)[inner], atol=0.5)
    rgb = np.repeat(raw[..., None], 3, axis=2).astype(np.uint8)
    assert und.image(rgb).dtype == np.uint8
    d = und.depth(np.full((intr.height, intr.width), 2.0, np.float32))
    assert d[inner].min() == 2.0 and d.dtype == np.float32


def test_undistorted_source_remaps_images_and_depth_only(tmp_path):
    from mslam_ns.io.sources import open_source
    from mslam_ns.io.synthetic import generate_sequence
    from mslam_ns.io.undistort import UndistortedSource, undistorted

    seq = generate_sequence(tmp_path / "seq", 4, 96, 72, 0)
    src = open_source(seq)
    assert undistorted(src) is src  # a pinhole camera is left alone
    intr = src.intrinsics
    calib = tmp_path / "calib.txt"
    calib.write_text(f"{intr.fx} {intr.fy} {intr.cx} {intr.cy} 0.1 -0.05 0.001 0.001\n")
    src_d = open_source(seq, calib=calib)
    view = undistorted(src_d)
    assert isinstance(view, UndistortedSource)
    assert view.intrinsics.dist == () and src_d.intrinsics.has_distortion
    und = Undistorter(src_d.intrinsics)
    f_raw, f = src_d[2], view[2]
    assert (f.index, f.timestamp, f.name) == (f_raw.index, f_raw.timestamp, f_raw.name)
    np.testing.assert_array_equal(f.image, und.image(f_raw.image))
    assert not np.array_equal(f.image, f_raw.image)
    np.testing.assert_array_equal(view.depth(2), und.depth(src_d.depth(2)))
    assert len(view) == len(src_d) and view.gt_poses is src_d.gt_poses
