"""Microsoft 7-Scenes sequences: `seq-XX/frame-XXXXXX.color.png`, `.depth.png`, `.pose.txt`.

* The path is a `seq-XX` folder, or a scene folder holding exactly one `seq-XX` (else an error asks to pick).
* Depth: 16-bit PNG in millimetres, 65535 = invalid (-> 0). Note: the dataset's depth comes from the Kinect
  depth camera and is not exactly registered to the colour image.
* Ground truth: `.pose.txt` 4x4 camera-to-world matrices (T_WC); a missing or non-finite pose -> NaN.
* Timestamps: none in the dataset; `index / 30` s. Intrinsics: fx = fy = 585, cx = 320, cy = 240
  (the usual default), or a `calib` file.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from mslam_ns.errors import UserError
from mslam_ns.io.calibration import load_calibration
from mslam_ns.io.frames import FrameSource, Intrinsics
from mslam_ns.io.images import check_same_size, natural_key, read_depth, read_rgb

__all__ = ["SevenScenesSource", "find_seven_scenes_sequence", "SEVEN_SCENES_INTRINSICS"]

SEVEN_SCENES_INTRINSICS = (585.0, 585.0, 320.0, 240.0)
SEVEN_SCENES_DEPTH_SCALE = 1000.0
SEVEN_SCENES_INVALID_DEPTH = 65535
_FPS = 30.0
_FRAME = re.compile(r"^frame-(\d+)\.color\.png$")


def _color_files(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if _FRAME.match(p.name)), key=lambda p: natural_key(p.name))


def find_seven_scenes_sequence(path: Path) -> Path | None:
    """The `seq-XX` folder for `path`, or None if `path` is not 7-Scenes; UserError if ambiguous."""
    if any(_FRAME.match(p.name) for p in path.iterdir()):
        return path
    seqs = [p for p in path.iterdir() if p.is_dir() and p.name.startswith("seq-")]
    seqs.sort(key=lambda p: natural_key(p.name))
    seqs = [s for s in seqs if any(_FRAME.match(p.name) for p in s.iterdir())]
    if len(seqs) == 1:
        return seqs[0]
    if len(seqs) > 1:
        names = ", ".join(s.name for s in seqs)
        raise UserError(f"{path}: holds {len(seqs)} 7-Scenes sequences ({names}); pass one of them")
    return None


def _read_pose(path: Path) -> np.ndarray:  # [4, 4]
    if not path.is_file():
        return np.full((4, 4), np.nan)
    try:
        m = np.loadtxt(path, dtype=np.float64)
    except ValueError:
        raise UserError(f"{path}: expected a 4x4 matrix of numbers") from None
    if m.shape != (4, 4):
        raise UserError(f"{path}: expected a 4x4 matrix, got shape {m.shape}")
    return m if np.isfinite(m).all() else np.full((4, 4), np.nan)


class SevenScenesSource(FrameSource):
    """One 7-Scenes sequence folder."""

    kind = "7scenes"

    def __init__(self, path: Path, stride: int = 1, max_frames: int | None = None, calib: Path | None = None):
        path = Path(path)
        seq = find_seven_scenes_sequence(path)
        if seq is None:
            raise UserError(f"{path}: no 7-Scenes frames (frame-XXXXXX.color.png)")
        files = _color_files(seq)
        stems = [f.name[: -len(".color.png")] for f in files]
        gt = np.stack([_read_pose(seq / f"{s}.pose.txt") for s in stems])
        super().__init__(
            seq,
            timestamps=np.arange(len(files), dtype=np.float64) / _FPS,
            names=[f.name for f in files],
            intrinsics=Intrinsics(*SEVEN_SCENES_INTRINSICS, width=0, height=0),
            gt_poses=gt,
            depth_scale=SEVEN_SCENES_DEPTH_SCALE,
            stride=stride,
            max_frames=max_frames,
            name=f"{seq.resolve().parent.name}/{seq.name}",
        )
        self._files = files
        self._depth = [seq / f"{s}.depth.png" for s in stems]
        self._size = check_same_size(files[k] for k in self._sel)
        self._finish_intrinsics(load_calibration(calib) if calib is not None else None, calib)

    def _read_image(self, k: int) -> np.ndarray:  # [H, W, 3] uint8
        return read_rgb(self._files[k])

    def _read_depth(self, k: int) -> np.ndarray | None:  # [H, W] float32 metres
        f = self._depth[k]
        if not f.is_file():
            return None
        return read_depth(f, SEVEN_SCENES_DEPTH_SCALE, invalid=SEVEN_SCENES_INVALID_DEPTH)
