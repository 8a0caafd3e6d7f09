"""The composed matcher `mslam_ns.slam.matching.match` on an analytic two-view scene with known answers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mslam_ns.config import MatchingConfig
from mslam_ns.cuda.matching.synthetic import TwoViewScene, two_view_scene
from mslam_ns.slam.matching import match, pixel_grid

H, W, FD = 48, 64, 24


def _descriptors(scene: TwoViewScene, seed: int, noise: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth random descriptors on image i; j's pixel n gets i's descriptor at its true match plus noise."""
    g = torch.Generator().manual_seed(seed)
    lo = torch.randn(1, FD, math.ceil(H / 4) + 1, math.ceil(W / 4) + 1, generator=g)
    D_i = F.interpolate(lo, scale_factor=4, mode="bicubic", align_corners=False)[0, :, :H, :W]
    D_i = F.normalize(D_i.permute(1, 2, 0), dim=-1)  # [H, W, F]
    uv = scene.uv_true.round().long()
    u, v = uv[:, 0].clamp(0, W - 1), uv[:, 1].clamp(0, H - 1)
    D_ji = D_i[v, u] + noise * torch.randn(H * W, FD, generator=g) / math.sqrt(FD)
    return D_i.contiguous(), F.normalize(D_ji, dim=-1).reshape(H, W, FD)


def _truth(scene: TwoViewScene) -> tuple[torch.Tensor, torch.Tensor]:
    """(interior visible mask [HW], true linear index [HW]) of every pixel of j."""
    uv = scene.uv_true
    interior = scene.visible & (uv[:, 0] >= 1) & (uv[:, 0] <= W - 2) & (uv[:, 1] >= 1) & (uv[:, 1] <= H - 2)
    iu = uv[:, 0].round().long().clamp(0, W - 1)
    iv = uv[:, 1].round().long().clamp(0, H - 1)
    return interior, iu + W * iv


def _pixel_error(idx: torch.Tensor, scene: TwoViewScene) -> torch.Tensor:  # [HW] L-inf pixel distance
    u, v = idx % W, idx // W
    return torch.maximum((u.float() - scene.uv_true[:, 0]).abs(), (v.float() - scene.uv_true[:, 1]).abs())


@pytest.fixture(scope="module")
def scene() -> TwoViewScene:
    return two_view_scene(H, W, angle_deg=4.0, baseline=0.2)


@pytest.mark.parametrize("impl", ["compiled", "torch"])
@pytest.mark.parametrize("refine", [False, True])
def test_match_recovers_known_geometry(scene, impl, refine, monkeypatch):
    monkeypatch.setenv("MSLAM_NS_KERNELS", impl)
    D_i, D_ji = _descriptors(scene, seed=0)
    idx, valid = match(scene.X_i[None], scene.X_ji[None], D_i[None], D_ji[None], cfg=MatchingConfig(refine=refine))
    assert idx.shape == (1, H * W) and idx.dtype == torch.int64 and valid.dtype == torch.bool
    interior, true_idx = _truth(scene)
    err = _pixel_error(idx[0], scene)[interior]
    # IPM alone truncates (error < 1 px); the refinement lands on the best descriptor (nearest pixel).
    assert (err < 1.0).float().mean() > 0.95, f"{(err < 1).float().mean():.3f} within 1 px"
    if refine:
        assert (idx[0][interior] == true_idx[interior]).float().mean() > 0.9
    assert valid[0][interior].float().mean() > 0.95
    # occluded points (behind the sphere seen from i) and points outside i's view are rejected
    occluded_or_out = ~scene.visible
    assert occluded_or_out.sum() > 50
    assert valid[0][occluded_or_out].float().mean() < 0.05


def test_match_batch_equals_single(scene):
    other = two_view_scene(H, W, angle_deg=-3.0, baseline=0.1)
    D0, Dj0 = _descriptors(scene, seed=1)
    D1, Dj1 = _descriptors(other, seed=2)
    idx, valid = match(
        torch.stack([scene.X_i, other.X_i]),
        torch.stack([scene.X_ji, other.X_ji]),
        torch.stack([D0, D1]).half(),
        torch.stack([Dj0, Dj1]).half(),
    )
    for b, (s, Di, Dj) in enumerate(((scene, D0, Dj0), (other, D1, Dj1))):
        i1, v1 = match(s.X_i[None], s.X_ji[None], Di[None].half(), Dj[None].half())
        torch.testing.assert_close(idx[b], i1[0])
        torch.testing.assert_close(valid[b], v1[0])


def test_match_fp16_and_fp32_descriptors_agree(scene):
    D_i, D_ji = _descriptors(scene, seed=3)
    i32, v32 = match(scene.X_i[None], scene.X_ji[None], D_i[None], D_ji[None])
    i16, v16 = match(scene.X_i[None], scene.X_ji[None], D_i[None].half(), D_ji[None].half())
    torch.testing.assert_close(v16, v32)
    # fp16 rounding can flip near-ties between neighbouring pixels only
    same = (i16 == i32).float().mean().item()
    assert same > 0.97, f"{same:.3f} identical"
    du = (i16 % W - i32 % W).abs()
    dv = (i16 // W - i32 // W).abs()
    assert (torch.maximum(du, dv) <= 1).float().mean() > 0.99


def test_match_warm_start_from_truth(scene):
    D_i, D_ji = _descriptors(scene, seed=4)
    interior, true_idx = _truth(scene)
    cfg = MatchingConfig(refine=False)
    idx_warm, valid_warm = match(scene.X_i[None], scene.X_ji[None], D_i[None], D_ji[None], true_idx[None], cfg)
    err = _pixel_error(idx_warm[0], scene)[interior]
    assert (err < 1.0).float().mean() > 0.97
    assert valid_warm[0][interior].float().mean() > 0.95


def test_pixel_grid_is_identity_start():
    g = pixel_grid(2, 3, 4)
    assert g.shape == (2, 12, 2)
    n = torch.arange(12)
    torch.testing.assert_close(g[1, :, 0] + 4 * g[1, :, 1], n.float())


def test_match_rejects_bad_input(scene):
    D_i, D_ji = _descriptors(scene, seed=5)
    X_i, X_ji = scene.X_i[None], scene.X_ji[None]
    with pytest.raises(ValueError, match="X_ji"):
        match(X_i, X_ji[:, :-1], D_i[None], D_ji[None])
    with pytest.raises(ValueError, match="D_i"):
        match(X_i, X_ji, D_i[None, :, :-1], D_ji[None])
    bad = X_ji.clone()
    bad[0, 3, 4, 1] = float("nan")
    with pytest.raises(ValueError, match="X_ji contains NaN or inf"):
        match(X_i, bad, D_i[None], D_ji[None])
    with pytest.raises(ValueError, match="idx_init"):
        match(X_i, X_ji, D_i[None], D_ji[None], torch.full((1, H * W), H * W, dtype=torch.int64))
    with pytest.raises(ValueError, match="idx_init"):
        match(X_i, X_ji, D_i[None], D_ji[None], torch.zeros(1, H * W, dtype=torch.int32))


@pytest.mark.parametrize("impl", ["compiled", "torch"])
def test_match_query_equals_the_full_match_columns(scene, impl, monkeypatch):
    """Matching a subset of j's pixels (the tracking grid) gives exactly those pixels' full results, cold and
    warm-started; and so it does the work of N pixels, not H*W (a shape the kernels see)."""
    monkeypatch.setenv("MSLAM_NS_KERNELS", impl)
    D_i, D_ji = _descriptors(scene, seed=7)
    args = (scene.X_i[None], scene.X_ji[None], D_i[None].half(), D_ji[None].half())
    v, u = torch.meshgrid(torch.arange(1, H, 2), torch.arange(1, W, 2), indexing="ij")
    q = (u + W * v).reshape(-1)
    idx, valid = match(*args)
    idx_q, valid_q = match(*args, query=q)
    assert idx_q.shape == valid_q.shape == (1, q.numel())
    assert valid[0, q].sum() > 0.7 * q.numel()  # a real test: most grid pixels match (measured 79%)
    torch.testing.assert_close(idx_q, idx[:, q], rtol=0, atol=0)
    torch.testing.assert_close(valid_q, valid[:, q], rtol=0, atol=0)
    warm = torch.roll(idx, 1, dims=1)  # a warm start that differs from the identity
    idx_w, valid_w = match(*args, warm)
    idx_wq, valid_wq = match(*args, warm[:, q], query=q)
    torch.testing.assert_close(idx_wq, idx_w[:, q], rtol=0, atol=0)
    torch.testing.assert_close(valid_wq, valid_w[:, q], rtol=0, atol=0)


def test_match_rejects_a_bad_query(scene):
    D_i, D_ji = _descriptors(scene, seed=8)
    args = (scene.X_i[None], scene.X_ji[None], D_i[None], D_ji[None])
    with pytest.raises(ValueError, match="query values must lie in"):
        match(*args, query=torch.tensor([0, H * W]))
    with pytest.raises(ValueError, match="query must be"):
        match(*args, query=torch.tensor([0, 1], dtype=torch.int32))
    with pytest.raises(ValueError, match=r"idx_init must be \[B=1, N=2\]"):
        match(*args, torch.zeros(1, H * W, dtype=torch.int64), query=torch.tensor([0, 1]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the CPU path is tested above)")
def test_match_cuda_matches_cpu(scene):
    D_i, D_ji = _descriptors(scene, seed=6)
    args = (scene.X_i[None], scene.X_ji[None], D_i[None].half(), D_ji[None].half())
    idx_c, valid_c = match(*args)
    idx_g, valid_g = match(*(a.cuda() for a in args))
    assert (idx_g.cpu() == idx_c).float().mean() > 0.99
    assert (valid_g.cpu() == valid_c).float().mean() > 0.99


@pytest.mark.parametrize("impl", ["compiled", "torch"])
@pytest.mark.parametrize("refine", [False, True])
def test_match_with_known_rays_is_the_ipm_fixed_point(scene, refine, impl, monkeypatch):
    """X_i on the pinhole rays of K (the scene is ray-cast): matching by projection through K gives what IPM
    iterates to, for every pixel but the few whose projection IPM leaves on the other side of a pixel edge
    (measured: all interior visible pixels alike), and the exact pixel of the truth more often. The compiled
    kernels and their twins alike."""
    monkeypatch.setenv("MSLAM_NS_KERNELS", impl)
    D_i, D_ji = _descriptors(scene, seed=9)
    args = (scene.X_i[None], scene.X_ji[None], D_i[None], D_ji[None])
    cfg = MatchingConfig(refine=refine)
    idx_ipm, valid_ipm = match(*args, cfg=cfg)
    idx_k, valid_k = match(*args, cfg=cfg, K=scene.K)
    interior, _ = _truth(scene)
    assert (valid_k == valid_ipm).float().mean() > 0.998
    assert (idx_k[0] == idx_ipm[0])[interior].float().mean() > 0.998
    assert valid_k[0][interior].float().mean() > 0.95 and valid_k[0][~scene.visible].float().mean() < 0.05
    if not refine:  # the projection, truncated: the truth's own pixel
        floor_true = scene.uv_true.floor().long()
        exact = idx_k[0] == floor_true[:, 0] + W * floor_true[:, 1]
        assert exact[interior].float().mean() > 0.999
        err = _pixel_error(idx_k[0], scene)[interior]
        assert (err < 1.0).all()
    # with `query`: the full result's columns; a batch: per image K
    q = torch.arange(0, H * W, 7)
    idx_q, valid_q = match(*args, cfg=cfg, K=scene.K, query=q)
    torch.testing.assert_close(idx_q, idx_k[:, q], rtol=0, atol=0)
    torch.testing.assert_close(valid_q, valid_k[:, q], rtol=0, atol=0)
    idx_b, valid_b = match(*(torch.cat([a, a]) for a in args), cfg=cfg, K=torch.stack([scene.K, scene.K]))
    torch.testing.assert_close(idx_b, torch.cat([idx_k, idx_k]), rtol=0, atol=0)
    torch.testing.assert_close(valid_b, torch.cat([valid_k, valid_k]), rtol=0, atol=0)


def test_match_with_known_rays_rejects_points_behind_or_off_the_image(scene):
    """The projection's `converged` is IPM's cost test at the clamped pixel: a point behind camera i or
    projecting outside [1, W-2] x [1, H-2] is not matched; one just inside the border is."""
    D_i, D_ji = _descriptors(scene, seed=10)
    K = scene.K.double()
    pix = torch.tensor([[W / 2, H / 2], [1.2, H / 2], [W - 2.2, 3.0], [-5.0, H / 2], [W / 2, H + 4.0], [W / 2, H / 2]])
    rays = torch.cat([pix.double(), torch.ones(len(pix), 1, dtype=torch.float64)], 1) @ torch.linalg.inv(K).T
    pts = (2.0 * rays).float()
    pts[-1] = -pts[-1]  # behind the camera (it projects to the image centre)
    X_ji = scene.X_ji.clone().reshape(H * W, 3)
    X_ji[: len(pts)] = pts
    idx, valid = match(
        scene.X_i[None],
        X_ji.reshape(1, H, W, 3),
        D_i[None],
        D_ji[None],
        K=scene.K,
        cfg=MatchingConfig(refine=False, dist_thresh=1e9),
        query=torch.arange(len(pts)),
    )
    assert valid[0].tolist() == [True, True, True, False, False, False]
    assert idx[0, :3].tolist() == [int(W / 2) + W * int(H / 2), 1 + W * int(H / 2), int(W - 2.2) + W * 3]
    with pytest.raises(ValueError, match=r"K must be \[3, 3\] or \[B=1, 3, 3\]"):
        match(scene.X_i[None], scene.X_ji[None], D_i[None], D_ji[None], K=torch.eye(4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the CPU path is tested above)")
def test_match_with_known_rays_cuda_matches_cpu(scene):
    """The projection path and the masked refinement on the device give the host's matches."""
    D_i, D_ji = _descriptors(scene, seed=11)
    args = (scene.X_i[None], scene.X_ji[None], D_i[None].half(), D_ji[None].half())
    idx_c, valid_c = match(*args, K=scene.K)
    idx_g, valid_g = match(*(a.cuda() for a in args), K=scene.K)
    assert (valid_g.cpu() == valid_c).float().mean() > 0.999
    assert (idx_g.cpu() == idx_c)[valid_c].float().mean() > 0.99
