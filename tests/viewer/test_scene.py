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
