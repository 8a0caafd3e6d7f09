"""mslam_ns.io: everything that touches files.

* `frames`: `Intrinsics`, `RawFrame`, `FrameSource`, `open_source(path, stride, max_frames, calib)`.
* `sources/`: video (PyAV), image folder, TUM RGB-D, EuRoC, 7-Scenes readers (auto-detected by `open_source`).
* `calibration`: calibration text / YAML files -> `Intrinsics`; `undistort`: radial-tangential undistortion.
* `tum`: TUM trajectories and file lists, timestamp association; `poses`: TUM rows <-> 4x4 matrices;
  `gt`: ground truth interpolated at frame timestamps.
* `synthetic` (+ `synth_scene`, `synth_trajectory`): the textured-room RGB-D generator (`mslam-ns synth`).
* `writers`: PLY and JSON; `atomic`: temp-file-then-rename helpers used by every writer.

Importing this package is cheap (numpy only); readers import PIL / PyAV when used.
"""

from mslam_ns.io.frames import FrameSource, Intrinsics, RawFrame, load_calibration, open_source

__all__ = ["FrameSource", "Intrinsics", "RawFrame", "load_calibration", "open_source"]
