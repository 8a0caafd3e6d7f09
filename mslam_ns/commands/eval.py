"""`mslam-ns eval OUT --gt groundtruth.txt`: ATE of a run's trajectories against ground truth."""

from __future__ import annotations

from pathlib import Path

from tyro.conf import Positional

from mslam_ns.errors import UserError
from mslam_ns.eval.ate import EVO_MAX_DIFF, AteResult, ate
from mslam_ns.io.rundir import RunDir

__all__ = ["evaluate", "evaluate_files", "find_ground_truth", "format_result"]


def _read(path: Path):
    from mslam_ns.io.tum import read_tum_trajectory

    if not path.is_file():
        raise UserError(f"{path}: file not found")
    return read_tum_trajectory(path)


def evaluate_files(est: Path, gt_ts, gt_poses, gt: Path, max_dt: float) -> AteResult:
    """Sim(3)-aligned ATE of one TUM trajectory file against loaded ground truth (UserError on failure)."""
    ts, poses = _read(est)
    try:
        return ate(ts, poses, gt_ts, gt_poses, max_dt=max_dt, align="sim3")
    except ValueError as e:
        raise UserError(f"{est}: cannot evaluate against {gt}: {str(e).removeprefix('ate: ')}") from None


def format_result(name: str, r: AteResult) -> str:
    """One line: RMSE in GT units and as a percentage of the GT path length."""
    return (
        f"{name:<11} ATE RMSE {r.rmse:.4f} m ({r.rmse_percent_of_path:.2f}% of {r.path_length:.3f} m GT path), "
        f"mean {r.mean:.4f}, median {r.median:.4f}, max {r.max:.4f}, {r.n_matched} poses, scale {r.scale:.4g}"
    )


def find_ground_truth(out: Path) -> Path | None:
    """A ground-truth file for a run folder: OUT/sequence/groundtruth.txt (demo) or the groundtruth.txt of
    the dataset folder recorded in OUT/summary.json; None if neither exists."""
    rd = RunDir(out)
    cands = [rd.path / "sequence" / RunDir.GROUND_TRUTH]
    try:
        dataset = rd.read_summary().get("dataset")
    except (UserError, AttributeError):
        dataset = None
    if isinstance(dataset, str) and dataset:
        cands.append(Path(dataset) / RunDir.GROUND_TRUTH)
    return next((c for c in cands if c.is_file()), None)


def evaluate(out: Positional[Path], gt: Path | None = None, max_dt: float = EVO_MAX_DIFF, plot: bool = False) -> int:
    """Sim(3)-aligned ATE (as `evo_ape tum GT EST -as`) of a run's trajectory.txt and keyframes.txt.

    Prints ATE RMSE (and as % of the ground-truth path length) for all frames and for keyframes, and
    writes OUT/eval.json ({"all_frames": {...}, "keyframes": {...}} with rmse, mean, median, max, n_matched,
    scale, path_length, rmse_percent_of_path).

    Args:
        out: output folder of `mslam-ns run` (holds trajectory.txt and keyframes.txt).
        gt: ground-truth trajectory in TUM format (e.g. groundtruth.txt); default: OUT/sequence/groundtruth.txt
            or the groundtruth.txt of the dataset folder named in OUT/summary.json.
        max_dt: maximum timestamp difference (seconds) for associating poses (evo's default 0.01).
        plot: also write OUT/plot_trajectory.png and OUT/plot_ate.png (matplotlib).
    """
    rd = RunDir(out)
    if not rd.path.is_dir():
        raise UserError(f"{out}: output folder not found")
    if gt is None:
        gt = find_ground_truth(rd.path)
        if gt is None:
            raise UserError(f"{out}: no --gt given and no {RunDir.GROUND_TRUTH} found for this run (pass --gt FILE)")
    gt = Path(gt)
    gt_ts, gt_poses = _read(gt)
    if len(gt_ts) == 0:
        raise UserError(f"{gt}: no poses in ground-truth file")
    report: dict[str, object] = {"gt": str(gt), "max_dt": max_dt, "align": "sim3"}
    # Same keys as the eval.json that `mslam-ns demo` writes.
    for key, name in (("all_frames", RunDir.TRAJECTORY), ("keyframes", RunDir.KEYFRAMES)):
        r = evaluate_files(rd.file(name), gt_ts, gt_poses, gt, max_dt)
        report[key] = r.to_dict()
        print(format_result(key, r))
    rd.write_eval(report)
    print(f"wrote {rd.file(RunDir.EVAL)}")
    if plot:
        from mslam_ns.eval.plots import write_plots

        for p in write_plots(rd.path, gt, max_dt=max_dt):
            print(f"wrote {p}")
    return 0
