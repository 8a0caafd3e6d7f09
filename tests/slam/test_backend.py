"""The SLAM backend on synthetic multi-lap loops with the oracle prior (MASt3R-like noise, unknown scale).

Frontend-only figures come from the same run (`frame_poses(frontend=True)`: the chain of creation-time
relative poses, which is exactly what a run without the backend produces, since tracking never reads
absolute poses). Bounds are about 1.5x the values measured when these tests were written (noted beside).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mslam_ns.config import SlamConfig
from mslam_ns.eval.ate import ate

FRAMES, W, H, SIZE = 120, 160, 120, 128


@pytest.fixture(scope="module")
def loop2(tmp_path_factory) -> Path:
    from mslam_ns.io.synthetic import generate_sequence

    return Path(generate_sequence(tmp_path_factory.mktemp("loop2") / "seq", FRAMES, W, H, 3, trajectory="loop2"))


def _run(seq: Path, noise: str = "mast3r", mode: str = "rays", thread: bool = False, fuse_edges: bool = True, **kw):
    from mslam_ns.io.sources import open_source
    from mslam_ns.prior.oracle import OraclePrior
    from mslam_ns.slam.system import SlamSystem

    src = open_source(seq)
    cfg = SlamConfig(mode=mode, img_size=SIZE)
    cfg.backend.thread = thread
    cfg.backend.fuse_edges = fuse_edges
    prior = OraclePrior.from_source(src, size=SIZE, noise=noise, seed=0)
    system = SlamSystem(prior, cfg, K=src.intrinsics.K if mode == "calib" else None, **kw)
    system.run(src)
    return system, src


def _ate(system, src, frontend: bool = False, keep=None):
    ts, _, T = system.frame_poses(frontend=frontend)
    ts, P = ts.numpy(), T.double().numpy()[:, :7]
    if keep is not None:
        ts, P = ts[keep], P[keep]
    r = ate(ts, P, np.asarray(src.timestamps), src.gt_poses)
    return r.rmse_percent_of_path, r.rot_median_deg


@pytest.mark.parametrize(
    "noise,mode,bound_pct,bound_deg,min_cut",
    [
        ("mast3r", "rays", 1.05, 1.4, 2.5),  # measured 0.71% / 0.94 deg, frontend 2.10% / 2.8 deg (cut 3.0x)
        ("hard", "calib", 0.45, 2.1, 4.5),  # measured 0.30% / 1.42 deg, frontend 2.05% / 6.2 deg (cut 6.8x)
    ],
)
def test_backend_closes_the_loop_and_cuts_drift(loop2, noise, mode, bound_pct, bound_deg, min_cut):
    system, src = _run(loop2, noise, mode)
    st = system.stats()
    assert st["loop_edges"] >= 6, st  # second-lap keyframes connected to first-lap ones (measured 9 / 51)
    assert st["backend"]["failed_optimisations"] == 0
    assert int(system.trajectory.lost_mask().sum()) == 0 and system.restarts == 0  # incl. the pure rotation
    err, rot = _ate(system, src)
    err_f, rot_f = _ate(system, src, frontend=True)
    assert err < bound_pct and rot < bound_deg, (err, rot)
    assert err_f / err >= min_cut, (err_f, err)
    if mode == "rays":  # self-calibration: the fused intrinsics, mapped back to the original images
        K, K_gt = system.intrinsics(), src.intrinsics.K
        assert abs(K[0, 0] / K_gt[0, 0] - 1) < 0.02 and abs(K[1, 1] / K_gt[1, 1] - 1) < 0.02
        assert abs(K[0, 2] - K_gt[0, 2]) < 0.02 * W and abs(K[1, 2] - K_gt[1, 2]) < 0.02 * H


@pytest.mark.parametrize("noise", ["mast3r", "hard"])
def test_fusing_edge_decodes_into_the_keyframes_lowers_the_error(loop2, noise):
    """`backend.fuse_edges`: every accepted edge's two own-view pointmaps are fused into their keyframes
    (scaled onto them). Measured on this loop: mast3r 0.82% -> 0.71%, hard 0.89% -> 0.75% (all frames);
    over 8 noise seeds the mean mast3r ATE goes 0.71% -> 0.64%."""
    errs, systems = {}, {}
    for fuse in (False, True):
        systems[fuse], src = _run(loop2, noise, fuse_edges=fuse)
        errs[fuse] = _ate(systems[fuse], src)[0]
    on, off = systems[True].backend.stats, systems[False].backend.stats
    assert on.fused_passes == 2 * on.edges_accepted > 0 and off.fused_passes == 0
    # both runs take an intrinsics sample of every accepted edge pass (for the final estimate)
    assert (
        len(systems[True]._intr.extra) == on.fused_passes and len(systems[False]._intr.extra) == 2 * off.edges_accepted
    )
    # every fused pass counts as one more observation of its keyframe
    n_obs = sum(systems[True].keyframes.meta(i).N for i in range(len(systems[True].keyframes)))
    n_frames = len(systems[True].trajectory)
    assert n_obs >= n_frames + on.fused_passes - len(systems[True].keyframes), (n_obs, n_frames)
    assert errs[True] < 0.92 * errs[False], errs


def test_thread_mode_gives_complete_results_like_the_deterministic_run(loop2):
    """The worker thread changes when corrected poses reach the frontend, so the keyframe decisions may
    differ by one or two (CI once gave 15 against 14); every keyframe must still go through the backend."""
    det, src = _run(loop2)
    thr, _ = _run(loop2, thread=True)
    assert thr.backend._worker is None  # flushed and stopped
    assert abs(len(thr.keyframes) - len(det.keyframes)) <= 2, (len(thr.keyframes), len(det.keyframes))
    # one optimisation per keyframe step in both modes: none dropped or left in the queue
    n_opt = {s: s.stats()["backend"]["optimisations"] - len(s.keyframes) for s in (det, thr)}
    assert n_opt[thr] == n_opt[det], n_opt
    e_det, _ = _ate(det, src)
    e_thr, _ = _ate(thr, src)
    assert e_thr < 1.3 * e_det + 0.05, (e_thr, e_det)


def test_relocalises_after_a_cut_into_the_same_map(loop2, tmp_path):
    """Black frames in the second lap: tracking is lost; when the camera returns the frame relocalises
    against first-lap keyframes found by retrieval, and the frames after the cut are in the same map."""
    import shutil

    from PIL import Image

    seq = tmp_path / "cut"
    shutil.copytree(loop2, seq)
    names = [ln.split()[1] for ln in (seq / "rgb.txt").read_text().splitlines() if not ln.startswith("#")]
    cut = range(66, 96)  # a quarter lap: tracking cannot resume against the last keyframe
    for i in cut:
        img = np.asarray(Image.open(seq / names[i]))
        Image.fromarray(np.zeros_like(img)).save(seq / names[i])
    system, src = _run(seq)
    assert system.relocalisations >= 1 and system.restarts == 0
    st = system.stats()
    assert st["reloc_edges"] >= 1
    lost = system.trajectory.lost_mask().numpy()
    assert lost[list(cut)].all() and not lost[cut.stop :].any()  # relocalised on the first frame back
    keep = ~lost
    err, rot = _ate(system, src, keep=keep)
    assert err < 1.1 and rot < 3.2, (err, rot)  # measured 0.75% / 2.1 deg (frames after the cut included)


def test_failed_optimisation_keeps_the_previous_poses(loop2):
    """All correspondences of the graph invalidated: the optimisation fails, is counted, poses unchanged."""
    system, _ = _run(loop2)
    b = system.backend
    before = system.keyframes.poses().clone()
    v = system.map.version
    for _i, _j, _k, data in system.map.edges():
        data["m"].valid = torch.zeros_like(data["m"].valid)
    info = b.optimise()
    assert info["failed"] and b.stats.failed_optimisations == 1
    assert torch.equal(system.keyframes.poses(), before) and system.map.version == v
