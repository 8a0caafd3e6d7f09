"""The oracle's fast paths equal their straightforward definitions (pooling, interpolation, convolutions),
its caches are bounded and invisible in the results, and the results do not depend on the thread count."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mslam_ns.geometry.image_transform import ImageTransform
from mslam_ns.prior import oracle as O
from mslam_ns.prior.noise import PassRandom, _interp_matrix, discontinuities, smooth_field, window_max
from tests.prior.scenes import pinhole, random_image, random_poses, smooth_depth

H, W = 24, 32


def _blur_ref(img: torch.Tensor, passes: int) -> torch.Tensor:  # [B, 3, H, W], the original 2-D kernel
    k1 = torch.tensor([1.0, 2.0, 1.0]) / 4.0
    k = (k1[:, None] * k1[None, :])[None, None].repeat(3, 1, 1, 1)
    for _ in range(passes):
        img = F.conv2d(F.pad(img, (1, 1, 1, 1), mode="replicate"), k, groups=3)
    return img


def _descriptors_ref(image, kernels, dilations=(1, 3), blur_passes=1):
    x = _blur_ref(image[None], blur_passes)
    acc = sum(F.conv2d(F.pad(x, (2 * d,) * 4, mode="replicate"), k, dilation=d) for k, d in zip(kernels, dilations))
    acc = acc + 1e-5 * kernels[0][:, 0, 0, 0].view(1, -1, 1, 1)
    return F.normalize(acc[0].permute(1, 2, 0), dim=-1)


def _energy_ref(image):
    g = _blur_ref(image.mean(dim=0)[None, None].expand(1, 3, -1, -1).contiguous(), 2)[:, :1]
    gp = F.pad(g, (2, 2, 2, 2), mode="replicate")
    gx = 0.25 * (gp[..., 2:-2, 4:] - gp[..., 2:-2, :-4])
    gy = 0.25 * (gp[..., 4:, 2:-2] - gp[..., :-4, 2:-2])
    return F.avg_pool2d(F.pad(gx * gx + gy * gy, (3, 3, 3, 3), mode="replicate"), 7, stride=1)[0, 0]


@pytest.mark.parametrize("r", [1, 2, 4])
def test_window_max_is_max_pool(r: int) -> None:
    t = torch.rand(19, 27, generator=torch.Generator().manual_seed(r))
    assert torch.equal(window_max(t, r), F.max_pool2d(t[None, None], 2 * r + 1, 1, r)[0, 0])
    b = t > 0.95
    assert torch.equal(window_max(b, r), F.max_pool2d(b[None, None].float(), 2 * r + 1, 1, r)[0, 0] > 0.5)


def test_discontinuities_match_pooling_definition() -> None:
    z = np.random.default_rng(0).uniform(1, 3, (20, 30)).astype(np.float32)
    t = torch.from_numpy(z)[None, None]
    zmax, zmin = F.max_pool2d(t, 3, 1, 1), -F.max_pool2d(-t, 3, 1, 1)
    ref = F.max_pool2d((zmax > zmin * 1.05).float(), 3, 1, 1)[0, 0].numpy() > 0.5
    np.testing.assert_array_equal(discontinuities(z, 0.05, 1), ref)


def test_smooth_field_is_bilinear_align_corners() -> None:
    for h, w in ((24, 32), (384, 512), (7, 5)):
        g = torch.randn(6, 8, generator=torch.Generator().manual_seed(h))
        ref = F.interpolate(g[None, None], size=(h, w), mode="bilinear", align_corners=True)[0, 0]
        torch.testing.assert_close(_interp_matrix(h, 6) @ g @ _interp_matrix(w, 8).T, ref, atol=1e-5, rtol=0)
    f = smooth_field(PassRandom([0, 1, 2, 3]), 384, 512)
    assert f.shape == (384, 512) and f.dtype == torch.float32


def test_descriptors_and_energy_match_convolution_definitions() -> None:
    img = random_image(48, 64, 3)
    img[:, :, :20] = torch.rand(3, 48, 20, generator=torch.Generator().manual_seed(1))
    k = O._projection_kernels(24, 0)
    D = O.image_descriptors(img, k)
    assert D.shape == (48, 64, 24) and D.is_contiguous()
    torch.testing.assert_close(D, _descriptors_ref(img, k), atol=2e-5, rtol=0)
    torch.testing.assert_close(O.texture_energy(img), _energy_ref(img), atol=1e-9, rtol=1e-4)
    # descriptors at a few pixels only (retrieval) = the dense ones there
    idx = torch.tensor([0, 5, 63, 64, 1000, 48 * 64 - 1])
    kc = O._projection_kernels(24, 1, n_scales=1)
    dense_c = _descriptors_ref(img, kc, dilations=(4,), blur_passes=3).reshape(-1, 24)[idx]
    torch.testing.assert_close(O._descriptors_at(O._blur(img, 3), kc, (4,), idx), dense_c, atol=2e-5, rtol=0)
    torch.testing.assert_close(
        O._descriptors_at(O._blur(img, 1), k, (1, 3), idx), D.reshape(-1, 24)[idx], atol=2e-5, rtol=0
    )


def _prior(n: int, threads=1, H=H, W=W, images=None):
    depths = [smooth_depth(H, W, s) for s in range(n)]
    depths[1][:, W // 2 :] *= 1.5  # a discontinuity (flying pixels)
    pr = O.OraclePrior(
        lambda i: depths[i],
        random_poses(n, seed=0),
        pinhole(W, H),
        ImageTransform.identity(W, H),
        noise="mast3r",
        seed=3,
        threads=threads,
    )
    images = [random_image(H, W, i) for i in range(n)] if images is None else images
    return pr, [pr.encode(images[i], i) for i in range(n)]


def _same(a, b) -> None:
    for u, v in ((a.ii, b.ii), (a.ji, b.ji)):
        for x, y in ((u.X, v.X), (u.C, v.C), (u.D, v.D), (u.Q, v.Q)):
            assert torch.equal(x, y)


def test_lru_is_bounded_and_eviction_changes_nothing() -> None:
    n = O._CACHE + 4
    pr, enc = _prior(n)
    first = pr.decode(enc[1], enc[0])
    feats = pr.retrieval_features(enc[1])
    for k in range(2, n):  # evicts frames 0 and 1
        pr.decode(enc[k], enc[k - 1])
    assert len(pr._cache) <= O._CACHE and 0 not in pr._cache and 1 not in pr._cache
    torch.testing.assert_close(pr.retrieval_features(enc[1]), feats, atol=1e-5, rtol=0)  # no D0 recomputed
    _same(pr.decode(enc[1], enc[0]), first)


def test_results_do_not_depend_on_the_callers_thread_count() -> None:
    """The oracle computes with its own thread count (default 1), so a pass is bit-identical whatever the
    caller's setting (torch's vectorised exp / sigmoid split differently over more threads, +-1 ulp)."""
    old = torch.get_num_threads()
    images = [random_image(96, 128, i) for i in range(3)]  # (bilinear resizing itself depends on the threads)
    out = {}
    try:
        for caller, threads in ((2, 1), (1, 1), (2, None)):
            torch.set_num_threads(caller)
            pr, enc = _prior(3, threads=threads, H=96, W=128, images=images)  # large enough for parallel ops
            out[caller, threads] = pr.decode(enc[0], enc[1]), pr.decode_mono(enc[2])
            assert torch.get_num_threads() == caller  # restored
    finally:
        torch.set_num_threads(old)
    for x, y, z in zip(out[2, 1], out[1, 1], out[2, None]):
        _same(x, y)
        for u, v in ((x.ii, z.ii), (x.ji, z.ji)):
            for a, b in ((u.X, v.X), (u.C, v.C), (u.D, v.D), (u.Q, v.Q)):
                torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_flying_pixels_and_outliers_are_drawn_per_pass() -> None:
    pr, enc = _prior(3)
    a, b = pr.decode(enc[0], enc[1]), pr.decode(enc[2], enc[1])  # view 1 as X^j_i in two passes
    za, zb = a.ji.C.numpy(), b.ji.C.numpy()
    assert not np.array_equal(za, zb)
    disc = enc[1].data.disc
    assert disc.any() and za[disc].max() <= 1.5 * 0.8 + 0.2 + 1e-6  # 1 + 0.8 * (U(1, 1.5) - 1)
    pm = pr.decode_mono(enc[1])
    assert pm.ii.X.data_ptr() != pm.ji.X.data_ptr() and torch.equal(pm.ii.X, pm.ji.X)


def test_recycled_output_memory_never_overwrites_what_the_caller_keeps() -> None:
    pr, enc = _prior(4)
    kept = pr.decode(enc[1], enc[0])
    ref = {f: getattr(kept.ii, f).clone() for f in "XCDQ"}
    view = kept.ji.D.reshape(H * W, -1)  # only a view of an output survives
    arr = pr.decode(enc[2], enc[1]).ii.X.numpy()  # only a numpy array of an output survives
    arr_ref = arr.copy()
    del kept.ji.D
    for _ in range(3):
        for i, j in ((2, 3), (3, 1), (0, 2)):
            pr.decode(enc[i], enc[j])
            pr.decode_mono(enc[i])
    for f in "XCDQ":
        assert torch.equal(getattr(kept.ii, f), ref[f])
    assert torch.equal(view, pr.decode(enc[1], enc[0]).ji.D.reshape(H * W, -1))
    np.testing.assert_array_equal(arr, arr_ref)
    # dropped outputs are recycled (no fresh memory for every pass)
    ptrs = set()
    for _ in range(5):
        p = pr.decode(enc[3], enc[2])
        ptrs |= {p.ii.D.data_ptr(), p.ji.D.data_ptr()}
        del p
    assert len(ptrs) <= 4
