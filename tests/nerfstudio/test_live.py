"""Live training on CPU: the `mslam-data` dataparser with `live=True` starts the SLAM in a background
thread, training starts after the warm-up with every frame in the dataset, frames the SLAM has not reached
are never sampled, and once the SLAM has finished every camera sits on the SLAM's final pose (as nerfstudio
places a pose written to transforms.json) and the finished dataset is in the cache for the next run."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from mslam_ns.nerfstudio.raster.guard import forbid_gsplat_cuda

forbid_gsplat_cuda()

pytest.importorskip("nerfstudio")

from tests.nerfstudio.test_method import _train  # noqa: E402
from tests.nerfstudio.test_refresh import _expected_c2w  # noqa: E402

FRAMES, WARMUP, HOLD = 36, 10, 18  # the SLAM is held before frame HOLD until the test releases it


def test_live_training_follows_the_slam_to_its_final_poses(tmp_path, monkeypatch):
    from nerfstudio.engine.callbacks import TrainingCallbackAttributes
    from nerfstudio.engine.optimizers import Optimizers

    from mslam_ns.io.synthetic import generate_sequence
    from mslam_ns.nerfstudio.dataparser import MslamDataParserConfig
    from mslam_ns.nerfstudio.method import make_trainer_config
    from mslam_ns.slam.system import SlamSystem

    seq = generate_sequence(tmp_path / "seq", FRAMES, 160, 120, seed=2)
    release = threading.Event()
    step = SlamSystem.step

    def held_step(self, raw, force=False):
        if int(raw.index) == HOLD:
            assert release.wait(600), "the test never released the SLAM"
        return step(self, raw, force)

    monkeypatch.setattr(SlamSystem, "step", held_step)
    cache = tmp_path / "cache"
    cfg = make_trainer_config(1000)
    cfg.machine.device_type = "cpu"
    cfg.pipeline.model.num_downscales = 0
    cfg.pipeline.model.sh_degree = 1
    cfg.pipeline.datamanager.dataparser = MslamDataParserConfig(
        data=seq, prior="oracle", img_size=96, cache_dir=cache, downscale_factor=1, live=True,
        live_warmup_frames=WARMUP,
    )  # fmt: skip
    pipe = cfg.pipeline.setup(device="cpu", test_mode="val")
    dm, model = pipe.datamanager, pipe.model
    live = dm.train_dataparser_outputs.metadata["mslam_live"]
    assert dm.eval_dataset.metadata["mslam_live"] is live  # one session for both splits
    assert not live.done and WARMUP <= live.n_done <= HOLD
    n_known = len(live.warmup_snapshot.frame_T_WC)
    assert len(dm.train_dataset) + len(dm.eval_dataset) == FRAMES  # every frame is in the dataset

    opt = Optimizers(cfg.optimizers, model.get_param_groups())
    attrs = TrainingCallbackAttributes(optimizers=opt, grad_scaler=None, pipeline=pipe, trainer=None)
    model.get_training_callbacks(attrs)
    refresh = model.slam_refresh
    ready = list(dm.train_ready)
    assert ready == [f < n_known for f in refresh.train_frames] and 0 < sum(ready) < len(ready)

    sampled: list[int] = []
    next_train = dm.next_train

    def record(step_i):
        cam, batch = next_train(step_i)
        i = int(cam.metadata["cam_idx"])
        assert dm.train_ready[i], i  # sampled only once the SLAM has posed it
        sampled.append(refresh.train_frames[i])
        return cam, batch

    dm.next_train = record

    def train(steps: range) -> None:
        losses = _train(cfg, pipe, steps, opt, before_step=refresh.step_pre_forward)
        assert all(np.isfinite(losses))

    train(range(0, 12))
    assert sampled and max(sampled) < HOLD  # frames the SLAM has not reached are never trained on
    release.set()
    assert live.join(600) and live.error is None
    train(range(12, 16))
    assert all(dm.train_ready)

    # every camera (train and eval, every copy) on the SLAM's final pose, as nerfstudio would place it
    final = live.system.map.snapshot(with_points=False)
    assert len(final.frame_T_WC) == FRAMES
    for cams, rows in (
        (dm.train_dataset.cameras, refresh.train_frames),
        (dm.eval_dataset.cameras, refresh.eval_frames),
    ):
        for i, f in enumerate(rows):
            want = _expected_c2w(pipe, torch.as_tensor(final.frame_T_WC[f]))[:3]
            torch.testing.assert_close(cams.camera_to_worlds[i].double(), want, atol=2e-5, rtol=0)
    assert torch.equal(dm.train_cameras.camera_to_worlds, dm.train_dataset.cameras.camera_to_worlds)
    assert all(torch.isfinite(p).all() for p in model.gauss_params.values())

    # the finished result is cached where a non-live run looks: it starts at once, without the SLAM
    monkeypatch.setattr(SlamSystem, "step", lambda *a, **k: pytest.fail("the cached run was not used"))
    again = MslamDataParserConfig(data=seq, prior="oracle", img_size=96, cache_dir=cache, downscale_factor=1)
    out = again.setup().get_dataparser_outputs("train")
    assert "mslam_live" not in out.metadata and len(out.image_filenames) == len(dm.train_dataset)
    summary = (Path(out.image_filenames[0]).parents[1] / "mslam_run" / "summary.json").read_text()
    assert '"live": true' in summary and np.isfinite(out.cameras.camera_to_worlds.numpy()).all()
