"""CPU rasteriser: sparse compositing vs the dense reference, gradients vs finite differences, the CUDA guard."""

from __future__ import annotations

import math

import pytest
import torch

from mslam_ns.nerfstudio.raster.guard import GsplatCudaForbidden, forbid_gsplat_cuda

forbid_gsplat_cuda()  # before anything imports gsplat's backend: a call into it must fail, not compile

from mslam_ns.nerfstudio.raster import rasterize  # noqa: E402
from mslam_ns.nerfstudio.raster._composite import composite  # noqa: E402
from mslam_ns.nerfstudio.raster._dense import composite_dense  # noqa: E402
from mslam_ns.nerfstudio.raster._project import project  # noqa: E402


def _scene(n: int, seed: int, dtype=torch.float32, spread: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g, dtype=dtype) - 0.5) * torch.tensor([4.0, 3.0, 1.0], dtype=dtype) * spread
    means[:, 2] += 3.0
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    scales = torch.rand(n, 3, generator=g, dtype=dtype) * 0.15 + 0.03
    opac = torch.rand(n, generator=g, dtype=dtype) * 0.8 + 0.1
    colors = torch.rand(n, 3, generator=g, dtype=dtype)
    viewmat = torch.eye(4, dtype=dtype)[None]
    K = torch.tensor([[[40.0, 0, 32.0], [0, 40.0, 24.0], [0, 0, 1]]], dtype=dtype)
    return means, quats, scales, opac, colors, viewmat, K


def _screen(scene, W=64, H=48):
    means, quats, scales, opac, colors, viewmat, K = scene
    p = project(means, quats, scales, opac, viewmat, K, W, H)
    return p.means2d[0], p.conics[0], p.opacities[0], colors, p.radii[0], p.depths[0]


@pytest.mark.parametrize("max_pairs", [1 << 22, 500])  # one chunk; many depth-ordered chunks
def test_pairs_match_dense_reference(max_pairs):
    scr = _screen(_scene(120, 0, torch.float64))
    rgb_t, a_t = composite(*scr, 64, 48, max_pairs=max_pairs)
    rgb_d, a_d = composite_dense(*scr, 64, 48)
    assert float(a_d.mean()) > 0.2  # the scene covers a good part of the image (measured 0.26)
    torch.testing.assert_close(rgb_t, rgb_d, atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(a_t, a_d, atol=1e-10, rtol=1e-9)


def test_small_chunks_equal_one_chunk():
    scr = _screen(_scene(200, 1))
    rgb1, a1 = composite(*scr, 64, 48)
    rgb2, a2 = composite(*scr, 64, 48, max_pairs=300)  # a few Gaussians per chunk
    torch.testing.assert_close(rgb1, rgb2, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(a1, a2, atol=1e-6, rtol=1e-5)


def test_early_termination_matches_dense():
    # Many opaque splats stacked on one spot: transmittance falls below 1e-4 and compositing must stop.
    n = 40
    means = torch.zeros(n, 3, dtype=torch.float64)
    means[:, 2] = torch.linspace(2.0, 4.0, n, dtype=torch.float64)
    scr = project(
        means,
        torch.tensor([[1.0, 0, 0, 0]], dtype=torch.float64).expand(n, 4),
        torch.full((n, 3), 0.3, dtype=torch.float64),
        torch.full((n,), 0.95, dtype=torch.float64),
        torch.eye(4, dtype=torch.float64)[None],
        torch.tensor([[[40.0, 0, 32], [0, 40, 24], [0, 0, 1]]], dtype=torch.float64),
        64,
        48,
    )
    colors = torch.rand(n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    args = (scr.means2d[0], scr.conics[0], scr.opacities[0], colors, scr.radii[0], scr.depths[0], 64, 48)
    rgb_t, a_t = composite(*args)
    rgb_d, a_d = composite_dense(*args)
    rgb_c, a_c = composite(*args, max_pairs=2000)  # termination carried across chunks
    torch.testing.assert_close(rgb_c, rgb_d, atol=1e-10, rtol=1e-9)
    assert float(a_d.max()) > 1 - 2e-4  # terminated pixels exist
    torch.testing.assert_close(rgb_t, rgb_d, atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(a_t, a_d, atol=1e-10, rtol=1e-9)


def test_gradients_match_finite_differences():
    # float64 gradcheck through projection, SH-free colours and compositing; few splats, tiny image.
    means, quats, scales, opac, colors, viewmat, K = _scene(6, 2, torch.float64, spread=0.3)
    W, H = 20, 16
    K = torch.tensor([[[14.0, 0, 10.0], [0, 14.0, 8.0], [0, 0, 1]]], dtype=torch.float64)
    scales = scales + 0.1  # smooth footprints, away from the 1/255 cut
    weights = torch.rand(H, W, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))

    def f(m, q, s, o, c, v):
        rgb, a, _ = rasterize(m, q, s, o, c, v, K, W, H)
        return (torch.cat([rgb, a], -1)[0] * weights).sum()

    inputs = [t.clone().requires_grad_(True) for t in (means, quats, scales, opac, colors, viewmat)]
    assert torch.autograd.gradcheck(f, inputs, eps=1e-7, atol=1e-5, rtol=1e-4)


def test_rasterize_modes_and_sh():
    means, quats, scales, opac, colors, viewmat, K = _scene(150, 4)
    sh = torch.zeros(150, 16, 3)
    sh[:, 0] = (colors - 0.5) / 0.28209479177387814
    rgb_sh, a_sh, info = rasterize(means, quats, scales, opac, sh, viewmat, K, 64, 48, sh_degree=0)
    rgb, a, _ = rasterize(means, quats, scales, opac, colors, viewmat, K, 64, 48)
    torch.testing.assert_close(rgb_sh, rgb, atol=1e-5, rtol=1e-5)
    out, a2, _ = rasterize(means, quats, scales, opac, colors, viewmat, K, 64, 48, render_mode="RGB+ED")
    assert out.shape == (1, 48, 64, 4) and info["radii"].shape == (1, 150)
    d = out[0, ..., 3][a2[0, ..., 0] > 0.5]
    assert float(d.min()) > 2.4 and float(d.max()) < 3.6  # expected depth lies within the splats' z range
    bg = torch.tensor([[0.2, 0.4, 0.6]])
    rgb_bg, _, _ = rasterize(means, quats, scales, opac, colors, viewmat, K, 64, 48, backgrounds=bg)
    torch.testing.assert_close(rgb_bg, rgb + (1 - a) * bg[:, None, None, :])


def test_means2d_gradient_for_strategy():
    means, quats, scales, opac, colors, viewmat, K = _scene(80, 6)
    means.requires_grad_(True)
    rgb, a, info = rasterize(means, quats, scales, opac, colors, viewmat, K, 64, 48)
    info["means2d"].retain_grad()
    rgb.sum().backward()
    g = info["means2d"].grad
    assert g is not None and g.shape == (1, 80, 2) and bool(torch.isfinite(g).all())
    assert float(g[info["radii"] > 0].abs().sum()) > 0


def test_gsplat_cuda_call_fails_fast():
    from gsplat.cuda._wrapper import isect_offset_encode

    with pytest.raises(GsplatCudaForbidden):
        isect_offset_encode(torch.zeros(1, dtype=torch.int64), 1, 1, 1)


def test_empty_and_offscreen():
    means, quats, scales, opac, colors, viewmat, K = _scene(10, 7)
    means[:, 2] = -5.0  # all behind the camera
    rgb, a, info = rasterize(means, quats, scales, opac, colors, viewmat, K, 30, 20)
    assert rgb.shape == (1, 20, 30, 3) and float(a.abs().max()) == 0.0
    assert math.isclose(float(rgb.abs().max()), 0.0)


def test_empty_view_still_backpropagates():
    means, quats, scales, opac, colors, viewmat, K = _scene(10, 8)
    means[:, 2] = -5.0
    means.requires_grad_(True)
    colors.requires_grad_(True)
    rgb, a, _ = rasterize(means, quats, scales, opac, colors, viewmat, K, 30, 20)
    (rgb.sum() + a.sum()).backward()  # a view with no splats must not break training (zero gradients)
    assert means.grad is not None and float(means.grad.abs().max()) == 0.0
