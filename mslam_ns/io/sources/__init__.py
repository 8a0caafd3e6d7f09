"""Concrete frame sources and `open_source`, which picks one from what the path looks like.

Detection order: a file with a video extension -> `VideoSource`; a folder with `rgb.txt` -> `TumRgbdSource`;
a folder with `mav0/cam0/data.csv` (or `cam0/data.csv`) -> `EurocSource`; a folder with
`frame-XXXXXX.color.png` files (or a single `seq-XX` holding them) -> `SevenScenesSource`; any other folder ->
`ImageFolderSource`. Anything else is a `UserError` naming the path.
"""

from __future__ import annotations

import os
from pathlib import Path

from mslam_ns.errors import UserError
from mslam_ns.io.frames import FrameSource
from mslam_ns.io.images import IMAGE_EXTS
from mslam_ns.io.sources.euroc import EurocSource, find_euroc_root
from mslam_ns.io.sources.folder import ImageFolderSource
from mslam_ns.io.sources.seven_scenes import SevenScenesSource, find_seven_scenes_sequence
from mslam_ns.io.sources.tum_rgbd import TumRgbdSource
from mslam_ns.io.sources.video import VIDEO_EXTS, VideoSource

__all__ = [
    "open_source",
    "detect_kind",
    "VideoSource",
    "ImageFolderSource",
    "TumRgbdSource",
    "EurocSource",
    "SevenScenesSource",
    "VIDEO_EXTS",
]


def detect_kind(path: Path) -> str:
    """'video' | 'tum' | 'euroc' | '7scenes' | 'images' for `path`; UserError if none fits."""
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in VIDEO_EXTS:
            return "video"
        if suffix in IMAGE_EXTS:
            raise UserError(f"{path}: a single image; pass the folder of images (need at least 2 frames)")
        vids = " ".join(VIDEO_EXTS)
        raise UserError(f"{path}: unknown input type (expected a video {vids}, an image folder or a dataset folder)")
    if not path.is_dir():
        raise UserError(f"{path}: not a regular file or folder")
    try:
        if (path / "rgb.txt").is_file():
            return "tum"
        if find_euroc_root(path) is not None:
            return "euroc"
        if find_seven_scenes_sequence(path) is not None:
            return "7scenes"
    except PermissionError:
        raise UserError(f"{path}: permission denied") from None
    return "images"


_SOURCES = {
    "video": VideoSource,
    "tum": TumRgbdSource,
    "euroc": EurocSource,
    "7scenes": SevenScenesSource,
    "images": ImageFolderSource,
}


def open_source(
    path: str | os.PathLike,
    stride: int = 1,
    max_frames: int | None = None,
    calib: str | os.PathLike | None = None,
) -> FrameSource:
    """Open `path` as a frame source (kind auto-detected, see the module docstring).

    Args:
        path: a video file, an image folder, or a TUM RGB-D / EuRoC / 7-Scenes sequence folder.
        stride: keep every `stride`-th frame.
        max_frames: keep at most this many frames (after striding).
        calib: a calibration file (text or YAML, see `mslam_ns.io.calibration`) overriding the dataset's.
    """
    path = Path(path).expanduser()
    kind = detect_kind(path)
    return _SOURCES[kind](path, stride=stride, max_frames=max_frames, calib=Path(calib) if calib is not None else None)
