"""SharedMap: growth, offload, per-frame recomposition, versions, snapshots under concurrent writes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mslam_ns.geometry import sim3
from mslam_ns.prior.base import Encoding
from mslam_ns.slam.frame import Frame
from mslam_ns.slam.fusion import constrain_to_rays, fuse_into_keyframe, fuse_own_view, pixel_rays, scale_onto
from mslam_ns.slam.shared_map import SharedMap


def _kf(i: int, H: int = 2, W: int = 3, T: torch.Tensor | None = None) -> Frame:
    g = torch.Generator().manual_seed(i)
    return Frame(
        i,
        0.1 * i,
        f"{i:06d}.png",
        torch.randint(0, 255, (H, W, 3), dtype=torch.uint8, generator=g),
        None,
        Encoding(i, (H, W)),
        sim3.identity() if T is None else T,
        X=torch.rand(H * W, 3, generator=g) + torch.tensor([0.0, 0.0, 1.0]),
        C=torch.full((H * W,), 2.0),
        N=1,
    )


def _random_sim3(g: torch.Generator, n: int = 1) -> torch.Tensor:
    xi = torch.randn(n, 7, generator=g, dtype=torch.float64) * 0.3
    return sim3.exp(xi)


def test_store_grows_past_600_keyframes():
    m = SharedMap("cpu")
    store = m.keyframes
    for i in range(650):
        assert m.add_keyframe(_kf(i)) == i
    assert len(store) == 650
    assert store.poses().shape == (650, 8)
    X, C = store.pointmaps([0, 333, 649])
    assert X.shape == (3, 6, 3) and C.shape == (3, 6)
    torch.testing.assert_close(X[2], store[649].X)
    assert store.nbytes()["device"] == 650 * (6 * 3 + 6 * 3 * 4 + 6 * 4)  # image u8, X, C: nothing else kept


def test_store_offload_marks_old_keyframes_and_fetches_them():
    m = SharedMap("cpu", offload=True, resident=3)
    store = m.keyframes
    ref = [_kf(i) for i in range(10)]
    for f in ref:
        m.add_keyframe(_kf(f.index))
    assert [store.is_offloaded(i) for i in range(10)] == [True] * 7 + [False] * 3
    for i in (0, 6, 9):
        torch.testing.assert_close(store.get(i).X, ref[i].X)
        assert store.get(i).X.device == torch.device("cpu")


def test_store_offload_to_host_on_cuda():
    import pytest

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (the CPU twin above checks the bookkeeping)")
    m = SharedMap("cuda", offload=True, resident=2)
    store = m.keyframes
    for i in range(5):
        m.add_keyframe(_kf(i).to("cuda"))
    assert store.raw(0).X.device.type == "cpu" and store.raw(4).X.device.type == "cuda"
    assert store.get(0).X.device.type == "cuda"
    assert store.nbytes()["host"] > 0


def test_set_poses_validates_shape():
    import pytest

    m = SharedMap("cpu")
    store = m.keyframes
    m.add_keyframe(_kf(0))
    with pytest.raises(ValueError):
        store.set_poses(torch.zeros(2, 8))


def test_trajectory_recomposes_after_moving_a_keyframe():
    g = torch.Generator().manual_seed(0)
    m = SharedMap("cpu")
    store = m.keyframes
    T0, T1 = _random_sim3(g, 2).float()
    m.add_keyframe(_kf(0, T=T0))
    m.add_keyframe(_kf(1, T=T1))
    traj = m.frames
    rel = _random_sim3(g, 4).float()
    m.add_frame(0.0, "a", 0, sim3.identity(), is_keyframe=True)
    m.add_frame(0.1, "b", 0, rel[0])
    m.add_frame(0.2, "c", 1, rel[1])
    m.add_frame(0.3, "d", 1, rel[2], lost=True)
    before = traj.poses()
    # Each frame = keyframe pose * relative pose, checked with 4x4 matrices.
    M = sim3.to_matrix(before.double())
    torch.testing.assert_close(
        M[2], sim3.to_matrix(T1.double()) @ sim3.to_matrix(rel[1].double()), atol=1e-5, rtol=1e-5
    )
    # Move keyframe 1: its frames follow, keyframe 0's frames do not.
    T1_new = sim3.mul(_random_sim3(g)[0].float(), T1)
    store.set_poses(T1_new[None], [1])
    after = traj.poses()
    torch.testing.assert_close(after[:2], before[:2])
    assert (after[2:, :3] - before[2:, :3]).norm() > 1e-3
    torch.testing.assert_close(
        sim3.to_matrix(after[3].double()),
        sim3.to_matrix(T1_new.double()) @ sim3.to_matrix(rel[2].double()),
        atol=1e-5,
        rtol=1e-5,
    )
    assert traj.lost_mask().tolist() == [False, False, False, True]
    assert traj.keyframe_mask().tolist() == [True, False, False, False]
    assert traj.names() == ["a", "b", "c", "d"]


def test_weighted_fusion_and_ray_constraint():
    kf = _kf(0)
    X0 = kf.X.clone()
    X_new = X0 + 1.0
    fuse_into_keyframe(kf, X_new, torch.full((6,), 6.0))
    # (2 X0 + 6 (X0 + 1)) / 8 = X0 + 0.75
    torch.testing.assert_close(kf.X, X0 + 0.75)
    assert kf.N == 2 and torch.allclose(kf.C, torch.full((6,), 8.0))
    torch.testing.assert_close(kf.average_conf(), torch.full((6,), 4.0))

    K = torch.tensor([[100.0, 0, 1.5], [0, 90.0, 1.0], [0, 0, 1]], dtype=torch.float64)
    rays = pixel_rays(K, (2, 3))
    Xc = constrain_to_rays(torch.rand(6, 3, dtype=torch.float64) + 1, rays)
    uv = Xc @ K.T
    uv = uv[:, :2] / uv[:, 2:]
    v, u = torch.meshgrid(torch.arange(2.0), torch.arange(3.0), indexing="ij")
    torch.testing.assert_close(uv, torch.stack([u, v], -1).reshape(-1, 2).double())


def test_own_view_fusion_aligns_the_pass_scale_first():
    """An edge decode's own-view pointmap at another scale (plus noise) is scaled onto the keyframe, then
    fused with the weighted average: the pass's scale does not leak into the canonical pointmap."""
    g = torch.Generator().manual_seed(3)
    kf = _kf(1, H=8, W=8)
    X0 = kf.X.clone()
    noise = 0.01 * torch.randn(64, 3, generator=g)
    X_pass = (X0 + noise) / 1.7  # another pass: 1/1.7 of the scale
    s = fuse_own_view(kf, X_pass, torch.full((64,), 2.0))
    assert abs(s - 1.7) < 0.02, s  # least squares under 1% noise
    torch.testing.assert_close(kf.X, 0.5 * (X0 + s * X_pass))  # equal confidences: the mean
    assert kf.N == 2 and torch.allclose(kf.C, torch.full((64,), 4.0))
    # the weights decide the scale: a pass agreeing with the keyframe only where it is confident
    w = torch.zeros(64)
    w[:10] = 1.0
    Y = X0.clone()
    Y[10:] *= 5.0  # wrong, but weightless
    assert abs(scale_onto(X0, Y / 2.0, w) - 2.0) < 1e-6
    assert scale_onto(X0, Y, torch.zeros(64)) == 1.0  # nothing to align on: unchanged


def test_versions_dirty_flags_and_snapshot_since():
    m = SharedMap("cpu")
    m.add_keyframe(_kf(0))
    m.add_frame(0.0, "a", 0, sim3.identity(), is_keyframe=True)
    m.add_keyframe(_kf(1))
    m.add_frame(0.1, "b", 1, sim3.identity(), is_keyframe=True)
    full = m.snapshot()
    assert sorted(full.keyframes) == [0, 1] and full.frame_is_keyframe.tolist() == [True, True]
    assert full.keyframe_frame_index.tolist() == [0, 1]
    v = full.version
    assert m.snapshot(since=v).keyframes == {}  # nothing changed since
    with m.edit_points(1) as kf:
        kf.X = kf.X + 1.0
    s2 = m.snapshot(since=v)
    assert list(s2.keyframes) == [1] and s2.version > v  # only the changed keyframe's points
    np.testing.assert_allclose(s2.keyframes[1].X, full.keyframes[1].X + 1.0)
    m.set_poses(sim3.exp(torch.full((1, 7), 0.1, dtype=torch.float64)).float(), [0])
    s3 = m.snapshot(since=s2.version, with_points=True)
    assert s3.keyframes == {} and s3.pose_version[0] == s3.version > s3.pose_version[1]
    # pop_last removes a tentative keyframe with its records and edges
    m.add_keyframe(_kf(2))
    m.add_edges([(2, 1, "reloc", {}), (1, 0, "seq", {})])
    m.pop_last()
    s4 = m.snapshot()
    assert s4.T_WC.shape == (2, 8) and s4.edges.tolist() == [[1, 0]] and s4.edge_kind == ["seq"]
    with pytest.raises(IndexError):
        m.add_edges([(0, 5, "loop", {})])


def test_snapshot_never_mixes_versions_under_a_concurrent_writer():
    """A writer thread moves every keyframe to the same new pose per write; readers must never see two."""
    import threading

    m = SharedMap("cpu")
    n = 40
    for i in range(n):
        m.add_keyframe(_kf(i))
        m.add_frame(0.1 * i, f"{i}", i, sim3.identity(), is_keyframe=True)
    stop = threading.Event()

    def writer():
        k = 0
        while not stop.is_set():
            k += 1
            T = sim3.identity(n)
            T[:, 0] = float(k)
            m.set_poses(T)
            with m.edit_points(k % n) as kf:
                kf.X = kf.X * 1.0

    t = threading.Thread(target=writer)
    t.start()
    seen = set()
    try:
        for _ in range(300):
            s = m.snapshot(since=None, with_points=False)
            xs = set(s.T_WC[:, 0].tolist())
            assert len(xs) == 1, f"snapshot mixes poses {sorted(xs)[:4]}"
            np.testing.assert_allclose(s.frame_T_WC[:, 0], s.T_WC[:, 0])  # frames recomposed from the same
            assert (s.pose_version <= s.version).all()
            seen.add(s.version)
    finally:
        stop.set()
        t.join()
    assert len(seen) > 10  # the writer really ran while the readers read


def test_wait_for_change_wakes_on_write():
    import threading

    m = SharedMap("cpu")
    v = m.version
    threading.Timer(0.05, lambda: m.add_keyframe(_kf(0))).start()
    assert m.wait_for_change(v, timeout_s=5.0) > v
    assert m.wait_for_change(m.version, timeout_s=0.01) == m.version  # times out without a write
