"""`OraclePrior.from_source` on a generated synthetic TUM-layout sequence, through the real pre-processing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mslam_ns.errors import UserError
from mslam_ns.io.frames import FrameSource
from mslam_ns.io.sources import open_source
from mslam_ns.model.preprocess import preprocess_image, to_unit_float
from mslam_ns.prior.oracle import OraclePrior

G = 0.45


@pytest.fixture(scope="module")
def sequence(tmp_path_factory) -> Path:
    from mslam_ns.io.synthetic import generate_sequence

    return generate_sequence(tmp_path_factory.mktemp("seq") / "s", n_frames=4, width=128, height=96, seed=0)


def encode_frame(prior: OraclePrior, source: FrameSource, i: int, size: int):
    u8, tr = preprocess_image(source[i].image, size=size)
    assert tr == prior.transform
    return prior.encode(to_unit_float(u8), i)


def test_from_source_none_noise_is_exact_through_downscaling(sequence: Path) -> None:
    src = open_source(sequence)
    pr = OraclePrior.from_source(src, size=64, noise="none")
    assert pr.transform.network_size == (64, 48)
    e0, e2 = encode_frame(pr, src, 0, 64), encode_frame(pr, src, 2, 64)
    p = pr.decode(e0, e2)
    # expected: the source depth at the nearest source pixel of each network pixel centre (2u + 0.5 -> 2u + 1),
    # on the ray of the network pixel, moved into frame 0 with the ground-truth poses
    K = src.intrinsics.K
    gt = src.gt_poses
    T = np.linalg.inv(gt[0]) @ gt[2]
    v, u = np.mgrid[0:48, 0:64].astype(np.float64)
    z = src.depth(2)[2 * v.astype(int) + 1, 2 * u.astype(int) + 1].astype(np.float64)
    us, vs = 2 * u + 0.5, 2 * v + 0.5
    X = np.stack([(us - K[0, 2]) / K[0, 0] * z, (vs - K[1, 2]) / K[1, 1] * z, z], -1)
    expect = G * (X @ T[:3, :3].T + T[:3, 3])
    np.testing.assert_allclose(p.ji.X.numpy(), expect, rtol=1e-5, atol=1e-5)


def test_from_source_mast3r_noise_runs_and_is_close(sequence: Path) -> None:
    src = open_source(sequence)
    pr = OraclePrior.from_source(src, size=64, noise="mast3r", seed=3)
    e0, e1 = encode_frame(pr, src, 0, 64), encode_frame(pr, src, 1, 64)
    exact = OraclePrior.from_source(src, size=64, noise="none")
    p = pr.decode(e0, e1)
    q = exact.decode(encode_frame(exact, src, 0, 64), encode_frame(exact, src, 1, 64))
    d = (p.ji.X - q.ji.X).norm(dim=-1) / q.ji.X.norm(dim=-1)
    assert 0.003 < float(d.median()) < 0.1  # noisy, but MASt3R-close
    assert p.ji.D.shape == (48, 64, 24)


class _NoGt(FrameSource):
    def __init__(self, path: Path, depth: bool) -> None:
        super().__init__(path, timestamps=np.arange(3.0), names=["a", "b", "c"])
        self._size = (64, 48)  # at least MIN_FRAME_SIDE per side
        self._depth = depth
        from mslam_ns.io.frames import Intrinsics

        self.intrinsics = Intrinsics(60.0, 60.0, 31.5, 23.5, 64, 48)

    def _read_image(self, k: int) -> np.ndarray:
        return np.zeros((48, 64, 3), np.uint8)

    def _read_depth(self, k: int):
        return np.ones((48, 64), np.float32) if self._depth else None


def test_from_source_needs_ground_truth_and_depth(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="ground-truth"):
        OraclePrior.from_source(_NoGt(tmp_path, depth=True), size=64)
    s = _NoGt(tmp_path, depth=False)
    s._gt = np.tile(np.eye(4), (3, 1, 1))
    with pytest.raises(UserError, match="depth"):
        OraclePrior.from_source(s, size=64)
    s._depth = True
    s._gt[1] = np.nan  # a frame without ground truth borrows its neighbour's pose
    pr = OraclePrior.from_source(s, size=64)
    assert np.isfinite(pr.poses_wc).all()
