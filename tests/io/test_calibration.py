"""Calibration files (text and YAML) -> Intrinsics; bad files -> one-line UserError naming the file."""

from __future__ import annotations

import numpy as np
import pytest

from mslam_ns.cli import UserError
from mslam_ns.io.calibration import load_calibration, tum_default_intrinsics
from mslam_ns.io.frames import Intrinsics

from .conftest import assert_one_line_error


def test_text_four_values(tmp_path):
    p = tmp_path / "calib.txt"
    p.write_text("# pinhole\n500 510 320.5 240.25\n")
    intr = load_calibration(p)
    assert intr == Intrinsics(500.0, 510.0, 320.5, 240.25, 0, 0, ())
    np.testing.assert_array_equal(intr.K, [[500, 0, 320.5], [0, 510, 240.25], [0, 0, 1]])
    assert not intr.has_distortion


def test_text_with_size_line_and_distortion(tmp_path):
    p = tmp_path / "calibration.txt"
    p.write_text("640 480\n517.3, 516.5, 318.6, 255.3, 0.2624, -0.9531, -0.0054, 0.0026, 1.1633\n")
    intr = load_calibration(p)
    assert (intr.width, intr.height) == (640, 480)
    assert intr.dist == (0.2624, -0.9531, -0.0054, 0.0026, 1.1633)
    assert intr.has_distortion


def test_yaml_mast3r_slam_style(tmp_path):
    p = tmp_path / "intrinsics.yaml"
    p.write_text(
        "width: 640\nheight: 480\n# fx fy cx cy k1 k2 p1 p2\n"
        "calibration: [535.4, 539.2, 320.1, 247.6, 0.1, 0.0, 0.0, 0.0]\n"
    )
    intr = load_calibration(p)
    assert (intr.fx, intr.fy, intr.cx, intr.cy, intr.width, intr.height) == (535.4, 539.2, 320.1, 247.6, 640, 480)
    assert intr.dist == (0.1, 0.0, 0.0, 0.0)


def test_yaml_euroc_sensor_style(tmp_path):
    p = tmp_path / "sensor.yaml"
    p.write_text(
        "sensor_type: camera\nresolution: [752, 480]\ncamera_model: pinhole\n"
        "intrinsics: [458.654, 457.296, 367.215, 248.375] #fu, fv, cu, cv\n"
        "distortion_model: radial-tangential\n"
        "distortion_coefficients: [-0.28340811, 0.07395907, 0.00019359, 1.76187114e-05]\n"
    )
    intr = load_calibration(p)
    assert (intr.width, intr.height) == (752, 480)
    assert intr.fx == 458.654 and intr.cy == 248.375
    assert len(intr.dist) == 4


@pytest.mark.parametrize(
    "content, needle",
    [
        ("", "empty calibration file"),
        ("500 500 320\n", "got 3"),
        ("500 500 320 240 0.1\n", "got 5"),
        ("500 abc 320 240\n", "line 1: not a number"),
        ("-500 500 320 240\n", "focal lengths must be positive"),
        ("calibration: [1, 2\n", "invalid YAML"),
        ("foo: 1\n", "no 'calibration' or 'intrinsics'"),
        ("calibration: [a, b, c, d]\n", "lists of numbers"),
        ("1 2 3 4\n5 6 7 8\n", "expected one line"),
    ],
)
def test_bad_calibration_files(tmp_path, content, needle):
    p = tmp_path / "bad_calib.txt"
    p.write_text(content)
    with pytest.raises(UserError) as e:
        load_calibration(p)
    assert_one_line_error(e.value, str(p), needle)


def test_missing_calibration_file(tmp_path):
    with pytest.raises(UserError) as e:
        load_calibration(tmp_path / "nope.yaml")
    assert_one_line_error(e.value, "nope.yaml", "not found")


def test_tum_defaults_from_folder_name():
    fr1 = tum_default_intrinsics("rgbd_dataset_freiburg1_desk")
    assert fr1 is not None and fr1.fx == 517.3 and len(fr1.dist) == 5
    fr3 = tum_default_intrinsics("fr3_office")
    assert fr3 is not None and fr3.fx == 535.4 and fr3.dist == ()
    assert tum_default_intrinsics("rgbd_dataset_freiburg2_xyz").fx == 520.9
    assert tum_default_intrinsics("my_sequence") is None
