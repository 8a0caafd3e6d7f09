"""The live viewer following a real `SharedMap`: what is re-sent, and how often."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from mslam_ns.slam.shared_map import SharedMap
from mslam_ns.viewer.live import start_live_viewer
from mslam_ns.viewer.server import free_port
from tests.viewer import scenes

pytest.importorskip("viser")
T7 = scenes.arc_poses(scenes.N_KEYFRAMES)
IDENT = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1.0])


def _add_keyframe(m: SharedMap, k: int) -> None:
    m.add_keyframe(scenes.shared_map_frame(k, scenes.sim3_row(T7[k])))
    m.add_frame(0.1 * k, f"kf{k}.png", k, IDENT, is_keyframe=True)


@pytest.fixture()
def live():
    m = SharedMap()
    h = start_live_viewer(m, port=free_port(), max_rate_hz=20.0)
    yield m, h
    h.stop()


def test_keyframes_edges_and_lost_frames_appear(live):
    m, h = live
    for k in range(3):
        _add_keyframe(m, k)
    m.add_frame(0.25, "lost.png", 2, IDENT, lost=True)
    m.add_edges([(0, 1, "seq", {}), (1, 2, "seq", {}), (2, 0, "loop", {})])
    m.set_state("tracking")
    assert h.wait_until_current()
    sc = h.scene
    assert sorted(sc.keyframes) == [0, 1, 2]
    assert sorted(c.parent for c in sc.clouds.values()) == [0, 1, 2]
    assert sc.edge_count() == {"seq": 2, "loop": 1}
    assert sc.frame_lost.tolist() == [False, False, False, True]
    assert sc.info["state"] == "tracking"
    # live points: the keyframe's pointmap, scaled by its pose scale, in its frame (subsampled to the cap)
    n = scenes.HW[0] * scenes.HW[1]
    assert len(sc.clouds["kf1"].xyz) == min(n, sc.cfg.max_points_per_keyframe)
    assert sc.keyframes[1].thumbnail is not None


def test_only_changed_keyframes_are_resent(live):
    m, h = live
    for k in range(4):
        _add_keyframe(m, k)
    assert h.wait_until_current()
    sent = list(h.scene.stats.clouds_sent_for)
    assert sorted(sent) == [0, 1, 2, 3]
    with m.edit_points(2) as f:  # fusion into keyframe 2
        f.X += 0.01
    assert h.wait_until_current()
    assert h.scene.stats.clouds_sent_for[len(sent) :] == [2]
    # A backend update that moves every keyframe (same scale) moves nodes and re-sends no points.
    before, moves = len(h.scene.stats.clouds_sent_for), h.scene.stats.pose_updates
    T = m.keyframes.poses().clone()
    T[:, 0] += 0.5
    m.set_poses(T)
    assert h.wait_until_current()
    assert len(h.scene.stats.clouds_sent_for) == before
    assert h.scene.stats.pose_updates - moves == 4
    np.testing.assert_allclose(h.scene.keyframes[3].frame.position, T[3, :3].numpy(), atol=1e-6)
    # A scale change re-sends that keyframe's points, rescaled, without a new snapshot of its pointmap.
    x_old = h.scene.clouds["kf1"].xyz.copy()
    T[1, 7] = 2.0
    m.set_poses(T[1:2], ids=[1])
    assert h.wait_until_current()
    assert h.scene.stats.clouds_sent_for[before:] == [1]
    np.testing.assert_allclose(h.scene.clouds["kf1"].xyz, 2.0 * x_old, rtol=1e-5)


def test_update_rate_is_bounded():
    m = SharedMap()
    _add_keyframe(m, 0)
    h = start_live_viewer(m, port=free_port(), max_rate_hz=4.0)
    try:
        t0 = time.monotonic()
        for i in range(60):  # ~60 map changes in ~1.2 s
            m.add_frame(0.01 * i, f"f{i}.png", 0, IDENT)
            time.sleep(0.02)
        assert h.wait_until_current()
        elapsed = time.monotonic() - t0
        assert 1 <= h.updates <= 4.0 * elapsed + 2
        assert len(h.scene.frame_positions) == 61
    finally:
        h.stop()


def test_popped_keyframe_disappears(live):
    m, h = live
    for k in range(3):
        _add_keyframe(m, k)
    assert h.wait_until_current()
    m.pop_last()
    assert h.wait_until_current()
    assert sorted(h.scene.keyframes) == [0, 1] and "kf2" not in h.scene.clouds


def test_stop_ends_the_thread():
    m = SharedMap()
    h = start_live_viewer(m, port=free_port())
    h.stop()
    assert not h._thread.is_alive()
    h.stop()  # idempotent


class StandInClient:
    """viser's `ClientHandle` as far as the scene uses it: `camera` (position, look_at, up_direction) and
    `atomic()`. A real one needs a connected browser."""

    def __init__(self) -> None:
        from types import SimpleNamespace

        self.client_id = 7
        self.camera = SimpleNamespace(position=None, look_at=None, up_direction=None)

    def atomic(self):
        import contextlib

        return contextlib.nullcontext()

    def view(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        c = self.camera
        return np.array(c.position, float), np.array(c.look_at, float), np.array(c.up_direction, float)


def _frame(m: SharedMap, kf: int, t_cam: tuple[float, float, float], i: int) -> None:
    """A tracked frame on keyframe `kf`, moved by `t_cam` in that keyframe's camera axes (same rotation)."""
    m.add_frame(1.0 + 0.1 * i, f"f{i}.png", kf, torch.tensor([*t_cam, 0, 0, 0, 1, 1.0]))


def _wait(cond, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.02)
    return cond()


def test_follow_camera_and_reset_view(monkeypatch):
    from mslam_ns.io.poses import quat_to_matrix
    from mslam_ns.viewer.live import SnapshotApplier
    from mslam_ns.viewer.scene import SlamScene
    from mslam_ns.viewer.server import open_server

    server, _ = open_server("127.0.0.1", free_port())
    try:
        client = StandInClient()
        monkeypatch.setattr(server, "get_clients", lambda: {client.client_id: client})
        sc = SlamScene(server)
        applier = SnapshotApplier(sc)
        m = SharedMap()
        for k in range(2):
            _add_keyframe(m, k)
        _frame(m, 1, (0.0, 0.0, 0.2), 0)
        applier.apply(m.snapshot(since=applier.version))
        assert client.camera.position is None  # follow is off: the view is the user's
        sc.reset_view(client)  # what a browser gets when it connects
        initial = client.view()
        u = sc.unit
        assert u is not None and u > 0

        # Follow on: the view jumps behind the newest frame, looking where it looks.
        sc.gui_follow.value = True  # its callback runs in viser's worker thread
        assert _wait(lambda: not np.allclose(client.view()[0], initial[0]))
        snap = m.snapshot(with_points=False)
        p, R = np.asarray(snap.frame_T_WC[-1][:3]), quat_to_matrix(np.asarray(snap.frame_T_WC[-1][3:7]))
        eye, target, up = client.view()
        fwd = R[:, 2]
        assert np.linalg.norm(eye - p) < 1.0 * u and np.dot(p - eye, fwd) > 0.5 * u  # behind it, close
        look = (target - eye) / np.linalg.norm(target - eye)
        assert np.dot(look, fwd) > 0.8 and np.dot(up, -R[:, 1]) > 0.99  # looking along it, its up

        # Reset view (the button, as a click from this client calls it) restores the initial overview.
        for cb in sc.gui_reset._impl.update_cb:  # viser 0.2.7 keeps a button's click callbacks here
            cb(type("GuiEvent", (), {"client": client, "client_id": client.client_id, "target": sc.gui_reset})())
        for a, b in zip(client.view(), initial):
            np.testing.assert_allclose(a, b, atol=1e-9)

        # Each snapshot applied with follow on moves the view with the newest frame.
        before = client.view()
        _frame(m, 1, (0.0, 0.0, 0.5), 1)
        applier.apply(m.snapshot(since=applier.version))
        p1 = np.asarray(m.snapshot(with_points=False).frame_T_WC[-1][:3])
        eye1, target1, _ = client.view()
        assert not np.allclose(eye1, before[0])
        _frame(m, 1, (0.1, 0.0, 0.9), 2)
        applier.apply(m.snapshot(since=applier.version))
        p2 = np.asarray(m.snapshot(with_points=False).frame_T_WC[-1][:3])
        eye2, target2, _ = client.view()
        np.testing.assert_allclose(eye2 - eye1, p2 - p1, atol=1e-6)  # same rotation: moved exactly as it did
        np.testing.assert_allclose(target2 - target1, p2 - p1, atol=1e-6)

        # Follow off: new frames leave the view alone.
        sc.gui_follow.value = False
        time.sleep(0.2)
        _frame(m, 1, (0.2, 0.0, 1.2), 3)
        applier.apply(m.snapshot(since=applier.version))
        np.testing.assert_allclose(client.view()[0], eye2)
    finally:
        server.stop()
