"""Matching kernels: compiled CPU build vs PyTorch twin, and both against known geometry.

The compiled CPU kernels must build on the development/CI machines (g++ with OpenMP): tests that need them
fail (not skip) when they do not. On x86-64 + GCC the compiled kernels and the twins run the same
float32 operations in the same order (no FMA contraction on the baseline ISA), so there the results must
be bit-identical (`EXACT`); only on other architectures (where a compiler may contract to FMA) do the
assertions leave a margin of 1% of points.
"""

from __future__ import annotations

import math
import platform

import pytest
import torch
import torch.nn.functional as F

from mslam_ns.cuda import _backend
from mslam_ns.cuda.matching import _torch_impl, iproj, project_match, ray_image, refine_matches
from mslam_ns.cuda.matching.synthetic import two_view_scene

LM = dict(max_iter=10, lambda_init=1e-8, cost_thresh=1e-6, step_tol=1e-3)
#: x86-64: compiled kernels and twins run the same float32 operations in the same order -> bit-identical.
EXACT = platform.machine().lower() in ("x86_64", "amd64")
#: share of points that must agree between a compiled kernel and its twin
AGREE = 1.0 if EXACT else 0.99


@pytest.fixture(scope="module")
def cpu_mod():
    mod = _backend.load("matching", "cpu")
    if mod is None:
        pytest.fail(f"compiled CPU matching kernels failed to build: {_backend._errors.get(('matching', 'cpu'))}")
    return mod


def _smooth_pointmap(B: int, H: int, W: int, seed: int) -> torch.Tensor:  # [B, H, W, 3]
    """A pinhole-like pointmap with smooth random distortion of the rays and smooth depth."""
    g = torch.Generator().manual_seed(seed)
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    out = []
    for _ in range(B):
        a = torch.rand(6, generator=g)
        f = 0.8 * W * (0.8 + 0.4 * a[0])
        x = (u - W / 2) / f + 0.02 * torch.sin(u / (5 + 5 * a[1]) + 6 * a[2])
        y = (v - H / 2) / f + 0.02 * torch.cos(v / (5 + 5 * a[3]) + 6 * a[4])
        z = 2.0 + 0.5 * torch.sin(u / 11 + v / 7 + 6 * a[5])
        out.append(torch.stack([x * z, y * z, z], dim=-1))
    return torch.stack(out)


def _iproj_inputs(B: int, H: int, W: int, seed: int, noise_px: float):
    X = _smooth_pointmap(B, H, W, seed)
    g = torch.Generator().manual_seed(seed + 1)
    rays = ray_image(X)
    # targets: the pointmap's own rays at random sub-pixel positions (bilinear), start: a perturbed pixel
    N = H * W
    uv = torch.rand(B, N, 2, generator=g) * torch.tensor([W - 3.0, H - 3.0]) + 1.0
    tgt = _torch_impl._bilinear9(rays.reshape(B, H * W, 9), H, W, uv[..., 0], uv[..., 1])[..., :3]
    tgt = F.normalize(tgt, dim=-1)
    p0 = uv + noise_px * torch.randn(B, N, 2, generator=g)
    return rays, tgt.contiguous(), p0.contiguous(), uv


def _compare_iproj(mod, rays, tgt, p0):
    p_c, c_c = mod.iproj(rays, tgt, p0, *LM.values())
    p_t, c_t = _torch_impl._iproj(rays, tgt, p0, *LM.values())
    exact = (p_c == p_t).all(-1).float().mean().item()
    close = ((p_c - p_t).abs().amax(-1) < 1e-3).float().mean().item()
    same_conv = (c_c == c_t).float().mean().item()
    same_int = (p_c.long() == p_t.long()).all(-1).float().mean().item()
    msg = (
        f"bit-identical {exact:.4f}, within 1e-3 px {close:.4f}, same int pixel {same_int:.4f}, "
        f"same flag {same_conv:.4f}"
    )
    if EXACT:
        assert exact == 1.0 and same_conv == 1.0, msg
    assert close >= AGREE and same_int >= AGREE and same_conv >= AGREE, msg
    return p_c, c_c


def test_ray_image_matches_conv_reference():
    X = _smooth_pointmap(2, 9, 11, seed=0).double()
    out = _torch_impl._ray_image(X)
    rays = X / X.norm(dim=-1, keepdim=True)
    kx = torch.tensor([[-3.0, 0, 3], [-10, 0, 10], [-3, 0, 3]], dtype=torch.float64) / 32
    planes = F.pad(rays.permute(0, 3, 1, 2).reshape(6, 1, 9, 11), (1, 1, 1, 1), mode="reflect")
    g = F.conv2d(planes, torch.stack([kx, kx.t()])[:, None]).reshape(2, 3, 2, 9, 11)
    torch.testing.assert_close(out[..., :3], rays)
    torch.testing.assert_close(out[..., 3:6], g[:, :, 0].permute(0, 2, 3, 1))
    torch.testing.assert_close(out[..., 6:9], g[:, :, 1].permute(0, 2, 3, 1))


def test_ray_image_gradient_of_pinhole():
    # Interior gradients of a pinhole ray field equal the analytic derivative up to the filter's O(1/f^2)
    # smoothing/truncation error (about 0.3% at f = 25 px, 0.05% at f = 60 px).
    H, W, f = 20, 30, 60.0
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    d = torch.stack([(u - W / 2) / f, (v - H / 2) / f, torch.ones_like(u)], -1)
    R = _torch_impl._ray_image(d[None])[0]
    n = d.norm(dim=-1, keepdim=True)
    e_x = torch.tensor([1.0 / f, 0, 0], dtype=torch.float64)
    drdu = e_x / n - d * (d @ e_x)[..., None] / n**3
    torch.testing.assert_close(R[2:-2, 2:-2, 3:6], drdu[2:-2, 2:-2], atol=1e-7, rtol=2e-3)


@pytest.mark.parametrize("noise_px", [0.0, 2.0])
def test_iproj_compiled_matches_twin_smooth(cpu_mod, noise_px):
    rays, tgt, p0, uv = _iproj_inputs(2, 24, 32, seed=3, noise_px=noise_px)
    p, conv = _compare_iproj(cpu_mod, rays, tgt, p0)
    # and the solution is right: the target's own sub-pixel position
    good = ((p - uv).norm(dim=-1) < 0.05) & conv
    assert good.float().mean() > 0.95


@pytest.mark.parametrize("N", [7, 1031])  # shorter than the lockstep lanes; an odd tail after a full task
def test_iproj_lockstep_queries_equal_queries_alone(cpu_mod, N):
    """The CPU loop advances several queries in lockstep (tails padded with the last query, lanes mixing
    batch items): every query must end exactly where it ends when it is the only query of its call."""
    rays, tgt, p0, _ = _iproj_inputs(2, 24, 48, seed=4, noise_px=2.0)
    tgt, p0 = tgt[:, :N].contiguous(), p0[:, :N].contiguous()
    p, conv = cpu_mod.iproj(rays, tgt, p0, *LM.values())
    for b in range(2):
        for n in list(range(min(N, 9))) + [N - 2, N - 1]:
            p1, c1 = cpu_mod.iproj(rays[b : b + 1], tgt[b : b + 1, n : n + 1], p0[b : b + 1, n : n + 1], *LM.values())
            assert torch.equal(p1[0, 0], p[b, n]) and bool(c1[0, 0]) == bool(conv[b, n]), (b, n)


def test_iproj_compiled_matches_twin_geometric(cpu_mod):
    scenes = [two_view_scene(40, 56, angle_deg=a, baseline=b) for a, b in ((3.0, 0.15), (-5.0, 0.3))]
    X_i = torch.stack([s.X_i for s in scenes])
    X_ji = torch.stack([s.X_ji for s in scenes]).reshape(2, -1, 3)
    rays = ray_image(X_i)
    grid = torch.stack(torch.meshgrid(torch.arange(56.0), torch.arange(40.0), indexing="xy"), -1).reshape(1, -1, 2)
    _compare_iproj(cpu_mod, rays, F.normalize(X_ji, dim=-1), grid.expand(2, -1, -1).contiguous())


@pytest.mark.parametrize("impl", ["compiled", "torch"])
def test_iproj_recovers_known_warp(impl, monkeypatch):
    monkeypatch.setenv("MSLAM_NS_KERNELS", impl)
    H, W = 48, 64
    s = two_view_scene(H, W, angle_deg=4.0, baseline=0.2)
    rays = ray_image(s.X_i[None])
    tgt = F.normalize(s.X_ji.reshape(1, -1, 3), dim=-1)
    n = torch.arange(H * W)
    p0 = torch.stack([n % W, n // W], -1).float()[None]  # identity start
    p, conv = iproj(rays, tgt, p0)
    inside = s.visible & (s.uv_true[:, 0] >= 1) & (s.uv_true[:, 0] <= W - 2)
    inside &= (s.uv_true[:, 1] >= 1) & (s.uv_true[:, 1] <= H - 2)
    err = (p[0] - s.uv_true).norm(dim=-1)[inside]
    assert inside.sum() > 0.5 * H * W
    assert (err < 1.0).float().mean() > 0.95, f"{(err < 1).float().mean():.3f} within 1 px"
    assert conv[0][inside].float().mean() > 0.95
    # Points that view i cannot see (outside its image) cannot converge.
    outside = (s.uv_true[:, 0] < -2) | (s.uv_true[:, 0] > W + 1) | (s.uv_true[:, 1] < -2) | (s.uv_true[:, 1] > H + 1)
    if outside.any():
        assert not conv[0][outside].any()


def test_iproj_clamps_to_border(cpu_mod):
    H, W = 20, 30
    X = _smooth_pointmap(1, H, W, seed=5)
    rays = ray_image(X)
    # targets far outside the field of view (left, right, up, down) and starts far outside the image
    tgt = F.normalize(torch.tensor([[[-5.0, 0, 1], [5.0, 0, 1], [0, -5.0, 1], [0, 5.0, 1]]]), dim=-1)
    p0 = torch.tensor([[[-40.0, 3], [100.0, 1e6], [5, -7.0], [2, 55.0]]])
    for p, conv in (cpu_mod.iproj(rays, tgt, p0, *LM.values()), _torch_impl._iproj(rays, tgt, p0, *LM.values())):
        assert (p[..., 0] >= 1).all() and (p[..., 0] <= W - 2).all()
        assert (p[..., 1] >= 1).all() and (p[..., 1] <= H - 2).all()
        assert not conv.any()
        torch.testing.assert_close(p[0, :, 0].tolist()[0:2], [1.0, W - 2.0])  # pushed against the left/right edges
        torch.testing.assert_close(p[0, 2:, 1].tolist(), [1.0, H - 2.0])


def test_iproj_max_iter_zero_is_clamped_start(cpu_mod):
    rays, tgt, p0, _ = _iproj_inputs(1, 12, 16, seed=7, noise_px=30.0)
    p, _ = cpu_mod.iproj(rays, tgt, p0, 0, 1e-8, 1e-6, 1e-3)
    torch.testing.assert_close(p[..., 0], p0[..., 0].clamp(1, 14), rtol=0, atol=0)
    torch.testing.assert_close(p[..., 1], p0[..., 1].clamp(1, 10), rtol=0, atol=0)


def test_iproj_early_exit_changes_little(cpu_mod):
    # step_tol only stops points whose next step is below 1e-3 px: pixels barely change.
    rays, tgt, p0, _ = _iproj_inputs(1, 32, 40, seed=11, noise_px=3.0)
    p_tol, c_tol = cpu_mod.iproj(rays, tgt, p0, 10, 1e-8, 1e-6, 1e-3)
    p_full, c_full = cpu_mod.iproj(rays, tgt, p0, 10, 1e-8, 1e-6, 0.0)
    assert ((p_tol - p_full).abs().amax(-1) < 1e-2).float().mean() > 0.99
    assert (c_tol == c_full).float().mean() > 0.99


def _project_inputs(B: int, H: int, W: int, N: int, seed: int):
    """Pinhole pointmaps X_i (per image its own K) and N points per image: the pointmap's points at random
    sub-pixel positions, their depth scaled by up to +-5% (a part fails the 0.1 occlusion test); of the last
    fifth, most project up to 20 pixels off the image (the cost test fails), and the last tenth are behind
    the camera."""
    g = torch.Generator().manual_seed(seed)
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    Ks, Xs, pts = [], [], []
    for _ in range(B):
        f, cx, cy = W * (0.7 + 0.6 * torch.rand(1, generator=g)), W / 2 + torch.randn(1, generator=g), H / 2
        K = torch.tensor([[f.item(), 0.0, cx.item()], [0.0, f.item() * 1.01, cy], [0.0, 0.0, 1.0]])
        z = 2.0 + 0.5 * torch.sin(u / 9 + v / 5)
        rays = torch.stack([u, v, torch.ones_like(u)], -1) @ torch.linalg.inv(K).T  # [H, W, 3]
        Xs.append(rays * z[..., None])
        n_in = N * 8 // 10
        uv = torch.cat(
            [
                torch.rand(n_in, 2, generator=g) * torch.tensor([W - 1.0, H - 1.0]),
                torch.rand(N - n_in, 2, generator=g) * torch.tensor([W + 40.0, H + 40.0]) - 20.0,
            ]
        )
        r = torch.cat([uv, torch.ones(N, 1)], -1) @ torch.linalg.inv(K).T
        depth = (2.0 + 0.5 * torch.sin(uv[:, 0] / 9 + uv[:, 1] / 5)) * (1 + 0.05 * (2 * torch.rand(N, generator=g) - 1))
        p = r * depth[:, None]
        p[N * 9 // 10 :] *= -1.0  # behind the camera
        Ks.append(K)
        pts.append(p)
    return torch.stack(Xs).contiguous(), torch.stack(pts).contiguous(), torch.stack(Ks).contiguous()


@pytest.mark.parametrize("N", [7, 1031, 5000])  # one chunk's tail; chunks and tasks crossing the images
def test_project_match_compiled_matches_twin(cpu_mod, N):
    X_i, pts, K = _project_inputs(3, 60, 80, N, seed=20)
    K_inv = torch.linalg.inv(K).contiguous()
    p_c, v_c = cpu_mod.project_match(X_i, pts, K, K_inv, 1e-6, 0.1)
    p_t, v_t = _torch_impl._project_match(X_i, pts, K, K_inv, 1e-6, 0.1)
    assert p_c.dtype == torch.int64 and v_c.dtype == torch.bool and p_c.shape == (3, N, 2)
    same_p = (p_c == p_t).all(-1).float().mean().item()
    same_v = (v_c == v_t).float().mean().item()
    assert same_p >= AGREE and same_v >= AGREE, f"same pixel {same_p:.4f}, same flag {same_v:.4f}"
    # both tests have work to do: a part fails the cost test (off the image, behind), a part the occlusion test
    _, v_cost = cpu_mod.project_match(X_i, pts, K, K_inv, 1e-6, 1e9)
    frac, frac_cost = v_c.float().mean().item(), v_cost.float().mean().item()
    assert 0.72 < frac_cost < 0.86 and 0.45 < frac < frac_cost - 0.15, (frac, frac_cost)  # measured 0.79, 0.56
    assert not v_c[:, N * 9 // 10 + 1 :].any()  # behind the camera: never valid
    # each image alone gives its batch row (the chunks never mix two images' cameras)
    for b in range(3):
        p_b, v_b = cpu_mod.project_match(X_i[b : b + 1], pts[b : b + 1], K[b : b + 1], K_inv[b : b + 1], 1e-6, 0.1)
        assert torch.equal(p_b[0], p_c[b]) and torch.equal(v_b[0], v_c[b])


def test_project_match_is_the_pinhole_projection(monkeypatch):
    """Points on the rays of pixels (u + 0.3, v + 0.6) inside [1, W-2] x [1, H-2]: the pixel (u, v), the cost
    test passed; beyond the box, clamped into it and failed. K may be [3, 3] for the batch, of any float dtype."""
    X_i, _, K = _project_inputs(1, 20, 30, 10, seed=21)
    v, u = torch.meshgrid(torch.arange(0, 20.0), torch.arange(0, 30.0), indexing="ij")
    uv = torch.stack([u + 0.3, v + 0.6], -1).reshape(-1, 2)
    inside = (uv[:, 0] >= 1) & (uv[:, 0] <= 28) & (uv[:, 1] >= 1) & (uv[:, 1] <= 18)
    z = 2.0 + 0.5 * torch.sin(uv[:, 0] / 9 + uv[:, 1] / 5)  # X_i's depth function (at the pixels)
    pts = torch.cat([uv, torch.ones(len(uv), 1)], -1) @ torch.linalg.inv(K[0]).T * z[:, None]
    box = torch.stack([u.clamp(1, 28), v.clamp(1, 18)], -1).reshape(-1, 2).long()  # the pixel the clamp gives
    for impl in ("compiled", "torch"):
        monkeypatch.setenv("MSLAM_NS_KERNELS", impl)
        p, valid = project_match(X_i.expand(2, -1, -1, -1), torch.stack([pts, 3 * pts]), K[0].double(), dist_thresh=1e9)
        assert torch.equal(valid[0], inside) and torch.equal(valid[1], inside), impl
        assert torch.equal(p[0], box) and torch.equal(p[1], box), impl
        # the occlusion test: the pointmap's point at the pixel within dist_thresh
        _, valid = project_match(X_i, pts[None], K[0], dist_thresh=0.1)
        d = (X_i[0].reshape(-1, 3)[box[:, 0] + 30 * box[:, 1]] - pts).norm(dim=-1)
        assert torch.equal(valid[0], inside & (d < 0.1)) and 0.2 < valid.float().mean() < 0.9, impl


def _descriptors(B: int, H: int, W: int, Fd: int, seed: int) -> torch.Tensor:  # [B, H, W, F] unit
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(B, H, W, Fd, generator=g), dim=-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("Fd", [24, 20])  # 24: the vectorised CPU scorer; 20: the portable one
@pytest.mark.parametrize("N", [300, 301])  # 301: odd task tails, and interleaved queries of two batch items
def test_refine_compiled_matches_twin(cpu_mod, dtype, Fd, N):
    B, H, W = 2, 20, 28
    g = torch.Generator().manual_seed(1)
    D_i = _descriptors(B, H, W, Fd, 2).to(dtype)
    D_j = _descriptors(B, 1, N, Fd, 3).reshape(B, N, Fd).to(dtype)
    p = torch.stack(
        [torch.randint(-3, W + 3, (B, N), generator=g), torch.randint(-3, H + 3, (B, N), generator=g)], -1
    )  # some outside the image
    out_c = cpu_mod.refine_matches(D_i, D_j, p, 3, 5)
    out_t = _torch_impl._refine_matches(D_i, D_j, p, 3, 5)
    same = (out_c == out_t).all(-1).float().mean().item()
    near = ((out_c - out_t).abs().amax(-1) <= 1).float().mean().item()
    assert same >= AGREE and near == 1.0, f"identical {same:.4f}, within 1 px {near:.4f}"
    assert (out_c[..., 0] >= 0).all() and (out_c[..., 0] < W).all()
    assert (out_c[..., 1] >= 0).all() and (out_c[..., 1] < H).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("Fd", [24, 20])  # the vectorised scorer and the portable one
def test_refine_mask_refines_only_the_masked_points(cpu_mod, dtype, Fd):
    """With a mask, the masked points come out exactly as without one (each search is independent; the
    compiled kernel compacts them per task) and the others exactly as given, unclamped; the twin alike."""
    B, H, W, N = 2, 20, 28, 1031  # 1031: uneven task tails after compaction
    g = torch.Generator().manual_seed(5)
    D_i = _descriptors(B, H, W, Fd, 6).to(dtype)
    D_j = _descriptors(B, 1, N, Fd, 7).reshape(B, N, Fd).to(dtype)
    p = torch.stack([torch.randint(-3, W + 3, (B, N), generator=g), torch.randint(-3, H + 3, (B, N), generator=g)], -1)
    mask = torch.rand(B, N, generator=g) < 0.6
    mask[0, :300] = False  # a whole task without a point to refine
    full = cpu_mod.refine_matches(D_i, D_j, p, 3, 5)
    out_c = cpu_mod.refine_matches(D_i, D_j, p, 3, 5, mask)
    out_t = _torch_impl._refine_matches(D_i, D_j, p, 3, 5, mask)
    assert (full[mask] != p[mask]).any(-1).float().mean() > 0.5  # the refinement moves most points
    assert torch.equal(out_c[mask], full[mask]) and torch.equal(out_c[~mask], p[~mask])
    same = (out_c == out_t).all(-1).float().mean().item()
    assert same >= AGREE, f"compiled vs twin identical {same:.4f}"
    with pytest.raises(ValueError, match=r"mask must be \[B=2, N=1031\] bool"):
        refine_matches(D_i, D_j, p, mask=mask[:, :-1])
    with pytest.raises(ValueError, match="mask must be bool"):
        refine_matches(D_i, D_j, p, mask=mask.int())


def _smooth_descriptors(B: int, H: int, W: int, Fd: int, seed: int, scale: int = 4) -> torch.Tensor:
    """Unit descriptors varying smoothly over ~`scale` pixels (like a network's), unique per region."""
    g = torch.Generator().manual_seed(seed)
    lo = torch.randn(B, Fd, math.ceil(H / scale) + 1, math.ceil(W / scale) + 1, generator=g)
    up = F.interpolate(lo, scale_factor=scale, mode="bicubic", align_corners=False)[:, :, :H, :W]
    return F.normalize(up.permute(0, 2, 3, 1), dim=-1).contiguous()


@pytest.mark.parametrize("impl", ["compiled", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_refine_fixes_offset_guess(impl, dtype, monkeypatch):
    monkeypatch.setenv("MSLAM_NS_KERNELS", impl)
    B, H, W, Fd, N = 1, 40, 48, 24, 200
    g = torch.Generator().manual_seed(4)
    D_i = _smooth_descriptors(B, H, W, Fd, 5)
    true = torch.stack([torch.randint(0, W, (B, N), generator=g), torch.randint(0, H, (B, N), generator=g)], -1)
    D_j = D_i[0, true[0, :, 1], true[0, :, 0]][None] + 0.2 * torch.randn(B, N, Fd, generator=g) / math.sqrt(Fd)
    D_j = F.normalize(D_j, dim=-1)
    guess = true + torch.randint(-6, 7, (B, N, 2), generator=g)  # up to 6 px off in u and v
    out = refine_matches(D_i.to(dtype), D_j.to(dtype), guess)
    exact = (out == true).all(-1).float().mean().item()
    near = ((out - true).abs().amax(-1) <= 1).float().mean().item()
    before = (guess == true).all(-1).float().mean().item()
    assert exact > 0.9 and near > 0.95, f"exact {exact:.3f}, within 1 px {near:.3f} (before: exact {before:.3f})"


def test_refine_keeps_pixel_when_no_positive_score(cpu_mod):
    B, H, W, Fd = 1, 10, 12, 24
    a = F.normalize(torch.randn(Fd), dim=0)
    D_i = a.expand(B, H, W, Fd).contiguous()
    D_j = (-a).expand(B, 5, Fd).contiguous()  # every score is -1
    p = torch.tensor([[[0, 0], [5, 4], [11, 9], [-4, 3], [20, 50]]])
    expect = torch.stack([p[..., 0].clamp(0, W - 1), p[..., 1].clamp(0, H - 1)], -1)
    for out in (cpu_mod.refine_matches(D_i, D_j, p, 3, 5), _torch_impl._refine_matches(D_i, D_j, p, 3, 5)):
        torch.testing.assert_close(out, expect)


def test_refine_ties_take_first_in_scan_order(cpu_mod):
    # Equal descriptors everywhere: every score ties; the first candidate in scan order (dy, then dx, from
    # -r d) wins at each dilation: the window's top-left inside the image.
    B, H, W, Fd = 1, 40, 40, 16
    a = F.normalize(torch.ones(Fd), dim=0)
    D_i = a.expand(B, H, W, Fd).contiguous()
    D_j = a.expand(B, 1, Fd).contiguous()
    p = torch.tensor([[[20, 20]]])
    # d = 2: (20, 20) -> (14, 14); d = 1: -> (11, 11)
    for out in (cpu_mod.refine_matches(D_i, D_j, p, 3, 2), _torch_impl._refine_matches(D_i, D_j, p, 3, 2)):
        assert out.tolist() == [[[11, 11]]]


@pytest.mark.parametrize("radius", [1, 3, 4, 9])  # 3: one chunk of <= 8 rows; 4, 9: several chunks and rows
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_refine_integer_ties_match_twin_exactly(cpu_mod, radius, dtype):
    # Small-integer descriptors: every score is an exact integer whatever the summation order, with many
    # ties between rows and chunks of the window; the winner must be the first maximum in scan order.
    B, H, W, Fd, N = 2, 23, 37, 24, 400
    g = torch.Generator().manual_seed(11)
    D_i = torch.randint(-1, 2, (B, H, W, Fd), generator=g).to(dtype)
    D_j = torch.randint(-1, 2, (B, N, Fd), generator=g).to(dtype)
    p = torch.stack([torch.randint(-2, W + 2, (B, N), generator=g), torch.randint(-2, H + 2, (B, N), generator=g)], -1)
    out_c = cpu_mod.refine_matches(D_i, D_j, p, radius, 3)
    out_t = _torch_impl._refine_matches(D_i, D_j, p, radius, 3)
    assert torch.equal(out_c, out_t)
    assert (out_c != p.clamp_min(0)).any()  # the search moved points


def test_refine_radius_or_dilation_zero_is_identity(cpu_mod):
    D_i = _descriptors(1, 8, 9, 24, 6)
    D_j = _descriptors(1, 1, 4, 24, 7).reshape(1, 4, 24)
    p = torch.tensor([[[0, 0], [3, 4], [8, 7], [5, 1]]])
    torch.testing.assert_close(cpu_mod.refine_matches(D_i, D_j, p, 0, 5), p)
    torch.testing.assert_close(cpu_mod.refine_matches(D_i, D_j, p, 3, 0), p)


@pytest.mark.parametrize("impl", ["compiled", "torch"])
def test_noncontiguous_inputs(impl, monkeypatch):
    monkeypatch.setenv("MSLAM_NS_KERNELS", impl)
    rays, tgt, p0, _ = _iproj_inputs(1, 16, 20, seed=8, noise_px=1.0)
    rays_nc = rays.transpose(1, 2).contiguous().transpose(1, 2)  # same values, strided
    tgt_nc = torch.cat([tgt, tgt], dim=-1)[..., :3]
    p0_nc = p0.flip(-1).contiguous().flip(-1)
    assert not (rays_nc.is_contiguous() or tgt_nc.is_contiguous())
    for a, b in zip(iproj(rays_nc, tgt_nc, p0_nc), iproj(rays, tgt, p0)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    D_i = _descriptors(1, 16, 20, 24, 9).half()
    D_j = D_i.reshape(1, -1, 24)[:, ::2]  # strided
    p = p0.long()[:, ::2]
    assert not (D_j.is_contiguous() or p.is_contiguous())
    torch.testing.assert_close(
        refine_matches(D_i.transpose(1, 2).contiguous().transpose(1, 2), D_j, p),
        refine_matches(D_i, D_j.contiguous(), p.contiguous()),
    )


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_inputs_rejected(bad):
    rays, tgt, p0, _ = _iproj_inputs(1, 8, 8, seed=9, noise_px=0.0)

    def poisoned(t: torch.Tensor, index: tuple[int, ...]) -> torch.Tensor:
        t = t.clone()
        t[index] = bad
        return t

    for name, args in (
        ("rays_img", (poisoned(rays, (0, 3, 4, 2)), tgt, p0)),
        ("targets", (rays, poisoned(tgt, (0, 5, 1)), p0)),
        ("p_init", (rays, tgt, poisoned(p0, (0, 7, 0)))),
    ):
        with pytest.raises(ValueError, match=f"{name} contains NaN or inf"):
            iproj(*args)
    D_i = _descriptors(1, 8, 8, 24, 1).half()
    D_bad = D_i.clone()
    D_bad[0, 2, 3, 5] = bad
    with pytest.raises(ValueError, match="D_i contains NaN or inf"):
        refine_matches(D_bad, D_i.reshape(1, -1, 24), p0.long())
    with pytest.raises(ValueError, match="D_j contains NaN or inf"):
        refine_matches(D_i, D_bad.reshape(1, -1, 24), p0.long())
    X = _smooth_pointmap(1, 8, 8, 0)
    X[0, 1, 1, 2] = bad
    with pytest.raises(ValueError, match="X contains NaN or inf"):
        ray_image(X)


def test_bad_shapes_and_dtypes_rejected():
    rays, tgt, p0, _ = _iproj_inputs(1, 8, 8, seed=9, noise_px=0.0)
    X_i, pts, K = _project_inputs(1, 8, 8, 5, seed=9)
    with pytest.raises(ValueError, match=r"project_match: K must be \[3, 3\] or \[B=1, 3, 3\]"):
        project_match(X_i, pts, torch.eye(4))
    with pytest.raises(ValueError, match=r"project_match: pts must be \[B=1, N, 3\]"):
        project_match(X_i, pts[..., :2], K)
    with pytest.raises(ValueError, match="project_match: X_i must be float32"):
        project_match(X_i.double(), pts, K)
    pts[0, 2, 1] = float("nan")
    with pytest.raises(ValueError, match="project_match: pts contains NaN or inf"):
        project_match(X_i, pts, K)
    with pytest.raises(ValueError, match="rays_img"):
        iproj(rays[..., :8], tgt, p0)
    with pytest.raises(ValueError, match="p_init"):
        iproj(rays, tgt, p0[:, :5])
    with pytest.raises(ValueError, match="float32"):
        iproj(rays.double(), tgt, p0)
    D = _descriptors(1, 8, 8, 24, 1)
    with pytest.raises(ValueError, match="int64"):
        refine_matches(D, D.reshape(1, -1, 24), p0)
    with pytest.raises(ValueError, match="same dtype"):
        refine_matches(D, D.reshape(1, -1, 24).half(), p0.long())
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
        ray_image(torch.zeros(1, 8, 8, 4))


def test_compiled_mode_uses_compiled_module(monkeypatch):
    monkeypatch.setenv("MSLAM_NS_KERNELS", "compiled")
    mod = _backend.get("matching", "cpu")
    assert mod is not None and all(hasattr(mod, op) for op in ("iproj", "project_match", "refine_matches"))
    assert mod.__name__ == "mslam_ns_matching_cpu"
    monkeypatch.setenv("MSLAM_NS_KERNELS", "torch")
    assert _backend.get("matching", "cpu") is None
    # the public op returns the compiled module's result in compiled mode
    monkeypatch.setenv("MSLAM_NS_KERNELS", "compiled")
    rays, tgt, p0, _ = _iproj_inputs(1, 10, 12, seed=10, noise_px=1.0)
    for a, b in zip(iproj(rays, tgt, p0), mod.iproj(rays, tgt, p0, *LM.values())):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (CPU build tested above)")


@cuda
def test_cuda_iproj_matches_cpu(cpu_mod):
    cuda_mod = _backend.load("matching", "cuda")
    assert cuda_mod is not None, _backend._errors.get(("matching", "cuda"))
    rays, tgt, p0, _ = _iproj_inputs(2, 48, 64, seed=12, noise_px=2.0)
    p_c, c_c = cpu_mod.iproj(rays, tgt, p0, *LM.values())
    p_g, c_g = cuda_mod.iproj(rays.cuda(), tgt.cuda(), p0.cuda(), *LM.values())
    # --use_fast_math and FMA contraction on the GPU: allow tiny float differences (and rare flips)
    close = ((p_g.cpu() - p_c).abs().amax(-1) < 1e-2).float().mean().item()
    assert close > 0.99 and (c_g.cpu() == c_c).float().mean() > 0.99


@cuda
def test_cuda_project_match_matches_cpu(cpu_mod):
    cuda_mod = _backend.load("matching", "cuda")
    assert cuda_mod is not None, _backend._errors.get(("matching", "cuda"))
    X_i, pts, K = _project_inputs(3, 30, 40, 5000, seed=22)
    K_inv = torch.linalg.inv(K).contiguous()
    p_c, v_c = cpu_mod.project_match(X_i, pts, K, K_inv, 1e-6, 0.1)
    p_g, v_g = cuda_mod.project_match(X_i.cuda(), pts.cuda(), K.cuda(), K_inv.cuda(), 1e-6, 0.1)
    # --use_fast_math on the GPU: rare flips at a pixel edge or a threshold
    assert (p_g.cpu() == p_c).all(-1).float().mean() > 0.999 and (v_g.cpu() == v_c).float().mean() > 0.999


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cuda_refine_matches_cpu(cpu_mod, dtype):
    cuda_mod = _backend.load("matching", "cuda")
    assert cuda_mod is not None, _backend._errors.get(("matching", "cuda"))
    D_i = _descriptors(2, 30, 40, 24, 13).to(dtype)
    D_j = _descriptors(2, 1, 500, 24, 14).reshape(2, 500, 24).to(dtype)
    p = torch.stack([torch.randint(0, 40, (2, 500)), torch.randint(0, 30, (2, 500))], -1)
    out_c = cpu_mod.refine_matches(D_i, D_j, p, 3, 5)
    out_g = cuda_mod.refine_matches(D_i.cuda(), D_j.cuda(), p.cuda(), 3, 5).cpu()
    assert (out_c == out_g).all(-1).float().mean() > 0.99
    mask = torch.rand(2, 500) < 0.5
    out_m = cuda_mod.refine_matches(D_i.cuda(), D_j.cuda(), p.cuda(), 3, 5, mask.cuda()).cpu()
    assert torch.equal(out_m[mask], out_g[mask]) and torch.equal(out_m[~mask], p[~mask])
