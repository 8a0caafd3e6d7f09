"""`mslam-ns view RUN_DIR`: the browser viewer of a finished run."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from tyro.conf import Positional

from mslam_ns.config import SlamConfig
from mslam_ns.viewer.rundata import RunData, load_run
from mslam_ns.viewer.scene import SlamScene, ViewerConfig, _rotation
from mslam_ns.viewer.server import ViewerHandle, open_server

__all__ = ["view", "serve_run", "fill_scene"]

log = logging.getLogger(__name__)


def _scene_unit(data: RunData) -> float:
    """Median depth of the points in the first keyframe's camera (else a third of the trajectory extent)."""
    if len(data.points) and data.keyframes:
        T0 = np.asarray(data.keyframes[0].T_WC, dtype=np.float64)
        p = data.points[np.linspace(0, len(data.points) - 1, min(len(data.points), 5000)).astype(np.int64)]
        z = ((p - T0[:3]) @ _rotation(T0))[:, 2]
        z = z[np.isfinite(z) & (z > 0)]
        if len(z):
            return float(np.median(z))
    p = data.frame_T_WC[:, :3]
    p = p[np.isfinite(p).all(axis=1)]
    ext = float(np.linalg.norm(p.max(0) - p.min(0))) if len(p) > 1 else 0.0
    return ext / 3.0 if ext > 0 else 1.0


def fill_scene(scene: SlamScene, data: RunData) -> None:
    """Draw a whole run into `scene`: keyframes, points (per keyframe where points.ply says), trajectory, edges."""
    scene.set_unit(_scene_unit(data))
    if len(data.keyframes) > 1:
        p = np.array([np.asarray(k.T_WC[:3], dtype=np.float64) for k in data.keyframes])
        gap = float(np.median(np.linalg.norm(np.diff(p, axis=0), axis=1)))
        scene.set_frustum_scale(min(0.08 * scene._unit(), 0.6 * gap) if gap > 0 else 0.08 * scene._unit())
    scene.set_camera_model(data.fov_y, data.aspect)
    for kf in data.keyframes:
        scene.set_keyframe(kf.kf_id, kf.T_WC, kf.name, kf.timestamp, kf.thumbnail)
    if len(data.points):
        kf_ids = {kf.kf_id: kf for kf in data.keyframes}
        if data.point_kf is not None and set(np.unique(data.point_kf).tolist()) <= set(kf_ids):
            for k in np.unique(data.point_kf).tolist():
                m = data.point_kf == k
                T = np.asarray(kf_ids[k].T_WC, dtype=np.float64)
                local = (data.points[m] - T[:3]) @ _rotation(T)  # R^T (X_W - t), per row
                conf = None if data.confidence is None else data.confidence[m]
                scene.set_points(f"kf{k}", local, data.colors[m], conf, parent=int(k))
        else:
            scene.set_points("world", data.points, data.colors, data.confidence)
    scene.set_trajectory(data.frame_T_WC, data.frame_lost)
    scene.set_edges(data.edges, data.edge_kind)
    s = data.summary
    if s:
        scene.set_info(
            **{k: v for k, v in (("state", s.get("state")), ("restarts", s.get("restarts"))) if v is not None}
        )


def serve_run(
    run_dir: Path, host: str = "127.0.0.1", port: int = 8080, cfg: ViewerConfig | None = None
) -> ViewerHandle:
    """Serve the viewer of run folder `run_dir` in the background; returns the handle (`url`, `stop()`)."""
    data = load_run(Path(run_dir))
    server, url = open_server(host, port)
    try:
        scene = SlamScene(server, cfg, title=f"mslam_ns · {Path(run_dir).name}")
        fill_scene(scene, data)
    except BaseException:
        server.stop()
        raise
    # Browsers that connect later start from the overview.
    server.on_client_connect(lambda client: scene.reset_view(client))
    return ViewerHandle(url, server, scene)


def view(
    run_dir: Positional[Path], host: str = "127.0.0.1", port: int = 8080, conf_thresh: float = SlamConfig.conf_thresh
) -> int:
    """Browser viewer of a run: keyframe cameras with their images, the trajectory (lost frames in red), graph
    edges, and the point cloud with a confidence threshold. Serves until Ctrl-C.

    Args:
        run_dir: output folder of `mslam-ns run` / `mslam-ns demo`.
        host: address to listen on; 127.0.0.1 serves this machine only (0.0.0.0: every network interface).
        port: port to listen on (the next free one when it is taken).
        conf_thresh: initial confidence threshold of the points shown.
    """
    from rich.console import Console

    handle = serve_run(run_dir, host, port, ViewerConfig(conf_thresh=conf_thresh))
    console = Console()
    console.print(f"viewer of {run_dir}: [bold]{handle.url}[/]  (Ctrl-C to stop)")
    if host in ("0.0.0.0", "::"):
        console.print("listening on every network interface: anyone who can reach this machine can view it")
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        handle.stop()
    return 0
