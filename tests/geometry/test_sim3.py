"""Sim(3) identities in float64 (and a float32 smoke check), checked against 4x4 matrix algebra."""

from __future__ import annotations

import pytest
import torch

from mslam_ns.geometry import sim3

F64 = torch.float64


def _algebra(xi: torch.Tensor) -> torch.Tensor:
    """Lie-algebra 4x4 matrix [[sigma I + [phi]x, tau], [0, 0]] of xi [..., 7]."""
    M = torch.zeros(*xi.shape[:-1], 4, 4, dtype=xi.dtype)
    eye = torch.eye(3, dtype=xi.dtype)
    M[..., :3, :3] = xi[..., 6, None, None] * eye + sim3.hat(xi[..., 3:6])
    M[..., :3, 3] = xi[..., :3]
    return M


def _random_tangent(n: int, seed: int = 0, rot: float = 1.0, scale: float = 0.5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xi = torch.randn(n, 7, generator=g, dtype=F64)
    xi[:, 3:6] *= rot
    xi[:, 6] *= scale
    # Keep |phi| < 3 so that log (which returns |phi| <= pi) is the inverse of exp.
    n = xi[:, 3:6].norm(dim=-1, keepdim=True)
    xi[:, 3:6] = torch.where(n > 3.0, xi[:, 3:6] / n * 3.0, xi[:, 3:6])
    return xi


def _canon(T: torch.Tensor) -> torch.Tensor:
    """q and -q are the same rotation: pick qw >= 0."""
    sign = torch.where(T[..., 6:7] < 0, -1.0, 1.0).to(T.dtype)
    return torch.cat([T[..., :3], T[..., 3:7] * sign, T[..., 7:]], dim=-1)


@pytest.mark.parametrize("mag", [1.0, 0.3, 1e-2, 1e-4, 1e-7, 1e-12, 0.0])
def test_exp_matches_matrix_exponential(mag: float) -> None:
    xi = _random_tangent(200, seed=1) * mag
    M = sim3.to_matrix(sim3.exp(xi))
    torch.testing.assert_close(M, torch.linalg.matrix_exp(_algebra(xi)), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("rot,scale", [(1e-3, 2.0), (1e-6, -1.5), (2.0, 1e-6), (2.0, 0.0), (0.0, 0.0), (0.0, 3.0)])
def test_exp_mixed_small_and_large(rot: float, scale: float) -> None:
    """Small rotation with large scale and vice versa (the Taylor branches of each variable separately)."""
    xi = _random_tangent(100, seed=2)
    xi[:, 3:6] = xi[:, 3:6] / xi[:, 3:6].norm(dim=-1, keepdim=True) * rot
    xi[:, 6] = scale
    M = sim3.to_matrix(sim3.exp(xi))
    torch.testing.assert_close(M, torch.linalg.matrix_exp(_algebra(xi)), atol=1e-11, rtol=1e-11)


@pytest.mark.parametrize("mag", [1.0, 1e-3, 1e-9])
def test_log_exp_roundtrip(mag: float) -> None:
    xi = _random_tangent(300, seed=3) * mag
    torch.testing.assert_close(sim3.log(sim3.exp(xi)), xi, atol=1e-12, rtol=1e-10)


def test_exp_log_roundtrip_and_near_pi() -> None:
    T = sim3.exp(_random_tangent(300, seed=4, rot=1.5))
    torch.testing.assert_close(_canon(sim3.exp(sim3.log(T))), _canon(T), atol=1e-12, rtol=1e-12)
    # Rotation angle close to pi: log must still invert exp (quaternion sign handled).
    xi = _random_tangent(50, seed=5)
    xi[:, 3:6] = xi[:, 3:6] / xi[:, 3:6].norm(dim=-1, keepdim=True) * (torch.pi - 1e-6)
    torch.testing.assert_close(
        sim3.to_matrix(sim3.exp(sim3.log(sim3.exp(xi)))), sim3.to_matrix(sim3.exp(xi)), atol=1e-9, rtol=1e-9
    )


def test_identity_and_inverse() -> None:
    T = sim3.exp(_random_tangent(100, seed=6))
    e = sim3.identity(100, dtype=F64)
    torch.testing.assert_close(sim3.mul(T, sim3.inv(T)), e, atol=1e-13, rtol=0)
    torch.testing.assert_close(sim3.mul(sim3.inv(T), T), e, atol=1e-13, rtol=0)
    torch.testing.assert_close(sim3.mul(e, T), T)
    torch.testing.assert_close(sim3.log(e), torch.zeros(100, 7, dtype=F64))
    assert sim3.identity(2, 3).shape == (2, 3, 8)


def test_mul_matches_matrices_and_is_associative() -> None:
    A, B, C = (sim3.exp(_random_tangent(64, seed=s)) for s in (7, 8, 9))
    torch.testing.assert_close(sim3.to_matrix(sim3.mul(A, B)), sim3.to_matrix(A) @ sim3.to_matrix(B))
    torch.testing.assert_close(sim3.mul(sim3.mul(A, B), C), sim3.mul(A, sim3.mul(B, C)), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(sim3.to_matrix(sim3.inv(A)), torch.linalg.inv(sim3.to_matrix(A)))


def test_act_matches_matrix_and_broadcasts() -> None:
    T = sim3.exp(_random_tangent(4, seed=10))  # [4, 8]
    X = torch.randn(4, 50, 3, dtype=F64)
    Y = sim3.act(T[:, None, :], X)  # [4, 50, 3]
    M = sim3.to_matrix(T)
    ref = X @ M[:, None, :3, :3].transpose(-1, -2)[:, 0] + M[:, None, :3, 3]
    torch.testing.assert_close(Y, ref)
    # Composition acts like sequential actions.
    torch.testing.assert_close(sim3.act(sim3.mul(T, T)[:, None], X), sim3.act(T[:, None], sim3.act(T[:, None], X)))


def test_act_points_is_act_for_one_pose() -> None:
    T = sim3.exp(_random_tangent(1, seed=14))[0]  # [8], scale != 1
    X = torch.randn(1000, 3, dtype=F64)
    torch.testing.assert_close(sim3.act_points(T, X), sim3.act(T[None], X), atol=1e-12, rtol=1e-12)
    Y = sim3.act_points(T, X.float())  # float32 points: the pose is cast, the result stays float32
    assert Y.dtype == torch.float32
    torch.testing.assert_close(Y, sim3.act(T[None], X).float(), atol=1e-5, rtol=1e-5)


def test_adjoint_identity() -> None:
    """Exp(Adj(T) xi) T = T Exp(xi), and adjoint_inv is its inverse."""
    T = sim3.exp(_random_tangent(100, seed=11))
    xi = _random_tangent(100, seed=12) * 0.5
    lhs = sim3.mul(sim3.exp(torch.einsum("nij,nj->ni", sim3.adjoint(T), xi)), T)
    torch.testing.assert_close(lhs, sim3.mul(T, sim3.exp(xi)), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(
        sim3.adjoint(T) @ sim3.adjoint_inv(T), torch.eye(7, dtype=F64).expand(100, 7, 7), atol=1e-12, rtol=0
    )


def test_matrix_roundtrip_and_from_se3() -> None:
    T = sim3.exp(_random_tangent(100, seed=13, rot=2.0))
    T2 = sim3.from_matrix(sim3.to_matrix(T))
    q_sign = torch.sign(T[:, 6:7])  # from_matrix returns qw >= 0; q and -q are the same rotation
    torch.testing.assert_close(T2[:, 3:7], T[:, 3:7] * q_sign)
    torch.testing.assert_close(T2[:, :3], T[:, :3])
    torch.testing.assert_close(T2[:, 7], T[:, 7])
    R = sim3.quat_to_rotmat(T[:, 3:7])
    torch.testing.assert_close(R @ R.transpose(-1, -2), torch.eye(3, dtype=F64).expand(100, 3, 3))
    S = sim3.from_se3(R, T[:, :3], T[:, 7])
    torch.testing.assert_close(sim3.to_matrix(S), sim3.to_matrix(T))
    assert torch.allclose(sim3.from_se3(R, T[:, :3])[:, 7], torch.ones(100, dtype=F64))


def test_retract_is_left_multiplication() -> None:
    T = sim3.exp(_random_tangent(20, seed=14))
    xi = _random_tangent(20, seed=15) * 0.1
    torch.testing.assert_close(
        sim3.to_matrix(sim3.retract(T, xi)), torch.linalg.matrix_exp(_algebra(xi)) @ sim3.to_matrix(T)
    )


@pytest.mark.parametrize("at_zero", [True, False])
def test_exp_derivative_matches_finite_differences(at_zero: bool) -> None:
    """Autograd derivative of exp (incl. the Taylor branches at 0) vs central differences."""
    xi0 = torch.zeros(7, dtype=F64) if at_zero else _random_tangent(1, seed=16)[0]
    J = torch.autograd.functional.jacobian(sim3.exp, xi0)  # [8, 7]
    assert torch.isfinite(J).all()
    h = 1e-6
    Jn = torch.stack([(sim3.exp(xi0 + h * e) - sim3.exp(xi0 - h * e)) / (2 * h) for e in torch.eye(7, dtype=F64)], -1)
    torch.testing.assert_close(J, Jn, atol=1e-8, rtol=1e-7)


def test_left_jacobian_of_action() -> None:
    """d/d xi [Exp(xi) T X] at 0 = [I, -[P]x, P] with P = T X (the local Jacobian used by the GN kernels)."""
    T = sim3.exp(_random_tangent(1, seed=17))[0]
    X = torch.randn(3, dtype=F64)
    P = sim3.act(T, X)
    J = torch.autograd.functional.jacobian(lambda xi: sim3.act(sim3.retract(T, xi), X), torch.zeros(7, dtype=F64))
    ref = torch.cat([torch.eye(3, dtype=F64), -sim3.hat(P), P[:, None]], dim=1)
    torch.testing.assert_close(J, ref)


def test_float32_and_batch_shapes() -> None:
    xi = _random_tangent(24, seed=18).float().reshape(2, 3, 4, 7)
    T = sim3.exp(xi)
    assert T.shape == (2, 3, 4, 8) and T.dtype == torch.float32
    torch.testing.assert_close(sim3.log(T), xi, atol=1e-4, rtol=1e-4)
    assert sim3.adjoint(T).shape == (2, 3, 4, 7, 7)
    assert sim3.to_matrix(T).shape == (2, 3, 4, 4, 4)
    torch.testing.assert_close(sim3.mul(T, sim3.inv(T)), sim3.identity(2, 3, 4), atol=1e-5, rtol=0)
