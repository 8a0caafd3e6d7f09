"""Unit checks of the RoPE2D tables against the docs/network.md formula, and of the grid-table cache."""

from __future__ import annotations

import math

import torch

from mslam_ns.model.layers import grid_positions, grid_rope_tables, rope_tables, tables_for


def _rope_reference(t: torch.Tensor, pos: torch.Tensor, base: float = 100.0) -> torch.Tensor:
    """docs/network.md section 3, literally: t [N, d] float64, pos [N, 2] (y, x)."""
    N, d = t.shape
    D = d // 2
    out = t.clone()
    for n in range(N):
        for half, p in ((0, pos[n, 0]), (1, pos[n, 1])):
            for k in range(D // 2):
                f = 1.0 / base ** (2 * k / D)
                a = float(p) * f
                u, v = t[n, half * D + k], t[n, half * D + k + D // 2]
                out[n, half * D + k] = u * math.cos(a) - v * math.sin(a)
                out[n, half * D + k + D // 2] = v * math.cos(a) + u * math.sin(a)
    return out


def test_rope_matches_the_documented_formula():
    g = torch.Generator().manual_seed(0)
    gh, gw, d = 3, 5, 16
    t = torch.randn(1, gh * gw, d, generator=g, dtype=torch.float64)  # [B, N, d]
    pos = grid_positions(gh, gw)
    tab = rope_tables(pos, d, 100.0, 1.0, torch.float64)
    ours = tab.apply(t)[0]
    ref = _rope_reference(t[0], pos[0])
    assert torch.allclose(ours, ref, atol=1e-12)


def test_rope_is_relative():
    """<R(p) q, R(p') k> depends only on p - p' (shifting all positions changes nothing)."""
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(2, 1, 6, 2, 32, generator=g, dtype=torch.float64)  # [B, N, heads, d]
    pos = torch.randint(0, 9, (1, 6, 2), generator=g)
    a, b = rope_tables(pos, 32, 100.0, 1.0, torch.float64), rope_tables(pos + 4, 32, 100.0, 1.0, torch.float64)
    s1 = torch.einsum("bnhd,bmhd->bhnm", a.apply(q), a.apply(k))
    s2 = torch.einsum("bnhd,bmhd->bhnm", b.apply(q), b.apply(k))
    assert torch.allclose(s1, s2, atol=1e-10)


def test_grid_tables_are_cached_and_equal_the_gather_path():
    t1 = grid_rope_tables(4, 6, 32, 100.0, 1.0, torch.device("cpu"), torch.float32)
    t2 = grid_rope_tables(4, 6, 32, 100.0, 1.0, torch.device("cpu"), torch.float32)
    assert t1 is t2
    pos = grid_positions(4, 6, batch=2)
    assert tables_for(pos, (4, 6), 32, 100.0, 1.0, torch.float32) is t1
    shuffled = pos[:, torch.randperm(24)]
    gathered = tables_for(shuffled, (4, 6), 32, 100.0, 1.0, torch.float32)
    assert gathered is not t1 and gathered.cos.shape == (2, 24, 32)
    x = torch.randn(2, 24, 3, 32)
    direct = rope_tables(pos, 32, 100.0, 1.0, torch.float32).apply(x)
    assert torch.equal(t1.apply(x), direct)


def test_odd_token_grids_and_portrait_inputs_run():
    """H/16 odd (refinenet4's output is cropped to layer 3's size) and portrait inputs give full-size maps."""
    from tests.model._fixtures import load_net, require_root

    net = load_net(require_root() / "tiny_A")
    g = torch.Generator().manual_seed(0)
    for H, W in ((80, 96), (96, 64), (48, 80)):
        img1 = torch.rand(1, 3, H, W, generator=g) * 2 - 1
        img2 = torch.rand(1, 3, H, W, generator=g) * 2 - 1
        with torch.inference_mode():
            f1, p1 = net.encode(img1)
            f2, p2 = net.encode(img2)
            r1, r2 = net.decode(f1, p1, f2, p2, (H, W))
        assert f1.shape == (1, (H // 16) * (W // 16), net.cfg.enc_embed_dim)
        for r in (r1, r2):
            assert r["pts3d"].shape == (1, H, W, 3) and r["desc"].shape == (1, H, W, net.cfg.local_feat_dim)
            assert r["conf"].shape == r["desc_conf"].shape == (1, H, W)
            assert all(torch.isfinite(v).all() for v in r.values())
