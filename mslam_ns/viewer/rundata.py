"""What the viewer shows of a finished run: `RunData`, read from a `mslam-ns run` output folder.

Files read (all but trajectory.txt optional):
- `trajectory.txt` (TUM rows `t tx ty tz qx qy qz qw`, every frame), `keyframes.txt` (keyframes only);
- `frames.txt` (`timestamp keyframe_id is_keyframe lost interpolated name`): flags, keyframe ids, names;
- `points.ply` (x y z, red green blue, and where present per-vertex `confidence` and `keyframe`);
- `edges.txt` (`i j kind`, kind 'seq' | 'loop' | 'reloc');
- `thumbnails/kf_000012.jpg` (else the original image, when the dataset folder named in summary.json holds it);
- `summary.json` (intrinsics in original pixels and the original image size, for the frustum shape).

Files are read through `mslam_ns.io.rundir.RunDir` (the one owner of the layout); this module only picks
what the viewer draws and tolerates the optional files being absent.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mslam_ns.errors import UserError

__all__ = ["KeyframeInfo", "RunData", "load_run", "thumbnail"]

log = logging.getLogger(__name__)

THUMBNAIL_SIZE = 160
"""Long side (pixels) of the images shown on the frusta."""


@dataclass
class KeyframeInfo:
    """One keyframe as the viewer shows it."""

    kf_id: int
    timestamp: float
    name: str
    T_WC: np.ndarray  # [7] (tx ty tz qx qy qz qw) or [8] Sim(3) camera -> world, OpenCV axes
    thumbnail: np.ndarray | None = None  # [h, w, 3] uint8


@dataclass
class RunData:
    """Everything the viewer draws for a finished run (world frame of the run, OpenCV camera axes)."""

    frame_timestamps: np.ndarray  # [N] float64
    frame_T_WC: np.ndarray  # [N, 7] every frame's pose
    frame_lost: np.ndarray  # [N] bool
    frame_names: list[str]
    keyframes: list[KeyframeInfo]
    points: np.ndarray  # [P, 3] float32 world
    colors: np.ndarray  # [P, 3] uint8
    confidence: np.ndarray | None = None  # [P] float32 average confidence (None: not in the file)
    point_kf: np.ndarray | None = None  # [P] int64 keyframe each point belongs to (None: not in the file)
    edges: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.int64))  # [E, 2] keyframe ids
    edge_kind: list[str] = field(default_factory=list)
    fov_y: float | None = None
    """Vertical field of view (radians) of the original images; None when the intrinsics are unknown."""
    aspect: float | None = None
    """Width / height of the original images."""
    summary: dict = field(default_factory=dict)


def thumbnail(rgb: np.ndarray, size: int = THUMBNAIL_SIZE) -> np.ndarray:  # [H, W, 3] -> [h, w, 3] uint8
    """A copy of `rgb` whose long side is at most `size` pixels."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8))
    img.thumbnail((size, size))
    return np.asarray(img.convert("RGB"))


def _find_image(rd, summary: dict, name: str, kf_id: int) -> Path | None:
    run = rd.path
    cands = [rd.thumbnail_path(kf_id)]
    dataset = summary.get("dataset")
    roots = [run / "sequence"] + ([Path(dataset)] if isinstance(dataset, str) and dataset else [])
    for root in roots:
        if root.is_dir() and name:
            cands += [root / name, root / "rgb" / name, root / "images" / name]
    return next((c for c in cands if c.is_file()), None)


def _load_thumbnail(path: Path | None) -> np.ndarray | None:
    if path is None:
        return None
    from PIL import Image

    try:
        with Image.open(path) as im:
            return thumbnail(np.asarray(im.convert("RGB")))
    except OSError as e:
        log.warning("%s: cannot read image (%s); frustum without image", path, e)
        return None


def _camera_shape(summary: dict) -> tuple[float | None, float | None]:
    """(vertical fov in radians, aspect) of the original images from summary.json, where it says."""
    intr = summary.get("intrinsics") or {}
    tf = summary.get("image_transform") or {}
    size = (
        [intr["width"], intr["height"]]
        if intr.get("width") and intr.get("height")
        else tf.get("source_size") or summary.get("image_size")
    )
    if not size or len(size) != 2:
        return None, None
    w, h = float(size[0]), float(size[1])
    fy = intr.get("fy")
    fov = 2.0 * math.atan(h / (2.0 * float(fy))) if fy else None
    return fov, (w / h if h > 0 else None)


def load_run(run: Path) -> RunData:
    """Read a run folder for the viewer (UserError naming the file when something is missing or malformed).

    trajectory.txt is required; keyframes, frames, points, edges, thumbnails and summary are drawn when present.
    """
    from mslam_ns.io.rundir import RunDir

    rd = RunDir(Path(run))
    if not rd.path.is_dir():
        raise UserError(f"{rd.path}: run folder not found")
    if not rd.file(rd.TRAJECTORY).is_file():
        raise UserError(f"{rd.file(rd.TRAJECTORY)}: not found (is {rd.path} a `mslam-ns run` output folder?)")
    ts, T = rd.read_trajectory()
    summary = rd.read_summary() if rd.file(rd.SUMMARY).is_file() else {}
    n = len(ts)
    lost = np.zeros(n, dtype=bool)
    names = [""] * n
    kf_rows: list[int] = []
    if rd.file(rd.FRAMES).is_file():
        table = rd.read_frames()
        if len(table.timestamps) != n:
            raise UserError(f"{rd.file(rd.FRAMES)}: {len(table.timestamps)} frames, {rd.TRAJECTORY} has {n}")
        lost, names = table.lost, table.names
        kf_rows = np.nonzero(table.is_keyframe)[0].tolist()
    keyframes: list[KeyframeInfo] = []
    if rd.file(rd.KEYFRAMES).is_file():
        kts, kT = rd.read_keyframes()
        for k in range(len(kts)):
            # The keyframe's own frame row: the k-th is_keyframe row, else the frame with the same stamp.
            row = kf_rows[k] if k < len(kf_rows) else int(np.argmin(np.abs(ts - kts[k]))) if n else -1
            name = names[row] if 0 <= row < n else ""
            keyframes.append(
                KeyframeInfo(k, float(kts[k]), name, kT[k], _load_thumbnail(_find_image(rd, summary, name, k)))
            )
    points = np.zeros((0, 3), np.float32)
    colors = np.zeros((0, 3), np.uint8)
    conf = point_kf = None
    if rd.file(rd.POINTS).is_file():
        pc = rd.read_points()
        points, colors = pc.xyz, pc.rgb
        conf = pc.confidence if len(pc) and np.isfinite(pc.confidence).any() else None
        point_kf = pc.keyframe.astype(np.int64) if len(pc) and (pc.keyframe >= 0).all() else None
    edges, kinds = rd.read_edges()
    fov, aspect = _camera_shape(summary)
    return RunData(
        ts,
        T,
        np.asarray(lost, bool),
        list(names),
        keyframes,
        points,
        colors,
        conf,
        point_kf,
        edges,
        kinds,
        fov,
        aspect,
        summary,
    )
