"""The browser viewer (viser): keyframe cameras with their images, trajectory, graph edges, points.

- `mslam_ns.viewer.app`: `mslam-ns view RUN_DIR` and `serve_run(run_dir, host, port) -> ViewerHandle`;
- `mslam_ns.viewer.live`: `start_live_viewer(shared_map, host, port, max_rate_hz) -> LiveViewer` (while the
  SLAM runs);
- `mslam_ns.viewer.scene`: `SlamScene`, the scene and panel both modes fill;
- `mslam_ns.viewer.rundata`: what the viewer reads of a run folder.

Importing this package imports neither viser nor the SLAM; the modules above do, when used.
"""
