"""Export a run folder as a nerfstudio dataset (`transforms.json` + images + seed points), and the pieces
the other export formats share (image writing, voxel down-sampling, depth rendering).

Written (into a folder the caller makes atomic):

    transforms.json   nerfstudio's `nerfstudio-data` format: OPENCV camera at the resolution of images/,
                      one frame per input frame (lost frames left out unless asked, and flagged),
                      `applied_transform` (our world -> the saved world), `applied_scale` 1, `ply_file_path`
    images/           full-resolution frames (undistorted when the run undistorted), original file names
    images_2/4/8      downscaled copies (`num_downscales`)
    sparse_pc.ply     fused confident points, voxel down-sampled, coloured, SAME world as the poses; extra
                      per-point `confidence` and `keyframe` properties (read by the mslam-data dataparser)
    depth/            optional 16-bit PNG depth in millimetres (nerfstudio's default `depth_unit_scale_factor`
                      1e-3), rendered from the fused points

File names come from `mslam_ns.io.rundir.DatasetDir`.

Scale: the SLAM's own units, those of the two-view prior's pointmaps, which for MASt3R (its metric
checkpoint) are approximately metres; they are kept as they are because the SLAM refresh of a training run
(`refresh.py`) maps SLAM poses into nerfstudio's world with `dataparser_scale` / `dataparser_transform` only.
transforms.json records `mslam.metres_per_slam_unit` (`metres_per_unit`): 1 for MASt3R, 1 / 0.45 for the
oracle prior, whose pointmaps are ground truth times 0.45 by construction. `applied_scale` is written as 1
(the saved world is the SLAM world): nerfstudio 1.1.5 multiplies it into `dataparser_scale` and the seed
points but not the poses, so any other value would move the seed points off the cameras. nerfstudio's
`auto_scale_poses` normalises for training anyway.
All axis conventions come from `mslam_ns.geometry.conventions`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mslam_ns.geometry import conventions as cv
from mslam_ns.io.rundir import DatasetDir, PointCloud, RunDir, write_point_cloud

__all__ = [
    "write_nerfstudio",
    "write_images",
    "voxel_downsample",
    "voxel_downsample_cloud",
    "frame_file_name",
    "metres_per_unit",
    "check_crop",
    "SelectedFrames",
    "TRANSFORMS",
    "SPARSE_PC",
]

TRANSFORMS = DatasetDir.TRANSFORMS
SPARSE_PC = DatasetDir.SPARSE_PC
_IMAGE_EXTS = (".png", ".jpg", ".jpeg")


def frame_file_name(name: str) -> str:
    """The file name written for a frame: its original base name (`.png` added when it has no image suffix)."""
    base = Path(name).name or "frame"
    return base if Path(base).suffix.lower() in _IMAGE_EXTS else base + ".png"


def metres_per_unit(run: RunDir) -> float:
    """Metres per SLAM unit of `run` (approximate): 1 for MASt3R, 1 / global_scale (0.45) for the oracle."""
    summary = run.read_summary()
    if summary.get("prior") != "oracle":
        return 1.0
    from mslam_ns.prior.noise import get_noise

    return 1.0 / float(get_noise(summary.get("oracle_noise") or "mast3r").global_scale)


def check_crop(crop) -> tuple[float, float, float, float]:
    """`crop` as four fractions (top, bottom, left, right) in [0, 1) that leave part of the image (UserError)."""
    from mslam_ns.errors import UserError

    try:
        c = tuple(float(x) for x in crop)
    except (TypeError, ValueError):
        c = ()
    if len(c) != 4 or not all(0.0 <= x < 1.0 for x in c) or c[0] + c[1] >= 1.0 or c[2] + c[3] >= 1.0:
        raise UserError(f"crop factor {tuple(crop)} must be four fractions in [0, 1) leaving part of the image")
    return c  # type: ignore[return-value]


def write_images(
    source,
    names: list[str],
    out: Path,
    num_downscales: int = 0,
    folder: str = DatasetDir.IMAGES,
    progress: Any = None,
) -> tuple[int, int]:
    """Write frame `i` of `source` as OUT/images/<name> (+ images_2/4/8 copies). Returns (width, height)."""
    from PIL import Image

    out = Path(out)
    for d in [folder] + [f"{folder}_{2**k}" for k in range(1, num_downscales + 1)]:
        (out / d).mkdir(parents=True, exist_ok=True)
    size = (0, 0)
    for i in range(len(source)):
        img = Image.fromarray(np.asarray(source[i].image))
        size = img.size
        fname = names[i]
        img.save(out / folder / fname)
        for k in range(1, num_downscales + 1):
            f = 2**k
            w, h = max(1, round(size[0] / f)), max(1, round(size[1] / f))
            img.resize((w, h), Image.BICUBIC).save(out / f"{folder}_{f}" / fname)
        if progress is not None:
            progress()
    return size


def voxel_downsample(pc: PointCloud, max_points: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Average points (and colours) per voxel, growing the voxel until at most `max_points` remain.

    Returns (xyz [M, 3] float32, rgb [M, 3] uint8, voxel size; 0 when nothing had to be merged).
    """
    cloud, vs = voxel_downsample_cloud(pc, max_points)
    return cloud.xyz, cloud.rgb, vs


def voxel_downsample_cloud(pc: PointCloud, max_points: int) -> tuple[PointCloud, float]:
    """`voxel_downsample` keeping the per-point attributes: each voxel's mean position, colour and
    confidence, and the keyframe of its most confident point (splats remember the keyframe they came from)."""
    xyz = np.asarray(pc.xyz, dtype=np.float64)
    rgb = np.asarray(pc.rgb, dtype=np.float64)
    conf = np.nan_to_num(np.asarray(pc.confidence, dtype=np.float64), nan=0.0)
    kf = np.asarray(pc.keyframe, dtype=np.int32)
    if len(xyz) <= max_points:
        return PointCloud(
            xyz.astype(np.float32),
            rgb.astype(np.uint8),
            conf.astype(np.float32),
            kf,
            np.full((len(xyz), 2), np.nan, np.float32),
        ), 0.0
    extent = float(np.max(np.percentile(xyz, 99, axis=0) - np.percentile(xyz, 1, axis=0)))
    vs = max(extent, 1e-9) / 2000.0
    while True:
        keys = np.floor(xyz / vs).astype(np.int64)
        _, inv, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
        inv = inv.reshape(-1)
        if len(counts) <= max_points:
            break
        vs *= 1.5
    m = len(counts)
    P, C, Q = np.zeros((m, 3)), np.zeros((m, 3)), np.zeros(m)
    np.add.at(P, inv, xyz)
    np.add.at(C, inv, rgb)
    np.add.at(Q, inv, conf)
    P /= counts[:, None]
    C /= counts[:, None]
    Q /= counts
    order = np.lexsort((conf, inv))  # by voxel, then confidence: the last of each voxel is its most confident
    best = np.zeros(m, dtype=np.int64)
    best[inv[order]] = order
    return PointCloud(
        P.astype(np.float32),
        np.clip(np.rint(C), 0, 255).astype(np.uint8),
        Q.astype(np.float32),
        kf[best],
        np.full((m, 2), np.nan, np.float32),
    ), vs


def render_depth(X_W: np.ndarray, c2w: np.ndarray, K: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Z-buffer depth [H, W] float32 (0 = no point) of world points X_W [P, 3] seen by a camera c2w [4, 4]
    (OpenCV axes) with intrinsics K [3, 3] (our pixel convention) at image size (W, H)."""
    W, H = size
    R, t = c2w[:3, :3], c2w[:3, 3]
    Xc = (X_W - t) @ R  # world -> camera
    z = Xc[:, 2]
    ok = z > 1e-6
    Xc, z = Xc[ok], z[ok]
    u = np.rint(K[0, 0] * Xc[:, 0] / z + K[0, 2]).astype(np.int64)
    v = np.rint(K[1, 1] * Xc[:, 1] / z + K[1, 2]).astype(np.int64)
    inside = (u >= 0) & (u < W) & (v >= 0) & (v < H)
    depth = np.full(H * W, np.inf)
    np.minimum.at(depth, v[inside] * W + u[inside], z[inside])
    depth[~np.isfinite(depth)] = 0.0
    return depth.reshape(H, W).astype(np.float32)


def write_nerfstudio(
    run: RunDir,
    source,
    out: Path,
    num_downscales: int = 3,
    include_lost: bool = False,
    depth: bool = False,
    max_points: int = 500_000,
    progress: Any = None,
    frames: np.ndarray | None = None,
    crop: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0),
    images: bool = True,
    run_ref: str | None = None,
) -> dict[str, Any]:
    """Write `transforms.json`, images, `sparse_pc.ply` (and depth) for `run` into `out`.

    Args:
        run: the finished run folder.
        source: the run's (undistorted) frame source, in the run's frame order (for the images).
        out: destination folder (make it atomic in the caller).
        num_downscales: images_2 ... images_{2^n} copies.
        include_lost: also write frames whose tracking failed (flagged `mslam_lost`).
        depth: also write per-frame depth maps rendered from the fused points.
        max_points: voxel down-sample the seed points to at most this many.
        progress: called once per image written.
        frames: indices of the frames to export (default: all).
        crop: (top, bottom, left, right) fractions of the image cropped away (nerfstudio's `crop_factor`).
        images: write images/ (False: only transforms.json, seed points and depth; images assumed there).
        run_ref: how transforms.json names the run folder (default: its absolute path).
    Returns:
        the transforms.json dict.
    """
    from mslam_ns.errors import UserError
    from mslam_ns.io.writers import write_json

    out = Path(out)
    crop = check_crop(crop)
    table, c2w = run.frame_poses()
    if len(source) != len(table.names):
        raise UserError(f"{run.path}: the run has {len(table.names)} frames but its input now has {len(source)}")
    intr = run.intrinsics()
    if intr is None:
        raise UserError(f"{run.path}: the run has no intrinsics (too few keyframes to estimate them)")
    K, (W, H) = intr
    names = [frame_file_name(n) for n in table.names]
    interp = table.interpolated_mask()
    if len(set(names)) != len(names):  # e.g. EuRoC cam0/cam1 with the same base names: keep them apart
        names = [f"{i:06d}_{n}" for i, n in enumerate(names)]
    sel = np.arange(len(names)) if frames is None else np.unique(np.asarray(frames, dtype=np.int64))
    if not include_lost:  # neither in transforms.json nor in images/
        sel = sel[~np.asarray(table.lost, dtype=bool)[sel]]
    if not len(sel):
        raise UserError(f"{run.path}: every frame was lost; nothing to export")
    top, bottom, left, right = (int(round(c * n)) for c, n in zip(crop, (H, H, W, W)))
    if top + bottom >= H or left + right >= W:
        raise UserError(f"crop factor {crop} must be four fractions in [0, 1) leaving part of the image")
    if images:
        view = SelectedFrames(source, sel, (top, bottom, left, right))
        size = write_images(view, [names[i] for i in sel], out, num_downscales, progress=progress)
        if size != (W - left - right, H - top - bottom):
            raise UserError(f"{run.path}: intrinsics are for {W}x{H} images but the frames are not")
    pc = run.read_points()
    cloud, voxel = voxel_downsample_cloud(pc, max_points)
    xyz = cloud.xyz
    cloud.xyz = cv.to_nerfstudio_points(xyz).astype(np.float32)
    write_point_cloud(out / SPARSE_PC, cloud)  # x y z red green blue (+ confidence, keyframe: mslam-data)
    cx, cy = cv.principal_point_to_corner_origin(K[0, 2] - left, K[1, 2] - top)
    meta: dict[str, Any] = {
        "camera_model": "OPENCV",
        "fl_x": float(K[0, 0]),
        "fl_y": float(K[1, 1]),
        "cx": cx,
        "cy": cy,
        "w": int(W - left - right),
        "h": int(H - top - bottom),
        "k1": 0.0,
        "k2": 0.0,
        "p1": 0.0,
        "p2": 0.0,
        "applied_transform": cv.APPLIED_TRANSFORM.tolist(),
        "applied_scale": 1.0,
        "ply_file_path": SPARSE_PC,
        "frames": [],
        "mslam": {
            "run": run_ref if run_ref is not None else str(run.path.resolve()),
            "units": "SLAM units (the prior's; MASt3R ~ metres)",
            "metres_per_slam_unit": metres_per_unit(run),
            "voxel_size": voxel,
            "points": int(len(xyz)),
            "lost_frames_included": include_lost,
        },
    }
    M = cv.to_nerfstudio_c2w(c2w)
    if depth:
        (out / DatasetDir.DEPTH).mkdir(parents=True, exist_ok=True)
    Kc = K.copy()
    Kc[0, 2] -= left
    Kc[1, 2] -= top
    for i in sel.tolist():
        name = names[i]
        lost = bool(table.lost[i])  # only with include_lost: `sel` has no lost frame otherwise
        fr = {
            "file_path": f"{DatasetDir.IMAGES}/{name}",
            "transform_matrix": M[i].tolist(),
            "timestamp": float(table.timestamps[i]),
            "original_name": table.names[i],
            "mslam_lost": lost,
            "mslam_keyframe": bool(table.is_keyframe[i]),
            "mslam_interpolated": bool(interp[i]),
        }
        if depth:
            from PIL import Image

            d = render_depth(pc.xyz.astype(np.float64), c2w[i], Kc, (W - left - right, H - top - bottom))
            mm = np.clip(np.rint(d * 1000.0), 0, 65535).astype(np.uint16)
            dname = Path(name).with_suffix(".png").name
            Image.fromarray(mm).save(out / DatasetDir.DEPTH / dname)
            fr["depth_file_path"] = f"{DatasetDir.DEPTH}/{dname}"
        meta["frames"].append(fr)
    write_json(out / TRANSFORMS, meta)
    return meta


class SelectedFrames:
    """Frames `sel` of a source, cropped by (top, bottom, left, right) pixels."""

    def __init__(self, source, sel: np.ndarray, crop: tuple[int, int, int, int]):
        self.source, self.sel, self.crop = source, sel, crop

    def __len__(self) -> int:
        return len(self.sel)

    def __getitem__(self, i: int):
        from types import SimpleNamespace

        img = np.asarray(self.source[int(self.sel[i])].image)
        t, b, l, r = self.crop
        return SimpleNamespace(image=img[t : img.shape[0] - b, l : img.shape[1] - r])


def read_transforms(path: Path) -> dict[str, Any]:
    """transforms.json as a dict."""
    return json.loads(Path(path).read_text(encoding="utf-8"))
