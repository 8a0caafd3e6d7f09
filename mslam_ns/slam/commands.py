"""`mslam-ns run` and `mslam-ns demo`: drive a `SlamSystem` over a sequence and write the results.

Outputs (built in a temporary sibling folder and moved into OUT only when everything succeeded):
- `trajectory.txt`: TUM format, EVERY input frame, original timestamps;
- `keyframes.txt`: TUM format, keyframes only;
- `points.ply`: fused confident points with colours, same world frame;
- `frames.txt`: per input frame (trajectory.txt's order): timestamp, keyframe, flags, original file name;
- `summary.json`: counts, timings (prior vs tracking), frames/s, intrinsics, configuration.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mslam_ns.cli import UserError
from mslam_ns.config import SlamConfig

TRAJECTORY_FILE = "trajectory.txt"
KEYFRAMES_FILE = "keyframes.txt"
POINTS_FILE = "points.ply"
FRAMES_FILE = "frames.txt"
SUMMARY_FILE = "summary.json"


# ------------------------------------------------------------------------------------------- building
def open_dataset(dataset: Path, stride: int = 1, max_frames: int | None = None, calib: Path | None = None):
    """`open_source` with every failure turned into one `UserError` line naming the file."""
    from mslam_ns.io.frames import open_source

    if not dataset.exists():
        raise UserError(f"{dataset}: no such file or folder")
    if calib is not None and not calib.is_file():
        raise UserError(f"{calib}: calibration file not found")
    try:
        source = open_source(dataset, stride=stride, max_frames=max_frames, calib=calib)
    except UserError:
        raise
    except (OSError, ValueError, RuntimeError) as e:
        raise UserError(f"{dataset}: {e}") from None
    if len(source) == 0:
        raise UserError(f"{dataset}: no frames")
    from mslam_ns.io.undistort import undistorted

    return undistorted(source)  # the SLAM works on pinhole images: lens distortion is removed here


def make_prior(source, prior: str, oracle_noise: str, img_size: int, seed: int, checkpoint: Path | None,
               device: str):
    """The two-view prior chosen on the command line."""
    if prior == "oracle":
        from mslam_ns.prior.oracle import OraclePrior

        if source.gt_poses is None:
            raise UserError(f"{source.path}: the oracle prior needs ground-truth poses and depth "
                              "(a TUM / synthetic sequence); use --prior mast3r")
        try:
            return OraclePrior.from_source(source, size=img_size, noise=oracle_noise, seed=seed, device=device)
        except ValueError as e:
            raise UserError(f"{source.path}: {e}") from None
    if prior == "mast3r":
        try:
            from mslam_ns.model import load_mast3r
            from mslam_ns.model.weights import resolve_checkpoint
            from mslam_ns.prior.mast3r import Mast3rPrior
        except ImportError as e:
            raise UserError(f"mast3r prior unavailable: {e}") from None
        path = resolve_checkpoint("mast3r", checkpoint)
        return Mast3rPrior(load_mast3r(path, device=device))
    raise UserError(f"unknown prior {prior!r}")


def pose7(T: Any) -> np.ndarray:  # [N, 8] Sim(3) -> [N, 7] (tx ty tz qx qy qz qw)
    """TUM rows from Sim(3) 8-vectors (the camera scale is not part of a pose)."""
    a = np.asarray(T.detach().cpu().double() if hasattr(T, "detach") else T, dtype=np.float64)
    return a.reshape(-1, 8)[:, :7]


def write_outputs(system, out_dir: Path, summary: dict, conf_thresh: float) -> None:
    """Write trajectory.txt, keyframes.txt, points.ply and summary.json into `out_dir`."""
    from mslam_ns.io.tum import write_tum_trajectory
    from mslam_ns.io.writers import write_json, write_ply

    ts, _, T = system.frame_poses()
    write_tum_trajectory(out_dir / TRAJECTORY_FILE, ts.numpy(), pose7(T))
    kts, _, kT = system.keyframe_poses()
    write_tum_trajectory(out_dir / KEYFRAMES_FILE, kts.numpy(), pose7(kT))
    write_frame_table(out_dir / FRAMES_FILE, system.trajectory)
    xyz, rgb = system.points(conf_thresh=conf_thresh)
    write_ply(out_dir / POINTS_FILE, xyz.numpy().astype(np.float32), rgb.numpy().astype(np.uint8))
    summary["points"] = int(xyz.shape[0])
    write_json(out_dir / SUMMARY_FILE, summary)


def write_frame_table(path: Path, trajectory) -> None:
    """One line per input frame, in trajectory.txt's order: timestamp, keyframe, flags, then the original
    file name (last, so that names with spaces stay one field: everything after the fourth column)."""
    from mslam_ns.io.atomic import atomic_write

    ts, names = trajectory.timestamps().tolist(), trajectory.names()
    kf, lost, is_kf = trajectory.kf_ids().tolist(), trajectory.lost_mask().tolist(), \
        trajectory.keyframe_mask().tolist()
    with atomic_write(path) as f:
        f.write("# timestamp keyframe_id is_keyframe lost name\n")
        for t, name, k, iskf, ls in zip(ts, names, kf, is_kf, lost):
            f.write(f"{t:.6f} {k} {int(iskf)} {int(ls)} {name}\n")


def _progress(total: int, quiet: bool):
    """A rich progress bar with frames/s, keyframes and state; returns (progress, callback)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    prog = Progress(TextColumn("[bold]SLAM"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("{task.fields[fps]:.1f} frames/s  kf {task.fields[kf]}  {task.fields[state]}"),
                    disable=quiet, transient=False)
    task = prog.add_task("slam", total=total, fps=0.0, kf=0, state="init")
    t0 = time.perf_counter()
    count = [0]

    def callback(system, r) -> None:
        count[0] += 1
        fps = count[0] / max(time.perf_counter() - t0, 1e-9)
        prog.update(task, advance=1, fps=fps, kf=len(system.keyframes), state=r.state.value)

    return prog, callback


def run_slam(source, prior_obj, cfg: SlamConfig, K: np.ndarray | None, max_lost: int = 10,
             quiet: bool = True):
    """Run a `SlamSystem` over a whole source. Returns (system, summary dict)."""
    from mslam_ns.slam.system import SlamSystem

    system = SlamSystem(prior_obj, cfg, K=K, max_lost=max_lost)
    prog, cb = _progress(len(source), quiet)
    t0 = time.perf_counter()
    with prog:
        system.run(source, progress=lambda r: cb(system, r))
    wall = time.perf_counter() - t0
    tm = dict(system.timings)
    prior_s = tm.get("prior_encode", 0.0) + tm.get("decode", 0.0)
    track_s = tm.get("track", 0.0)
    n = len(system.trajectory)
    K_est = system.intrinsics()
    summary = {
        "frames": n,
        "keyframes": len(system.keyframes),
        "lost_frames": int(system.trajectory.lost_mask().sum()),
        "restarts": system.restarts,
        "state": system.state.value,
        "timings_s": {"total": wall, "prior": prior_s, "tracking": track_s,
                      **{k: v for k, v in sorted(tm.items())}},
        "fps": {"overall": n / max(wall, 1e-9), "frontend_without_prior": n / max(track_s, 1e-9)},
        "intrinsics": None if K_est is None else {
            "fx": float(K_est[0, 0]), "fy": float(K_est[1, 1]), "cx": float(K_est[0, 2]),
            "cy": float(K_est[1, 2]), "source": "given" if system.K_given is not None else "estimated",
            "pixels": "original image"},
        "image_transform": None if system.transform is None else system.transform.to_dict(),
        "undistorted": type(source).__name__ == "UndistortedSource",
        "config": dataclasses.asdict(cfg),
    }
    return system, summary


def _resolve_mode(mode: str, calib: Path | None, source) -> tuple[str, np.ndarray | None]:
    """(mode, K for the SLAM). 'auto' = calib when --calib is given, else rays. In rays mode the intrinsics
    are estimated unless the user gave --calib (then they are used as given, for export)."""
    K = None if source.intrinsics is None else np.asarray(source.intrinsics.K, dtype=np.float64)
    if mode == "auto":
        mode = "calib" if calib is not None else "rays"
    if mode == "calib" and K is None:
        raise UserError(f"{source.path}: calib mode needs intrinsics (pass --calib FILE)")
    return mode, (K if mode == "calib" or calib is not None else None)


def _dataset_intrinsics(source) -> dict | None:
    if source.intrinsics is None:
        return None
    K = np.asarray(source.intrinsics.K, dtype=np.float64)
    return {"fx": float(K[0, 0]), "fy": float(K[1, 1]), "cx": float(K[0, 2]), "cy": float(K[1, 2])}


# ------------------------------------------------------------------------------------------- commands
def run(
    dataset: Path,
    out: Path = Path("mslam_out"),
    prior: Literal["oracle", "mast3r"] = "oracle",
    oracle_noise: Literal["none", "mast3r", "hard"] = "mast3r",
    calib: Path | None = None,
    checkpoint: Path | None = None,
    img_size: int = 512,
    stride: int = 1,
    max_frames: int | None = None,
    mode: Literal["auto", "rays", "calib"] = "auto",
    device: str = "cpu",
    seed: int = 0,
    max_lost: int = 10,
    conf_thresh: float = 1.5,
    refine: bool = True,
    offload_keyframes: bool = False,
    quiet: bool = False,
) -> int:
    """Run the SLAM on a video, image folder or dataset; write poses of every frame, keyframes and points.

    Args:
        dataset: video file, image folder, or TUM / EuRoC / 7-Scenes / synthetic sequence folder.
        out: output folder (trajectory.txt, keyframes.txt, points.ply, summary.json).
        prior: 'oracle' (ground truth + simulated network noise; needs a sequence with GT) or 'mast3r'.
        oracle_noise: noise model of the oracle prior.
        calib: intrinsics file; with it the default mode is calibrated.
        checkpoint: MASt3R checkpoint (for --prior mast3r; default: the cached download).
        img_size: long side of the network image (MASt3R: 512).
        stride: use every n-th frame.
        max_frames: stop after this many frames.
        mode: 'auto' (calib if --calib is given, else rays), 'rays' (uncalibrated) or 'calib'.
        device: torch device for the SLAM ('cpu', 'cuda').
        seed: seed of the oracle noise.
        max_lost: consecutive tracking failures before a new keyframe is started from a mono decode.
        conf_thresh: minimum average confidence of the exported points.
        refine: descriptor refinement of the matches (SPEC.md section 2.6); off is faster, less precise.
        offload_keyframes: keep old keyframe tensors in host memory (for long sequences on a GPU).
        quiet: no progress bar.
    """
    _check_out(out)
    source = open_dataset(dataset, stride, max_frames, calib)
    mode_, K = _resolve_mode(mode, calib, source)
    cfg = SlamConfig(mode=mode_, img_size=img_size, device=device, offload_keyframes=offload_keyframes)
    cfg.matching.refine = refine
    prior_obj = make_prior(source, prior, oracle_noise, img_size, seed, checkpoint, device)
    from mslam_ns.io.atomic import atomic_output_dir

    system, summary = run_slam(source, prior_obj, cfg, K, max_lost=max_lost, quiet=quiet)
    summary.update({"dataset": str(dataset), "prior": prior, "dataset_intrinsics": _dataset_intrinsics(source),
                    "oracle_noise": oracle_noise if prior == "oracle" else None})
    with atomic_output_dir(out) as tmp:
        write_outputs(system, tmp, summary, conf_thresh)
    if not quiet:
        _print_summary(summary, out)
    return 0


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")


def _print_summary(summary: dict, out: Path) -> None:
    from rich.console import Console

    c = Console()
    t = summary["timings_s"]
    c.print(f"[bold]{summary['frames']}[/] frames, [bold]{summary['keyframes']}[/] keyframes, "
            f"{summary['lost_frames']} lost, {summary['restarts']} restarts; "
            f"{summary['fps']['overall']:.2f} frames/s overall "
            f"(prior {t['prior']:.1f} s, tracking {t['tracking']:.1f} s "
            f"= {summary['fps']['frontend_without_prior']:.1f} frames/s without the prior)")
    if summary.get("intrinsics"):
        k = summary["intrinsics"]
        c.print(f"intrinsics ({k['source']}): fx {k['fx']:.1f} fy {k['fy']:.1f} cx {k['cx']:.1f} cy {k['cy']:.1f}")
        g = summary.get("dataset_intrinsics")
        if g and k["source"] == "estimated":
            c.print(f"  dataset's own: fx {g['fx']:.1f} fy {g['fy']:.1f} cx {g['cx']:.1f} cy {g['cy']:.1f}")
    c.print(f"results in {out}/")


def evaluate_run(system, source) -> dict:
    """ATE (Sim(3)-aligned) of all frames and of keyframes against the source's ground truth."""
    from mslam_ns.eval.ate import ate

    gt = source.gt_poses
    gt_ts = np.asarray(source.timestamps, dtype=np.float64)
    ts, _, T = system.frame_poses()
    kts, _, kT = system.keyframe_poses()
    out = {}
    for name, (t, P) in {"all_frames": (ts, T), "keyframes": (kts, kT)}.items():
        r = ate(t.numpy(), pose7(P), gt_ts, gt)
        d = r.to_dict()
        d["rmse_percent_of_path"] = 100.0 * r.rmse / max(r.path_length, 1e-12)
        out[name] = d
    return out


def demo(
    out: Path = Path("mslam_demo"),
    frames: int = 120,
    img_size: int = 512,
    width: int = 640,
    height: int = 480,
    oracle_noise: Literal["none", "mast3r", "hard"] = "mast3r",
    mode: Literal["rays", "calib"] = "rays",
    seed: int = 0,
    quiet: bool = False,
) -> int:
    """Generate a synthetic sequence, run the SLAM with the oracle prior, evaluate against its ground truth.

    Args:
        out: output folder (the sequence goes to OUT/sequence, the SLAM results to OUT).
        frames: number of frames of the synthetic sequence.
        img_size: long side of the network image.
        width: synthetic image width.
        height: synthetic image height.
        oracle_noise: noise model of the oracle prior.
        mode: 'rays' (uncalibrated) or 'calib' (the sequence's own intrinsics).
        seed: seed of the scene and of the noise.
        quiet: no progress bar.
    """
    from rich.console import Console

    from mslam_ns.io.atomic import atomic_output_dir
    from mslam_ns.io.synthetic import generate_sequence
    from mslam_ns.io.writers import write_json

    console = Console()
    _check_out(out)
    with atomic_output_dir(out) as tmp:
        seq = generate_sequence(tmp / "sequence", frames, width, height, seed)
        source = open_dataset(Path(seq))
        mode_, K = _resolve_mode(mode, None, source)
        cfg = SlamConfig(mode=mode_, img_size=img_size)
        prior_obj = make_prior(source, "oracle", oracle_noise, img_size, seed, None, "cpu")
        if not quiet:
            console.print(f"synthetic sequence: {len(source)} frames {width}x{height}, "
                          f"oracle prior (noise '{oracle_noise}'), mode '{mode_}'")
        system, summary = run_slam(source, prior_obj, cfg, K, quiet=quiet)
        res = evaluate_run(system, source)
        summary.update({"dataset": "synthetic", "prior": "oracle", "oracle_noise": oracle_noise, "ate": res,
                        "dataset_intrinsics": _dataset_intrinsics(source)})
        write_outputs(system, tmp, summary, conf_thresh=1.5)
        write_json(tmp / "eval.json", res)
    _print_summary(summary, out)
    for name, r in res.items():
        console.print(f"ATE RMSE {name:10s}: {r['rmse']:.4f} (= {r['rmse_percent_of_path']:.2f}% of the "
                      f"{r['path_length']:.2f} path), {r['n_matched']} poses")
    # Final sequence path after the move.
    if not quiet:
        console.print(f"sequence in {out / 'sequence'}/")
    return 0
