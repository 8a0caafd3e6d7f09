"""`SlamScene`: the viser scene and panel of the viewer, filled piece by piece (run folder or live map).

Scene tree (world = the run's world frame, OpenCV camera axes; the first camera's -y is drawn as up):
- `/keyframes/kf_000012`: a frame node at the keyframe pose, holding `frustum` (with the thumbnail) and,
  in live mode, `points` in the keyframe's own frame, so that a pose update moves a node and re-sends no
  points; `/points/world`: world-frame points of a run folder without per-keyframe points;
- `/trajectory/line`: every frame's position as a polyline; `/trajectory/lost`: red markers at lost frames;
- `/edges/...`: keyframe-graph edges, sequential and loop-closure ones in different colours.

viser 0.2.7 has no line-segment primitive: polylines are cubic Bezier splines whose control points sit on
the segment ends (straight pieces); newer viser's `add_line_segments(name, points [E, 2, 3], colors, *,
line_width, visible)` is used for edges where it exists. Spline points are passed by position (0.2.7 calls
them `positions`, newer viser `points`).
All methods may be called from any thread (one lock); GUI callbacks run in viser's worker threads.
"""

from __future__ import annotations

import base64
import io
import logging
import math
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mslam_ns.config import SlamConfig
from mslam_ns.geometry.conventions import CV_CAMERA_UP, xyzw_to_wxyz

__all__ = ["ViewerConfig", "SlamScene", "EDGE_COLORS", "LOST_COLOR", "kf_node"]

log = logging.getLogger(__name__)

EDGE_COLORS: dict[str, tuple[int, int, int]] = {"seq": (60, 120, 230), "loop": (240, 120, 20), "reloc": (170, 60, 200)}
"""RGB of each edge kind (unknown kinds are grey)."""
TRAJECTORY_COLOR = (30, 170, 90)
LOST_COLOR = (230, 30, 30)
KEYFRAME_COLOR = (40, 40, 40)
SELECTED_COLOR = (250, 200, 0)


@dataclass
class ViewerConfig:
    """What the viewer shows and how much of it it sends."""

    conf_thresh: float = SlamConfig.conf_thresh
    """Initial value of the confidence-threshold slider (average confidence C / N of a point)."""
    point_size: float = 1.0
    """Initial point size, relative to the scene's automatic size (slider 0.1x to 5x)."""
    max_points_per_keyframe: int = 10_000
    """Points sent per keyframe (a regular subsample of its pointmap)."""
    max_points: int = 300_000
    """Points sent of a world-frame cloud (a regular subsample of points.ply)."""
    frustum_scale: float | None = None
    """Frustum size in world units; None: 8% of the scene's median depth (at most 60% of the median distance
    between consecutive keyframes of a finished run)."""
    default_fov_deg: float = 60.0
    """Vertical field of view of the frusta when the intrinsics are unknown."""
    max_trajectory_points: int = 20_000
    """Frames drawn on the trajectory polyline (a regular subsample beyond this)."""


def kf_node(kf_id: int) -> str:
    """Scene-tree name of a keyframe's frame node."""
    return f"/keyframes/kf_{kf_id:06d}"


def _wxyz(T: np.ndarray) -> np.ndarray:  # [7 or 8] -> [4] (qw qx qy qz), normalised
    q = np.asarray(T[3:7], dtype=np.float64)
    return xyzw_to_wxyz(q / max(float(np.linalg.norm(q)), 1e-12))


def _rotation(T: np.ndarray) -> np.ndarray:  # [7 or 8] -> [3, 3]
    from mslam_ns.io.poses import quat_to_matrix

    return quat_to_matrix(np.asarray(T[3:7], dtype=np.float64))


def _subsample(n: int, cap: int) -> np.ndarray:  # [<= cap] indices, regular stride
    return np.arange(n) if n <= cap else np.linspace(0, n - 1, cap).astype(np.int64)


def _polyline_controls(p: np.ndarray) -> np.ndarray:  # [N, 3] -> [2N - 2, 3]
    """Bezier control points that make each spline piece the straight segment p[i] -> p[i+1]."""
    return np.stack([p[:-1], p[1:]], axis=1).reshape(-1, 3)


def _jpeg_data_url(rgb: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


@dataclass
class _Keyframe:
    kf_id: int
    name: str
    timestamp: float
    T_WC: np.ndarray  # [8]
    thumbnail: np.ndarray | None
    frame: Any = None
    frustum: Any = None


@dataclass
class _Cloud:
    xyz: np.ndarray  # [P, 3] float32 (keyframe-local, already multiplied by the pose scale, or world)
    rgb: np.ndarray  # [P, 3] uint8
    conf: np.ndarray | None  # [P] float32
    parent: int | None
    """Keyframe id whose frame node holds the cloud; None: world frame."""
    handle: Any = None
    shown: int = 0


@dataclass
class SceneStats:
    """What the scene has sent so far (for tests and the live-viewer benchmark)."""

    cloud_messages: int = 0
    frustum_messages: int = 0
    pose_updates: int = 0
    trajectory_messages: int = 0
    edge_messages: int = 0
    clouds_sent_for: list[int] = field(default_factory=list)
    """Keyframe id of every keyframe cloud message, in order."""


class SlamScene:
    """The viewer's scene and GUI on a `viser.ViserServer`."""

    def __init__(self, server: Any, cfg: ViewerConfig | None = None, title: str = "mslam_ns"):
        self.server = server
        self.cfg = cfg or ViewerConfig()
        self.lock = threading.RLock()
        self.stats = SceneStats()
        self.keyframes: dict[int, _Keyframe] = {}
        self.clouds: dict[str, _Cloud] = {}
        self.unit: float | None = None
        """Typical scene depth in world units (sizes of frusta and points follow it)."""
        self._frustum_scale: float | None = None
        self.fov_y = math.radians(self.cfg.default_fov_deg)
        self.aspect = 4.0 / 3.0
        self.frame_positions = np.zeros((0, 3))  # [N, 3]
        self.frame_T_WC = np.zeros((0, 8))  # [N, 8]
        self.frame_lost = np.zeros(0, dtype=bool)
        self._edges: tuple[np.ndarray, list[str]] = (np.zeros((0, 2), np.int64), [])
        self._edge_handles: list[Any] = []
        self._traj_handles: list[Any] = []
        self._lost_handle: Any = None
        """The lost-frame markers (also in `_traj_handles`); re-sent when the point size changes."""
        self._selected: int | None = None
        self._label_to_kf: dict[str, int] = {}
        self.info: dict[str, Any] = {}
        server.scene.set_up_direction(tuple(CV_CAMERA_UP))  # the first camera's up
        self._build_gui(title)

    # ---- GUI ---------------------------------------------------------------------------------------
    def _build_gui(self, title: str) -> None:
        gui = self.server.gui
        self.gui_stats = gui.add_markdown(f"**{title}**")
        with gui.add_folder("Points"):
            self.gui_points = gui.add_checkbox("Show points", True)
            self.gui_conf = gui.add_slider(
                "Confidence >=",
                0.0,
                10.0,
                0.1,
                float(self.cfg.conf_thresh),
                hint="minimum average confidence of the points shown",
            )
            self.gui_size = gui.add_slider(
                "Point size", 0.1, 5.0, 0.1, float(self.cfg.point_size), hint="relative to the scene's depth"
            )
        with gui.add_folder("Cameras"):
            self.gui_frusta = gui.add_checkbox("Show keyframes", True)
            self.gui_traj = gui.add_checkbox("Show trajectory", True)
            self.gui_edges = gui.add_checkbox("Show graph edges", True)
            self.gui_follow = gui.add_checkbox("Follow camera", False, hint="keep the view behind the newest frame")
            self.gui_reset = gui.add_button("Reset view")
        with gui.add_folder("Selected keyframe"):
            self.gui_select = gui.add_dropdown("Keyframe", ("none",))
            self.gui_selected = gui.add_markdown("Click a camera or pick a keyframe.")

        self.gui_conf.on_update(lambda _: self._resend_clouds())
        self.gui_size.on_update(lambda _: self._on_point_size())
        self.gui_points.on_update(lambda _: self._set_visible("clouds", self.gui_points.value))
        self.gui_frusta.on_update(lambda _: self._set_visible("frusta", self.gui_frusta.value))
        self.gui_traj.on_update(lambda _: self._set_visible("trajectory", self.gui_traj.value))
        self.gui_edges.on_update(lambda _: self._set_visible("edges", self.gui_edges.value))
        self.gui_reset.on_click(lambda ev: self.reset_view(ev.client))
        self.gui_follow.on_update(lambda _: self.follow())
        self.gui_select.on_update(lambda _: self.select(self._label_to_kf.get(self.gui_select.value)))

    def _set_visible(self, what: str, on: bool) -> None:
        with self.lock:
            handles = {
                "clouds": [c.handle for c in self.clouds.values()],
                "frusta": [k.frustum for k in self.keyframes.values()],
                "trajectory": self._traj_handles,
                "edges": self._edge_handles,
            }[what]
            for h in handles:
                if h is not None:
                    h.visible = on

    # ---- sizes -------------------------------------------------------------------------------------
    def set_unit(self, unit: float) -> None:
        """Typical scene depth (world units) used for frustum and point sizes; only the first call counts."""
        with self.lock:
            if self.unit is None and math.isfinite(unit) and unit > 0:
                self.unit = float(unit)

    def _unit(self) -> float:
        return self.unit if self.unit is not None else 1.0

    def set_frustum_scale(self, scale: float) -> None:
        """Frustum size (world units) for keyframes added from now on, unless the config fixes it."""
        with self.lock:
            if math.isfinite(scale) and scale > 0:
                self._frustum_scale = float(scale)

    def frustum_scale(self) -> float:
        if self.cfg.frustum_scale is not None:
            return self.cfg.frustum_scale
        return self._frustum_scale if self._frustum_scale is not None else 0.08 * self._unit()

    def point_size(self) -> float:
        return 0.004 * self._unit() * float(self.gui_size.value)

    def set_camera_model(self, fov_y: float | None, aspect: float | None) -> None:
        """Frustum shape for keyframes added from now on (vertical fov in radians, width / height)."""
        with self.lock:
            if fov_y is not None and math.isfinite(fov_y) and fov_y > 0:
                self.fov_y = float(fov_y)
            if aspect is not None and math.isfinite(aspect) and aspect > 0:
                self.aspect = float(aspect)

    # ---- keyframes ---------------------------------------------------------------------------------
    def set_keyframe(
        self,
        kf_id: int,
        T_WC: np.ndarray,
        name: str = "",
        timestamp: float = float("nan"),
        thumbnail: np.ndarray | None = None,
    ) -> None:
        """Add keyframe `kf_id` (frustum with `thumbnail` [h, w, 3] uint8) or move it to `T_WC` [7 | 8]."""
        T = np.ones(8)
        T[: len(T_WC)] = np.asarray(T_WC, dtype=np.float64)[:8]
        with self.lock:
            kf = self.keyframes.get(kf_id)
            if kf is None:
                kf = _Keyframe(kf_id, name, float(timestamp), T, thumbnail)
                self.keyframes[kf_id] = kf
                kf.frame = self.server.scene.add_frame(kf_node(kf_id), show_axes=False, wxyz=_wxyz(T), position=T[:3])
                self._add_frustum(kf, KEYFRAME_COLOR)
                self._update_select_options()
            else:
                kf.T_WC = T
                kf.frame.wxyz = _wxyz(T)
                kf.frame.position = T[:3]
                self.stats.pose_updates += 1
                if kf_id == self._selected:
                    self._show_selected()

    def remove_keyframe(self, kf_id: int) -> None:
        """Remove keyframe `kf_id` with its points (a tentative keyframe the SLAM dropped)."""
        with self.lock:
            kf = self.keyframes.pop(kf_id, None)
            if kf is None:
                return
            for key in [k for k, c in self.clouds.items() if c.parent == kf_id]:
                del self.clouds[key]
            kf.frame.remove()  # children (frustum, points) go with it
            if self._selected == kf_id:
                self._selected = None
                self._show_selected()
            self._update_select_options()

    def _add_frustum(self, kf: _Keyframe, color: tuple[int, int, int]) -> None:
        kw = {} if kf.thumbnail is None else {"image": kf.thumbnail, "format": "jpeg", "jpeg_quality": 80}
        kf.frustum = self.server.scene.add_camera_frustum(
            kf_node(kf.kf_id) + "/frustum",
            fov=self.fov_y,
            aspect=self.aspect,
            scale=self.frustum_scale(),
            color=color,
            visible=bool(self.gui_frusta.value),
            **kw,
        )
        kf.frustum.on_click(lambda _ev, k=kf.kf_id: self._on_click(k))
        self.stats.frustum_messages += 1

    def _on_click(self, kf_id: int) -> None:
        label = next((lb for lb, k in self._label_to_kf.items() if k == kf_id), None)
        if label is not None and self.gui_select.value != label:
            self.gui_select.value = label  # its callback calls select()
        else:
            self.select(kf_id)

    def _update_select_options(self) -> None:
        self._label_to_kf = {
            f"kf {k}" + (f" · {kf.name}" if kf.name else ""): k for k, kf in sorted(self.keyframes.items())
        }
        self.gui_select.options = ("none", *self._label_to_kf)

    def select(self, kf_id: int | None) -> None:
        """Show keyframe `kf_id`'s image, name, timestamp and pose in the panel (None: clear)."""
        with self.lock:
            previous, self._selected = self._selected, kf_id if kf_id in self.keyframes else None
            if previous == self._selected:
                self._show_selected()
                return
            for k, color in ((previous, KEYFRAME_COLOR), (self._selected, SELECTED_COLOR)):
                if k is not None and k in self.keyframes:
                    self._add_frustum(self.keyframes[k], color)  # re-added under the same name: replaces it
            self._show_selected()

    def _show_selected(self) -> None:
        kf = self.keyframes.get(self._selected) if self._selected is not None else None
        if kf is None:
            self.gui_selected.content = "Click a camera or pick a keyframe."
            return
        T = kf.T_WC
        lines = [
            f"**keyframe {kf.kf_id}**",
            "",
            f"name: `{kf.name or '-'}`",
            f"timestamp: {kf.timestamp:.6f} s",
            f"position: {T[0]:.4f} {T[1]:.4f} {T[2]:.4f}",
            f"quaternion (xyzw): {T[3]:.4f} {T[4]:.4f} {T[5]:.4f} {T[6]:.4f}",
            f"scale: {T[7]:.4g}",
        ]
        if kf.thumbnail is not None:
            lines += ["", f"![keyframe {kf.kf_id}]({_jpeg_data_url(kf.thumbnail)})"]
        self.gui_selected.content = "  \n".join(lines)

    @property
    def selected(self) -> int | None:
        return self._selected

    # ---- points ------------------------------------------------------------------------------------
    def set_points(
        self, key: str, xyz: np.ndarray, rgb: np.ndarray, conf: np.ndarray | None = None, parent: int | None = None
    ) -> None:
        """Set the point cloud `key`: xyz [P, 3] in keyframe `parent`'s frame (scaled) or world (None),
        rgb [P, 3] uint8, conf [P] (None: the threshold does not apply). Sent subsampled and thresholded."""
        cap = self.cfg.max_points_per_keyframe if parent is not None else self.cfg.max_points
        sel = _subsample(len(xyz), cap)
        cloud = _Cloud(
            np.ascontiguousarray(xyz[sel], np.float32),
            np.ascontiguousarray(rgb[sel], np.uint8),
            None if conf is None else np.asarray(conf[sel], np.float32),
            parent,
        )
        with self.lock:
            old = self.clouds.get(key)
            if old is not None:
                cloud.handle = old.handle
            self.clouds[key] = cloud
            self._send_cloud(key, cloud)

    def _cloud_name(self, key: str, cloud: _Cloud) -> str:
        return kf_node(cloud.parent) + "/points" if cloud.parent is not None else f"/points/{key}"

    def _send_cloud(self, key: str, cloud: _Cloud) -> None:
        keep = np.ones(len(cloud.xyz), bool) if cloud.conf is None else cloud.conf >= float(self.gui_conf.value)
        name = self._cloud_name(key, cloud)
        if not keep.any():
            if cloud.handle is not None:
                cloud.handle.remove()
                cloud.handle = None
            cloud.shown = 0
            return
        cloud.handle = self.server.scene.add_point_cloud(
            name, cloud.xyz[keep], cloud.rgb[keep], point_size=self.point_size(), visible=bool(self.gui_points.value)
        )
        cloud.shown = int(keep.sum())
        self.stats.cloud_messages += 1
        if cloud.parent is not None:
            self.stats.clouds_sent_for.append(cloud.parent)

    def _resend_clouds(self) -> None:
        with self.lock:
            for key, cloud in self.clouds.items():
                self._send_cloud(key, cloud)
            self._update_stats_text()

    def _on_point_size(self) -> None:
        """The point-size slider moved: re-send the clouds and the lost-frame markers (4x the point size)."""
        with self.lock:
            self._resend_clouds()
            self._send_lost_markers()

    def points_shown(self) -> int:
        with self.lock:
            return sum(c.shown for c in self.clouds.values())

    def rescale_cloud(self, key: str, factor: float) -> None:
        """Multiply a keyframe-local cloud by `factor` (its keyframe's Sim(3) scale changed) and re-send it."""
        with self.lock:
            c = self.clouds.get(key)
            if c is not None:
                c.xyz = c.xyz * np.float32(factor)
                self._send_cloud(key, c)

    # ---- trajectory and edges ------------------------------------------------------------------------
    def set_trajectory(self, T_WC: np.ndarray, lost: np.ndarray | None = None) -> None:
        """Every frame's pose T_WC [N, 7 | 8] as a polyline; `lost` [N] bool frames marked in red."""
        T = np.asarray(T_WC, dtype=np.float64)
        T = T.reshape(len(T), T.shape[-1] if T.ndim == 2 else 8)
        lost = np.zeros(len(T), bool) if lost is None else np.asarray(lost, bool)
        with self.lock:
            for h in self._traj_handles:
                h.remove()
            self._traj_handles, self._lost_handle = [], None
            self.frame_T_WC, self.frame_positions, self.frame_lost = T, T[:, :3].copy(), lost
            ok = np.isfinite(T[:, :3]).all(axis=1)
            p = T[ok, :3]
            p = p[_subsample(len(p), self.cfg.max_trajectory_points)]
            vis = bool(self.gui_traj.value)
            if len(p) >= 2:
                self._traj_handles.append(
                    self.server.scene.add_spline_cubic_bezier(
                        "/trajectory/line",
                        p,
                        _polyline_controls(p),
                        line_width=2.0,
                        color=TRAJECTORY_COLOR,
                        visible=vis,
                    )
                )
            self._send_lost_markers()
            self.stats.trajectory_messages += 1
            self._update_stats_text()

    def _send_lost_markers(self) -> None:
        """Red markers at the lost frames, 4x the point size (re-added under the same name: replaces them)."""
        T = self.frame_T_WC
        lp = T[np.isfinite(T[:, :3]).all(axis=1) & self.frame_lost, :3] if len(T) else np.zeros((0, 3))
        if self._lost_handle is not None:
            self._traj_handles.remove(self._lost_handle)
            if not len(lp):
                self._lost_handle.remove()
            self._lost_handle = None
        if len(lp):
            self._lost_handle = self.server.scene.add_point_cloud(
                "/trajectory/lost",
                lp.astype(np.float32),
                LOST_COLOR,
                point_size=4 * self.point_size(),
                point_shape="circle",
                visible=bool(self.gui_traj.value),
            )
            self._traj_handles.append(self._lost_handle)

    def set_edges(self, edges: np.ndarray, kinds: list[str]) -> None:
        """Keyframe-graph edges [E, 2] (keyframe ids) with their kinds, drawn between keyframe positions.
        Both directions of a pair (the graph stores i->j and j->i) are drawn once."""
        with self.lock:
            self._edges = (np.asarray(edges, np.int64).reshape(-1, 2), list(kinds))
            self._draw_edges()

    def _unique_edges(self) -> list[tuple[int, int, str]]:
        """(i, j, kind) once per unordered pair of keyframes the scene holds (first kind listed wins)."""
        seen: dict[tuple[int, int], str] = {}
        edges, kinds = self._edges
        for (i, j), kind in zip(edges.tolist(), kinds):
            if i in self.keyframes and j in self.keyframes and i != j:
                seen.setdefault((min(i, j), max(i, j)), kind)
        return [(i, j, k) for (i, j), k in seen.items()]

    def _draw_edges(self) -> None:
        for h in self._edge_handles:
            h.remove()
        self._edge_handles = []
        vis = bool(self.gui_edges.value)
        by_kind: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        for i, j, kind in self._unique_edges():
            by_kind.setdefault(kind, []).append((self.keyframes[i].T_WC[:3], self.keyframes[j].T_WC[:3]))
        scene = self.server.scene
        for kind, segs in by_kind.items():
            color = EDGE_COLORS.get(kind, (128, 128, 128))
            if hasattr(scene, "add_line_segments"):  # newer viser
                pts = np.array([[a, b] for a, b in segs], dtype=np.float32)  # [E, 2, 3]
                self._edge_handles.append(
                    scene.add_line_segments(f"/edges/{kind}", pts, colors=color, line_width=2.0, visible=vis)
                )
            else:
                for n, (a, b) in enumerate(segs):
                    p = np.stack([a, b])
                    self._edge_handles.append(
                        scene.add_spline_cubic_bezier(
                            f"/edges/{kind}/{n:05d}",
                            p,
                            p,
                            line_width=2.0,
                            color=color,
                            visible=vis,
                        )
                    )
            self.stats.edge_messages += 1

    def refresh_edges(self) -> None:
        """Redraw the edges at the keyframes' current positions."""
        with self.lock:
            self._draw_edges()

    def edge_count(self) -> dict[str, int]:
        """Edges drawn, by kind."""
        with self.lock:
            out: dict[str, int] = {}
            for _, _, kind in self._unique_edges():
                out[kind] = out.get(kind, 0) + 1
            return out

    # ---- the view ----------------------------------------------------------------------------------
    def _clients(self, client: Any = None) -> list[Any]:
        return [client] if client is not None else list(self.server.get_clients().values())

    def follow(self, client: Any = None) -> None:
        """With 'Follow camera' on, put the view(s) behind and above the newest frame."""
        if not self.gui_follow.value or len(self.frame_T_WC) == 0:
            return
        with self.lock:
            T = self.frame_T_WC[-1]
            if not np.isfinite(T[:7]).all():
                return
            R, p, u = _rotation(T), T[:3], self._unit()
            fwd, up = R[:, 2], R @ CV_CAMERA_UP
            eye, target = p - 0.8 * u * fwd + 0.4 * u * up, p + 0.5 * u * fwd
        for c in self._clients(client):
            self._look(c, eye, target, up)

    def reset_view(self, client: Any = None) -> None:
        """An overview of the whole map from behind and above the first camera."""
        with self.lock:
            pts = [self.frame_positions] + [k.T_WC[None, :3] for k in self.keyframes.values()]
            p = np.concatenate(pts) if pts else np.zeros((0, 3))
            p = p[np.isfinite(p).all(axis=1)]
            # aim between the cameras and what they see, far enough back to see both
            w = self._world_points_sample()
            center = np.median(p, axis=0) if len(p) else np.zeros(3)
            if len(w):
                center = 0.5 * (center + np.median(w, axis=0)) if len(p) else np.median(w, axis=0)
            p = np.concatenate([p, w])
            extent = float(np.linalg.norm(np.percentile(p, 95, 0) - np.percentile(p, 5, 0))) if len(p) > 1 else 0.0
            dist = max(1.5 * extent, 1.2 * self._unit())
            T0 = next(iter(sorted(self.keyframes.items())), (None, None))[1]
            R = _rotation(T0.T_WC) if T0 is not None else np.eye(3)
            fwd, up = R[:, 2], R @ CV_CAMERA_UP
            eye = center - dist * (0.7 * fwd - 0.7 * up) / np.linalg.norm(0.7 * fwd - 0.7 * up)
        for c in self._clients(client):
            self._look(c, eye, center, up)

    def _world_points_sample(self, per_cloud: int = 200) -> np.ndarray:  # [S, 3] world
        out = [np.zeros((0, 3))]
        for c in self.clouds.values():
            x = c.xyz[_subsample(len(c.xyz), per_cloud)].astype(np.float64)
            kf = self.keyframes.get(c.parent) if c.parent is not None else None
            if kf is not None:
                x = x @ _rotation(kf.T_WC).T + kf.T_WC[:3]
            out.append(x[np.isfinite(x).all(axis=1)])
        return np.concatenate(out)

    @staticmethod
    def _look(client: Any, eye: np.ndarray, target: np.ndarray, up: np.ndarray) -> None:
        with client.atomic():
            client.camera.up_direction = up
            client.camera.position = eye
            client.camera.look_at = target

    # ---- the panel's numbers -----------------------------------------------------------------------
    def set_info(self, **info: Any) -> None:
        """Extra lines for the panel's header (e.g. state='tracking')."""
        with self.lock:
            self.info.update(info)
            self._update_stats_text()

    def _update_stats_text(self) -> None:
        n, lost = len(self.frame_positions), int(self.frame_lost.sum())
        parts = [
            f"**{len(self.keyframes)}** keyframes, **{n}** frames, **{lost}** lost",
            f"{self.points_shown():,} points shown",
        ]
        parts += [f"{k}: {v}" for k, v in self.info.items()]
        self.gui_stats.content = "  \n".join(parts)
