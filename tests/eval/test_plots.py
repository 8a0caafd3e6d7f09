"""Plots of a run, checked as images: size, not blank, and which series are drawn (by their fixed colours)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mslam_ns.errors import UserError
from mslam_ns.eval.ate import ate
from mslam_ns.eval.plots import COLORS, aligned_errors, write_plots, write_report
from mslam_ns.io.tum import read_tum_trajectory, write_tum_trajectory
from tests.viewer.scenes import make_run_dir

pytest.importorskip("matplotlib")


def _rgb(hex_color: str) -> np.ndarray:
    return np.array([int(hex_color[i : i + 2], 16) for i in (1, 3, 5)])


def _read(path: Path) -> np.ndarray:  # [H, W, 3] uint8
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def pixels(img: np.ndarray, series: str, tol: int = 6) -> int:
    """Pixels within `tol` of a series' colour."""
    return int((np.abs(img.astype(np.int32) - _rgb(COLORS[series])).max(axis=2) <= tol).sum())


def nonwhite(img: np.ndarray) -> float:
    return float((img.astype(np.int32).sum(axis=2) < 720).mean())


def _write_gt(run: Path, path: Path, noise: float = 0.03) -> Path:
    """Ground truth = the run's trajectory under a known Sim(3) (scale 2, 30 degrees about y), plus noise."""
    ts, T = read_tum_trajectory(run / "trajectory.txt")
    a = np.deg2rad(30)
    R = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    p = 2.0 * T[:, :3] @ R.T + np.array([1.0, -2.0, 0.5])
    p += np.random.default_rng(0).normal(0, noise, p.shape)
    gt = np.concatenate([p, np.tile([0, 0, 0, 1.0], (len(p), 1))], axis=1)
    write_tum_trajectory(path, ts, gt)
    return path


TIMINGS = {"total": 12.0, "prior": 7.0, "tracking": 4.0, "encode": 3.0, "decode": 4.0, "fuse": 1.5, "backend": 2.5}


@pytest.fixture()
def run(tmp_path: Path) -> Path:
    root = make_run_dir(tmp_path / "run")
    summary = json.loads((root / "summary.json").read_text())
    summary["timings_s"] = TIMINGS
    (root / "summary.json").write_text(json.dumps(summary))
    return root


def quadrants(img: np.ndarray, series: str) -> list[int]:
    """Pixels of a series in each panel of the 2 x 2 report: [top left, top right, bottom left, bottom right]."""
    h, w = img.shape[0] // 2, img.shape[1] // 2
    return [pixels(img[y : y + h, x : x + w], series) for y in (0, h) for x in (0, w)]


def test_every_series_has_its_own_colour():
    assert len(set(COLORS.values())) == len(COLORS)


def test_trajectory_and_ate_plots(run: Path, tmp_path: Path):
    gt = _write_gt(run, tmp_path / "gt.txt")
    paths = write_plots(run, gt)
    assert [p.name for p in paths] == ["plot_trajectory.png", "plot_ate.png"]
    traj, err = _read(paths[0]), _read(paths[1])
    assert traj.shape == (600, 700, 3) and err.shape == (400, 800, 3)
    assert nonwhite(traj) > 0.033 and nonwhite(err) > 0.085  # measured 4.9% and 13%
    # trajectory: ground truth, estimate, lost frames (measured: 755, 879 and 183 pixels)
    for series, least in (("gt", 500), ("estimate", 580), ("lost", 120)):
        assert pixels(traj, series) > least, series
    # ATE over time: the error curve and its rmse / mean / median lines (measured: 2565, then 465 each)
    for series, least in (("error", 1700), ("rmse", 310), ("mean", 310), ("median", 310)):
        assert pixels(err, series) > least, series


def test_no_lost_series_without_lost_frames(run: Path, tmp_path: Path):
    lines = (run / "frames.txt").read_text().splitlines()
    fixed = [ln if ln.startswith("#") else " ".join(ln.split(" ")[:3] + ["0"] + ln.split(" ")[4:]) for ln in lines]
    (run / "frames.txt").write_text("\n".join(fixed) + "\n")
    traj = _read(write_plots(run, _write_gt(run, tmp_path / "gt.txt"))[0])
    assert pixels(traj, "lost") == 0
    assert pixels(traj, "gt") > 500 and pixels(traj, "estimate") > 580


def test_plotted_errors_are_evals_errors(run: Path, tmp_path: Path):
    gt = _write_gt(run, tmp_path / "gt.txt", noise=0.02)
    ts, T = read_tum_trajectory(run / "trajectory.txt")
    gts, gT = read_tum_trajectory(gt)
    _, p, q, e = aligned_errors(ts, T[:, :3], gts, gT[:, :3])
    r = ate(ts, T, gts, gT)
    assert np.sqrt(np.mean(e**2)) == pytest.approx(r.rmse, rel=1e-9)
    assert len(e) == r.n_matched
    np.testing.assert_allclose(np.linalg.norm(p - q, axis=1), e)


def test_plot_errors_name_the_file(run: Path, tmp_path: Path):
    with pytest.raises(UserError, match="gt.txt"):
        write_plots(run, tmp_path / "gt.txt")
    far = tmp_path / "far.txt"
    write_tum_trajectory(far, np.arange(5) + 1000.0, np.tile([0, 0, 0, 0, 0, 0, 1.0], (5, 1)))
    with pytest.raises(UserError, match="matched"):
        write_plots(run, far)


def test_report(run: Path):
    n = len(read_tum_trajectory(run / "trajectory.txt")[0])
    matches = [-1] + list(range(1010, 1000 + 10 * n, 10))  # the first frame is not matched
    img = _read(write_report(run, n_matches=matches))
    assert img.shape == (800, 1200, 3) and nonwhite(img) > 0.087  # measured 13%
    tl, tr, bl, _ = range(4)
    q = {s: quadrants(img, s) for s in COLORS}
    # trajectory panel: every frame, keyframes, lost frames (measured: 812, 385, 183 pixels)
    assert q["estimate"][tl] > 540 and q["keyframe"][tl] > 255 and q["lost"][tl] > 120
    # tracking panel: the match counts (measured 869 pixels), new-keyframe ticks (measured 90)
    assert q["matches"][tr] > 580 and q["keyframe"][tr] > 60
    # timings panel: one bar per stage of summary.json's timings_s (measured 78900 pixels)
    assert q["timings"][bl] > 52000
    # each series only in its own panel (legend swatches aside), and no keyframe-id fallback
    assert sum(q["matches"]) - q["matches"][tr] == 0 and sum(q["timings"]) == q["timings"][bl]
    assert sum(q["tracked_kf"]) == 0 and q["estimate"][tr] == q["estimate"][bl] == 0


def test_report_falls_back_to_keyframe_ids_and_reads_matches_txt(run: Path):
    from mslam_ns.io.rundir import RunDir

    # No match counts recorded (a run folder from before matches.txt): the keyframe each frame tracks.
    img = _read(write_report(run))
    q = {s: quadrants(img, s) for s in ("matches", "tracked_kf")}
    assert q["tracked_kf"][1] > 510 and sum(q["matches"]) == 0  # measured 769
    # The run's own matches.txt is used when no counts are passed.
    rd = RunDir(run)
    ts = rd.read_frames().timestamps
    rd.write_matches(ts, np.arange(len(ts)) * 7 + 500)
    assert rd.read_matches().tolist() == (np.arange(len(ts)) * 7 + 500).tolist()
    img = _read(write_report(run))
    q = {s: quadrants(img, s) for s in ("matches", "tracked_kf")}
    assert q["matches"][1] > 615 and sum(q["tracked_kf"]) == 0  # measured 924


def test_report_without_timings(run: Path):
    summary = json.loads((run / "summary.json").read_text())
    del summary["timings_s"]
    (run / "summary.json").write_text(json.dumps(summary))
    img = _read(write_report(run))
    assert sum(quadrants(img, "timings")) == 0
