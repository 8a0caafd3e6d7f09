"""Live viewer: the run's page served while the SLAM runs, fed from `SharedMap` snapshots.

A background thread waits for the map to change (`wait_for_change`), takes `snapshot(since=last_version)`
— the pointmaps of ONLY the keyframes whose points changed since the last update — and applies it to the
scene, at most `max_rate_hz` times a second. Pose updates move keyframe nodes (points are drawn in their
keyframe's frame), so a backend optimisation re-sends no points unless a keyframe's scale changed.

    handle = start_live_viewer(system.map, host="127.0.0.1", port=8080)
    print(handle.url)
    system.run(source)
    handle.stop()
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mslam_ns.viewer.rundata import thumbnail
from mslam_ns.viewer.scene import SlamScene, ViewerConfig
from mslam_ns.viewer.server import ViewerHandle, open_server

__all__ = ["start_live_viewer", "LiveViewer", "SnapshotApplier"]

log = logging.getLogger(__name__)


@dataclass
class SnapshotApplier:
    """Applies successive map snapshots to a `SlamScene`, sending only what changed."""

    scene: SlamScene
    pose_version: dict[int, int] = field(default_factory=dict)
    scale: dict[int, float] = field(default_factory=dict)
    """Pose scale each keyframe's sent points were multiplied by."""
    n_frames: int = -1
    n_edges: int = -1
    version: int | None = None
    """Map version of the last snapshot applied (None before the first)."""

    def apply(self, snap: Any) -> None:
        """Apply one `MapSnapshot` (taken with `since=self.version`)."""
        sc = self.scene
        T = np.asarray(snap.T_WC, dtype=np.float64).reshape(-1, 8)
        if sc.unit is None and snap.keyframes:
            kv = snap.keyframes[min(snap.keyframes)]
            z = np.asarray(kv.X, np.float64)[:, 2] * T[kv.kf_id, 7]
            z = z[np.isfinite(z) & (z > 0)]
            if len(z):
                sc.set_unit(float(np.median(z)))
        fov, aspect = None, None
        if snap.image_size is not None:
            w, h = snap.image_size
            aspect = w / h if h else None
            if snap.K is not None and snap.K[1, 1] > 0:
                fov = 2.0 * math.atan(h / (2.0 * float(snap.K[1, 1])))
        elif snap.keyframes:
            h, w = next(iter(snap.keyframes.values())).hw
            aspect = w / h if h else None
        sc.set_camera_model(fov, aspect)
        for k in [k for k in sc.keyframes if k >= len(T)]:  # removed (tentative keyframe popped)
            sc.remove_keyframe(k)
            self.pose_version.pop(k, None)
            self.scale.pop(k, None)
        moved = False
        for k in range(len(T)):
            pv = int(snap.pose_version[k])
            kv = snap.keyframes.get(k)
            if k not in sc.keyframes:
                row = int(snap.keyframe_frame_index[k]) if hasattr(snap, "keyframe_frame_index") else -1
                name = (
                    kv.name if kv is not None else (snap.frame_names[row] if 0 <= row < len(snap.frame_names) else "")
                )
                ts = kv.timestamp if kv is not None else float("nan")
                sc.set_keyframe(k, T[k], name, ts, None if kv is None else thumbnail(kv.rgb))
                moved = True
            elif self.pose_version.get(k) != pv:
                sc.set_keyframe(k, T[k])
                moved = True
                s_old = self.scale.get(k)
                if kv is None and s_old and abs(T[k, 7] / s_old - 1.0) > 1e-3:
                    sc.rescale_cloud(f"kf{k}", T[k, 7] / s_old)
                    self.scale[k] = float(T[k, 7])
            self.pose_version[k] = pv
        for k, kv in snap.keyframes.items():
            s = float(T[k, 7])
            sc.set_points(
                f"kf{k}",
                np.asarray(kv.X, np.float32) * np.float32(s),
                kv.rgb.reshape(-1, 3),
                np.asarray(kv.C, np.float32),
                parent=k,
            )
            self.scale[k] = s
        n = len(snap.frame_timestamps)
        if moved or n != self.n_frames:
            sc.set_trajectory(snap.frame_T_WC, snap.frame_lost)
            self.n_frames = n
        if moved or len(snap.edges) != self.n_edges:
            sc.set_edges(snap.edges, list(snap.edge_kind))
            self.n_edges = len(snap.edges)
        sc.set_info(state=snap.state)
        sc.follow()
        self.version = int(snap.version)


class LiveViewer(ViewerHandle):
    """A viewer following a `SharedMap` from a background thread (`url`, `stop()`, `updates`)."""

    def __init__(self, url: str, server: Any, scene: SlamScene, shared_map: Any, max_rate_hz: float):
        super().__init__(url, server, scene)
        self.map = shared_map
        self.applier = SnapshotApplier(scene)
        self.min_interval = 1.0 / max(float(max_rate_hz), 1e-3)
        self.updates = 0
        """Snapshots applied so far."""
        self.update_seconds = 0.0
        """Wall time spent taking and applying snapshots (in the viewer thread)."""
        self.update_cpu_seconds = 0.0
        """CPU time of the viewer thread spent on it (what it takes from the SLAM on a busy machine)."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="mslam-live-viewer", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            last = -1 if self.applier.version is None else self.applier.version
            if self.map.wait_for_change(last, timeout_s=0.2) <= last:
                continue
            t0 = time.perf_counter()
            try:
                self.update_once()
            except Exception:  # the viewer must never take the SLAM down
                log.exception("live viewer update failed")
            self._stop.wait(max(0.0, self.min_interval - (time.perf_counter() - t0)))

    def update_once(self) -> None:
        """Take one snapshot of the changes since the last one and show it."""
        t0, c0 = time.perf_counter(), time.thread_time()
        snap = self.map.snapshot(since=self.applier.version)
        self.applier.apply(snap)
        self.updates += 1
        self.update_seconds += time.perf_counter() - t0
        self.update_cpu_seconds += time.thread_time() - c0

    def wait_until_current(self, timeout_s: float = 10.0) -> bool:
        """Block until the scene shows the map's current version (True) or the timeout passes (False)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.applier.version is not None and self.applier.version >= self.map.version:
                return True
            time.sleep(0.02)
        return False

    def stop(self) -> None:
        """Stop the update thread and the server (idempotent)."""
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5.0)
        super().stop()


def start_live_viewer(
    shared_map: Any,
    host: str = "127.0.0.1",
    port: int = 8080,
    max_rate_hz: float = 2.0,
    cfg: ViewerConfig | None = None,
) -> LiveViewer:
    """Serve the viewer of a running SLAM and keep it updated from `shared_map` in a background thread.

    Args:
        shared_map: the system's `SharedMap` (`system.map`): anything with `snapshot(since=)`,
            `wait_for_change(version, timeout_s)` and `version`.
        host: address to listen on (127.0.0.1: this machine only; 0.0.0.0: every interface).
        port: port to listen on (the next free one when it is taken).
        max_rate_hz: at most this many scene updates per second.
        cfg: what the viewer shows (defaults: `ViewerConfig()`).

    Returns:
        the handle: `handle.url` to print, `handle.stop()` at the end (the page stops updating).
    """
    server, url = open_server(host, port)
    try:
        scene = SlamScene(server, cfg, title="mslam_ns · live")
    except BaseException:
        server.stop()
        raise
    viewer = LiveViewer(url, server, scene, shared_map, max_rate_hz)
    server.on_client_connect(lambda client: scene.reset_view(client))
    return viewer
