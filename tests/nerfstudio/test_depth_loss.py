"""Depth supervision on CPU: `ns-process-data mslam --depth` writes depth maps rendered from the fused SLAM
points; `mslam-splatfacto --pipeline.model.depth-loss-mult` trains against them through nerfstudio's
DepthDataset, and the rendered depth of held-out views ends closer to the SLAM's than without the loss."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mslam_ns.nerfstudio.raster.guard import forbid_gsplat_cuda

forbid_gsplat_cuda()

pytest.importorskip("nerfstudio")

from tests.nerfstudio.test_method import _pipeline, _train  # noqa: E402


@pytest.fixture(scope="module")
def depth_data(tmp_path_factory) -> Path:
    from mslam_ns.io.synthetic import generate_sequence
    from mslam_ns.nerfstudio.process_data import ProcessMslam, process

    tmp = tmp_path_factory.mktemp("depth")
    seq = generate_sequence(tmp / "seq", 16, 64, 48, seed=3)
    out = tmp / "data"
    p = ProcessMslam(
        data=seq, output_dir=out, prior="oracle", img_size=64, num_downscales=0, depth=True, max_points=1000
    )
    process(p)
    return out


def _eval_depth_error(pipe) -> float:
    """Mean L1 between rendered and SLAM depth over the eval images (where the SLAM has depth)."""
    from mslam_ns.nerfstudio.model import depth_l1

    dm, model = pipe.datamanager, pipe.model
    model.eval()
    errs = []
    with torch.no_grad():
        for i in range(len(dm.eval_dataset)):
            cam = dm.eval_dataset.cameras[i : i + 1]
            out = model.get_outputs(cam)
            errs.append(float(depth_l1(out["depth"], dm.eval_dataset[i]["depth_image"])))
    return sum(errs) / len(errs)


def test_depth_loss_pulls_rendered_depth_to_the_slam_depth(depth_data):
    from nerfstudio.data.datasets.depth_dataset import DepthDataset

    errs = {}
    for mult in (0.0, 1.0):
        torch.manual_seed(0)
        cfg, pipe = _pipeline(depth_data, depth_loss_mult=mult)
        assert isinstance(pipe.datamanager.train_dataset, DepthDataset)  # depth maps found, no depth network
        before = _eval_depth_error(pipe)
        losses = _train(cfg, pipe, 100)
        assert all(torch.isfinite(torch.tensor(losses)))
        errs[mult] = (before, _eval_depth_error(pipe))
        if mult > 0:
            _, loss_dict, _ = pipe.get_train_loss_dict(100)
            assert "depth_loss" in loss_dict and float(loss_dict["depth_loss"]) > 0
    print("depth L1 on eval views (before, after):", errs)
    assert errs[1.0][1] < 0.8 * errs[0.0][1], errs
