"""`ns-process-data mslam --data VIDEO_OR_FOLDER --output-dir OUT`: a nerfstudio dataset without COLMAP.

Output folder (built in a temporary sibling folder and swapped in whole when everything succeeded):

    images/ images_2/ ...   frames at full resolution and downscaled (`--num-downscales`)
    transforms.json         poses + intrinsics from the SLAM (`mslam_ns.nerfstudio.export`)
    sparse_pc.ply           seed points (dense fused SLAM points, voxel down-sampled)
    mslam_run/              the SLAM run folder (`RunDir`): trajectories, summary, config

A second call with the same input (by content) and settings reuses `mslam_run/`. A non-empty OUT that is
not an earlier output of this command is refused unless `--overwrite`. A rerun with new settings next to an
earlier dataset writes its SLAM result to `.mslam_run.pending/` first and swaps run and export in together, so
`transforms.json` always matches `mslam_run/` (an interrupted rerun leaves the old pair and a pending run
that the next call reuses). The output folder is probed by creating a file next to it, and the settings
(crop factor, counts) are checked, before the SLAM runs. Every failure exits non-zero with one line: bad
input and file-system errors 2, Ctrl-C 130, anything else 1 (`--verbose` adds the traceback).

How `mslam` becomes a subcommand of nerfstudio's own `ns-process-data` (which has no plugin hook):
`extend_commands` adds this dataclass to the `Commands` union of `nerfstudio.scripts.process_data`; it is
called by the import hook in `mslam_ns/nerfstudio/_ns_hook.py`, which the `mslam_ns_process_data.pth` file
installed with the package loads at interpreter start (the hook only watches for that one module and
imports nothing else). Uninstalling mslam_ns removes the .pth; nerfstudio's files are never touched.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mslam_ns.io.rundir import DatasetDir  # light (numpy only): this module loads with ns-process-data

__all__ = ["ProcessMslam", "extend_commands", "RUN_SUBDIR"]

RUN_SUBDIR = DatasetDir.RUN
logger = logging.getLogger(__name__)


@dataclass
class ProcessMslam:
    """Process a video, image folder or dataset into a nerfstudio dataset with mslam_ns's dense SLAM
    (MASt3R-SLAM): poses, intrinsics and dense seed points, no COLMAP."""

    data: Path
    """Video file, image folder, or TUM / EuRoC / 7-Scenes / synthetic sequence folder."""
    output_dir: Path
    """Folder to write the nerfstudio dataset to."""
    num_frames_target: int = 300
    """Approximate number of frames written to the dataset (the SLAM itself tracks every frame)."""
    num_downscales: int = 3
    """Number of times to downscale the images (images_2, images_4, images_8 for 3)."""
    crop_factor: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    """Portion of the image to crop away: top, bottom, left, right (fractions in [0, 1))."""
    skip_image_processing: bool = False
    """Write transforms.json and the seed points only (images/ already there from an earlier call)."""
    verbose: bool = False
    """More output."""
    prior: Literal["mast3r", "oracle"] = "mast3r"
    """Two-view prior: 'mast3r' (the network) or 'oracle' (datasets with depth and ground truth)."""
    checkpoint: Path | None = None
    """MASt3R checkpoint (default: the cached download)."""
    calib: Path | None = None
    """Intrinsics file (then the SLAM runs calibrated unless --mode says otherwise)."""
    img_size: int | None = None
    """Long side of the network image (default: the SLAM configuration's)."""
    device: str | None = None
    """Torch device of the SLAM (default: the SLAM configuration's)."""
    mode: Literal["auto", "rays", "calib"] | None = None
    """'auto', 'rays' or 'calib' (default: the SLAM configuration's)."""
    precision: Literal["fp32", "bf16", "fp16"] | None = None
    """The network's arithmetic (default: the SLAM configuration's, fp32); bf16 is 2-3x faster on CPUs with
    bf16 instructions (`mslam-ns doctor` says), fp16 is for CUDA."""
    cuda_graphs: bool = False
    """Run the network's calls as CUDA graphs (--device cuda, --prior mast3r; README "CUDA graphs"); without
    the flag, the SLAM configuration's setting (off)."""
    config: Path | None = None
    """YAML with `mslam-ns run` options (e.g. configs/cpu-preview.yaml)."""
    include_lost: bool = False
    """Also write frames whose tracking failed."""
    depth: bool = False
    """Also write per-frame depth maps rendered from the fused points."""
    max_points: int = 500_000
    """Voxel down-sample the seed points (sparse_pc.ply) to at most this many."""
    overwrite: bool = False
    """Replace a non-empty output folder that is not an earlier output of this command."""

    def main(self) -> None:
        from mslam_ns.errors import UserError

        # nerfstudio's entrypoint logs RuntimeError / ValueError and exits 0: every failure ends here instead
        try:
            process(self)
        except UserError as e:
            _fail(str(e), 2)
        except OSError as e:
            where = f"{e.filename}: " if e.filename else ""
            _fail(f"{where}{e.strerror or e}", 2)
        except KeyboardInterrupt:
            _fail("interrupted (nothing half-written; a rerun reuses finished work)", 130)
        except Exception as e:
            logger.info("traceback", exc_info=True)  # shown with --verbose
            _fail(f"unexpected {type(e).__name__}: {e} (rerun with --verbose for the traceback)", 1)


def _fail(msg: str, code: int) -> None:
    print("ns-process-data mslam: error: " + " ".join(msg.split()), file=sys.stderr)
    sys.exit(code)


def run_options(p: ProcessMslam, out: Path):
    """The `RunOptions` of the SLAM behind `p` (config file, then the flags given)."""
    from mslam_ns.commands.options import RunOptions, load_options

    given = (("img_size", p.img_size), ("device", p.device), ("mode", p.mode), ("precision", p.precision))
    given += (("cuda_graphs", True if p.cuda_graphs else None),)
    slam = {k: v for k, v in given if v is not None}
    o = load_options(RunOptions, p.config)
    import dataclasses

    o = dataclasses.replace(
        o,
        dataset=p.data,
        out=out,
        prior=p.prior,
        checkpoint=p.checkpoint,
        calib=p.calib,
        quiet=not sys.stderr.isatty() and not p.verbose,
        overwrite=True,
        slam=dataclasses.replace(o.slam, **slam),
    )
    return o


def select_frames(n: int, target: int):
    """Indices of about `target` evenly spread frames of `n` (None: all of them, when n <= target)."""
    if target >= n:
        return None
    import numpy as np

    return np.unique(np.linspace(0, n - 1, target).round().astype(int))


def _link_tree(src: Path, dst: Path) -> None:
    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link)


def process(p: ProcessMslam) -> Path:
    """Run (or reuse) the SLAM and write the nerfstudio dataset into `p.output_dir`."""
    from mslam_ns.commands.options import options_to_dict
    from mslam_ns.commands.slam import check_out, execute_run, input_fingerprint, open_dataset, settings_key
    from mslam_ns.errors import UserError
    from mslam_ns.io.atomic import atomic_output_dir
    from mslam_ns.io.rundir import RunDir
    from mslam_ns.nerfstudio.export import check_crop, write_nerfstudio

    logging.basicConfig(level=logging.INFO if p.verbose else logging.WARNING)
    out = Path(p.output_dir)
    if not Path(p.data).exists():
        raise UserError(f"{p.data}: no such file or folder")
    if p.num_frames_target < 1 or p.num_downscales < 0 or p.max_points < 1:
        raise UserError("--num-frames-target and --max-points must be >= 1, --num-downscales >= 0")
    crop = check_crop(p.crop_factor)  # everything that can be checked is checked before the SLAM runs
    ds = DatasetDir(out)
    earlier, pending = ds.run(), ds.pending_run()
    ours = out.is_dir() and any((r.path / RunDir.SUMMARY).is_file() for r in (earlier, pending))
    check_out(out, p.overwrite or ours)  # also probes that OUT can be written
    if p.skip_image_processing and not (out / DatasetDir.IMAGES).is_dir():
        raise UserError(f"{out}: --skip-image-processing needs the images/ of an earlier call")
    o = run_options(p, earlier.path)
    key = settings_key(options_to_dict(o), input_fingerprint(Path(p.data)))
    done = [r for r in (earlier, pending) if RunDir.is_run(r.path) and r.read_summary().get("cache_key") == key]
    run = done[0] if done else None
    if run is not None:
        print(f"reusing the finished SLAM run in {run.path}")
    else:
        # The SLAM result goes in first, on its own, so that an interrupted export still reuses it. Next to an
        # earlier dataset it waits in the pending folder and moves in with its export: transforms.json and
        # mslam_run/ always belong together.
        run = pending if ds.is_dataset() else earlier
        execute_run(o, run.path, extra_summary={"cache_key": key}, replace=True)
    source = open_dataset(Path(p.data), o.stride, o.max_frames, o.calib)
    n = len(source)
    frames = select_frames(n, p.num_frames_target)
    from rich.progress import Progress

    with atomic_output_dir(out, replace=True) as tmp:  # the pending run, if any, goes with the old folder
        _link_tree(run.path, tmp / RUN_SUBDIR)
        if p.skip_image_processing:
            for d in out.iterdir():
                if d.is_dir() and d.name.startswith(DatasetDir.IMAGES):
                    _link_tree(d, tmp / d.name)
        with Progress(disable=o.quiet) as prog:
            task = prog.add_task("[bold]images", total=n if frames is None else len(frames))
            write_nerfstudio(
                RunDir(tmp / RUN_SUBDIR),
                source,
                tmp,
                p.num_downscales,
                p.include_lost,
                p.depth,
                frames=frames,
                crop=crop,
                images=not p.skip_image_processing,
                progress=lambda: prog.advance(task),
                max_points=p.max_points,
                run_ref=RUN_SUBDIR,
            )
    print(f"wrote a nerfstudio dataset to {out}/ (train with: ns-train splatfacto --data {out})")
    return out


def extend_commands(module) -> None:
    """Add `mslam` to the `Commands` union of `nerfstudio.scripts.process_data` (idempotent)."""
    from typing import Annotated, Union, get_args

    import tyro

    cmds = module.Commands
    if any(get_args(a)[:1] == (ProcessMslam,) for a in get_args(cmds)):
        return
    module.Commands = Union[cmds, Annotated[ProcessMslam, tyro.conf.subcommand(name="mslam")]]  # noqa: UP007
