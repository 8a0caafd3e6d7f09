"""Compiled GN kernels vs their PyTorch twins, and the public API's input checks."""

from __future__ import annotations

import pytest
import torch

from mslam_ns.cuda import _backend
from mslam_ns.cuda.gn import _torch_impl, edge_normal_equations, pose_retract
from mslam_ns.cuda.gn._synthetic import make_graph, perturb
from mslam_ns.geometry import sim3

MODES = ("rays", "calib", "points")


def _compiled_cpu():
    mod = _backend.load("gn", "cpu")
    if mod is None:  # a real failure: CI has a C++ compiler, so the compiled path must build
        pytest.fail(f"compiled CPU 'gn' kernels failed to build: {_backend._errors.get(('gn', 'cpu'))}")
    return mod


def _random_problem(dtype: torch.dtype = torch.float64, E: int = 4, seed: int = 0):
    """Random (non-exact) correspondences with some invalid matches and low weights."""
    g = torch.Generator().manual_seed(seed)
    G = make_graph(n=5, h=6, w=12, seed=seed, dtype=torch.float64)
    N, HW = G.X.shape[:2]
    X = G.X + 0.05 * torch.randn(G.X.shape, generator=g, dtype=torch.float64)
    ii = torch.randint(0, N, (E,), generator=g)
    jj = (ii + 1 + torch.randint(0, N - 1, (E,), generator=g)) % N
    idx = torch.randint(0, HW, (E, HW), generator=g)
    valid = torch.rand(E, HW, generator=g) > 0.2
    Q = 3.0 * torch.rand(E, HW, generator=g, dtype=torch.float64)
    C = 2.0 * torch.rand(N, HW, generator=g, dtype=torch.float64)
    Twc = perturb(G.Twc, 0.1, n_fixed=0, seed=seed + 1)
    return (
        dict(
            Twc=Twc.to(dtype),
            X=X.to(dtype),
            C=C.to(dtype),
            ii=ii,
            jj=jj,
            idx_ii2jj=idx,
            valid_match=valid,
            Q=Q.to(dtype),
        ),
        G.K,
        G.img_hw,
    )


def _both(mode: str, prob: dict, K, img_hw, **kw):
    p = _torch_impl.GnParams(
        fx=float(K[0, 0]), fy=float(K[1, 1]), cx=float(K[0, 2]), cy=float(K[1, 2]), H=img_hw[0], W=img_hw[1], **kw
    )
    args = [prob[k] for k in ("Twc", "X", "C", "ii", "jj", "idx_ii2jj", "valid_match", "Q")]
    twin = _torch_impl._edge_normal_equations(mode, *args, p)
    comp = _compiled_cpu().edge_normal_equations(MODES.index(mode), *args, p.as_list(), img_hw[0], img_hw[1])
    return twin, comp


@pytest.mark.parametrize("mode", MODES)
def test_compiled_matches_twin_float64(mode: str) -> None:
    prob, K, hw = _random_problem(torch.float64)
    (Ht, gt, ct, nt), (Hc, gc, cc, nc) = _both(mode, prob, K, hw, C_thresh=0.3, huber=2.0)
    assert int(nt.sum()) > 0  # the comparison must exercise real residuals
    torch.testing.assert_close(nc, nt)
    # Both accumulate in float64; only the summation order differs.
    torch.testing.assert_close(Hc, Ht, rtol=1e-10, atol=1e-8 * float(Ht.abs().max()))
    torch.testing.assert_close(gc, gt, rtol=1e-10, atol=1e-8 * float(gt.abs().max()))
    torch.testing.assert_close(cc, ct, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("mode", MODES)
def test_compiled_matches_twin_float32(mode: str) -> None:
    prob, K, hw = _random_problem(torch.float32, seed=3)
    (Ht, gt, ct, nt), (Hc, gc, cc, nc) = _both(mode, prob, K, hw)
    # Per-pixel math in float32 on both sides (the compiled kernel accumulates in double, the twin in float32):
    # a few 1e-4 relative, and a handful of pixels may flip at a gate/Huber threshold.
    assert (nc - nt).abs().max() <= 2
    scale_H = float(Ht.abs().max())
    torch.testing.assert_close(Hc, Ht, rtol=2e-3, atol=2e-3 * scale_H)
    torch.testing.assert_close(gc, gt, rtol=2e-3, atol=2e-3 * float(gt.abs().max()))
    torch.testing.assert_close(cc, ct, rtol=2e-3, atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("mode", MODES)
def test_compiled_identity_matches_and_multi_chunk(mode: str, dtype: torch.dtype) -> None:
    """Identity correspondences (the kernel's fast path) on an image of several pixel chunks (> 4096 pixels,
    not a multiple of the SIMD batch), with near-exact matches so that most pixels pass the gates."""
    g = torch.Generator().manual_seed(7)
    G = make_graph(n=3, h=50, w=99, seed=7, dtype=torch.float64)
    N, HW = G.X.shape[:2]
    Twc = perturb(G.Twc, 0.02, n_fixed=0, seed=8)
    E = 3
    ii = torch.tensor([0, 1, 2])
    jj = torch.tensor([1, 2, 0])
    idx = torch.arange(HW).expand(E, HW).contiguous()
    idx[2, :10] = torch.randint(0, HW, (10,), generator=g)  # edge 2: not the identity (general path)
    valid = torch.rand(E, HW, generator=g) > 0.1
    X = G.X + 0.01 * torch.randn(G.X.shape, generator=g, dtype=torch.float64)
    Q = 0.5 + 2.0 * torch.rand(E, HW, generator=g, dtype=torch.float64)
    C = 0.5 + 2.0 * torch.rand(N, HW, generator=g, dtype=torch.float64)
    prob = dict(
        Twc=Twc.to(dtype), X=X.to(dtype), C=C.to(dtype), ii=ii, jj=jj, idx_ii2jj=idx, valid_match=valid, Q=Q.to(dtype)
    )
    (Ht, gt, ct, nt), (Hc, gc, cc, nc) = _both(mode, prob, G.K, G.img_hw, huber=0.5)
    assert int(nt.min()) > HW // 4  # most pixels contribute
    if dtype == torch.float64:
        torch.testing.assert_close(nc, nt)
        torch.testing.assert_close(Hc, Ht, rtol=1e-10, atol=1e-8 * float(Ht.abs().max()))
        torch.testing.assert_close(gc, gt, rtol=1e-10, atol=1e-8 * float(gt.abs().max()))
        torch.testing.assert_close(cc, ct, rtol=1e-10, atol=1e-10)
    else:
        assert (nc - nt).abs().max() <= 2
        torch.testing.assert_close(Hc, Ht, rtol=2e-3, atol=2e-3 * float(Ht.abs().max()))
        torch.testing.assert_close(gc, gt, rtol=2e-3, atol=2e-3 * float(gt.abs().max()))
        torch.testing.assert_close(cc, ct, rtol=2e-3, atol=1e-3 * float(ct.abs().max()))


@pytest.mark.parametrize("mode", MODES)
def test_compiled_matches_twin_zero_huber(mode: str) -> None:
    """Huber threshold 0 (weights 1 at |e| = 0, e.g. gated pixels, and 0 elsewhere) must not produce NaNs."""
    prob, K, hw = _random_problem(torch.float64, seed=5)
    (Ht, gt, ct, nt), (Hc, gc, cc, nc) = _both(mode, prob, K, hw, C_thresh=0.3, huber=0.0)
    assert bool(torch.isfinite(Hc).all()) and int(nt.sum()) > 0
    torch.testing.assert_close(nc, nt)
    torch.testing.assert_close(Hc, Ht, rtol=1e-10, atol=1e-8 * float(Ht.abs().max() + 1e-30))
    torch.testing.assert_close(gc, gt, rtol=1e-10, atol=1e-8 * float(gt.abs().max() + 1e-30))
    torch.testing.assert_close(cc, ct, rtol=1e-10, atol=1e-10)


def test_twin_edge_chunking_matches_single_chunk(monkeypatch) -> None:
    """The twin processes edges in chunks; a one-edge chunk size must give the same result."""
    prob, K, hw = _random_problem(torch.float64)
    p = _torch_impl.GnParams(
        fx=float(K[0, 0]), fy=float(K[1, 1]), cx=float(K[0, 2]), cy=float(K[1, 2]), H=hw[0], W=hw[1]
    )
    args = [prob[k] for k in ("Twc", "X", "C", "ii", "jj", "idx_ii2jj", "valid_match", "Q")]
    ref = _torch_impl._edge_normal_equations("calib", *args, p)
    monkeypatch.setattr(_torch_impl, "_PIXELS_PER_CHUNK", 1)
    for a, b in zip(_torch_impl._edge_normal_equations("calib", *args, p), ref):
        torch.testing.assert_close(a, b)


def test_all_invalid_and_empty_edges() -> None:
    prob, K, hw = _random_problem(torch.float64)
    prob["valid_match"] = torch.zeros_like(prob["valid_match"])
    for mode in MODES:
        (Ht, gt, ct, nt), (Hc, gc, cc, nc) = _both(mode, prob, K, hw)
        for t in (Ht, gt, ct, Hc, gc, cc):
            assert torch.count_nonzero(t) == 0
        assert int(nc.sum()) == 0 and int(nt.sum()) == 0
    empty = dict(
        prob,
        ii=prob["ii"][:0],
        jj=prob["jj"][:0],
        idx_ii2jj=prob["idx_ii2jj"][:0],
        valid_match=prob["valid_match"][:0],
        Q=prob["Q"][:0],
    )
    for mode in MODES:
        H, g, c = edge_normal_equations(mode, **empty, K=K, img_hw=hw)
        assert H.shape == (0, 14, 14) and g.shape == (0, 14) and c.shape == (0,)


def test_public_api_accepts_non_contiguous_and_mixed_inputs() -> None:
    prob, K, hw = _random_problem(torch.float64)
    ref = edge_normal_equations("rays", **prob, C_thresh=0.3)
    N, HW = prob["X"].shape[:2]
    # Non-contiguous views of the same data, int32 indices.
    Xt = prob["X"].transpose(0, 1).contiguous().transpose(0, 1)
    Qt = prob["Q"].t().contiguous().t()
    assert not Xt.is_contiguous() and not Qt.is_contiguous()
    out = edge_normal_equations(
        "rays",
        prob["Twc"],
        Xt,
        prob["C"],
        prob["ii"].int(),
        prob["jj"],
        prob["idx_ii2jj"].int(),
        prob["valid_match"],
        Qt,
        C_thresh=0.3,
    )
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b)
    # Symmetric blocks and the structure J_i = -J_j.
    H, g, _ = ref
    torch.testing.assert_close(H, H.transpose(-1, -2))
    torch.testing.assert_close(H[:, :7, :7], H[:, 7:, 7:])
    torch.testing.assert_close(H[:, :7, 7:], -H[:, 7:, 7:])
    torch.testing.assert_close(g[:, :7], -g[:, 7:])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_pose_retract_compiled_matches_twin(dtype: torch.dtype) -> None:
    T = perturb(sim3.identity(6, dtype=torch.float64), 0.5, n_fixed=0).to(dtype)
    dx = (0.3 * torch.randn(6, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)).to(dtype)
    dx[0, 3:6] = 0.0  # exercise the small-angle branch too
    dx[1, :] = 1e-9
    comp = _compiled_cpu().pose_retract(T.contiguous(), dx.contiguous(), 2)
    twin = _torch_impl._pose_retract(T, dx, 2)
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    torch.testing.assert_close(comp, twin, rtol=tol, atol=tol)
    assert torch.equal(comp[:2], T[:2])
    # Reference: Exp(dx) * T from geometry/sim3.py, and the [N - n_fixed, 7] form of dx.
    ref = sim3.retract(T[2:].double(), dx[2:].double())
    torch.testing.assert_close(comp[2:].double(), ref, rtol=tol * 10, atol=tol * 10)
    torch.testing.assert_close(pose_retract(T, dx[2:], 2), comp, rtol=tol, atol=tol)


def test_public_api_rejects_bad_inputs() -> None:
    prob, K, hw = _random_problem(torch.float64)
    bad = dict(prob, X=prob["X"].clone())
    bad["X"][1, 3, 0] = float("nan")
    with pytest.raises(ValueError, match="X contains NaN"):
        edge_normal_equations("rays", **bad)
    bad = dict(prob, Twc=prob["Twc"].clone())
    bad["Twc"][0, 0] = float("inf")
    with pytest.raises(ValueError, match="Twc"):
        edge_normal_equations("rays", **bad)
    bad = dict(prob, Q=prob["Q"].clone())
    bad["Q"][0, 0] = float("nan")
    with pytest.raises(ValueError, match="Q contains NaN"):
        edge_normal_equations("points", **bad)
    with pytest.raises(ValueError, match="mode"):
        edge_normal_equations("lines", **prob)
    with pytest.raises(ValueError, match="calib mode needs K"):
        edge_normal_equations("calib", **prob)
    with pytest.raises(ValueError, match="idx_ii2jj must be in"):
        edge_normal_equations("rays", **dict(prob, idx_ii2jj=prob["idx_ii2jj"] + prob["X"].shape[1]))
    with pytest.raises(ValueError, match="ii/jj"):
        edge_normal_equations("rays", **dict(prob, ii=prob["ii"] + 10))
    with pytest.raises(ValueError, match=r"Q must have shape"):
        edge_normal_equations("rays", **dict(prob, Q=prob["Q"][:, :-1]))
    with pytest.raises(ValueError, match="sigma_ray"):
        edge_normal_equations("rays", **prob, sigma_ray=0.0)
    with pytest.raises(ValueError, match="finite"):
        pose_retract(prob["Twc"], torch.full((prob["Twc"].shape[0], 7), float("nan"), dtype=torch.float64), 1)


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device (its CPU twin: test_compiled_matches_twin_float32)"
)
@pytest.mark.parametrize("mode", MODES)
def test_cuda_matches_twin_float32(mode: str) -> None:
    """The CUDA kernel in float32 (what the tracker runs on a GPU) against the float32 PyTorch twin on the same
    inputs; there is no float64 reference here.

    Same problem and bounds as the CPU float32 check: per-pixel maths in float32 on both sides, the kernel
    accumulating in double; the GPU may contract to FMA, which moves results by float32 rounding only. (On
    this problem the float32 twin is within 1e-6 of the float64 twin, relative to the largest H / g entry,
    measured on the CPU, so these bounds are also, to that margin, bounds against float64.)
    """
    prob, K, hw = _random_problem(torch.float32, seed=3)
    mod = _backend.load("gn", "cuda")
    assert mod is not None, _backend._errors.get(("gn", "cuda"))
    p = _torch_impl.GnParams(
        fx=float(K[0, 0]), fy=float(K[1, 1]), cx=float(K[0, 2]), cy=float(K[1, 2]), H=hw[0], W=hw[1]
    )
    args = [prob[k] for k in ("Twc", "X", "C", "ii", "jj", "idx_ii2jj", "valid_match", "Q")]
    Ht, gt, ct, nt = _torch_impl._edge_normal_equations(mode, *args, p)
    out = mod.edge_normal_equations(MODES.index(mode), *[a.cuda() for a in args], p.as_list(), hw[0], hw[1])
    assert all(t.is_cuda for t in out) and all(t.dtype == torch.float32 for t in out[:3])
    Hc, gc, cc, nc = (t.cpu() for t in out)
    assert int(nt.sum()) > 0
    assert (nc - nt).abs().max() <= 2  # a handful of pixels may flip at a gate / Huber threshold
    torch.testing.assert_close(Hc, Ht, rtol=2e-3, atol=2e-3 * float(Ht.abs().max()))
    torch.testing.assert_close(gc, gt, rtol=2e-3, atol=2e-3 * float(gt.abs().max()))
    torch.testing.assert_close(cc, ct, rtol=2e-3, atol=1e-3)
    T = prob["Twc"]
    dx = 0.01 * torch.ones(T.shape[0], 7, dtype=T.dtype)
    torch.testing.assert_close(
        pose_retract(T.cuda(), dx.cuda(), 1).cpu(), _torch_impl._pose_retract(T, dx, 1), rtol=1e-5, atol=1e-5
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the CPU build and twin run above)")
@pytest.mark.parametrize("mode", MODES)
def test_cuda_matches_twin(mode: str) -> None:
    prob, K, hw = _random_problem(torch.float64)
    cpu = edge_normal_equations(mode, **prob, K=K, img_hw=hw, C_thresh=0.3)
    mod = _backend.load("gn", "cuda")
    assert mod is not None, _backend._errors.get(("gn", "cuda"))
    cuda = edge_normal_equations(mode, **{k: v.cuda() for k, v in prob.items()}, K=K, img_hw=hw, C_thresh=0.3)
    for a, b in zip(cuda, cpu):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-9, atol=1e-9 * float(b.abs().max() + 1))
    T = prob["Twc"]
    dx = 0.1 * torch.ones(T.shape[0], 7, dtype=T.dtype)
    torch.testing.assert_close(pose_retract(T.cuda(), dx.cuda(), 1).cpu(), _torch_impl._pose_retract(T, dx, 1))
