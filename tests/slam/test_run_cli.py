"""`mslam-ns run` end to end on a short synthetic sequence (oracle prior with MASt3R-like noise)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mslam_ns.cli import main
from tests.slam.conftest import IMG_SIZE, SEQ_FRAMES

# Bounds on the Sim(3)-aligned ATE of all frames per mode: (RMSE as % of the path length, median rotation error
# in deg), about 1.5x the values measured on this 30-frame sequence (160x120, img_size 128, oracle 'mast3r'
# noise, seed 0, backend on): rays 0.46% / 0.26 deg, calib 0.39% / 0.23 deg.
ATE_BOUND = {"rays": (0.7, 0.4), "calib": (0.6, 0.35)}
# Only a smoke bound, for the `demo` command's own 24-frame run (test_demo_generates_runs_and_evaluates).
ATE_BOUND_FRAC = 0.05


def _read_tum(path: Path) -> np.ndarray:
    rows = [l.split() for l in path.read_text().splitlines() if l.strip() and not l.startswith("#")]
    return np.array(rows, dtype=np.float64)


@pytest.fixture(scope="module", params=["rays", "calib"])
def run_out(request, synthetic_seq, tmp_path_factory) -> tuple[str, Path]:
    out = tmp_path_factory.mktemp(f"run_{request.param}") / "out"
    rc = main(
        [
            "run",
            str(synthetic_seq),
            "--out",
            str(out),
            "--prior",
            "oracle",
            "--oracle-noise",
            "mast3r",
            "--img-size",
            str(IMG_SIZE),
            "--mode",
            request.param,
            "--quiet",
        ]
    )
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
    pct, rot = r.rmse_percent_of_path, r.rot_median_deg
    print(f"[{mode}] ATE RMSE all frames {r.rmse:.4f} = {pct:.2f}% of path {r.path_length:.3f}, rot {rot:.2f} deg")
    assert r.n_matched == SEQ_FRAMES
    bound_pct, bound_deg = ATE_BOUND[mode]
    assert pct < bound_pct and rot < bound_deg, (pct, rot)
    summary = json.loads((out / "summary.json").read_text())
    # every frame tracked (the pure-rotation segment, frames 10-18, included), no map restart
    assert summary["lost_frames"] == 0 and summary["restarts"] == 0, summary


# (median, 99th percentile) bounds in px. Rays mode measured (30 frames 160x120, img_size 128, oracle
# 'mast3r' noise, backend on): median 3.0, 99% 11.1 px (the fused pointmaps sit off their pixel rays by the
# prior's noise; estimated fx within 0.4%); a dropped or wrong keyframe pose gives tens of pixels. Calib:
# 0.000 px (the calibrated fusion keeps points on their rays), held to < 1 px.
PIXEL_BOUND = {"calib": (1.0, 1.0), "rays": (4.5, 16.5)}


def test_points_land_on_their_own_pixels_with_their_colours(run_out, synthetic_source):
    """Each keyframe's points, mapped back through THAT keyframe's exported pose and the exported
    intrinsics, land on the pixel they came from, and carry that pixel's colour."""
    from mslam_ns.geometry.conventions import pose7_to_c2w
    from mslam_ns.geometry.image_transform import ImageTransform
    from mslam_ns.io.rundir import RunDir
    from mslam_ns.model.preprocess import preprocess_image

    mode, out = run_out
    rd = RunDir(out)
    pc = rd.read_points()
    assert len(pc) > 1000 and pc.rgb.std() > 0 and np.isfinite(pc.confidence).all()
    K, (W, H) = rd.intrinsics()
    assert (W, H) == synthetic_source.image_size
    table = rd.read_frames()
    _, kposes = rd.read_keyframes()
    kf_rows = np.flatnonzero(table.is_keyframe)
    assert sorted(set(pc.keyframe.tolist())) == list(range(len(kf_rows)))  # every keyframe has points
    tf = ImageTransform.from_dict(rd.read_summary()["image_transform"])
    errs = []
    for k, row in enumerate(kf_rows):
        sel = pc.keyframe == k
        T = pose7_to_c2w(kposes[k])
        Xc = (pc.xyz[sel] - T[:3, 3]) @ T[:3, :3]
        assert (Xc[:, 2] > 0).all()
        uv = (Xc @ K.T)[:, :2] / Xc[:, 2:3]
        errs.append(np.linalg.norm(uv - pc.uv[sel], axis=1))
        # colours: the network image made from the keyframe's own source frame, at the point's pixel
        net, _ = preprocess_image(synthetic_source[int(row)].image, size=IMG_SIZE)
        ij = np.rint(np.asarray(tf.to_network(pc.uv[sel].astype(np.float64)))).astype(int)
        np.testing.assert_array_equal(pc.rgb[sel], net[ij[:, 1], ij[:, 0]])
    e = np.concatenate(errs)
    print(
        f"[{mode}] reprojection of keyframe points onto their pixels: median {np.median(e):.3f} px, "
        f"99% {np.percentile(e, 99):.3f} px"
    )
    assert np.median(e) < PIXEL_BOUND[mode][0] and np.percentile(e, 99) < PIXEL_BOUND[mode][1]


def test_run_folder_has_edges_thumbnails_and_reloadable_config(run_out):
    from mslam_ns.commands.options import RunOptions, load_options
    from mslam_ns.io.rundir import RunDir

    mode, out = run_out
    rd = RunDir(out)
    assert RunDir.is_run(out)
    n_kf = len(rd.read_keyframes()[0])
    edges, kinds = rd.read_edges()
    assert edges.shape[1] == 2 and len(kinds) == len(edges) and (edges < n_kf).all()
    for k in range(n_kf):
        th = rd.read_thumbnail(k)
        assert th is not None and th.shape[1] == IMG_SIZE and th.ndim == 3
    k = rd.read_summary()["intrinsics"]
    assert {"fx", "fy", "cx", "cy", "width", "height"} <= set(k)
    cfg = load_options(RunOptions, rd.file(RunDir.CONFIG))
    assert cfg.slam.img_size == IMG_SIZE and cfg.slam.mode == mode and cfg.prior == "oracle"
    assert Path(cfg.dataset).is_absolute()


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
    rc = main(
        [
            "run",
            str(synthetic_seq),
            "--out",
            str(out),
            "--calib",
            str(calib),
            "--img-size",
            str(IMG_SIZE),
            "--max-frames",
            "8",
            "--quiet",
        ]
    )
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["undistorted"] is True
    assert summary["config"]["mode"] == "calib"
    assert _read_tum(out / "trajectory.txt").shape == (8, 8)


def test_demo_generates_runs_and_evaluates(tmp_path, capsys):
    # the README's main job, at a small size: sequence + SLAM + ATE, all written atomically into OUT
    out = tmp_path / "demo"
    rc = main(
        [
            "demo",
            "--out",
            str(out),
            "--frames",
            "24",
            "--width",
            "160",
            "--height",
            "120",
            "--img-size",
            str(IMG_SIZE),
            "--quiet",
        ]
    )
    assert rc == 0
    ev = json.loads((out / "eval.json").read_text())
    assert ev["all_frames"]["n_matched"] == 24
    assert ev["all_frames"]["rmse_percent_of_path"] < 100 * ATE_BOUND_FRAC
    assert (out / "sequence" / "groundtruth.txt").is_file() and (out / "points.ply").is_file()
    assert "ATE RMSE" in capsys.readouterr().out
    # the demo's report and per-frame matches, like `run`'s: the first frame -1, tracked frames real counts
    from PIL import Image

    with Image.open(out / "report.png") as im:
        assert im.format == "PNG" and im.size == (1200, 800)
    m = np.array([int(ln.split()[1]) for ln in (out / "matches.txt").read_text().splitlines() if ln[:1] != "#"])
    assert len(m) == 24 and m[0] == -1 and (m[1:][m[1:] >= 0] > 100).all() and (m[1:] > 100).sum() >= 5


def test_frames_table_keeps_original_names(run_out, synthetic_source):
    _, out = run_out
    rows = [l.split(maxsplit=5) for l in (out / "frames.txt").read_text().splitlines() if not l.startswith("#")]
    assert [r[5] for r in rows] == list(synthetic_source.names)
    np.testing.assert_allclose([float(r[0]) for r in rows], synthetic_source.timestamps, atol=1e-6)
    kf_rows = [r for r in rows if r[2] == "1"]
    assert len(kf_rows) == len(_read_tum(out / "keyframes.txt"))


def test_run_refuses_non_empty_out_unless_overwrite(synthetic_seq, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("keep me")
    args = ["run", str(synthetic_seq), "--out", str(out), "--img-size", str(IMG_SIZE), "--max-frames", "6", "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not empty" in err[0] and "--overwrite" in err[0]
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    assert main(args + ["--overwrite"]) == 0
    assert not (out / "old.txt").exists() and (out / "trajectory.txt").is_file()  # replaced, no stale file


def test_every_slam_config_field_from_flags_and_config_file(synthetic_seq, tmp_path, capsys):
    """Nested SlamConfig fields are flags; a YAML --config sets defaults, flags override it; the resolved
    config lands in OUT/config.yaml and summary.json, and reloads to the same run settings."""
    import dataclasses

    from mslam_ns.config import SlamConfig

    cfg = tmp_path / "preset.yaml"
    cfg.write_text(
        "img_size: 96\ntracking: {residual: {huber: 2.5}}\nmatching:\n  refine: false\nmax_frames: 6\n"
        "backend: {lm: {max_iters: 4}}\n"
    )
    out = tmp_path / "out"
    assert (
        main(
            [
                "run",
                str(synthetic_seq),
                "--config",
                str(cfg),
                "--out",
                str(out),
                "--img-size",
                str(IMG_SIZE),
                "--backend.lm.delta-norm",
                "1e-7",
                "--quiet",
            ]
        )
        == 0
    )
    s = json.loads((out / "summary.json").read_text())["config"]
    assert s["img_size"] == IMG_SIZE  # the flag beats the file
    assert s["tracking"]["residual"]["huber"] == 2.5 and s["matching"]["refine"] is False
    lm = s["backend"]["lm"]  # file, flag, and the backend's own non-LMConfig default kept for the rest
    assert lm["max_iters"] == 4 and lm["delta_norm"] == 1e-7 and lm["rel_error"] == SlamConfig().backend.lm.rel_error
    assert set(s) == {f.name for f in dataclasses.fields(SlamConfig)}
    assert _read_tum(out / "trajectory.txt").shape == (6, 8)
    # the written config reruns the same thing
    out2 = tmp_path / "out2"
    assert main(["run", "--config", str(out / "config.yaml"), "--out", str(out2), "--quiet"]) == 0
    assert json.loads((out2 / "summary.json").read_text())["config"] == s
    np.testing.assert_allclose(_read_tum(out2 / "trajectory.txt"), _read_tum(out / "trajectory.txt"), atol=1e-6)
    # help shows nested groups
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "--tracking.residual.huber" in capsys.readouterr().out


@pytest.mark.parametrize(
    "text,needle",
    [
        ("img_size: [1]\n", "img_size"),
        ("no_such_option: 1\n", "no_such_option"),
        ("tracking: {nope: 1}\n", "nope"),
        ("- a\n", "mapping"),
        ("mode: sideways\n", "mode"),
    ],
)
def test_bad_config_file_is_one_line(synthetic_seq, tmp_path, capsys, text, needle):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    out = tmp_path / "out"
    assert main(["run", str(synthetic_seq), "--config", str(cfg), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(cfg) in err[0] and needle in err[0]
    assert not out.exists()


def test_config_presets_load(synthetic_seq):
    """Every preset in configs/ loads through the typed options."""
    from mslam_ns.commands.options import RunOptions, load_options

    presets = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))
    assert {p.stem for p in presets} >= {"calibrated", "uncalibrated", "cpu-preview", "high-quality"}
    for p in presets:
        o = load_options(RunOptions, p)
        assert o.slam.img_size > 0


def test_run_with_live_viewer(synthetic_seq, tmp_path, capsys):
    pytest.importorskip("viser")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "out"
    assert (
        main(
            [
                "run",
                str(synthetic_seq),
                "--out",
                str(out),
                "--img-size",
                str(IMG_SIZE),
                "--max-frames",
                "6",
                "--view",
                "--port",
                str(port),
                "--quiet",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "live viewer at http://" in err and "127.0.0.1" in err
    import yaml

    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert not {"view", "host", "port"} & set(saved)  # how it was watched is not a setting of the run


def test_eval_plot(run_out, synthetic_seq):
    _, out = run_out
    assert main(["eval", str(out), "--gt", str(synthetic_seq / "groundtruth.txt"), "--plot"]) == 0
    assert (out / "plot_trajectory.png").stat().st_size > 1000 and (out / "plot_ate.png").is_file()


def test_interrupt_mid_run_leaves_the_old_out_untouched(synthetic_seq, tmp_path, capsys, monkeypatch):
    """Ctrl-C on the 4th frame of a --overwrite run: exit 130, one line, OUT exactly as it was, no temp folder."""
    import mslam_ns.commands.slam as slam_cmds

    real = slam_cmds.open_dataset

    class Interrupting:
        def __init__(self, src):
            self.src = src

        def __len__(self):
            return len(self.src)

        def __getitem__(self, i):
            if i == 3:
                raise KeyboardInterrupt
            return self.src[i]

        def __getattr__(self, name):
            return getattr(self.src, name)

    monkeypatch.setattr(slam_cmds, "open_dataset", lambda *a, **k: Interrupting(real(*a, **k)))
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("earlier run")
    rc = main(
        [
            "run",
            str(synthetic_seq),
            "--out",
            str(out),
            "--img-size",
            str(IMG_SIZE),
            "--max-frames",
            "8",
            "--overwrite",
            "--quiet",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 130 and err == ["mslam-ns: interrupted"]
    assert [p.name for p in out.iterdir()] == ["old.txt"] and (out / "old.txt").read_text() == "earlier run"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
