"""`mslam-ns export RUN_DIR --format nerfstudio|colmap|tum|ply --out DIR`: a run in another format."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Literal

from tyro.conf import Positional

from mslam_ns.commands.slam import check_out, open_run_source
from mslam_ns.errors import UserError
from mslam_ns.io.rundir import RunDir

__all__ = ["export"]


def export(
    run_dir: Positional[Path],
    format: Literal["nerfstudio", "colmap", "tum", "ply"] = "nerfstudio",
    out: Path = Path("mslam_export"),
    num_downscales: int = 3,
    include_lost: bool = False,
    depth: bool = False,
    max_points: int = 500_000,
    overwrite: bool = False,
    quiet: bool = False,
) -> int:
    """Export a run folder: a nerfstudio dataset, a COLMAP text model, TUM trajectories or a PLY.

    Args:
        run_dir: folder written by `mslam-ns run` (or the run folder inside `ns-process-data mslam`'s output).
        format: 'nerfstudio' (transforms.json + images + sparse_pc.ply), 'colmap' (sparse/0/*.txt + images),
            'tum' (trajectory.txt, keyframes.txt) or 'ply' (points.ply with colours).
        out: destination folder (must be new or empty unless --overwrite).
        num_downscales: nerfstudio: also write images_2 ... images_{2^n}.
        include_lost: also export frames whose tracking failed (flagged in transforms.json).
        depth: nerfstudio: also write per-frame depth (16-bit PNG, millimetres) rendered from the fused points.
        max_points: voxel down-sample the points to at most this many.
        overwrite: replace an existing non-empty OUT.
        quiet: print nothing but errors.
    """
    from mslam_ns.io.atomic import atomic_output_dir

    run = RunDir(run_dir).check()
    check_out(out, overwrite)  # also probes that OUT can be written
    if num_downscales < 0 or max_points < 1:
        raise UserError("--num-downscales must be >= 0 and --max-points >= 1")
    with atomic_output_dir(out, replace=overwrite) as tmp:
        if format == "nerfstudio":
            from mslam_ns.nerfstudio.export import write_nerfstudio

            write_nerfstudio(run, open_run_source(run), tmp, num_downscales, include_lost, depth, max_points)
        elif format == "colmap":
            from mslam_ns.nerfstudio.colmap import write_colmap

            write_colmap(run, open_run_source(run), tmp, include_lost, max_points)
        elif format == "tum":
            for name in (RunDir.TRAJECTORY, RunDir.KEYFRAMES):
                shutil.copyfile(run.file(name), tmp / name)
        else:
            from mslam_ns.io.writers import write_ply
            from mslam_ns.nerfstudio.export import voxel_downsample

            xyz, rgb, _ = voxel_downsample(run.read_points(), max_points)
            write_ply(tmp / RunDir.POINTS, xyz, rgb)
    if not quiet:
        print(f"wrote {format} export of {run.path} to {out}/")
    return 0
