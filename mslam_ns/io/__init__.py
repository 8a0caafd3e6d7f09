"""mslam_ns.io: everything that touches files.

* `frames`: the types `Intrinsics`, `RawFrame`, `FrameSource` (imports nothing else from `mslam_ns.io`).
* `sources/`: `open_source(path, stride, max_frames, calib)` and the video (PyAV), image folder, TUM RGB-D,
  EuRoC, 7-Scenes readers it picks from.
* `calibration`: calibration text / YAML files -> `Intrinsics`; `undistort`: radial-tangential undistortion.
* `tum`: TUM trajectories and file lists, timestamp association; `poses`: TUM rows <-> 4x4 matrices;
  `gt`: ground truth interpolated at frame timestamps.
* `synthetic` (+ `synth_scene`, `synth_trajectory`): the textured-room RGB-D generator (`mslam-ns synth`).
* `writers`: PLY and JSON; `atomic`: temp-file-then-rename helpers used by every writer.

Importing this package is cheap (numpy only): `open_source` and `load_calibration` are imported from their
modules on first use; readers import PIL / PyAV when used.
"""

from __future__ import annotations

from mslam_ns.io.frames import FrameSource, Intrinsics, RawFrame

__all__ = ["FrameSource", "Intrinsics", "RawFrame", "load_calibration", "open_source"]


def __getattr__(name: str):
    """`open_source` (from `mslam_ns.io.sources`) and `load_calibration` (from `mslam_ns.io.calibration`), lazily."""
    if name == "open_source":
        from mslam_ns.io.sources import open_source

        return open_source
    if name == "load_calibration":
        from mslam_ns.io.calibration import load_calibration

        return load_calibration
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
