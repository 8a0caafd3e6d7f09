"""The `mslam-data` dataparser: nerfstudio's own `nerfstudio-data` parser on a dataset made by mslam_ns.

`--data` may be a video, an image folder, a dataset folder (TUM / EuRoC / 7-Scenes / synthetic), a run
folder of `mslam-ns run`, or a folder written by `ns-process-data mslam` (or `mslam-ns export --format
nerfstudio`). Anything that is not yet a nerfstudio dataset is turned into one first, with the SLAM run
when needed, and cached on disk by input content + settings (`cache_dir`), so a second `ns-train` starts
at once. Cameras, images, splits and the seed points (`points3D_xyz`, `points3D_rgb`) then come from
`NerfstudioDataParser` itself, so they follow nerfstudio's conventions exactly, including every
`orientation_method` / `center_method` / `auto_scale_poses` option.

This module is imported by nerfstudio at the start of every `ns-*` command (entry point
`nerfstudio.dataparser_configs`): it imports nothing heavy at module level.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from nerfstudio.data.dataparsers.nerfstudio_dataparser import Nerfstudio, NerfstudioDataParserConfig
from nerfstudio.plugins.registry_dataparser import DataParserSpecification

__all__ = ["MslamDataParserConfig", "MslamDataParser", "mslam_data", "prepare_dataset"]

logger = logging.getLogger(__name__)


def _default_cache() -> Path:
    return Path(os.environ.get("MSLAM_NS_CACHE", Path.home() / ".cache" / "mslam_ns")) / "datasets"


@dataclass
class MslamDataParserConfig(NerfstudioDataParserConfig):
    """mslam_ns dataset: poses, intrinsics and dense seed points from the MASt3R-SLAM method."""

    _target: type = field(default_factory=lambda: MslamDataParser)
    """target class to instantiate"""
    load_3D_points: bool = True
    """Seed the model with the SLAM's fused points (`points3D_xyz`, `points3D_rgb`)."""
    prior: Literal["mast3r", "oracle"] = "mast3r"
    """Two-view prior when the SLAM has to run: 'mast3r' or 'oracle' (datasets with depth + ground truth)."""
    checkpoint: Path | None = None
    """MASt3R checkpoint (default: the cached download)."""
    calib: Path | None = None
    """Intrinsics file for the SLAM."""
    slam_config: Path | None = None
    """YAML with `mslam-ns run` options (e.g. configs/cpu-preview.yaml) for the SLAM."""
    img_size: int | None = None
    """Network image size of the SLAM (default: the SLAM configuration's)."""
    device: str | None = None
    """Torch device of the SLAM (default: the SLAM configuration's)."""
    precision: Literal["fp32", "bf16", "fp16"] | None = None
    """The SLAM network's arithmetic (default: the SLAM configuration's, fp32; see `ns-process-data mslam`)."""
    cuda_graphs: bool = False
    """The SLAM network's calls as CUDA graphs (without it: the SLAM configuration's setting, off)."""
    num_frames_target: int = 300
    """Approximate number of frames in the dataset made from a video / folder."""
    cache_dir: Path = field(default_factory=_default_cache)
    """Where datasets made from videos / folders / run folders are kept (env MSLAM_NS_CACHE)."""
    live: bool = False
    """Start training while the SLAM is still running (`mslam_ns.nerfstudio.live`): frames join the training
    set as the SLAM poses them and cameras and splats follow the backend; the finished result is cached."""
    live_warmup_frames: int = 30
    """Live: frames the SLAM tracks before training starts (also needs 2 keyframes and intrinsics)."""


def prepare_dataset(config: MslamDataParserConfig) -> Path:
    """What nerfstudio's own parser reads for `config.data`: a folder with transforms.json, or a given .json
    file itself (made and cached when needed)."""
    from mslam_ns.errors import UserError
    from mslam_ns.io.rundir import DatasetDir

    data = Path(config.data)
    if _is_dataset(data):
        return data  # a .json file: nerfstudio reads it itself (images relative to its folder)
    if not data.exists():
        raise UserError(f"{data}: no such file or folder")
    from mslam_ns.commands.slam import input_fingerprint, settings_key
    from mslam_ns.io.rundir import RunDir

    if RunDir.is_run(data):
        from mslam_ns.commands.slam import open_run_source
        from mslam_ns.io.atomic import atomic_output_dir
        from mslam_ns.nerfstudio.export import write_nerfstudio
        from mslam_ns.nerfstudio.process_data import select_frames

        run = RunDir(data)
        # the run's own files and the frames it was made from (the images come from there)
        src = (run.read_config() or {}).get("dataset") or run.read_summary().get("dataset")
        fp = input_fingerprint(data) + (input_fingerprint(Path(src)) if src and Path(src).exists() else "")
        key = settings_key({"run": str(data.resolve()), "frames": config.num_frames_target}, fp)
        dest = Path(config.cache_dir) / f"run-{key}"
        if not DatasetDir(dest).is_dataset():
            source = open_run_source(run)
            frames = select_frames(len(source), config.num_frames_target)
            with atomic_output_dir(dest, replace=True) as tmp:
                write_nerfstudio(run, source, tmp, num_downscales=3, frames=frames)
        return dest
    from mslam_ns.nerfstudio.process_data import process

    p, key, dest = _slam_plan(config)
    if not DatasetDir(dest).is_dataset():
        process(replace(p, output_dir=dest, overwrite=True))
    return dest


def _slam_plan(config: MslamDataParserConfig):
    """(ProcessMslam options, settings key, cache folder) of the SLAM behind a video / folder / dataset."""
    from mslam_ns.commands.options import options_to_dict
    from mslam_ns.commands.slam import input_fingerprint, settings_key
    from mslam_ns.nerfstudio.process_data import ProcessMslam, run_options

    data = Path(config.data)
    p = ProcessMslam(
        data=data,
        output_dir=Path(),
        num_frames_target=config.num_frames_target,
        prior=config.prior,
        checkpoint=config.checkpoint,
        calib=config.calib,
        img_size=config.img_size,
        device=config.device,
        precision=config.precision,
        cuda_graphs=config.cuda_graphs,
        config=config.slam_config,
    )
    key = settings_key(
        {**options_to_dict(run_options(p, Path())), "frames": config.num_frames_target}, input_fingerprint(data)
    )
    return p, key, Path(config.cache_dir) / f"{data.stem or 'data'}-{key}"


def _is_dataset(data: Path) -> bool:
    """A folder with transforms.json, or such a .json file itself: nerfstudio's parser reads it as it is."""
    from mslam_ns.io.rundir import DatasetDir

    return (data.suffix == ".json" and data.is_file()) or DatasetDir(data).is_dataset()


def _needs_slam(data: Path) -> bool:
    from mslam_ns.io.rundir import RunDir

    return data.exists() and not _is_dataset(data) and not RunDir.is_run(data)


def prepare_live(config: MslamDataParserConfig):
    """(dataset folder, `LiveSlam` or None): with the SLAM started in the background and its warm-up state
    written as a dataset; None (and the usual dataset) when there is nothing to run or the cache has it."""
    from mslam_ns.nerfstudio.live import LiveSlam
    from mslam_ns.nerfstudio.process_data import run_options

    data = Path(config.data)
    if not _needs_slam(data):
        return prepare_dataset(config), None
    from mslam_ns.io.rundir import DatasetDir

    p, key, dest = _slam_plan(config)
    if DatasetDir(dest).is_dataset():
        return dest, None  # finished earlier: nothing to run
    o = run_options(p, dest)
    live = LiveSlam(o, config.live_warmup_frames, p.num_frames_target, p.num_downscales, p.max_points, dest, key)
    live.start()
    live.wait_warmup()
    folder = live.write_warmup_dataset(Path(config.cache_dir) / f"{dest.name}-live")
    return folder, live


def _consistent_orient(orig):
    """nerfstudio 1.1.5's `auto_orient_and_center_poses` with `method="pca"` flips `poses[1:3]` (two whole
    poses) where it means rows 1:3 of every pose, when the cameras' mean up vector points down after the PCA
    rotation; the returned transform is right. This wrapper returns the poses as `transform @ poses`, which
    equals nerfstudio's result whenever that branch is not taken."""
    import torch

    def orient(poses, method="up", center_method="poses"):
        _, transform = orig(poses, method=method, center_method=center_method)
        P = poses
        if P.shape[-2] == 3:
            bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=P.dtype, device=P.device).expand(*P.shape[:-2], 1, 4)
            P = torch.cat([P, bottom], dim=-2)
        return transform @ P, transform

    return orient


class MslamDataParser(Nerfstudio):
    """`Nerfstudio` on the folder `prepare_dataset` returns (with nerfstudio's pca orientation made
    consistent, see `_consistent_orient`)."""

    config: MslamDataParserConfig

    def _generate_dataparser_outputs(self, split: str = "train", **kwargs):
        from nerfstudio.cameras import camera_utils

        from mslam_ns.errors import UserError

        live = None
        try:
            if self.config.live:
                if getattr(self, "_live", None) is None:  # one session for the train and eval splits
                    self._live = prepare_live(self.config)
                folder, live = self._live
            else:
                folder = prepare_dataset(self.config)
        except UserError as e:
            raise ValueError(str(e)) from None  # nerfstudio's commands print ValueError as one line
        original, orig_orient = self.config.data, camera_utils.auto_orient_and_center_poses
        self.config.data = folder
        camera_utils.auto_orient_and_center_poses = _consistent_orient(orig_orient)
        try:
            out = self._outputs_scaled(split, **kwargs)
        finally:
            self.config.data = original
            camera_utils.auto_orient_and_center_poses = orig_orient
        _add_point_attributes(out.metadata, folder)
        if live is not None:
            out.metadata["mslam_live"] = live
        return out

    def _outputs_scaled(self, split: str, **kwargs):
        """nerfstudio's outputs, except where the camera centres (nearly) coincide, as in a tripod pan:
        `auto_scale_poses` divides by their extent (ZeroDivisionError at 0, a scene blown up beyond any
        box when tiny). There the scale comes from the seed points instead: they fill +/- 1, as the cameras
        would have."""
        cfg = self.config
        try:
            out = super()._generate_dataparser_outputs(split, **kwargs)
            pts = out.metadata.get("points3D_xyz")
            if not cfg.auto_scale_poses or pts is None or len(pts) == 0 or float(pts.abs().max()) < TRIPOD_RATIO:
                return out
        except ZeroDivisionError:
            if not cfg.auto_scale_poses:
                raise
        auto, factor = cfg.auto_scale_poses, cfg.scale_factor
        try:
            cfg.auto_scale_poses = False  # the poses as they are (times cfg.scale_factor), points alike
            pts = super()._generate_dataparser_outputs(split, **kwargs).metadata.get("points3D_xyz")
            if pts is not None and len(pts) and float(pts.abs().max()) > 0:
                cfg.scale_factor = factor / float(pts.abs().max())
                logger.warning("the cameras hardly move (a pan from one place): scene scaled by its points")
            return super()._generate_dataparser_outputs(split, **kwargs)
        finally:
            cfg.auto_scale_poses, cfg.scale_factor = auto, factor


TRIPOD_RATIO = 1e3
"""With `auto_scale_poses`, seed points this far out of the cameras' +/- 1 box mean the cameras hardly moved:
the scale comes from the points instead (`MslamDataParser._outputs_scaled`)."""


def _add_point_attributes(meta: dict, target: Path) -> None:
    """`points3D_confidence` [P] and `points3D_keyframe` [P] (same order as `points3D_xyz`) from the
    extra properties of an mslam_ns `sparse_pc.ply`, for seeding opacities and the keyframe each splat
    follows when the SLAM moves it. Left out when the PLY has none (another tool wrote it). `target`: the
    dataset folder or its .json file, as handed to nerfstudio."""
    import json

    import numpy as np
    import torch

    from mslam_ns.io.rundir import DatasetDir, read_point_cloud

    if "points3D_xyz" not in meta:
        return
    try:
        path = target if target.suffix == ".json" else DatasetDir(target).transforms
        ply = path.parent / json.loads(path.read_text(encoding="utf-8")).get("ply_file_path", "")
        pc = read_point_cloud(ply)
    except Exception:  # not ours / unreadable: nerfstudio's own xyz + rgb stay as they are
        return
    if len(pc) != len(meta["points3D_xyz"]) or np.isnan(pc.confidence).all():
        return
    meta["points3D_confidence"] = torch.from_numpy(np.nan_to_num(pc.confidence, nan=0.0).astype(np.float32))
    meta["points3D_keyframe"] = torch.from_numpy(pc.keyframe.astype(np.int64))


mslam_data = DataParserSpecification(
    config=MslamDataParserConfig(),
    description="mslam_ns: video / images / dataset / run folder -> poses + dense seed points (MASt3R-SLAM)",
)
