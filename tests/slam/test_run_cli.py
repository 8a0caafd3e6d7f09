"""`mslam-ns run` end to end on a short synthetic sequence (oracle prior with MASt3R-like noise)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mslam_ns.cli import main
from tests.slam.conftest import IMG_SIZE, SEQ_FRAMES

# Generous bound on the Sim(3)-aligned ATE RMSE of all frames, as a fraction of the path length.
ATE_BOUND_FRAC = 0.05


def _read_tum(path: Path) -> np.ndarray:
    rows = [l.split() for l in path.read_text().splitlines() if l.strip() and not l.startswith("#")]
    return np.array(rows, dtype=np.float64)


def _read_ply(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Minimal binary/ascii PLY reader for x y z (float) red green blue (uchar) vertices."""
    data = path.read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode().splitlines()
    n = int(next(l for l in header if l.startswith("element vertex")).split()[-1])
    props = [l.split() for l in header if l.startswith("property")]
    names = [p[-1] for p in props]
    assert names[:3] == ["x", "y", "z"] and {"red", "green", "blue"} <= set(names)
    fmt = next(l for l in header if l.startswith("format")).split()[1]
    tmap = {"float": "f4", "float32": "f4", "double": "f8", "uchar": "u1", "uint8": "u1"}
    if fmt == "ascii":
        arr = np.loadtxt(data[end:].decode().splitlines(), ndmin=2)
        xyz, rgb = arr[:, :3], arr[:, [names.index(c) for c in ("red", "green", "blue")]].astype(np.uint8)
    else:
        endian = "<" if fmt == "binary_little_endian" else ">"
        dt = np.dtype([(p[-1], endian + tmap[p[1]]) for p in props])
        rec = np.frombuffer(data[end:end + n * dt.itemsize], dtype=dt)
        xyz = np.stack([rec["x"], rec["y"], rec["z"]], 1).astype(np.float64)
        rgb = np.stack([rec["red"], rec["green"], rec["blue"]], 1)
    assert len(xyz) == n
    return xyz, rgb


@pytest.fixture(scope="module", params=["rays", "calib"])
def run_out(request, synthetic_seq, tmp_path_factory) -> tuple[str, Path]:
    out = tmp_path_factory.mktemp(f"run_{request.param}") / "out"
    rc = main(["run", str(synthetic_seq), "--out", str(out), "--prior", "oracle", "--oracle-noise", "mast3r",
               "--img-size", str(IMG_SIZE), "--mode", request.param, "--quiet"])
    assert rc == 0
    return request.param, out


def test_run_writes_every_frame_with_original_timestamps(run_out, synthetic_source):
    mode, out = run_out
    traj = _read_tum(out / "trajectory.txt")
    assert traj.shape == (SEQ_FRAMES, 8)
    np.testing.assert_allclose(traj[:, 0], synthetic_source.timestamps, atol=1e-6)
    kfs = _read_tum(out / "keyframes.txt")
    assert 2 <= len(kfs) <= SEQ_FRAMES
    # keyframes are a subset of the frames, with the same poses
    rows = {round(t, 6): r for t, r in zip(traj[:, 0], traj)}
    for r in kfs:
        np.testing.assert_allclose(rows[round(r[0], 6)][1:4], r[1:4], atol=1e-5)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == SEQ_FRAMES and summary["keyframes"] == len(kfs)
    assert summary["config"]["mode"] == mode
    k = summary["intrinsics"]
    assert k is not None and k["pixels"] == "original image"
    assert k["source"] == ("given" if mode == "calib" else "estimated")
    # rays mode: estimated from the fused pointmaps, in ORIGINAL image pixels (160x120, not the network's)
    g = summary["dataset_intrinsics"]
    assert abs(k["fx"] / g["fx"] - 1) < 0.05 and abs(k["fy"] / g["fy"] - 1) < 0.05
    assert abs(k["cx"] - g["cx"]) < 4 and abs(k["cy"] - g["cy"]) < 4


def test_run_ate_below_bound(run_out, synthetic_source):
    from mslam_ns.eval.ate import ate
    from mslam_ns.io.tum import read_tum_trajectory

    mode, out = run_out
    ts, poses = read_tum_trajectory(out / "trajectory.txt")
    r = ate(ts, poses, synthetic_source.timestamps, synthetic_source.gt_poses)
    frac = r.rmse / r.path_length
    print(f"[{mode}] ATE RMSE all frames {r.rmse:.4f} = {100 * frac:.2f}% of path {r.path_length:.3f}")
    assert r.n_matched == SEQ_FRAMES
    assert frac < ATE_BOUND_FRAC


def test_points_ply_consistent_with_keyframes(run_out):
    """points.ply has colours and lives in the trajectory's world frame: points project into a keyframe
    with positive depth and inside (or near) its image for a large fraction of them."""
    from mslam_ns.io.poses import pose7_to_matrix

    mode, out = run_out
    xyz, rgb = _read_ply(out / "points.ply")
    assert len(xyz) > 100 and rgb.dtype == np.uint8 and rgb.std() > 0
    summary = json.loads((out / "summary.json").read_text())
    k = summary["intrinsics"]
    K = np.array([[k["fx"], 0, k["cx"]], [0, k["fy"], k["cy"]], [0, 0, 1]])
    W, H = summary["image_transform"]["source_size"]
    kfs = _read_tum(out / "keyframes.txt")
    T = pose7_to_matrix(kfs[0, 1:])  # first keyframe camera -> world
    Pc = (xyz - T[:3, 3]) @ T[:3, :3]  # world -> camera (rotation part; the camera scale cancels in u, v)
    front = Pc[:, 2] > 0
    uv = (Pc[front] @ K.T)
    uv = uv[:, :2] / uv[:, 2:]
    inside = (uv[:, 0] > -0.1 * W) & (uv[:, 0] < 1.1 * W) & (uv[:, 1] > -0.1 * H) & (uv[:, 1] < 1.1 * H)
    # the first keyframe's own points (a good share of the cloud) must land in its image
    assert front.mean() > 0.5 and inside.sum() > 0.2 * len(xyz)


@pytest.mark.parametrize("case", ["missing", "empty_dir", "not_images", "bad_calib", "out_is_file"])
def test_bad_input_one_line_nonzero_no_output(tmp_path, capsys, case, synthetic_seq):
    out = tmp_path / "out"
    args = ["run"]
    if case == "missing":
        args += [str(tmp_path / "nope")]
    elif case == "empty_dir":
        (tmp_path / "empty").mkdir()
        args += [str(tmp_path / "empty")]
    elif case == "not_images":
        d = tmp_path / "junk"
        d.mkdir()
        (d / "a.txt").write_text("hello")
        args += [str(d)]
    elif case == "bad_calib":
        bad = tmp_path / "calib.txt"
        bad.write_text("not a calibration\n")
        args += [str(synthetic_seq), "--calib", str(bad)]
    else:
        out = tmp_path / "out.txt"
        out.write_text("x")
        args += [str(synthetic_seq)]
    rc = main(args + ["--out", str(out), "--img-size", str(IMG_SIZE), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0
    assert len(err) == 1 and err[0].startswith("mslam-ns: error:")
    if case == "out_is_file":
        assert out.read_text() == "x"
    else:
        assert not out.exists()
    assert not any(p.name.startswith(".out") for p in tmp_path.iterdir())  # no temporary folder left


def test_run_with_distorted_calibration_undistorts_frames(synthetic_seq, tmp_path):
    # the same camera declared with lens distortion: the run must undistort (and say so), not ignore it
    lines = [l for l in (synthetic_seq / "calibration.txt").read_text().splitlines() if not l.startswith("#")]
    calib = tmp_path / "calib.txt"
    calib.write_text(f"{lines[0]}\n{lines[1]} 0.02 -0.01 0.0 0.0\n")
    out = tmp_path / "out"
    rc = main(["run", str(synthetic_seq), "--out", str(out), "--calib", str(calib), "--img-size", str(IMG_SIZE),
               "--max-frames", "8", "--quiet"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["undistorted"] is True
    assert summary["config"]["mode"] == "calib"
    assert _read_tum(out / "trajectory.txt").shape == (8, 8)


def test_demo_generates_runs_and_evaluates(tmp_path, capsys):
    # the README's main job, at a small size: sequence + SLAM + ATE, all written atomically into OUT
    out = tmp_path / "demo"
    rc = main(["demo", "--out", str(out), "--frames", "24", "--width", "160", "--height", "120",
               "--img-size", str(IMG_SIZE), "--quiet"])
    assert rc == 0
    ev = json.loads((out / "eval.json").read_text())
    assert ev["all_frames"]["n_matched"] == 24
    assert ev["all_frames"]["rmse_percent_of_path"] < 100 * ATE_BOUND_FRAC
    assert (out / "sequence" / "groundtruth.txt").is_file() and (out / "points.ply").is_file()
    assert "ATE RMSE" in capsys.readouterr().out


def test_frames_table_keeps_original_names(run_out, synthetic_source):
    _, out = run_out
    rows = [l.split(maxsplit=4) for l in (out / "frames.txt").read_text().splitlines() if not l.startswith("#")]
    assert [r[4] for r in rows] == list(synthetic_source.names)
    np.testing.assert_allclose([float(r[0]) for r in rows], synthetic_source.timestamps, atol=1e-6)
    kf_rows = [r for r in rows if r[2] == "1"]
    assert len(kf_rows) == len(_read_tum(out / "keyframes.txt"))
