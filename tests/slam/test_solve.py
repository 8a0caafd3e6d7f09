"""Keyframe-graph LM solver: assembly, damped Cholesky, convergence on a synthetic graph, failure safety."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mslam_ns.config import BackendConfig, LMConfig
from mslam_ns.cuda.gn._synthetic import make_graph, perturb
from mslam_ns.geometry import sim3
from mslam_ns.slam.solve import assemble, optimize_graph, solve_lm

F64 = torch.float64


def _pose_error(T: torch.Tensor, T_ref: torch.Tensor) -> float:
    return float(sim3.log(sim3.mul(T.double(), sim3.inv(T_ref.double()))).abs().max())


def _cfg(max_iters: int) -> BackendConfig:
    return BackendConfig(lm=LMConfig(max_iters=max_iters, rel_error=1e-10, delta_norm=1e-8))


def _run(G, T0, mode, cfg, **kw):
    return optimize_graph(T0, G.X, G.C, G.ii, G.jj, G.idx, G.valid, G.Q, mode, cfg, K=G.K, img_hw=G.img_hw, **kw)


def test_assemble_matches_dense_loop() -> None:
    gen = torch.Generator().manual_seed(0)
    E, N, n_fixed = 7, 5, 2
    ii = torch.tensor([0, 1, 2, 3, 4, 0, 2])
    jj = torch.tensor([1, 2, 3, 4, 0, 3, 4])
    R = torch.randn(E, 14, 14, generator=gen, dtype=F64)
    H = R @ R.transpose(-1, -2)
    g = torch.randn(E, 14, generator=gen, dtype=F64)
    A, b = assemble(H, g, ii, jj, N, n_fixed)
    A_ref = torch.zeros(7 * N, 7 * N, dtype=F64)
    b_ref = torch.zeros(7 * N, dtype=F64)
    for e in range(E):
        nodes = (int(ii[e]), int(jj[e]))
        for a in range(2):
            b_ref[7 * nodes[a] : 7 * nodes[a] + 7] -= g[e, 7 * a : 7 * a + 7]
            for c in range(2):
                A_ref[7 * nodes[a] : 7 * nodes[a] + 7, 7 * nodes[c] : 7 * nodes[c] + 7] += H[
                    e, 7 * a : 7 * a + 7, 7 * c : 7 * c + 7
                ]
    k = 7 * n_fixed
    torch.testing.assert_close(A, A_ref[k:, k:])
    torch.testing.assert_close(b, b_ref[k:])


def test_solve_lm_solves_and_fails_safely() -> None:
    gen = torch.Generator().manual_seed(1)
    R = torch.randn(14, 14, generator=gen, dtype=F64)
    A = R @ R.T + torch.eye(14, dtype=F64)
    b = torch.randn(14, generator=gen, dtype=F64)
    dx = solve_lm(A, b, 0.0)
    assert dx is not None and dx.shape == (2, 7)
    torch.testing.assert_close(A @ dx.reshape(-1), b, rtol=1e-6, atol=1e-8)
    assert solve_lm(-A, b, 0.0) is None  # indefinite: factorisation fails, no exception
    assert solve_lm(A * float("nan"), b, 1e-3) is None
    assert solve_lm(torch.zeros(0, 0, dtype=F64), torch.zeros(0, dtype=F64), 1e-3).shape == (0, 7)
    # A zero block (a pose without residuals) stays solvable thanks to the small absolute damping.
    A0 = A.clone()
    A0[7:, :] = 0.0
    A0[:, 7:] = 0.0
    b0 = b.clone()
    b0[7:] = 0.0
    dx0 = solve_lm(A0, b0, 1e-6)
    assert dx0 is not None and torch.all(dx0[1] == 0)


@pytest.mark.parametrize("mode", ["rays", "calib", "points"])
def test_converges_to_truth_from_perturbed_start(mode: str) -> None:
    G = make_graph(n=6, h=8, w=16, seed=0)
    T0 = perturb(G.Twc, 0.05, n_fixed=1, seed=1)
    assert _pose_error(T0, G.Twc) > 0.02
    T, info = _run(G, T0, mode, _cfg(30))
    assert not info["failed"] and info["converged"], info
    assert info["cost_history"][-1] < 1e-6 * info["cost_history"][0]
    assert all(b <= a for a, b in zip(info["cost_history"], info["cost_history"][1:]))
    assert _pose_error(T, G.Twc) < 1e-6
    assert torch.equal(T[0], T0[0])  # the gauge keyframe is fixed


def test_converges_with_twin_backend_and_float32(monkeypatch) -> None:
    monkeypatch.setenv("MSLAM_NS_KERNELS", "torch")
    G = make_graph(n=5, h=6, w=12, seed=4, dtype=torch.float32)
    T0 = perturb(G.Twc, 0.03, n_fixed=1, seed=2)
    T, info = _run(G, T0, "rays", _cfg(20))
    assert not info["failed"]
    assert T.dtype == torch.float32
    assert _pose_error(T, G.Twc) < 1e-3 < _pose_error(T0, G.Twc)


def test_large_perturbation_with_robust_weights_still_improves() -> None:
    G = make_graph(n=6, h=8, w=16, seed=5)
    T0 = perturb(G.Twc, 0.2, n_fixed=1, seed=3)
    T, info = _run(G, T0, "rays", _cfg(10))
    assert not info["failed"]
    assert info["cost_history"][-1] < info["cost_history"][0]
    assert _pose_error(T, G.Twc) < _pose_error(T0, G.Twc)


def test_degenerate_inputs_do_not_crash() -> None:
    G = make_graph(n=4, h=4, w=8, seed=6)
    T0 = perturb(G.Twc, 0.05, n_fixed=1, seed=4)
    cfg = _cfg(5)
    # All matches invalid: nothing to optimise, poses unchanged, reported as failed.
    T, info = optimize_graph(T0, G.X, G.C, G.ii, G.jj, G.idx, torch.zeros_like(G.valid), G.Q, "rays", cfg)
    assert info["failed"] and torch.equal(T, T0)
    # Every point identical: rank-deficient system; must return finite poses without raising.
    X_same = torch.ones_like(G.X) * torch.tensor([0.1, -0.2, 2.0], dtype=F64)
    for mode in ("rays", "points", "calib"):
        T, info = _run(dataclasses.replace(G, X=X_same), T0, mode, cfg)
        assert torch.isfinite(T).all()
        assert set(info) >= {"iterations", "cost_history", "converged", "failed"}
    # Empty edge list / single keyframe: unchanged.
    T, info = optimize_graph(T0, G.X, G.C, G.ii[:0], G.jj[:0], G.idx[:0], G.valid[:0], G.Q[:0], "rays", cfg)
    assert torch.equal(T, T0) and info["iterations"] == 0 and not info["failed"]
    T, info = optimize_graph(T0[:1], G.X[:1], G.C[:1], G.ii[:0], G.jj[:0], G.idx[:0], G.valid[:0], G.Q[:0], "rays", cfg)
    assert torch.equal(T, T0[:1]) and not info["failed"]


def test_nan_inputs_are_rejected() -> None:
    G = make_graph(n=3, h=4, w=8, seed=7)
    X = G.X.clone()
    X[1, 0, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        optimize_graph(G.Twc, X, G.C, G.ii, G.jj, G.idx, G.valid, G.Q, "rays", BackendConfig())


def test_sparse_and_dense_solvers_agree() -> None:
    G = make_graph(n=6, h=8, w=16, seed=8)
    T0 = perturb(G.Twc, 0.05, n_fixed=1, seed=5)
    Ts, info_s = _run(G, T0, "rays", _cfg(8), sparse=True)
    Td, info_d = _run(G, T0, "rays", _cfg(8), sparse=False)
    assert info_s["iterations"] == info_d["iterations"] and not info_s["failed"]
    torch.testing.assert_close(Ts, Td, atol=1e-9, rtol=0)
