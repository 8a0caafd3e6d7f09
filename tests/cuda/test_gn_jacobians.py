"""Explicit GN Jacobians (twin and compiled) vs autograd in float64, for all three residual modes."""

from __future__ import annotations

import pytest
import torch

from mslam_ns.cuda.gn import _torch_impl, edge_normal_equations
from mslam_ns.cuda.gn._synthetic import make_graph, perturb
from mslam_ns.geometry import sim3
from mslam_ns.slam.solve import assemble

MODES = ("rays", "calib", "points")
F64 = torch.float64


def _problem(seed: int = 0):
    """Noisy correspondences (non-zero residuals) on a small synthetic graph, float64."""
    G = make_graph(n=4, h=5, w=10, seed=seed)
    g = torch.Generator().manual_seed(seed + 7)
    X = G.X + 0.02 * torch.randn(G.X.shape, generator=g, dtype=F64)
    Twc = perturb(G.Twc, 0.02, n_fixed=0, seed=seed + 3)
    return Twc, X, G


def _params(G, huber: float) -> _torch_impl.GnParams:
    K = G.K
    return _torch_impl.GnParams(
        fx=float(K[0, 0]),
        fy=float(K[1, 1]),
        cx=float(K[0, 2]),
        cy=float(K[1, 2]),
        H=G.img_hw[0],
        W=G.img_hw[1],
        huber=huber,
        sigma_ray=0.01,
        sigma_dist=0.1,
        sigma_pixel=1.0,
        sigma_depth=0.1,
        sigma_point=0.05,
    )


@pytest.mark.parametrize("mode", MODES)
def test_local_jacobian_matches_autograd(mode: str) -> None:
    """J_loc = dr/d eps of r(Exp(eps) P) at eps = 0, for random points."""
    gen = torch.Generator().manual_seed(1)
    P = torch.randn(20, 3, generator=gen, dtype=F64) * 0.3 + torch.tensor([0.0, 0.0, 2.0], dtype=F64)
    Xi = P + 0.05 * torch.randn(20, 3, generator=gen, dtype=F64)
    m = torch.randint(0, 100, (20,), generator=gen)
    p = _torch_impl.GnParams(fx=50.0, fy=45.0, cx=5.0, cy=4.0, H=10, W=10, border=-1e9)
    _, J, _, ok = _torch_impl.local_residuals(mode, P, Xi, m, p)
    assert bool(ok.all())
    for k in range(P.shape[0]):

        def r_of(eps: torch.Tensor, k: int = k) -> torch.Tensor:
            return _torch_impl.local_residuals(mode, sim3.act(sim3.exp(eps), P[k]), Xi[k], m[k], p)[0]

        Ja = torch.autograd.functional.jacobian(r_of, torch.zeros(7, dtype=F64))
        torch.testing.assert_close(J[k], Ja, rtol=1e-9, atol=1e-9)


def _robust_cost_and_whitened(mode: str, Twc, X, G, p, dx):
    """0.5 * sum 2 rho(e) and e [E, HW, R] as differentiable functions of the left perturbations dx [N, 7]."""
    T = sim3.retract(Twc, dx)
    e, ok, _ = _torch_impl.edge_residuals(mode, T, X, G.C, G.ii, G.jj, G.idx, G.valid, G.Q, p)
    ae = e.abs()
    k = p.huber
    rho2 = torch.where(ae <= k, e * e, 2 * k * ae - k * k)
    return 0.5 * rho2.sum(), e


@pytest.mark.parametrize("backend", ["torch", "compiled"])
@pytest.mark.parametrize("mode", MODES)
def test_gradient_is_autograd_of_half_robust_cost(mode: str, backend: str, monkeypatch) -> None:
    """Assembled -b = sum g equals d(0.5 cost)/d dx, with the Huber weights active (sign + adjoint check)."""
    monkeypatch.setenv("MSLAM_NS_KERNELS", backend)
    Twc, X, G = _problem()
    p = _params(G, huber=1.0)
    dx0 = torch.zeros(Twc.shape[0], 7, dtype=F64, requires_grad=True)
    cost, e = _robust_cost_and_whitened(mode, Twc, X, G, p, dx0)
    assert float((e.abs() > p.huber).double().mean()) > 0.05, "test must exercise the Huber branch"
    (grad,) = torch.autograd.grad(cost, dx0)
    H, g, c = edge_normal_equations(
        mode,
        Twc,
        X,
        G.C,
        G.ii,
        G.jj,
        G.idx,
        G.valid,
        G.Q,
        K=G.K,
        img_hw=G.img_hw,
        huber=1.0,
        sigma_ray=0.01,
        sigma_dist=0.1,
        sigma_depth=0.1,
    )
    _, b = assemble(H, g, G.ii, G.jj, Twc.shape[0], 0)
    torch.testing.assert_close(-b.reshape(-1, 7), grad, rtol=1e-8, atol=1e-8 * float(grad.abs().max()))
    torch.testing.assert_close(0.5 * c.sum(), cost.detach(), rtol=1e-10, atol=0)


@pytest.mark.parametrize("backend", ["torch", "compiled"])
@pytest.mark.parametrize("mode", MODES)
def test_hessian_is_gauss_newton_of_autograd_jacobian(mode: str, backend: str, monkeypatch) -> None:
    """Without Huber, the assembled H equals J^T J of the autograd Jacobian of the whitened residuals."""
    monkeypatch.setenv("MSLAM_NS_KERNELS", backend)
    Twc, X, G = _problem(seed=2)
    p = _params(G, huber=1e12)
    N = Twc.shape[0]

    def whitened(dx: torch.Tensor) -> torch.Tensor:
        return _robust_cost_and_whitened(mode, Twc, X, G, p, dx.reshape(N, 7))[1].reshape(-1)

    J = torch.autograd.functional.jacobian(
        whitened, torch.zeros(N * 7, dtype=F64), vectorize=True, strategy="forward-mode"
    )
    H, g, _ = edge_normal_equations(
        mode,
        Twc,
        X,
        G.C,
        G.ii,
        G.jj,
        G.idx,
        G.valid,
        G.Q,
        K=G.K,
        img_hw=G.img_hw,
        huber=1e12,
        sigma_ray=0.01,
        sigma_dist=0.1,
        sigma_depth=0.1,
    )
    A, _ = assemble(H, g, G.ii, G.jj, N, 0)
    ref = J.T @ J
    torch.testing.assert_close(A, ref, rtol=1e-8, atol=1e-9 * float(ref.abs().max()))
