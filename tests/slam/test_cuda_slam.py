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
