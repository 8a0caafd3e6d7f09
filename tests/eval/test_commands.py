"""`mslam-ns eval OUT --gt GT`: end to end through the CLI, checked against evo reading the same files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mslam_ns.cli import main
from mslam_ns.io.tum import write_tum_trajectory
from tests.eval.test_ate import make_pair

evo_fi = pytest.importorskip("evo.tools.file_interface")
evo_sync = pytest.importorskip("evo.core.sync")
evo_metrics = pytest.importorskip("evo.core.metrics")


def evo_ape_files(gt: Path, est: Path) -> float:
    """`evo_ape tum gt est -as` (default --t_max_diff 0.01): RMSE."""
    ref = evo_fi.read_tum_trajectory_file(str(gt))
    e = evo_fi.read_tum_trajectory_file(str(est))
    ref, e = evo_sync.associate_trajectories(ref, e, max_diff=0.01)
    e.align(ref, correct_scale=True)
    ape = evo_metrics.APE(evo_metrics.PoseRelation.translation_part)
    ape.process_data((ref, e))
    return ape.get_statistic(evo_metrics.StatisticsType.rmse)


@pytest.fixture
def run_dir(tmp_path: Path) -> tuple[Path, Path]:
    est_ts, est_poses, gt_ts, gt_poses, _ = make_pair(7, noise=0.03)
    out = tmp_path / "run"
    gt = tmp_path / "groundtruth.txt"
    write_tum_trajectory(gt, gt_ts, gt_poses)
    write_tum_trajectory(out / "trajectory.txt", est_ts, est_poses)
    write_tum_trajectory(out / "keyframes.txt", est_ts[::6], est_poses[::6])
    return out, gt


def test_eval_command_matches_evo(run_dir, capsys) -> None:
    out, gt = run_dir
    assert main(["eval", str(out), "--gt", str(gt)]) == 0
    printed = capsys.readouterr().out
    assert "ATE RMSE" in printed and "keyframes" in printed and "% of" in printed
    report = json.loads((out / "eval.json").read_text())
    for key, name in (("all_frames", "trajectory.txt"), ("keyframes", "keyframes.txt")):
        assert abs(report[key]["rmse"] - evo_ape_files(gt, out / name)) < 1e-9
        assert report[key]["rmse_percent_of_path"] == pytest.approx(
            100 * report[key]["rmse"] / report[key]["path_length"]
        )
    assert report["all_frames"]["n_matched"] > report["keyframes"]["n_matched"] >= 3
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("missing", ["trajectory.txt", "keyframes.txt", "gt"])
def test_eval_missing_file_is_a_one_line_user_error(run_dir, capsys, missing: str) -> None:
    out, gt = run_dir
    victim = gt if missing == "gt" else out / missing
    victim.unlink()
    assert main(["eval", str(out), "--gt", str(gt)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(victim) in err
    assert not (out / "eval.json").exists()


def test_eval_no_overlap_names_the_file(run_dir, capsys) -> None:
    out, gt = run_dir
    ts = np.array([1.0, 2.0, 3.0])
    poses = np.tile([0, 0, 0, 0, 0, 0, 1.0], (3, 1))
    write_tum_trajectory(out / "keyframes.txt", ts, poses)
    assert main(["eval", str(out), "--gt", str(gt)]) == 2
    err = capsys.readouterr().err
    assert "keyframes.txt" in err and "matched" in err
    assert not (out / "eval.json").exists()


def test_eval_finds_the_ground_truth_of_the_run(run_dir, capsys) -> None:
    """Without --gt: the dataset recorded in summary.json (or OUT/sequence) supplies groundtruth.txt."""
    out, gt = run_dir
    (out / "summary.json").write_text(json.dumps({"dataset": str(gt.parent)}))
    assert main(["eval", str(out)]) == 0
    assert json.loads((out / "eval.json").read_text())["gt"] == str(gt)
    (out / "summary.json").unlink()
    assert main(["eval", str(out)]) == 2
    assert "--gt" in capsys.readouterr().err
