"""Test helper: a nerfstudio folder (transforms.json + images/ + points.ply) from a synthetic sequence.

Poses are the sequence's ground truth (OpenCV T_WC -> nerfstudio OpenGL c2w), points are back-projected
depth of every ``kf_every``-th frame (the "keyframes"), subsampled with ``stride``; each point also gets a
keyframe id and a confidence (``points_meta.npz``), what the SLAM export provides.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from mslam_ns.io.calibration import load_calibration
from mslam_ns.io.synthetic import DEPTH_SCALE, generate_sequence
from mslam_ns.io.tum import read_tum_trajectory
from mslam_ns.io.writers import write_ply


def _T_to_matrix(T: np.ndarray) -> np.ndarray:  # [7] tx ty tz qx qy qz qw -> [4, 4]
    x, y, z, w = T[3:7] / np.linalg.norm(T[3:7])
    R = np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )
    M = np.eye(4)
    M[:3, :3], M[:3, 3] = R, T[:3]
    return M


def write_ns_dataset(
    out: Path,
    frames: int = 24,
    width: int = 64,
    height: int = 48,
    seed: int = 0,
    kf_every: int = 4,
    stride: int = 3,
) -> dict:
    """Write the folder; return facts (n_points, keyframe ids per frame, T_WC matrices [F, 4, 4] OpenCV)."""
    seq = generate_sequence(out / "seq", frames, width, height, seed)
    intr = load_calibration(seq / "calibration.txt")
    ts, poses = read_tum_trajectory(seq / "groundtruth.txt")
    names = sorted(p.name for p in (seq / "rgb").iterdir())
    (out / "images").mkdir(parents=True, exist_ok=True)
    flip = np.diag([1.0, -1.0, -1.0, 1.0])  # OpenCV -> OpenGL camera axes
    pts, cols, kfs, confs, tf_frames, mats = [], [], [], [], [], []
    v, u = np.mgrid[0:height:stride, 0:width:stride]
    for i, name in enumerate(names):
        T_WC = _T_to_matrix(np.asarray(poses[i], dtype=np.float64))
        mats.append(T_WC)
        shutil.copy(seq / "rgb" / name, out / "images" / name)
        tf_frames.append({"file_path": f"images/{name}", "transform_matrix": (T_WC @ flip).tolist()})
        if i % kf_every:
            continue
        depth = np.asarray(Image.open(seq / "depth" / name), dtype=np.float64) / DEPTH_SCALE
        rgb = np.asarray(Image.open(seq / "rgb" / name).convert("RGB"))
        z = depth[v, u]
        X = np.stack([(u - intr.cx) / intr.fx * z, (v - intr.cy) / intr.fy * z, z], -1).reshape(-1, 3)
        Xw = X @ T_WC[:3, :3].T + T_WC[:3, 3]
        pts.append(Xw)
        cols.append(rgb[v, u].reshape(-1, 3))
        kfs.append(np.full(len(Xw), i // kf_every))
        confs.append(np.random.default_rng(i).uniform(1.0, 5.0, len(Xw)))
    xyz, rgb = np.concatenate(pts).astype(np.float32), np.concatenate(cols).astype(np.uint8)
    write_ply(out / "points.ply", xyz, rgb)
    np.savez(out / "points_meta.npz", keyframe=np.concatenate(kfs), confidence=np.concatenate(confs))
    tf = {
        # The renderer puts pixel u's centre at u; nerfstudio/gsplat at u + 0.5: shift the principal point.
        "camera_model": "OPENCV",
        "fl_x": intr.fx,
        "fl_y": intr.fy,
        "cx": intr.cx + 0.5,
        "cy": intr.cy + 0.5,
        "w": width,
        "h": height,
        "k1": 0.0,
        "k2": 0.0,
        "p1": 0.0,
        "p2": 0.0,
        "frames": tf_frames,
        "ply_file_path": "points.ply",
    }
    (out / "transforms.json").write_text(json.dumps(tf, indent=2))
    return {"n_points": len(xyz), "T_WC": np.stack(mats), "frame_kf": np.arange(frames) // kf_every}
