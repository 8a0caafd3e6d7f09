"""Synthetic RGB-D sequences of a textured room, written in the TUM RGB-D layout (`mslam-ns synth`).

Output folder (written atomically: built next to the target, then swapped in):

    rgb/<t>.png        8-bit RGB frames (t = timestamp with 6 decimals, 30 Hz from t = 0)
    depth/<t>.png      16-bit depth, metres x 5000 (0.2 mm steps; every pixel valid)
    rgb.txt, depth.txt TUM file lists
    groundtruth.txt    T_WC per frame, `timestamp tx ty tz qx qy qz qw` (OpenCV camera axes, world z up)
    calibration.txt    `width height` then `fx fy cx cy [k1 k2 p1 p2 [k3]]` (read by `mslam_ns.io.calibration`)
    segments.json      frame ranges of the trajectory segments (`travel`, `rotation`), seed, scene facts

Open it with `mslam_ns.io.sources.open_source(folder)` (a `TumRgbdSource` with depth, GT and intrinsics).
With `dist` (OpenCV radial-tangential coefficients) the frames are rendered through that lens: images and
depth maps alike, each pixel along the ray the lens maps onto it; calibration.txt then lists the coefficients
(so a run undistorts the frames) and the ground truth is unchanged.
Scene and rendering: `mslam_ns.io.synth_scene`; camera paths: `mslam_ns.io.synth_trajectory`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from mslam_ns.errors import UserError
from mslam_ns.io.atomic import atomic_output_dir
from mslam_ns.io.synth_scene import SyntheticRoom, default_intrinsics
from mslam_ns.io.synth_trajectory import TRAJECTORIES, Trajectory, make_trajectory
from mslam_ns.io.tum import write_tum_trajectory

__all__ = ["generate_sequence", "FPS", "DEPTH_SCALE"]

FPS = 30.0
DEPTH_SCALE = 5000.0


def _check_args(out_dir: Path, n_frames: int, width: int, height: int, trajectory: str) -> None:
    if n_frames < 2:
        raise UserError(f"{out_dir}: need at least 2 frames, got {n_frames}")
    if not (16 <= width <= 8192 and 16 <= height <= 8192):
        raise UserError(f"{out_dir}: image size must be between 16 and 8192 pixels, got {width}x{height}")
    if trajectory not in TRAJECTORIES:
        raise UserError(f"{out_dir}: unknown trajectory {trajectory!r} (choose from {', '.join(TRAJECTORIES)})")
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "rgb.txt").is_file():
        raise UserError(f"{out_dir}: folder is not empty (and not an earlier synthetic sequence); choose another")


def generate_sequence(
    out_dir: str | os.PathLike,
    n_frames: int = 120,
    width: int = 640,
    height: int = 480,
    seed: int = 0,
    trajectory: str = "loop",
    dist: tuple[float, ...] = (),
    poses: np.ndarray | None = None,
) -> Path:
    """Render a synthetic sequence and write it in the TUM RGB-D layout (see the module docstring).

    An existing earlier synthetic sequence at `out_dir` is replaced as a whole; any other non-empty folder is
    refused (UserError). `dist`: lens distortion `(k1, k2, p1, p2[, k3])` to render through (default none).
    `poses`: [n_frames, 4, 4] T_WC of a custom camera path (tests), replacing `trajectory`.
    Returns `out_dir`.
    """
    out = Path(out_dir)
    _check_args(out, n_frames, width, height, trajectory)
    if len(dist) not in (0, 4, 5) or not all(np.isfinite(dist)):
        raise UserError(f"{out}: distortion must be 4 or 5 finite numbers (k1 k2 p1 p2 [k3]), got {list(dist)}")
    room = SyntheticRoom(seed)
    intr = dataclasses.replace(default_intrinsics(width, height), dist=tuple(float(d) for d in dist))
    if poses is None:
        traj = make_trajectory(n_frames, trajectory)
    else:
        poses = np.asarray(poses, dtype=np.float64)
        if poses.shape != (n_frames, 4, 4) or not np.isfinite(poses).all():
            raise ValueError(f"poses must be a finite [{n_frames}, 4, 4] array, got shape {poses.shape}")
        traj, trajectory = Trajectory(poses, {"travel": [(0, n_frames)]}), "custom"
    ts = np.arange(n_frames, dtype=np.float64) / FPS
    names = [f"{t:.6f}.png" for t in ts]
    with atomic_output_dir(out, replace=True) as tmp:
        (tmp / "rgb").mkdir()
        (tmp / "depth").mkdir()
        for name, T in zip(names, traj.poses):
            rgb, depth = room.render(T, intr)
            d16 = np.clip(np.rint(depth * DEPTH_SCALE), 0, 65535).astype(np.uint16)
            Image.fromarray(rgb).save(tmp / "rgb" / name, compress_level=1)
            Image.fromarray(d16).save(tmp / "depth" / name, compress_level=1)
        header = f"# synthetic textured room (mslam_ns.io.synthetic), seed {seed}\n# timestamp filename\n"
        (tmp / "rgb.txt").write_text(header + "".join(f"{t:.6f} rgb/{n}\n" for t, n in zip(ts, names)))
        (tmp / "depth.txt").write_text(header + "".join(f"{t:.6f} depth/{n}\n" for t, n in zip(ts, names)))
        write_tum_trajectory(tmp / "groundtruth.txt", ts, traj.poses)
        lens = " ".join(f"{d:.9g}" for d in intr.dist)
        (tmp / "calibration.txt").write_text(
            f"# width height, then fx fy cx cy{' k1 k2 p1 p2 [k3]' if lens else ' (pinhole, no distortion)'}\n"
            f"{width} {height}\n{intr.fx:.6f} {intr.fy:.6f} {intr.cx:.6f} {intr.cy:.6f}{' ' + lens if lens else ''}\n"
        )
        meta = {
            "generator": "mslam_ns.io.synthetic",
            "seed": seed,
            "trajectory": trajectory,
            "n_frames": n_frames,
            "fps": FPS,
            "depth_scale": DEPTH_SCALE,
            "segments": {k: [list(r) for r in v] for k, v in traj.segments.items()},
        }
        (tmp / "segments.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out
