"""Frame sources built in tmp_path: image folders, video (PyAV), TUM RGB-D, EuRoC, 7-Scenes."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from mslam_ns.cli import UserError
from mslam_ns.io.images import natural_key
from mslam_ns.io.poses import matrix_to_pose7, pose7_to_matrix, quat_to_matrix
from mslam_ns.io.sources import (
    EurocSource,
    ImageFolderSource,
    SevenScenesSource,
    TumRgbdSource,
    VideoSource,
    open_source,
)
from mslam_ns.io.sources.folder import timestamps_from_names

from .conftest import assert_one_line_error, save_depth16, save_rgb


# -- image folders ---------------------------------------------------------------------------------------------
def test_natural_sort():
    names = ["img10.png", "img2.png", "IMG1.png", "img2b.png", "img100.png", "a.png"]
    assert sorted(names, key=natural_key) == ["a.png", "IMG1.png", "img2.png", "img2b.png", "img10.png", "img100.png"]


def test_image_folder_order_names_and_pixels(tmp_path):
    written = {i: save_rgb(tmp_path / f"img{i}.png", i) for i in (10, 2, 1)}
    (tmp_path / "notes.txt").write_text("ignored")
    src = open_source(tmp_path)
    assert isinstance(src, ImageFolderSource)
    assert len(src) == 3
    assert src.names == ["img1.png", "img2.png", "img10.png"]
    np.testing.assert_allclose(src.timestamps, [0, 1 / 30, 2 / 30])
    frames = list(src)
    assert [f.index for f in frames] == [0, 1, 2]
    np.testing.assert_array_equal(frames[2].image, written[10])
    assert frames[2].image.dtype == np.uint8 and frames[2].image.shape == (6, 8, 3)
    assert src[-1].name == "img10.png"
    assert src.intrinsics is None and src.gt_poses is None and src.depth(0) is None
    assert src.image_size == (8, 6)
    with pytest.raises(IndexError):
        src[3]


def test_image_folder_stride_and_max_frames(tmp_path):
    for i in range(10):
        save_rgb(tmp_path / f"f_{i:03d}.jpg", i * 20)
    src = open_source(tmp_path, stride=3, max_frames=3)
    assert src.names == ["f_000.jpg", "f_003.jpg", "f_006.jpg"]
    np.testing.assert_allclose(src.timestamps, [0, 3 / 30, 6 / 30])
    assert [f.index for f in src] == [0, 1, 2]


def test_image_modes_converted_to_rgb(tmp_path):
    gray = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    Image.fromarray(gray, mode="L").save(tmp_path / "0.png")
    rgba = np.zeros((6, 8, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 10
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "1.png")
    g16 = np.full((6, 8), 65535, np.uint16)
    g16[0, 0] = 257 * 100
    Image.fromarray(g16).save(tmp_path / "2.png")
    Image.fromarray(gray, mode="L").convert("P").save(tmp_path / "3.bmp")
    Image.fromarray(np.stack([gray] * 3, -1)).save(tmp_path / "4.tif")
    Image.fromarray(np.stack([gray] * 3, -1)).save(tmp_path / "5.webp", lossless=True)
    src = open_source(tmp_path)
    imgs = [f.image for f in src]
    for im in imgs:
        assert im.shape == (6, 8, 3) and im.dtype == np.uint8
    np.testing.assert_array_equal(imgs[0], np.stack([gray] * 3, -1))
    np.testing.assert_array_equal(imgs[1][..., 0], 200)  # alpha dropped, not premultiplied
    assert imgs[2][0, 0, 0] == 100 and imgs[2][1, 1, 1] == 255  # 16-bit scaled to 8-bit
    np.testing.assert_array_equal(imgs[3], imgs[0])
    np.testing.assert_array_equal(imgs[4], imgs[0])
    np.testing.assert_array_equal(imgs[5], imgs[0])


def test_timestamps_from_names():
    np.testing.assert_allclose(
        timestamps_from_names(["1305031102.175304", "1305031102.211214"]), [1305031102.175304, 1305031102.211214]
    )
    np.testing.assert_allclose(
        timestamps_from_names(["1403636579763555584", "1403636579813555456"]),
        [1403636579.763555584, 1403636579.813555456],
    )
    np.testing.assert_allclose(timestamps_from_names(["0001", "0002", "0003"]), [0, 1 / 30, 2 / 30])
    np.testing.assert_allclose(timestamps_from_names(["2.5", "1.5"]), [0, 1 / 30])  # not increasing -> index


def test_image_folder_timestamps_from_file_names(tmp_path):
    for t in ("1305031102.175304", "1305031102.211214", "1305031102.243211"):
        save_rgb(tmp_path / f"{t}.png", 1)
    src = open_source(tmp_path)
    np.testing.assert_allclose(src.timestamps, [1305031102.175304, 1305031102.211214, 1305031102.243211])


def test_calib_file_applied_and_size_filled(tmp_path):
    for i in range(2):
        save_rgb(tmp_path / "imgs" / f"{i}.png", i)
    calib = tmp_path / "calib.txt"
    calib.write_text("100 101 3.5 2.5\n")
    src = open_source(tmp_path / "imgs", calib=calib)
    intr = src.intrinsics
    assert (intr.fx, intr.fy, intr.cx, intr.cy, intr.width, intr.height) == (100, 101, 3.5, 2.5, 8, 6)
    calib.write_text("640 480\n100 101 3.5 2.5\n")
    with pytest.raises(UserError) as e:
        open_source(tmp_path / "imgs", calib=calib)
    assert_one_line_error(e.value, "calib.txt", "640x480", "8x6")


# -- video -----------------------------------------------------------------------------------------------------
def _encode_video(path, n=12, size=(64, 48), codec="libx264", pts_ms=None):
    """Encode n frames whose red channel is 20 * k; with pts_ms, frames get those timestamps (milliseconds)."""
    av = pytest.importorskip("av", reason="PyAV (the video extra) is needed for the video tests")
    w, h = size
    c = av.open(str(path), "w")
    s = c.add_stream(codec, rate=30)
    s.width, s.height, s.pix_fmt = w, h, "yuv420p"
    if pts_ms is not None:
        s.codec_context.time_base = Fraction(1, 1000)
    for k in range(n):
        img = np.zeros((h, w, 3), np.uint8)
        img[..., 0] = (20 * k) % 256
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        if pts_ms is not None:
            frame.pts, frame.time_base = pts_ms[k], Fraction(1, 1000)
        for p in s.encode(frame):
            c.mux(p)
    for p in s.encode():
        c.mux(p)
    c.close()


def _red_level(img):
    return float(img[..., 0].mean())


def test_video_frames_timestamps_and_random_access(tmp_path):
    path = tmp_path / "clip.mp4"
    _encode_video(path)
    src = open_source(path)
    assert isinstance(src, VideoSource)
    assert len(src) == 12 and src.image_size == (64, 48)
    np.testing.assert_allclose(src.timestamps, np.arange(12) / 30, atol=1e-6)
    assert src.names[:2] == ["frame_000000", "frame_000001"]
    levels = [_red_level(f.image) for f in src]
    np.testing.assert_allclose(levels, 20 * np.arange(12), atol=6)  # lossy codec: a few levels off
    # backwards / random access decodes again from the start and gives the same frame
    np.testing.assert_allclose(_red_level(src[3].image), 60, atol=6)
    np.testing.assert_array_equal(src[5].image, src[5].image)
    np.testing.assert_allclose(_red_level(src[1].image), 20, atol=6)


def test_video_real_timestamps_and_stride(tmp_path):
    pts = [0, 40, 70, 120, 150, 210, 240, 300]
    path = tmp_path / "vfr.mkv"
    _encode_video(path, n=len(pts), pts_ms=pts)
    src = open_source(path, stride=2)
    np.testing.assert_allclose(src.timestamps, np.array(pts[::2]) / 1000, atol=1e-6)
    assert src.names == ["frame_000000", "frame_000002", "frame_000004", "frame_000006"]
    np.testing.assert_allclose([_red_level(f.image) for f in src], [0, 40, 80, 120], atol=6)


def test_video_display_rotation_applied(tmp_path):
    av = pytest.importorskip("av", reason="PyAV (the video extra) is needed for the video tests")
    path = tmp_path / "phone.mp4"
    c = av.open(str(path), "w")
    s = c.add_stream("libx264", rate=30)
    s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
    if not hasattr(s, "set_display_rotation"):
        pytest.skip("this PyAV cannot write a display rotation")
    s.set_display_rotation(90)  # counter-clockwise, as phones record portrait video
    for _ in range(3):
        img = np.zeros((48, 64, 3), np.uint8)
        img[:16, :24, 0] = 255  # red block at the top-left of the stored frame
        for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
            c.mux(p)
    for p in s.encode():
        c.mux(p)
    c.close()
    src = open_source(path)
    assert src.image_size == (48, 64)
    im = src[0].image
    assert im.shape == (64, 48, 3)
    ys, xs = np.nonzero(im[..., 0] > 128)
    # rotating the stored frame 90 degrees counter-clockwise moves its top-left corner to the bottom-left
    assert ys.min() >= 64 - 24 - 2 and xs.max() <= 16 + 2


# -- TUM RGB-D ---------------------------------------------------------------------------------------------------
def _make_tum(root, n=4, with_calib=False):
    """A tiny TUM sequence: frames every 1/30 s, depth 3 ms later, GT at 100 Hz moving along x at 1 m/s."""
    root.mkdir(parents=True)
    t0 = 1305031102.0
    ts = t0 + np.arange(n) / 30
    rgb_lines, depth_lines = ["# color images", "# timestamp filename"], ["# depth"]
    for k, t in enumerate(ts):
        save_rgb(root / "rgb" / f"{t:.6f}.png", k)
        rgb_lines.append(f"{t:.6f} rgb/{t:.6f}.png")
        if k != 2:  # frame 2 has no depth
            td = t + 0.003
            save_depth16(root / "depth" / f"{td:.6f}.png", np.full((6, 8), 5000 * (k + 1)))
            depth_lines.append(f"{td:.6f} depth/{td:.6f}.png")
    (root / "rgb.txt").write_text("\n".join(rgb_lines) + "\n")
    (root / "depth.txt").write_text("\n".join(depth_lines) + "\n")
    gt_t = t0 - 0.05 + np.arange(int((n / 30 + 0.05) * 100)) * 0.01  # 100 Hz, ends before the last frame + 0.02
    q = matrix_to_pose7(np.eye(4))[3:]
    rows = ["# timestamp tx ty tz qx qy qz qw"] + [
        f"{t:.6f} {t - t0:.6f} 0.5 1.0 " + " ".join(f"{v:.6f}" for v in q) for t in gt_t
    ]
    (root / "groundtruth.txt").write_text("\n".join(rows) + "\n")
    if with_calib:
        (root / "calibration.txt").write_text("8 6\n10 11 3.5 2.5\n")
    return ts, gt_t


def test_tum_rgbd_source(tmp_path):
    root = tmp_path / "rgbd_dataset_freiburg1_xyz"
    ts, gt_t = _make_tum(root, n=5)
    # drop GT beyond frame 3 so that the last frame has no GT within 0.02 s
    lines = (root / "groundtruth.txt").read_text().splitlines()
    keep = [ln for ln in lines if ln.startswith("#") or float(ln.split()[0]) < ts[3] + 0.011]
    (root / "groundtruth.txt").write_text("\n".join(keep) + "\n")
    src = open_source(root)
    assert isinstance(src, TumRgbdSource)
    assert len(src) == 5 and src.depth_scale == 5000
    np.testing.assert_allclose(src.timestamps, ts)
    assert src.names[0] == f"{ts[0]:.6f}.png"
    assert src.intrinsics is None  # the fr1 defaults are for 640x480 frames only
    d = src.depth(1)
    assert d.dtype == np.float32 and d.shape == (6, 8)
    np.testing.assert_allclose(d, 2.0)  # 10000 / 5000
    assert src.depth(2) is None
    gt = src.gt_poses
    assert gt.shape == (5, 4, 4)
    # GT is x = t - t0 at 100 Hz: interpolated exactly at the frame times
    np.testing.assert_allclose(gt[:4, 0, 3], ts[:4] - ts[0] + 0.0, atol=1e-6)
    np.testing.assert_allclose(gt[:4, 1:3, 3], [[0.5, 1.0]] * 4)
    np.testing.assert_allclose(gt[:4, :3, :3], np.broadcast_to(np.eye(3), (4, 3, 3)), atol=1e-9)
    assert np.isnan(gt[4]).all()


def test_tum_calibration_txt_overrides_defaults(tmp_path):
    root = tmp_path / "rgbd_dataset_freiburg1_xyz"
    _make_tum(root, with_calib=True)
    src = open_source(root, stride=3)
    assert (src.intrinsics.fx, src.intrinsics.cx) == (10, 3.5)
    assert len(src) == 2 and src.gt_poses.shape == (2, 4, 4)
    np.testing.assert_allclose(src.depth(1), 4.0)  # full-list frame 3: 20000 / 5000


def test_tum_default_intrinsics_for_full_size_frames(tmp_path):
    root = tmp_path / "rgbd_dataset_freiburg2_desk"
    root.mkdir()
    lines = []
    for k in range(2):
        save_rgb(root / "rgb" / f"{k}.png", k, size=(640, 480))
        lines.append(f"{k / 30:.6f} rgb/{k}.png")
    (root / "rgb.txt").write_text("\n".join(lines) + "\n")
    src = open_source(root)
    intr = src.intrinsics
    assert (intr.fx, intr.fy, intr.cx, intr.cy, intr.width, intr.height) == (520.9, 521.0, 325.1, 249.7, 640, 480)
    assert src.gt_poses is None and src.depth(0) is None and src.depth_scale is None


def test_tum_unknown_folder_has_no_intrinsics(tmp_path):
    _make_tum(tmp_path / "my_seq")
    assert open_source(tmp_path / "my_seq").intrinsics is None


# -- EuRoC -----------------------------------------------------------------------------------------------------
def _rot_z(deg):
    a = np.radians(deg)
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1.0]])


def test_euroc_source(tmp_path):
    seq = tmp_path / "MH_01_easy"
    cam = seq / "mav0" / "cam0"
    (cam / "data").mkdir(parents=True)
    t_ns = [1403636579763555584 + k * 50_000_000 for k in range(3)]
    for k, t in enumerate(t_ns):
        Image.fromarray(np.full((6, 8), 10 * k, np.uint8), mode="L").save(cam / "data" / f"{t}.png")
    (cam / "data.csv").write_text("#timestamp [ns],filename\n" + "".join(f"{t},{t}.png\n" for t in t_ns))
    T_BS = np.eye(4)
    T_BS[:3, :3] = _rot_z(90)
    T_BS[:3, 3] = [0.1, -0.2, 0.05]
    (cam / "sensor.yaml").write_text(
        "sensor_type: camera\nT_BS:\n  cols: 4\n  rows: 4\n  data: [" + ", ".join(f"{v}" for v in T_BS.ravel()) + "]\n"
        "rate_hz: 20\nresolution: [8, 6]\ncamera_model: pinhole\nintrinsics: [4.5, 4.6, 3.5, 2.5]\n"
        "distortion_model: radial-tangential\ndistortion_coefficients: [-0.28, 0.07, 0.0002, 0.00002]\n"
    )
    gt_dir = seq / "mav0" / "state_groundtruth_estimate0"
    gt_dir.mkdir()
    q_wb = matrix_to_pose7(np.block([[_rot_z(30), np.zeros((3, 1))], [np.zeros((1, 3)), np.ones((1, 1))]]))[3:]
    rows = ["#timestamp, p_RS_R_x [m], p_RS_R_y [m], p_RS_R_z [m], q_RS_w [], q_RS_x [], q_RS_y [], q_RS_z [], v..."]
    for k in range(-2, 12):  # 200 Hz, covering the first two frames only
        t = t_ns[0] + k * 5_000_000
        x = k * 0.005
        rows.append(f"{t},{x},1.0,2.0,{q_wb[3]},{q_wb[0]},{q_wb[1]},{q_wb[2]},0,0,0,0,0,0,0,0,0")
    (gt_dir / "data.csv").write_text("\n".join(rows) + "\n")

    for path in (seq, seq / "mav0"):
        src = open_source(path)
        assert isinstance(src, EurocSource)
        assert src.name == "MH_01_easy"
        np.testing.assert_allclose(src.timestamps, np.array(t_ns) * 1e-9)
        np.testing.assert_array_equal(src[1].image, np.full((6, 8, 3), 10, np.uint8))
        assert src.names[0] == f"{t_ns[0]}.png"
        intr = src.intrinsics
        assert (intr.fx, intr.cy, intr.width, intr.height) == (4.5, 2.5, 8, 6) and len(intr.dist) == 4
        gt = src.gt_poses
        T_WB = np.eye(4)
        T_WB[:3, :3] = _rot_z(30)
        T_WB[:3, 3] = [0.0, 1.0, 2.0]
        np.testing.assert_allclose(gt[0], T_WB @ T_BS, atol=1e-9)
        T_WB[:3, 3] = [0.05, 1.0, 2.0]  # frame 1 is 50 ms later = 10 GT samples of 5 mm
        np.testing.assert_allclose(gt[1], T_WB @ T_BS, atol=1e-9)
        assert np.isnan(gt[2]).all()


# -- 7-Scenes --------------------------------------------------------------------------------------------------
def _make_7scenes_seq(seq, n=3):
    poses = []
    for k in range(n):
        save_rgb(seq / f"frame-{k:06d}.color.png", k)
        raw = np.full((6, 8), 1000 + 500 * k)
        raw[0, 0] = 65535
        save_depth16(seq / f"frame-{k:06d}.depth.png", raw)
        T = np.eye(4)
        T[:3, :3] = _rot_z(10 * k)
        T[:3, 3] = [k, 0, 0]
        np.savetxt(seq / f"frame-{k:06d}.pose.txt", T)
        poses.append(T)
    return np.stack(poses)


def test_seven_scenes_source(tmp_path):
    poses = _make_7scenes_seq(tmp_path / "chess" / "seq-01")
    for path in (tmp_path / "chess", tmp_path / "chess" / "seq-01"):
        src = open_source(path)
        assert isinstance(src, SevenScenesSource)
        assert src.names == ["frame-000000.color.png", "frame-000001.color.png", "frame-000002.color.png"]
        np.testing.assert_allclose(src.timestamps, [0, 1 / 30, 2 / 30])
        d = src.depth(1)
        assert d[0, 0] == 0.0  # 65535 = invalid
        np.testing.assert_allclose(d[1:, 1:], 1.5)
        np.testing.assert_allclose(src.gt_poses, poses, atol=1e-12)
        intr = src.intrinsics
        assert (intr.fx, intr.fy, intr.cx, intr.cy, intr.width, intr.height) == (585, 585, 320, 240, 8, 6)
        assert src.depth_scale == 1000


def test_seven_scenes_scene_with_two_sequences_is_ambiguous(tmp_path):
    _make_7scenes_seq(tmp_path / "chess" / "seq-01")
    _make_7scenes_seq(tmp_path / "chess" / "seq-02")
    with pytest.raises(UserError) as e:
        open_source(tmp_path / "chess")
    assert_one_line_error(e.value, "chess", "seq-01, seq-02", "pass one of them")


def test_gt_round_trip_through_pose7():
    rng = np.random.default_rng(5)
    T = np.tile(np.eye(4), (10, 1, 1))
    T[:, :3, :3] = quat_to_matrix(rng.normal(size=(10, 4)))
    T[:, :3, 3] = rng.normal(size=(10, 3))
    np.testing.assert_allclose(pose7_to_matrix(matrix_to_pose7(T)), T, atol=1e-12)
