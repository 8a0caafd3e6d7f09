"""SLAM refresh on CPU: a simulated loop closure in a real SharedMap moves exactly the affected cameras and
splats by the known Sim(3) corrections; nothing else moves; training continues without NaN; a "live" writer
thread ends with the cameras on the map's final poses."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest
import torch

from mslam_ns.nerfstudio.raster.guard import forbid_gsplat_cuda

forbid_gsplat_cuda()

pytest.importorskip("nerfstudio")

from mslam_ns.geometry import sim3  # noqa: E402
from tests.nerfstudio._ns_dataset import write_ns_dataset  # noqa: E402
from tests.nerfstudio.test_method import _pipeline  # noqa: E402

KF_EVERY = 4


def _mat_to_sim3(M: np.ndarray) -> torch.Tensor:  # [4, 4] rigid -> [8] (s = 1)
    q = sim3.rotmat_to_quat(torch.from_numpy(M[:3, :3]))
    return torch.cat([torch.from_numpy(M[:3, 3]), q, torch.ones(1, dtype=torch.float64)])


def _correction(seed: int, scale: float) -> torch.Tensor:  # [8] a known Sim(3) world correction
    g = torch.Generator().manual_seed(seed)
    xi = torch.cat(
        [
            torch.randn(3, generator=g, dtype=torch.float64) * 0.05,
            torch.randn(3, generator=g, dtype=torch.float64) * 0.04,
            torch.tensor([math.log(scale)], dtype=torch.float64),
        ]
    )
    return sim3.exp(xi)


def _build_map(facts: dict, names: list[str]):
    """A SharedMap with one keyframe per KF_EVERY frames (GT poses) and every frame recorded on its keyframe."""
    from mslam_ns.slam.frame import Frame
    from mslam_ns.slam.shared_map import SharedMap

    m = SharedMap("cpu")
    T_WC = [_mat_to_sim3(M) for M in facts["T_WC"]]
    n = len(T_WC)
    for k in range(0, n, KF_EVERY):
        f = Frame(
            index=k,
            timestamp=float(k),
            name=names[k],
            image=torch.zeros(4, 4, 3, dtype=torch.uint8),
            transform=None,
            enc=None,
            T_WC=T_WC[k].clone(),
            X=torch.zeros(16, 3),
            C=torch.ones(16),
            N=1,
        )
        m.add_keyframe(f)
    for i in range(n):
        kf = i // KF_EVERY
        T_kf = sim3.mul(sim3.inv(T_WC[kf * KF_EVERY]), T_WC[i])
        m.add_frame(float(i), names[i], kf, T_kf, is_keyframe=(i % KF_EVERY == 0))
    return m


@pytest.fixture()
def setup(tmp_path):
    facts = write_ns_dataset(tmp_path, frames=16, width=40, height=30, kf_every=KF_EVERY, stride=4)
    kf = torch.from_numpy(np.load(tmp_path / "points_meta.npz")["keyframe"])
    cfg, pipe = _pipeline(tmp_path, {"points3D_keyframe": kf}, camera_optimizer=_camopt())
    names = sorted(p.name for p in (tmp_path / "images").iterdir())
    smap = _build_map(facts, names)
    return cfg, pipe, smap, facts


def _camopt():
    from nerfstudio.cameras.camera_optimizers import CameraOptimizerConfig

    return CameraOptimizerConfig(mode="SO3xR3")


def _strategy(pipe, smap, opt=None, viewer=None):
    from mslam_ns.nerfstudio.refresh import SlamRefreshStrategy, frames_for_images

    snap = smap.snapshot(with_points=False)
    dm = pipe.datamanager
    train = frames_for_images([str(p) for p in dm.train_dataparser_outputs.image_filenames], snap.frame_names)
    evals = frames_for_images([str(p) for p in dm.eval_dataset._dataparser_outputs.image_filenames], snap.frame_names)
    assert -1 not in train and -1 not in evals
    r = SlamRefreshStrategy(smap, train_frames=train, eval_frames=evals)
    r.attach(pipe, opt, viewer)
    return r


def _expected_c2w(pipe, T_WC_cv: torch.Tensor) -> torch.Tensor:  # [8] SLAM pose -> [3, 4] nerfstudio camera
    """What nerfstudio-data makes of a pose written to transforms.json (independent of refresh's maths)."""
    out = pipe.datamanager.train_dataparser_outputs
    M = sim3.to_matrix(T_WC_cv).numpy()
    R = M[:3, :3] / np.cbrt(np.linalg.det(M[:3, :3]))
    c2w = np.eye(4)
    c2w[:3, :3], c2w[:3, 3] = R @ np.diag([1.0, -1.0, -1.0]), M[:3, 3]
    A = out.dataparser_transform.double().numpy()
    ns = A @ c2w
    ns[:3, 3] *= float(out.dataparser_scale)
    return torch.from_numpy(ns)


def _ns_sim(pipe, S: torch.Tensor) -> tuple[float, np.ndarray, np.ndarray]:  # world Sim(3) in nerfstudio's frame
    out = pipe.datamanager.train_dataparser_outputs
    D = np.eye(4)
    D[:3] = out.dataparser_transform.double().numpy() * float(out.dataparser_scale)
    M = D @ sim3.to_matrix(S).numpy() @ np.linalg.inv(D)
    sig = float(np.cbrt(np.linalg.det(M[:3, :3])))
    return sig, M[:3, :3] / sig, M[:3, 3]


def test_loop_closure_moves_exactly_the_affected_cameras_and_splats(setup):
    from nerfstudio.engine.optimizers import Optimizers

    from tests.nerfstudio.test_method import _train

    cfg, pipe, smap, facts = setup
    model = pipe.model
    _train(cfg, pipe, 3)  # optimiser state exists, splats have moved off their seeds a little
    opt = Optimizers(cfg.optimizers, model.get_param_groups())
    model.step_cb(opt, 3)
    with torch.no_grad():
        model.camera_optimizer.pose_adjustment.data.normal_(0, 1e-3)
    refresh = _strategy(pipe, smap, opt)
    assert not refresh.step_pre_forward(0)  # no change yet: nothing to do

    dm = pipe.datamanager
    cams = {
        id(c): (c, c.camera_to_worlds.clone())
        for c in (dm.train_dataset.cameras, dm.train_cameras, dm.eval_dataset.cameras)
    }
    params0 = {k: v.detach().clone() for k, v in model.gauss_params.items()}
    adj0 = model.camera_optimizer.pose_adjustment.detach().clone()
    snap0 = smap.snapshot(with_points=False)

    moved = {2: _correction(1, 1.1), 3: _correction(2, 0.95)}
    T = torch.as_tensor(snap0.T_WC)
    smap.set_poses(torch.stack([sim3.mul(S, T[k]) for k, S in moved.items()]), ids=list(moved))
    assert refresh.step_pre_forward(1)

    # Cameras: every copy nerfstudio holds; moved ones land on the new SLAM pose, the others do not move.
    for cam_set, rows in (
        (dm.train_dataset.cameras, refresh.train_frames),
        (dm.eval_dataset.cameras, refresh.eval_frames),
    ):
        before = cams[id(cam_set)][1]
        for i, f in enumerate(rows):
            kf = int(snap0.frame_kf[f])
            if kf in moved:
                new_pose = sim3.mul(moved[kf], torch.as_tensor(snap0.frame_T_WC[f]))
                torch.testing.assert_close(
                    cam_set.camera_to_worlds[i].double(), _expected_c2w(pipe, new_pose)[:3], atol=2e-5, rtol=0
                )
            else:
                assert torch.equal(cam_set.camera_to_worlds[i], before[i])
    assert torch.equal(dm.train_cameras.camera_to_worlds, dm.train_dataset.cameras.camera_to_worlds)
    moved_train = [i for i, f in enumerate(refresh.train_frames) if int(snap0.frame_kf[f]) in moved]
    assert 0 < len(moved_train) < len(refresh.train_frames)

    # Splats: those seeded from moved keyframes follow their correction exactly; the rest are untouched.
    kf_of = model.splat_keyframe
    p = model.gauss_params
    for k in range(len(snap0.T_WC)):
        rows = kf_of == k
        if k not in moved:
            for name in p:
                assert torch.equal(p[name][rows], params0[name][rows])
            continue
        sig, R, t = _ns_sim(pipe, moved[k])
        Rt = torch.from_numpy(R).float()
        torch.testing.assert_close(
            p["means"][rows], sig * params0["means"][rows] @ Rt.T + torch.from_numpy(t).float(), atol=1e-5, rtol=1e-5
        )
        torch.testing.assert_close(p["scales"][rows], params0["scales"][rows] + float(np.log(sig)), atol=1e-6, rtol=0)
        from gsplat.cuda._torch_impl import _quat_to_rotmat

        torch.testing.assert_close(
            _quat_to_rotmat(p["quats"][rows]), Rt @ _quat_to_rotmat(params0["quats"][rows]), atol=1e-5, rtol=0
        )
        for name in ("features_dc", "features_rest", "opacities"):
            assert torch.equal(p[name][rows], params0[name][rows])

    # Camera optimiser: moved cameras' adjustments reset, the others kept.
    adj = model.camera_optimizer.pose_adjustment.detach()
    for i in range(adj.shape[0]):
        if i in moved_train:
            assert float(adj[i].abs().max()) == 0.0
        else:
            assert torch.equal(adj[i], adj0[i])

    # Training continues without NaN.
    losses = _train(cfg, pipe, 4)
    assert all(np.isfinite(losses))
    assert all(bool(torch.isfinite(v).all()) for v in model.gauss_params.values())


def test_viewer_frusta_move_by_the_correction(setup):
    """nerfstudio's viewer draws the training cameras it picked from `viewer_state.original_c2w` ({training
    image index: [3, 4] camera-to-world}, numpy; `update_camera_poses` multiplies it by the camera optimiser's
    delta). A refresh moves the drawn frusta of corrected cameras by exactly their correction, in nerfstudio's
    world, and leaves the others (and the images it did not draw) alone."""
    from types import SimpleNamespace

    cfg, pipe, smap, facts = setup
    dm = pipe.datamanager
    c2w0 = dm.train_dataset.cameras.camera_to_worlds.detach().cpu().numpy().copy()  # [N, 3, 4]
    drawn = [i for i in range(len(c2w0)) if i != 1]  # nerfstudio may draw a subset of the images
    viewer = SimpleNamespace(original_c2w={i: c2w0[i].copy() for i in drawn})  # the attribute refresh touches
    refresh = _strategy(pipe, smap, viewer=viewer)
    snap0 = smap.snapshot(with_points=False)

    moved = {1: _correction(3, 1.05), 3: _correction(4, 0.9)}
    T = torch.as_tensor(snap0.T_WC)
    smap.set_poses(torch.stack([sim3.mul(S, T[k]) for k, S in moved.items()]), ids=list(moved))
    assert refresh.step_pre_forward(1)

    assert sorted(viewer.original_c2w) == drawn  # no frustum added or dropped
    kinds = {"moved": 0, "kept": 0}
    for i in drawn:
        got = viewer.original_c2w[i]
        assert isinstance(got, np.ndarray) and got.shape == (3, 4)  # what update_camera_poses multiplies
        kf = int(snap0.frame_kf[refresh.train_frames[i]])
        if kf in moved:
            sig, R, t = _ns_sim(pipe, moved[kf])
            np.testing.assert_allclose(got[:, :3], R @ c2w0[i][:, :3], atol=2e-5, rtol=0)
            np.testing.assert_allclose(got[:, 3], sig * R @ c2w0[i][:, 3] + t, atol=2e-5, rtol=0)
            # ... which is where the training camera itself went
            np.testing.assert_allclose(got, dm.train_dataset.cameras.camera_to_worlds[i].numpy(), atol=1e-6)
            kinds["moved"] += 1
        else:
            assert np.array_equal(got, c2w0[i])
            kinds["kept"] += 1
    assert kinds["moved"] > 0 and kinds["kept"] > 0


def test_live_writer_ends_on_final_poses(setup):
    from nerfstudio.engine.optimizers import Optimizers

    cfg, pipe, smap, facts = setup
    model = pipe.model
    opt = Optimizers(cfg.optimizers, model.get_param_groups())
    refresh = _strategy(pipe, smap, opt)
    stop = threading.Event()

    def backend():  # a backend thread moving keyframes while training runs
        for j in range(3):
            if stop.is_set():
                return
            snap = smap.snapshot(with_points=False)
            ids = [1 + j % 3, 3]
            T = torch.as_tensor(snap.T_WC)
            smap.set_poses(torch.stack([sim3.mul(_correction(10 + j + i, 1.02), T[i]) for i in ids]), ids=ids)
            time.sleep(0.05)

    th = threading.Thread(target=backend)
    th.start()
    model.train()
    try:
        for step in range(12):
            refresh.step_pre_forward(step)
            model.step_cb(opt, step)
            _, loss_dict, _ = pipe.get_train_loss_dict(step)
            loss = sum(loss_dict.values())
            assert bool(torch.isfinite(loss))
            opt.zero_grad_all()
            loss.backward()
            opt.optimizer_step_all()
            model.step_post_backward(step)
    finally:
        stop.set()
        th.join()
    refresh.step_pre_forward(12)
    final = smap.snapshot(with_points=False)
    assert refresh.version == final.version and refresh.n_refreshes >= 1
    cams = pipe.datamanager.train_dataset.cameras.camera_to_worlds
    for i, f in enumerate(refresh.train_frames):
        torch.testing.assert_close(
            cams[i].double(), _expected_c2w(pipe, torch.as_tensor(final.frame_T_WC[f]))[:3], atol=5e-5, rtol=0
        )
