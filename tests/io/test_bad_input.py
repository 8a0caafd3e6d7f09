"""Bad input -> one-line UserError naming the offending file (no traceback text, nothing written)."""

from __future__ import annotations

import numpy as np
import pytest

from mslam_ns.cli import UserError, main
from mslam_ns.io.sources import open_source

from .conftest import assert_one_line_error, save_rgb


def _err(path, **kw) -> UserError:
    with pytest.raises(UserError) as e:
        open_source(path, **kw)
    return e.value


def test_missing_path(tmp_path):
    assert_one_line_error(_err(tmp_path / "nothing_here"), "nothing_here", "no such file or folder")


def test_unknown_file_type(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("hello")
    assert_one_line_error(_err(p), "notes.txt", "unknown input type")


def test_single_image_file(tmp_path):
    save_rgb(tmp_path / "one.png", 1)
    assert_one_line_error(_err(tmp_path / "one.png"), "one.png", "at least 2 frames")


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_one_line_error(_err(tmp_path / "empty"), "empty", "empty folder")


def test_folder_of_non_images(tmp_path):
    d = tmp_path / "docs"
    d.mkdir()
    (d / "a.txt").write_text("x")
    (d / "b.csv").write_text("y")
    assert_one_line_error(_err(d), "docs", "no images")


def test_corrupt_image_named(tmp_path):
    save_rgb(tmp_path / "img1.png", 1)
    (tmp_path / "img2.png").write_bytes(b"definitely not a png")
    save_rgb(tmp_path / "img3.png", 3)
    assert_one_line_error(_err(tmp_path), "img2.png", "not an image")


def test_truncated_image_named_when_read(tmp_path):
    for i in range(3):
        save_rgb(tmp_path / f"img{i}.png", i, size=(64, 48))
    data = (tmp_path / "img1.png").read_bytes()
    (tmp_path / "img1.png").write_bytes(data[: len(data) // 2])  # header intact, pixel data cut
    src = open_source(tmp_path)
    with pytest.raises(UserError) as e:
        src[1]
    assert_one_line_error(e.value, "img1.png")


def test_fewer_than_two_frames(tmp_path):
    save_rgb(tmp_path / "only.png", 1)
    assert_one_line_error(_err(tmp_path), str(tmp_path), "only 1 frame", "at least 2")
    save_rgb(tmp_path / "second.png", 2)
    assert_one_line_error(_err(tmp_path, max_frames=1), "only 1 frame")


def test_mixed_resolutions_name_first_offender(tmp_path):
    save_rgb(tmp_path / "img1.png", 1, size=(8, 6))
    save_rgb(tmp_path / "img2.png", 2, size=(8, 6))
    save_rgb(tmp_path / "img3.png", 3, size=(10, 6))
    save_rgb(tmp_path / "img4.png", 4, size=(12, 6))
    e = _err(tmp_path)
    assert_one_line_error(e, "img3.png", "10x6", "8x6")
    assert "img4.png" not in str(e)


def test_bad_stride(tmp_path):
    for i in range(3):
        save_rgb(tmp_path / f"{i}.png", i)
    assert_one_line_error(_err(tmp_path, stride=0), "stride")


def test_corrupt_video(tmp_path):
    pytest.importorskip("av", reason="PyAV (the video extra) is needed for the video tests")
    p = tmp_path / "broken.mp4"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    assert_one_line_error(_err(p), "broken.mp4", "video")


def test_empty_video_file(tmp_path):
    pytest.importorskip("av", reason="PyAV (the video extra) is needed for the video tests")
    p = tmp_path / "empty.mov"
    p.write_bytes(b"")
    assert_one_line_error(_err(p), "empty.mov")


def test_truncated_video(tmp_path):
    from .test_sources import _encode_video

    good = tmp_path / "good.mp4"
    _encode_video(good, n=20)
    data = good.read_bytes()
    bad = tmp_path / "cut.mp4"
    bad.write_bytes(data[: len(data) // 2])  # mp4 index (moov) is at the end: unreadable
    with pytest.raises(UserError) as e:
        src = open_source(bad)
        for _ in src:
            pass
    assert_one_line_error(e.value, "cut.mp4")


def test_single_frame_video(tmp_path):
    from .test_sources import _encode_video

    p = tmp_path / "one.mp4"
    _encode_video(p, n=1)
    assert_one_line_error(_err(p), "one.mp4", "only 1 frame")


def test_rgb_txt_missing_file(tmp_path):
    root = tmp_path / "seq"
    save_rgb(root / "rgb" / "1.000000.png", 1)
    (root / "rgb.txt").write_text("# list\n1.000000 rgb/1.000000.png\n1.033333 rgb/1.033333.png\n")
    assert_one_line_error(_err(root), "1.033333.png", "missing", "rgb.txt")


def test_rgb_txt_bad_timestamp(tmp_path):
    root = tmp_path / "seq"
    save_rgb(root / "rgb" / "a.png", 1)
    (root / "rgb.txt").write_text("first rgb/a.png\n")
    assert_one_line_error(_err(root), "rgb.txt", "line 1")


def test_bad_groundtruth_names_file(tmp_path):
    root = tmp_path / "seq"
    for k in range(2):
        save_rgb(root / "rgb" / f"{k}.png", k)
    (root / "rgb.txt").write_text("0.0 rgb/0.png\n0.033 rgb/1.png\n")
    (root / "groundtruth.txt").write_text("0.0 1 2 3\n")
    assert_one_line_error(_err(root), "groundtruth.txt", "line 1")


def test_bad_calib_argument(tmp_path):
    for i in range(2):
        save_rgb(tmp_path / "imgs" / f"{i}.png", i)
    (tmp_path / "c.txt").write_text("1 2\n")
    assert_one_line_error(_err(tmp_path / "imgs", calib=tmp_path / "c.txt"), "c.txt")


def test_cli_prints_one_line_and_exits_2(tmp_path, capsys):
    (tmp_path / "x.txt").write_text("not empty")
    rc = main(["synth", str(tmp_path), "--frames", "4", "--width", "32", "--height", "24"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not empty" in err and str(tmp_path) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.txt"]
