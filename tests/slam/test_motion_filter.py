"""Motion filter: the photometric motion estimate, Sim(3) interpolation of skipped frames, and whole runs
with the filter on (every frame posed, fewer decodes, all-frame accuracy kept) against the same run with it
off, on a slow synthetic loop (oracle prior, MASt3R-like noise)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mslam_ns.config import MotionFilterConfig, SlamConfig
from mslam_ns.eval.ate import ate
from mslam_ns.geometry import sim3
from mslam_ns.slam.motion import MotionFilter, estimate_motion, interpolate_skipped, thumbnail

FRAMES, W, H, SIZE = 360, 160, 120, 128


def _texture(seed: int = 0) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    t = F.interpolate(torch.rand(1, 1, 60, 80, generator=g), size=(480, 640), mode="bicubic", align_corners=False)
    return (t[0, 0].clamp(0, 1) * 255).round().numpy().astype(np.uint8)


@pytest.mark.parametrize("shift", [2, 4, 8])
def test_motion_estimate_follows_a_translation(shift):
    """A smooth texture shifted by `shift` of 560 pixels, thumbnails 96 wide: estimate within 0.9-1.6x of
    the true thumbnail motion (measured 1.30, 1.32, 1.40x); the same image gives exactly 0."""
    img = _texture()
    a, b = img[:, 40:600], img[:, 40 - shift : 600 - shift]
    ta, tb = thumbnail(a, 96), thumbnail(b, 96)
    true = shift * 96 / 560
    est = estimate_motion(ta, tb)
    assert 0.9 * true < est < 1.6 * true, (est, true)
    assert estimate_motion(ta, ta) == 0.0


def test_flat_or_black_frames_always_count_as_moved():
    t = thumbnail(_texture(), 96)
    black = thumbnail(np.zeros((480, 640, 3), np.uint8), 96)
    assert math.isinf(estimate_motion(t, black)) and math.isinf(estimate_motion(black, black))
    mf = MotionFilter(MotionFilterConfig(enabled="on", min_motion=0.05, max_skip=3))
    img = np.repeat(_texture()[..., None], 3, -1)
    mf.decoded(img)
    assert not mf.should_skip(np.zeros_like(img))  # a cut to black is decoded (tracking loss is seen)
    assert [mf.should_skip(img) for _ in range(4)] == [True, True, True, False]  # max_skip in a row
    mf.decoded(img)
    assert mf.should_skip(img) and mf.skipped == 4


def test_interpolation_lies_on_the_sim3_geodesic():
    g = torch.Generator().manual_seed(1)
    T0 = sim3.exp(0.3 * torch.randn(1, 7, generator=g, dtype=torch.float64))[0]
    xi = 0.5 * torch.randn(7, generator=g, dtype=torch.float64)
    a = torch.tensor([0.0, 0.1, 0.35, 0.5, 0.8, 1.0], dtype=torch.float64)  # uneven timestamps
    truth = sim3.mul(T0[None], sim3.exp(a[:, None] * xi[None]))  # [6, 8]
    skipped = torch.tensor([False, True, True, True, True, False])
    provisional = truth.clone()
    provisional[1:5] = truth[0]  # what the filter records: the last tracked pose
    out = interpolate_skipped(a * 3.0, provisional, skipped)
    assert torch.allclose(out, truth, atol=1e-10)
    # trailing skipped rows (no tracked frame after them) keep their pose; nothing skipped: unchanged
    tail = torch.tensor([False, False, False, True, True, True])
    assert torch.equal(interpolate_skipped(a, provisional, tail), provisional)
    assert interpolate_skipped(a, truth, torch.zeros(6, dtype=torch.bool)) is truth


@pytest.fixture(scope="module")
def slow_loop(tmp_path_factory) -> Path:
    """Two laps in 360 frames at 30 fps (three times slower than the backend tests' loop)."""
    from mslam_ns.io.synthetic import generate_sequence

    return Path(generate_sequence(tmp_path_factory.mktemp("slow") / "seq", FRAMES, W, H, 3, trajectory="loop2"))


def _run(seq: Path, enabled: str, **mf):
    from mslam_ns.io.sources import open_source
    from mslam_ns.prior.oracle import OraclePrior
    from mslam_ns.slam.system import SlamSystem

    src = open_source(seq)
    cfg = SlamConfig(mode="rays", img_size=SIZE)
    cfg.motion_filter.enabled = enabled
    for k, v in mf.items():
        setattr(cfg.motion_filter, k, v)
    prior = OraclePrior.from_source(src, size=SIZE, noise="mast3r", seed=0)
    encodes = []
    encode = prior.encode
    prior.encode = lambda img, idx: (encodes.append(idx), encode(img, idx))[1]
    system = SlamSystem(prior, cfg)
    system.run(src)
    ts, _, T = system.frame_poses()
    r = ate(ts.numpy(), T.double().numpy()[:, :7], np.asarray(src.timestamps), src.gt_poses)
    return system, src, encodes, r


def test_filter_poses_every_frame_with_fewer_decodes_and_the_same_accuracy(slow_loop, tmp_path):
    off, src, enc_off, r_off = _run(slow_loop, "off")
    on, _, enc_on, r_on = _run(slow_loop, "on", min_motion=0.04, max_skip=15)
    assert off.motion_filter is None and len(enc_off) == FRAMES
    n_interp = int(on.trajectory.interpolated_mask().sum())
    assert len(on.trajectory) == FRAMES and on.frame_poses()[2].shape[0] == FRAMES  # every frame posed
    assert n_interp == on.motion_filter.skipped == FRAMES - len(enc_on)
    assert n_interp >= 0.7 * FRAMES, n_interp  # measured 274 of 360 (86 frames decoded)
    assert not bool(on.trajectory.interpolated_mask()[-1])  # the last frame is decoded by finish()
    assert set(range(FRAMES)) - set(enc_on) == set(np.flatnonzero(on.trajectory.interpolated_mask().numpy()))
    assert int(on.trajectory.lost_mask().sum()) == 0
    # measured 0.57% / 0.90 deg with the filter, 0.64% / 1.41 deg decoding every frame
    assert r_on.rmse_percent_of_path < 1.1 * r_off.rmse_percent_of_path, (r_on, r_off)
    assert r_on.rot_median_deg < 1.2, (r_on, r_off)
    # interpolated frames sit between their tracked neighbours, not at the provisional (last tracked) pose
    T = on.frame_poses()[2].double()
    k = int(np.flatnonzero(on.trajectory.interpolated_mask().numpy())[0])
    assert float((T[k, :3] - T[k - 1, :3]).norm()) > 1e-6

    # the flag reaches frames.txt and reads back; the snapshot agrees with frame_poses
    from mslam_ns.commands.slam import record_run
    from mslam_ns.io.rundir import RunDir

    snap = on.snapshot(with_points=False)
    assert np.array_equal(snap.frame_interpolated, on.trajectory.interpolated_mask().numpy())
    assert np.allclose(snap.frame_T_WC, T.numpy(), atol=1e-5)
    rd = RunDir(tmp_path / "run")
    rd.write(record_run(on, {"frames": FRAMES}, conf_thresh=1.5))
    table = rd.read_frames()
    assert np.array_equal(table.interpolated, snap.frame_interpolated) and len(table.names) == FRAMES


def test_auto_is_on_for_the_cpu():
    from mslam_ns.prior.oracle import OraclePrior
    from mslam_ns.slam.system import SlamSystem

    assert SlamSystem(OraclePrior.__new__(OraclePrior), SlamConfig()).motion_filter is not None
    cfg = SlamConfig()
    cfg.motion_filter.enabled = "off"
    assert SlamSystem(OraclePrior.__new__(OraclePrior), cfg).motion_filter is None


def test_frames_txt_without_the_interpolated_column_still_reads(tmp_path):
    from mslam_ns.io.rundir import RunDir

    rd = RunDir(tmp_path)
    (tmp_path / "frames.txt").write_text(
        "# timestamp keyframe_id is_keyframe lost name\n0.000000 0 1 0 a b.png\n0.033333 0 0 1 c.png\n"
    )
    t = rd.read_frames()
    assert t.names == ["a b.png", "c.png"] and t.lost.tolist() == [False, True]
    assert t.interpolated.tolist() == [False, False]
