"""Small synthetic maps for the viewer tests: a run folder on disk and a live `SharedMap`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

N_KEYFRAMES = 5
N_FRAMES = 25
LOST_FRAMES = (11, 12)
EDGES = [(0, 1, "seq"), (1, 2, "seq"), (2, 3, "seq"), (3, 4, "seq"), (4, 0, "loop")]
HW = (24, 32)  # network image size of the live keyframes


def arc_poses(n: int, radius: float = 2.0, span: float = 1.2) -> np.ndarray:  # [n, 7] TUM rows T_WC
    """Cameras on an arc around the origin's +z side, all looking at a point 3 units ahead."""
    out = np.zeros((n, 7))
    for i, a in enumerate(np.linspace(-span / 2, span / 2, n)):
        out[i, :3] = (radius * np.sin(a), 0.0, radius * (1 - np.cos(a)))
        # rotation about y by -a (camera keeps looking roughly along +z): quaternion xyzw
        out[i, 3:] = (0.0, np.sin(-a / 2), 0.0, np.cos(-a / 2))
    return out


def image(seed: int, hw: tuple[int, int] = (48, 64)) -> np.ndarray:  # [H, W, 3] uint8
    rng = np.random.default_rng(seed)
    img = np.zeros(hw + (3,), np.uint8)
    img[..., 0] = np.linspace(0, 255, hw[1])[None, :]
    img[..., 1] = rng.integers(0, 255)
    img[..., 2] = np.linspace(255, 0, hw[0])[:, None]
    return img


def keyframe_points(k: int, n: int = 400) -> tuple[np.ndarray, np.ndarray]:  # [n, 3] camera, [n] conf
    rng = np.random.default_rng(100 + k)
    X = np.stack([rng.uniform(-1, 1, n), rng.uniform(-0.7, 0.7, n), rng.uniform(2.5, 3.5, n)], axis=1)
    return X.astype(np.float32), np.linspace(1.0, 5.0, n).astype(np.float32)


def make_run_dir(root: Path, per_keyframe_points: bool = True) -> Path:
    """A run folder written through `RunDir` (frames, points with confidence and keyframe, edges, thumbnails),
    with known contents: N_FRAMES frames on an arc, N_KEYFRAMES keyframes, LOST_FRAMES lost, EDGES."""
    from mslam_ns.io.poses import quat_to_matrix
    from mslam_ns.io.rundir import FrameTable, PointCloud, RunDir
    from mslam_ns.io.tum import write_tum_trajectory

    rd = RunDir(root)
    root.mkdir(parents=True, exist_ok=True)
    T = arc_poses(N_FRAMES)
    ts = np.arange(N_FRAMES) * 0.1
    kf_rows = np.linspace(0, N_FRAMES - 1, N_KEYFRAMES).astype(int)
    write_tum_trajectory(rd.file(rd.TRAJECTORY), ts, T)
    write_tum_trajectory(rd.file(rd.KEYFRAMES), ts[kf_rows], T[kf_rows])
    kf_of = np.searchsorted(kf_rows, np.arange(N_FRAMES), side="right") - 1
    rd.write_frames(
        FrameTable(
            ts,
            kf_of.astype(np.int64),
            np.isin(np.arange(N_FRAMES), kf_rows),
            np.isin(np.arange(N_FRAMES), LOST_FRAMES),
            [f"frame {i:03d}.png" for i in range(N_FRAMES)],
        )
    )
    rd.write_thumbnails({k: image(k) for k in range(N_KEYFRAMES)})
    xyz, rgb, conf, kfs = [], [], [], []
    for k, row in enumerate(kf_rows):
        X, C = keyframe_points(k)
        R = quat_to_matrix(T[row, 3:])
        xyz.append(X @ R.T + T[row, :3])
        rgb.append(np.tile(np.array([[200, 60 + 30 * k, 40]], np.uint8), (len(X), 1)))
        conf.append(C)
        kfs.append(np.full(len(X), k if per_keyframe_points else -1, np.int32))
    n = sum(len(x) for x in xyz)
    rd.write_points(
        PointCloud(
            np.concatenate(xyz).astype(np.float32),
            np.concatenate(rgb),
            np.concatenate(conf),
            np.concatenate(kfs),
            np.zeros((n, 2), np.float32),
        )
    )
    rd.write_edges(np.array([(i, j) for i, j, _ in EDGES]), [k for _, _, k in EDGES])
    summary = {
        "frames": N_FRAMES,
        "keyframes": N_KEYFRAMES,
        "lost_frames": len(LOST_FRAMES),
        "state": "tracking",
        "restarts": 0,
        "intrinsics": {"fx": 50.0, "fy": 50.0, "cx": 32.0, "cy": 24.0},
        "image_transform": {"source_size": [64, 48]},
    }
    rd.file(rd.SUMMARY).write_text(json.dumps(summary))
    return root


def shared_map_frame(k: int, T_WC: np.ndarray, hw: tuple[int, int] = HW):
    """A keyframe `Frame` for a `SharedMap` (image, canonical pointmap X and confidence C)."""
    import torch

    from mslam_ns.slam.frame import Frame

    n = hw[0] * hw[1]
    X, C = keyframe_points(k, n)
    return Frame(
        index=k,
        timestamp=0.1 * k,
        name=f"kf{k}.png",
        image=torch.as_tensor(image(k, hw)),
        transform=None,
        enc=None,
        T_WC=torch.as_tensor(T_WC, dtype=torch.float32),
        X=torch.as_tensor(X),
        C=torch.as_tensor(C),
        N=1,
    )


def sim3_row(T7: np.ndarray, s: float = 1.0) -> np.ndarray:  # [7] -> [8]
    return np.concatenate([T7, [s]])
