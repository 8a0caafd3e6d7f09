"""The viewer's scene of a run folder, checked on the server side (viser handles)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mslam_ns.cli import main
from mslam_ns.errors import UserError
from mslam_ns.io.poses import quat_to_matrix
from mslam_ns.viewer.app import serve_run
from mslam_ns.viewer.rundata import load_run
from mslam_ns.viewer.scene import ViewerConfig
from mslam_ns.viewer.server import free_port, open_server
from tests.viewer import scenes

viser = pytest.importorskip("viser")


@pytest.fixture()
def served(run_dir: Path):
    h = serve_run(run_dir, port=free_port())
    yield h
    h.stop()


def test_url_is_local_by_default(served):
    assert served.url == f"http://127.0.0.1:{served.server.get_port()}"
    assert served.server.get_host() == "127.0.0.1"


def test_scene_holds_frusta_points_trajectory_edges(served, run_dir: Path):
    sc = served.scene
    assert len(sc.keyframes) == scenes.N_KEYFRAMES
    frusta = [k.frustum for k in sc.keyframes.values()]
    assert all(isinstance(f, viser.CameraFrustumHandle) for f in frusta)
    # The server's own scene registry knows the same nodes.
    names = set(served.server.scene._handle_from_node_name)
    assert {f"/keyframes/kf_{k:06d}/frustum" for k in range(scenes.N_KEYFRAMES)} <= names
    assert sorted(c.parent for c in sc.clouds.values()) == list(range(scenes.N_KEYFRAMES))
    assert all(isinstance(c.handle, viser.PointCloudHandle) for c in sc.clouds.values())
    assert sc.edge_count() == {"seq": 4, "loop": 1}
    assert np.nonzero(sc.frame_lost)[0].tolist() == list(scenes.LOST_FRAMES)
    assert len(sc._traj_handles) == 2  # the polyline and the lost-frame markers


def test_keyframe_points_land_on_the_world_points(served, run_dir: Path):
    """Points are drawn in their keyframe's frame node: node pose * local point = the PLY's world point."""
    d = load_run(run_dir)
    for k, kf in served.scene.keyframes.items():
        c = served.scene.clouds[f"kf{k}"]
        R = quat_to_matrix(kf.T_WC[3:7])
        world = c.xyz.astype(np.float64) @ R.T + kf.T_WC[:3]
        np.testing.assert_allclose(world, d.points[d.point_kf == k], atol=1e-5)


def test_confidence_slider_filters_points(served):
    sc = served.scene
    conf = np.concatenate([c.conf for c in sc.clouds.values()])
    assert sc.points_shown() == int((conf >= 1.5).sum())
    sc.gui_conf.value = 4.0
    sc._resend_clouds()  # what the slider's callback does (callbacks run in viser's worker threads)
    assert sc.points_shown() == int((conf >= 4.0).sum()) < len(conf)
    sc.gui_conf.value = 0.0
    sc._resend_clouds()
    assert sc.points_shown() == len(conf)


def test_select_shows_name_timestamp_pose_image(served):
    sc = served.scene
    sc.select(3)
    text = sc.gui_selected.content
    kf = sc.keyframes[3]
    assert sc.selected == 3
    assert kf.name in text and f"{kf.timestamp:.6f}" in text and f"{kf.T_WC[0]:.4f}" in text
    assert "data:image/jpeg;base64," in text
    sc.select(None)
    assert sc.selected is None and "data:image" not in sc.gui_selected.content


def test_world_cloud_without_per_keyframe_points(tmp_path: Path):
    run = scenes.make_run_dir(tmp_path / "run", per_keyframe_points=False)
    h = serve_run(run, port=free_port(), cfg=ViewerConfig(max_points=1000))
    try:
        assert list(h.scene.clouds) == ["world"] and h.scene.clouds["world"].parent is None
        assert len(h.scene.clouds["world"].xyz) == 1000  # subsampled to the cap
    finally:
        h.stop()


def test_bad_host_and_port_are_user_errors():
    with pytest.raises(UserError, match="--host"):
        open_server("no-such-host.invalid", free_port())
    with pytest.raises(UserError, match="--port"):
        open_server("127.0.0.1", 70000)


def test_view_command_bad_folder(tmp_path: Path, capsys):
    assert main(["view", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run folder not found" in err[0]


def test_clicking_a_camera_selects_it(served):
    """A click on a frustum (viser calls `_on_click` from its worker threads) selects that keyframe."""
    import time

    sc = served.scene
    sc._on_click(2)
    deadline = time.monotonic() + 10
    while sc.selected != 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sc.selected == 2 and sc.gui_select.value.startswith("kf 2")
    assert sc.keyframes[2].frustum is not None


def test_view_command_prints_the_url(run_dir: Path, capsys, monkeypatch):
    """`mslam-ns view` serves, prints the URL, and stops cleanly on Ctrl-C."""
    from types import SimpleNamespace

    import mslam_ns.viewer.app as app

    def interrupt(_s: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(app, "time", SimpleNamespace(sleep=interrupt))  # Ctrl-C during the serving loop
    port = free_port()
    assert main(["view", str(run_dir), "--port", str(port)]) == 0
    assert f"http://127.0.0.1:{port}" in capsys.readouterr().out


def test_both_directions_of_an_edge_are_drawn_once(served):
    sc = served.scene
    sc.set_edges(
        [[0, 1], [1, 0], [1, 2], [2, 1], [2, 0], [0, 2], [3, 3]], ["seq", "seq", "seq", "seq", "loop", "loop", "seq"]
    )
    assert sc.edge_count() == {"seq": 2, "loop": 1}


# ---- what reaches viser's scene API ---------------------------------------------------------------------
class _Handle:
    """A scene-node handle of the stand-in API (what `SlamScene` does with one: visible, remove())."""

    def __init__(self) -> None:
        self.visible, self.removed = True, False

    def remove(self) -> None:
        self.removed = True


class RecordingScene:
    """viser's scene API (the real one behind it), with every `add_*` call recorded as (method, args, kwargs).
    `add_line_segments` is hidden: viser 0.2.7 has none."""

    def __init__(self, scene) -> None:
        self._scene = scene
        self.calls: list[tuple[str, tuple, dict]] = []

    def __getattr__(self, name: str):
        if name == "add_line_segments":
            raise AttributeError(name)
        attr = getattr(self._scene, name)
        if not name.startswith("add_"):
            return attr

        def record(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            return attr(*args, **kwargs)

        return record

    def named(self, method: str, prefix: str) -> list[tuple[str, tuple, dict]]:
        return [c for c in self.calls if c[0] == method and c[1][0].startswith(prefix)]


class SegmentsScene(RecordingScene):
    """The same with newer viser's (>= 0.2.8) `add_line_segments(name, points, colors, *, line_width=1, wxyz,
    position, visible)`: points [N, 2, 3] (start, end of each segment), colors (3,) or [N, 2, 3]; checked as
    viser checks them."""

    def add_line_segments(
        self, name, points, colors, *, line_width=1.0, wxyz=(1.0, 0.0, 0.0, 0.0), position=(0.0, 0.0, 0.0), visible=True
    ):
        pts = np.asarray(points, dtype=np.float32)
        if pts.ndim != 3 or pts.shape[1:] != (2, 3):
            raise ValueError("Points should have shape (N, 2, 3) for N line segments.")
        col = np.asarray(colors)
        assert col.shape in {pts.shape, (3,)}, "Shape of colors should be (N, 2, 3) or (3,)."
        self.calls.append(("add_line_segments", (name, pts, col), {"line_width": line_width, "visible": visible}))
        return _Handle()


@pytest.fixture()
def viser_server():
    server, _ = open_server("127.0.0.1", free_port())
    yield server
    server.stop()


def _scene_on(server, api: RecordingScene, run_dir: Path):
    from types import SimpleNamespace

    from mslam_ns.viewer.app import fill_scene
    from mslam_ns.viewer.scene import SlamScene

    # The server as SlamScene uses it: its scene API (stand-in), its real GUI and clients.
    sc = SlamScene(SimpleNamespace(scene=api, gui=server.gui, get_clients=server.get_clients))
    fill_scene(sc, load_run(run_dir))
    return sc


def _pos(sc, k: int) -> np.ndarray:
    return np.asarray(sc.keyframes[k].T_WC[:3], dtype=np.float32)


EDGES_3_KINDS = ([[0, 1], [1, 2], [2, 3], [3, 4], [4, 0], [3, 1]], ["seq", "seq", "seq", "seq", "loop", "reloc"])


def test_edge_kinds_get_their_colours_on_viser_0_2_7(viser_server, run_dir: Path):
    """viser 0.2.7 (no line segments): one straight spline per edge, coloured by its kind."""
    from mslam_ns.viewer.scene import EDGE_COLORS

    api = RecordingScene(viser_server.scene)
    sc = _scene_on(viser_server, api, run_dir)
    api.calls.clear()
    sc.set_edges(*EDGES_3_KINDS)
    assert len(set(EDGE_COLORS.values())) == len(EDGE_COLORS)
    drawn: dict[str, list[tuple[tuple, tuple]]] = {}
    for _, args, kw in api.named("add_spline_cubic_bezier", "/edges/"):
        kind = args[0].split("/")[2]
        assert tuple(kw["color"]) == EDGE_COLORS[kind], kind
        ends = np.asarray(args[1], dtype=np.float32)
        np.testing.assert_array_equal(np.asarray(args[2], dtype=np.float32), ends)  # control points: straight
        drawn.setdefault(kind, []).append((tuple(ends[0]), tuple(ends[1])))
    want = {"seq": [(0, 1), (1, 2), (2, 3), (3, 4)], "loop": [(0, 4)], "reloc": [(1, 3)]}
    assert {k: len(v) for k, v in drawn.items()} == {k: len(v) for k, v in want.items()}
    for kind, pairs in want.items():
        expect = {(tuple(_pos(sc, i)), tuple(_pos(sc, j))) for i, j in pairs}
        assert set(drawn[kind]) == expect, kind


def test_newer_viser_draws_edges_as_line_segments(viser_server, run_dir: Path):
    """viser >= 0.2.8: one `add_line_segments` call per edge kind, with its colour; no per-edge splines."""
    from mslam_ns.viewer.scene import EDGE_COLORS

    api = SegmentsScene(viser_server.scene)
    sc = _scene_on(viser_server, api, run_dir)
    assert sc.edge_count() == {"seq": 4, "loop": 1}
    api.calls.clear()
    sc.set_edges(*EDGES_3_KINDS)
    assert api.named("add_spline_cubic_bezier", "/edges/") == []
    calls = {args[0]: (args[1], args[2], kw) for m, args, kw in api.calls if m == "add_line_segments"}
    assert sorted(calls) == ["/edges/loop", "/edges/reloc", "/edges/seq"]
    want = {"seq": [(0, 1), (1, 2), (2, 3), (3, 4)], "loop": [(0, 4)], "reloc": [(1, 3)]}
    for kind, pairs in want.items():
        pts, col, kw = calls[f"/edges/{kind}"]
        assert pts.shape == (len(pairs), 2, 3)
        assert {(tuple(a), tuple(b)) for a, b in pts} == {(tuple(_pos(sc, i)), tuple(_pos(sc, j))) for i, j in pairs}
        assert tuple(col.tolist()) == EDGE_COLORS[kind]
        assert kw["line_width"] > 0 and kw["visible"] is True
    # Hiding the edges reaches the segment handles; redrawing replaces them.
    sc._set_visible("edges", False)
    assert all(h.visible is False for h in sc._edge_handles) and len(sc._edge_handles) == 3
    old = list(sc._edge_handles)
    sc.refresh_edges()
    assert all(h.removed for h in old)


def test_point_size_slider_resends_points_and_lost_markers(served, monkeypatch):
    """Moving the point-size slider (its callback runs in viser's worker thread) re-sends every cloud at the
    new size and the lost-frame markers at 4x it."""
    import time

    sc = served.scene
    api = RecordingScene(served.server.scene)
    monkeypatch.setattr(served.server, "scene", api)
    size0 = sc.point_size()
    assert size0 > 0
    sc.gui_size.value = 2.5
    deadline = time.monotonic() + 10
    while not api.named("add_point_cloud", "/trajectory/lost") and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)  # let the callback finish
    clouds = api.named("add_point_cloud", "/keyframes/")
    assert sorted(args[0] for _, args, _ in clouds) == sorted(f"/keyframes/kf_{k:06d}/points" for k in sc.keyframes)
    for _, _, kw in clouds:
        assert kw["point_size"] == pytest.approx(2.5 * size0)
    lost = api.named("add_point_cloud", "/trajectory/lost")
    assert len(lost) == 1
    _, args, kw = lost[0]
    assert kw["point_size"] == pytest.approx(4 * 2.5 * size0)
    np.testing.assert_allclose(args[1], sc.frame_positions[list(scenes.LOST_FRAMES)], atol=1e-6)
    assert len(sc._traj_handles) == 2 and sc._lost_handle in sc._traj_handles  # replaced, not added


def test_ipv6_urls_are_bracketed():
    from mslam_ns.viewer.server import viewer_url

    assert viewer_url("::1", 8080) == "http://[::1]:8080"
    assert viewer_url("::", 8080) == "http://[::1]:8080"
    assert viewer_url("fe80::1", 9) == "http://[fe80::1]:9"
    assert viewer_url("0.0.0.0", 8080) == "http://127.0.0.1:8080"
    assert viewer_url("localhost", 8080) == "http://localhost:8080"


def test_viewer_on_ipv6_loopback_serves_its_url():
    import socket
    import urllib.request

    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("this machine has no IPv6 loopback")
    server, url = open_server("::1", free_port())
    try:
        assert url == f"http://[::1]:{server.get_port()}"
        with urllib.request.urlopen(url, timeout=20) as r:  # the URL as printed is one a client can open
            assert r.status == 200
    finally:
        server.stop()
