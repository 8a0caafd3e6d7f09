"""PyTorch twins of the Gauss-Newton kernels (reference for tests; fallback when no compiled build).

Same formulas as ``gn.h`` (residuals, explicit local Jacobians, whitening, Huber), vectorised over pixels and
edges, with geometry from ``mslam_ns.geometry.sim3``. No autograd is used to build Jacobians; tests use
autograd on `edge_residuals` to check the explicit ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mslam_ns.geometry import sim3

MODES = ("rays", "calib", "points")
ROWS = {"rays": 4, "calib": 3, "points": 3}

# Edges per vectorised chunk are chosen so that one chunk handles at most this many pixels.
_PIXELS_PER_CHUNK = 1 << 19


@dataclass(frozen=True)
class GnParams:
    """Scalar parameters of the residuals (see `edge_normal_equations` in gn/__init__.py)."""

    sigma_ray: float = 0.003
    sigma_dist: float = 10.0
    sigma_pixel: float = 1.0
    sigma_depth: float = 10.0
    sigma_point: float = 0.05
    C_thresh: float = 0.0
    Q_thresh: float = 1.5
    huber: float = 1.345
    fx: float = 1.0
    fy: float = 1.0
    cx: float = 0.0
    cy: float = 0.0
    z_eps: float = 1e-6
    border: float = -10.0
    H: int = 0
    W: int = 0

    def as_list(self) -> list[float]:
        """The 14 floats in the order of gn.h `make_params`."""
        return [
            self.sigma_ray,
            self.sigma_dist,
            self.sigma_pixel,
            self.sigma_depth,
            self.sigma_point,
            self.C_thresh,
            self.Q_thresh,
            self.huber,
            self.fx,
            self.fy,
            self.cx,
            self.cy,
            self.z_eps,
            self.border,
        ]


def local_residuals(
    mode: str,
    P: Tensor,  # [..., 3] T_ij X_j, in frame i
    Xi: Tensor,  # [..., 3] matched target points X_i[m]
    m: Tensor,  # [...] int64 linear pixel index in i (calib targets)
    p: GnParams,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Residuals r [..., R], local Jacobians J [..., R, 7], 1/sigma per row [R] and the gate ok [...] (bool).

    Values where ``ok`` is False are finite but meaningless.
    """
    dt = P.dtype
    if mode == "rays":
        nP = P.norm(dim=-1, keepdim=True)
        nX = Xi.norm(dim=-1, keepdim=True)
        ok = (nP[..., 0] > 0) & (nX[..., 0] > 0)
        nP_s = torch.where(nP > 0, nP, torch.ones_like(nP))
        nX_s = torch.where(nX > 0, nX, torch.ones_like(nX))
        d = P / nP_s
        r = torch.cat([d - Xi / nX_s, nP - nX], dim=-1)
        eye = torch.eye(3, dtype=dt, device=P.device)
        J_ray = torch.cat(
            [(eye - d[..., :, None] * d[..., None, :]) / nP_s[..., None], -sim3.hat(d), torch.zeros_like(d)[..., None]],
            dim=-1,
        )  # [..., 3, 7]
        J_dist = torch.cat([d, torch.zeros_like(d), nP], dim=-1)[..., None, :]  # [..., 1, 7]
        J = torch.cat([J_ray, J_dist], dim=-2)
        isig = torch.tensor([1 / p.sigma_ray] * 3 + [1 / p.sigma_dist], dtype=dt, device=P.device)
        return r, J, isig, ok
    if mode == "calib":
        z = P[..., 2]
        ok = (z > p.z_eps) & (Xi[..., 2] > p.z_eps)
        z_s = torch.where(ok, z, torch.ones_like(z))
        zi_s = torch.where(ok, Xi[..., 2], torch.ones_like(z))
        a, b = P[..., 0] / z_s, P[..., 1] / z_s
        u, v = p.fx * a + p.cx, p.fy * b + p.cy
        ok = ok & (u >= p.border) & (u <= p.W - 1 - p.border) & (v >= p.border) & (v <= p.H - 1 - p.border)
        mu, mv = (m % p.W).to(dt), torch.div(m, p.W, rounding_mode="floor").to(dt)
        r = torch.stack([u - mu, v - mv, torch.log(z_s) - torch.log(zi_s)], dim=-1)
        iz, o, one = 1.0 / z_s, torch.zeros_like(z), torch.ones_like(z)
        fx, fy = p.fx, p.fy
        Ju = torch.stack([fx * iz, o, -fx * a * iz, -fx * a * b, fx * (1 + a * a), -fx * b, o], dim=-1)
        Jv = torch.stack([o, fy * iz, -fy * b * iz, -fy * (1 + b * b), fy * a * b, fy * a, o], dim=-1)
        Jz = torch.stack([o, o, iz, b, -a, o, one], dim=-1)
        J = torch.stack([Ju, Jv, Jz], dim=-2)
        isig = torch.tensor([1 / p.sigma_pixel] * 2 + [1 / p.sigma_depth], dtype=dt, device=P.device)
        return r, J, isig, ok
    if mode == "points":
        eye = torch.eye(3, dtype=dt, device=P.device).expand(*P.shape[:-1], 3, 3)
        J = torch.cat([eye, -sim3.hat(P), P[..., None]], dim=-1)
        isig = torch.full((3,), 1 / p.sigma_point, dtype=dt, device=P.device)
        return P - Xi, J, isig, torch.ones(P.shape[:-1], dtype=torch.bool, device=P.device)
    raise ValueError(f"mode must be one of {MODES}, not {mode!r}")


def _gather_edges(
    Twc: Tensor, X: Tensor, C: Tensor, ii: Tensor, jj: Tensor, idx: Tensor, valid: Tensor, Q: Tensor, p: GnParams
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Per edge: T_ij [E, 8], X_j [E, HW, 3], X_i[idx] [E, HW, 3], safe idx [E, HW], validity [E, HW]."""
    HW = X.shape[1]
    in_range = (idx >= 0) & (idx < HW)
    m = torch.where(in_range, idx, torch.zeros_like(idx))
    Tij = sim3.mul(sim3.inv(Twc[ii]), Twc[jj])
    Xj = X[jj]
    Xi = torch.gather(X[ii], 1, m[..., None].expand(-1, -1, 3))
    Ci = torch.gather(C[ii], 1, m)
    ok = valid & in_range & (Q > p.Q_thresh) & (Ci > p.C_thresh) & (C[jj] > p.C_thresh)
    return Tij, Xj, Xi, m, ok


def edge_residuals(
    mode: str,
    Twc: Tensor,  # [N, 8]
    X: Tensor,  # [N, HW, 3]
    C: Tensor,  # [N, HW]
    ii: Tensor,  # [E]
    jj: Tensor,  # [E]
    idx: Tensor,  # [E, HW]
    valid: Tensor,  # [E, HW]
    Q: Tensor,  # [E, HW]
    p: GnParams,
) -> tuple[Tensor, Tensor, Tensor]:
    """Whitened residuals e = sqrt(Q)/sigma * r [E, HW, R] (0 where gated), the gate [E, HW] and J_loc [E, HW, R, 7].

    Differentiable w.r.t. Twc (used by tests to check the explicit Jacobians).
    """
    Tij, Xj, Xi, m, ok = _gather_edges(Twc, X, C, ii, jj, idx, valid, Q, p)
    P = sim3.act(Tij[:, None, :], Xj)
    r, J, isig, ok_r = local_residuals(mode, P, Xi, m, p)
    ok = ok & ok_r
    sw = torch.sqrt(torch.where(ok, Q, torch.zeros_like(Q)))[..., None] * isig
    e = torch.where(ok[..., None], sw * r, torch.zeros_like(r))
    return e, ok, J


def _edge_normal_equations(
    mode: str,
    Twc: Tensor,  # [N, 8]
    X: Tensor,  # [N, HW, 3]
    C: Tensor,  # [N, HW]
    ii: Tensor,  # [E] int64
    jj: Tensor,  # [E] int64
    idx: Tensor,  # [E, HW] int64
    valid: Tensor,  # [E, HW] bool
    Q: Tensor,  # [E, HW]
    p: GnParams,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Twin of the compiled kernel: H [E, 14, 14], g [E, 14], cost [E], count [E] (int64)."""
    E, HW = idx.shape
    dt, dev = X.dtype, X.device
    Hl = torch.zeros(E, 7, 7, dtype=dt, device=dev)
    gl = torch.zeros(E, 7, dtype=dt, device=dev)
    cost = torch.zeros(E, dtype=dt, device=dev)
    count = torch.zeros(E, dtype=torch.int64, device=dev)
    step = max(1, _PIXELS_PER_CHUNK // max(HW, 1))
    for e0 in range(0, E, step):
        sl = slice(e0, min(E, e0 + step))
        with torch.no_grad():
            Q_s = Q[sl]
            Tij, Xj, Xi, m, ok = _gather_edges(Twc, X, C, ii[sl], jj[sl], idx[sl], valid[sl], Q_s, p)
            P = sim3.act(Tij[:, None, :], Xj)
            r, J, isig, ok_r = local_residuals(mode, P, Xi, m, p)
            ok = ok & ok_r
            w0 = torch.where(ok, Q_s, torch.zeros_like(Q_s))[..., None] * isig**2  # [e, HW, R]
            e = torch.sqrt(w0) * torch.where(ok[..., None], r, torch.zeros_like(r))
            ae = e.abs()
            inlier = ae <= p.huber
            hub = torch.where(inlier, torch.ones_like(ae), p.huber / torch.where(inlier, torch.ones_like(ae), ae))
            w = hub * w0
            rho2 = torch.where(inlier, e * e, 2 * p.huber * ae - p.huber**2)  # 2 * Huber rho
            Jw = J * w[..., None]
            Hl[sl] = torch.einsum("enra,enrb->eab", Jw, J)
            gl[sl] = torch.einsum("enra,enr->ea", Jw, torch.where(ok[..., None], r, torch.zeros_like(r)))
            cost[sl] = torch.where(ok[..., None], rho2, torch.zeros_like(rho2)).sum(dim=(1, 2))
            count[sl] = ok.sum(dim=1)
    H, g = expand_edges(Hl, gl, Twc[ii])
    return H, g, cost, count


def expand_edges(Hl: Tensor, gl: Tensor, Twci: Tensor) -> tuple[Tensor, Tensor]:
    """Local 7x7 blocks [E, 7, 7] / [E, 7] in frame i -> 14x14 pose blocks [E, 14, 14] / [E, 14] in order [i, j].

    J_j = J_loc Adj(T_WCi)^-1, J_i = -J_j.
    """
    A = sim3.adjoint_inv(Twci.to(torch.float64))  # [E, 7, 7]
    M = (A.transpose(-1, -2) @ Hl.to(torch.float64) @ A).to(Hl.dtype)
    gj = (A.transpose(-1, -2) @ gl.to(torch.float64)[..., None])[..., 0].to(gl.dtype)
    H = torch.cat([torch.cat([M, -M], dim=-1), torch.cat([-M, M], dim=-1)], dim=-2)
    return H, torch.cat([-gj, gj], dim=-1)


def _pose_retract(Twc: Tensor, dx: Tensor, n_fixed: int) -> Tensor:
    """Twin of `pose_retract`: T <- Exp(dx) T for rows >= n_fixed (dx has N or N - n_fixed rows)."""
    N = Twc.shape[0]
    free = dx if dx.shape[0] == N - n_fixed else dx[n_fixed:]
    out = Twc.clone()
    if N > n_fixed:
        out[n_fixed:] = sim3.normalize(sim3.retract(Twc[n_fixed:].to(torch.float64), free.to(torch.float64))).to(
            Twc.dtype
        )
    return out
