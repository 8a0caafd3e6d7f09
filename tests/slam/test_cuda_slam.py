"""The whole SLAM on a CUDA device gives the same result as on the CPU (the CPU run is the reference here;
every piece it uses is tested on CPU elsewhere, and each CUDA kernel against its twin in tests/cuda)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mslam_ns.config import SlamConfig
from tests.slam.conftest import IMG_SIZE


def _run(src, device: str):
    from mslam_ns.prior.oracle import OraclePrior
    from mslam_ns.slam.system import SlamSystem

    prior = OraclePrior.from_source(src, size=IMG_SIZE, noise="mast3r", seed=0, device=device)
    s = SlamSystem(prior, SlamConfig(mode="rays", img_size=IMG_SIZE, device=device))
    s.run(src)
    return s


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the CPU run is the reference)")
def test_slam_on_cuda_matches_cpu(synthetic_source):
    from mslam_ns.eval.ate import ate

    cpu, gpu = _run(synthetic_source, "cpu"), _run(synthetic_source, "cuda")
    assert len(gpu.keyframes) == len(cpu.keyframes) and gpu.restarts == cpu.restarts == 0
    ts, _, T_c = cpu.frame_poses()
    _, _, T_g = gpu.frame_poses()
    assert T_g.device.type == "cuda"
    P_c, P_g = T_c.double().cpu().numpy()[:, :7], T_g.double().cpu().numpy()[:, :7]
    # the GPU trajectory against the CPU one as "ground truth": float32 kernels on both, different order of
    # summation, so agreement to a small fraction of the path
    r = ate(ts.numpy(), P_g, ts.numpy(), P_c)
    assert r.rmse_percent_of_path < 0.2, r
    K_c, K_g = cpu.intrinsics(), gpu.intrinsics()
    np.testing.assert_allclose(K_g, K_c, rtol=2e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (CPU twin: test_tracker.py)")
def test_tracking_on_cuda_synchronises_once_per_lm_evaluation_plus_four(synthetic_source):
    """The device synchronisations of one `track` on CUDA, as torch counts them (sync debug mode): the CPU
    test_tracking_reads_the_device_once_per_lm_evaluation_plus_four counts the same reads on CPU tensors."""
    import warnings

    from mslam_ns.geometry import sim3
    from mslam_ns.prior.oracle import OraclePrior
    from mslam_ns.slam import tracker as tracker_mod
    from mslam_ns.slam.system import SlamSystem

    src = synthetic_source
    prior = OraclePrior.from_source(src, size=IMG_SIZE, noise="mast3r", seed=0, device="cuda")
    system = SlamSystem(prior, SlamConfig(mode="rays", img_size=IMG_SIZE, device="cuda"))
    system.step(src[0])
    kf = system.keyframes.last
    frame = system._make_frame(src[3])
    pred = prior.decode(frame.enc, kf.enc)
    system.tracker.track(kf, pred, sim3.identity(device="cuda"))  # warm-up (kernel loading, caches)
    evals = []
    orig_lm = tracker_mod.levenberg_marquardt

    def counting_lm(x0, linearize, *a, **k):
        return orig_lm(x0, lambda x: (evals.append(1), linearize(x))[1], *a, **k)

    tracker_mod.levenberg_marquardt = counting_lm
    torch.cuda.synchronize()
    try:
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            res = system.tracker.track(kf, pred, sim3.identity(device="cuda"))
            torch.cuda.set_sync_debug_mode(0)
    finally:
        torch.cuda.set_sync_debug_mode(0)
        tracker_mod.levenberg_marquardt = orig_lm
    syncs = [str(x.message) for x in w if "synchroniz" in str(x.message)]
    assert res.ok, res.reason
    assert len(syncs) <= 4 + len(evals), (len(syncs), len(evals), syncs[:8])
