"""Undistortion maps agree with OpenCV's; a distorted rendering of a pattern is straightened."""

from __future__ import annotations

import numpy as np
import pytest

from mslam_ns.io.frames import Intrinsics
from mslam_ns.io.undistort import Undistorter, distort_normalized

FR1 = Intrinsics(517.3, 516.5, 318.6, 255.3, 640, 480, (0.2624, -0.9531, -0.0054, 0.0026, 1.1633))


def test_maps_match_opencv():
    cv2 = pytest.importorskip("cv2", reason="OpenCV is the reference for the distortion model")
    for intr in (FR1, Intrinsics(458.654, 457.296, 367.215, 248.375, 752, 480,
                                 (-0.28340811, 0.07395907, 0.00019359, 1.76187114e-05))):
        und = Undistorter(intr)
        mx, my = cv2.initUndistortRectifyMap(intr.K, np.array(intr.dist), None, intr.K,
                                             (intr.width, intr.height), cv2.CV_32FC1)
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
