"""Export a run folder as a COLMAP text model: `sparse/0/{cameras,images,points3D}.txt` + `images/`.

One PINHOLE camera (the run's intrinsics at the resolution of the written images; COLMAP's pixel
convention via `conventions.principal_point_to_corner_origin`), one image per tracked frame with its
world-to-camera pose (`conventions.c2w_to_colmap`) and original file name, and the fused points (no
tracks: MASt3R-SLAM has dense pointmaps, not feature tracks). World frame and units: the run's own, like the
nerfstudio export. File names come from `DatasetDir`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mslam_ns.geometry import conventions as cv
from mslam_ns.io.atomic import atomic_write
from mslam_ns.io.rundir import DatasetDir, RunDir
from mslam_ns.nerfstudio.export import SelectedFrames, frame_file_name, voxel_downsample, write_images

__all__ = ["write_colmap"]


def write_colmap(
    run: RunDir,
    source,
    out: Path,
    include_lost: bool = False,
    max_points: int = 500_000,
    images: bool = True,
    progress: Any = None,
) -> Path:
    """Write the COLMAP text model of `run` into OUT/sparse/0 (and the frames into OUT/images)."""
    from mslam_ns.errors import UserError

    out = Path(out)
    table, c2w = run.frame_poses()
    intr = run.intrinsics()
    if intr is None:
        raise UserError(f"{run.path}: the run has no intrinsics (too few keyframes to estimate them)")
    K, (W, H) = intr
    names = [frame_file_name(n) for n in table.names]
    if len(set(names)) != len(names):
        names = [f"{i:06d}_{n}" for i, n in enumerate(names)]
    keep = np.array([i for i in range(len(names)) if include_lost or not table.lost[i]], dtype=np.int64)
    if images:  # the frames in images.txt only
        write_images(SelectedFrames(source, keep, (0, 0, 0, 0)), [names[i] for i in keep], out, 0, progress=progress)
    model = out / DatasetDir.COLMAP_MODEL
    model.mkdir(parents=True, exist_ok=True)
    cx, cy = cv.principal_point_to_corner_origin(K[0, 2], K[1, 2])
    with atomic_write(model / DatasetDir.COLMAP_CAMERAS) as f:
        f.write("# Camera list with one line of data per camera:\n#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]\n")
        f.write(f"1 PINHOLE {int(W)} {int(H)} {K[0, 0]:.9g} {K[1, 1]:.9g} {cx:.9g} {cy:.9g}\n")
    q, t = cv.c2w_to_colmap(c2w)
    with atomic_write(model / DatasetDir.COLMAP_IMAGES) as f:
        f.write(
            "# Image list with two lines of data per image:\n"
            "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME\n#   POINTS2D[] as (X, Y, POINT3D_ID)\n"
        )
        for i in keep.tolist():
            name = names[i]
            f.write(f"{i + 1} " + " ".join(f"{v:.12g}" for v in (*q[i], *t[i])) + f" 1 {name}\n\n")
    xyz, rgb, _ = voxel_downsample(run.read_points(), max_points)
    with atomic_write(model / DatasetDir.COLMAP_POINTS) as f:
        f.write(
            "# 3D point list with one line of data per point:\n"
            "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)\n"
        )
        for k, (p, c) in enumerate(zip(xyz.tolist(), rgb.tolist()), start=1):
            f.write(f"{k} {p[0]:.7g} {p[1]:.7g} {p[2]:.7g} {c[0]} {c[1]} {c[2]} 0\n")
    return model
