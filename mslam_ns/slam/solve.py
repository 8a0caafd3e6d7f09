"""Keyframe-graph solver: assemble per-edge normal equations, damped Cholesky steps, Levenberg-Marquardt.

The per-edge blocks come from `mslam_ns.cuda.gn.edge_normal_equations` (g = J^T W r, H = J^T W J); the
system solved is ``(A + D) dx = b`` with ``A = sum H``, ``b = -sum g`` over the free poses, and poses update
as ``T <- Exp(dx) T`` (`pose_retract`). Failures (singular systems, non-finite costs) never raise: the
solver reports them in ``info`` and returns the best poses it has.

The system is dense (7M x 7M, M = free poses): fine up to M ~ 500 (a 3500^2 float64 Cholesky is ~0.1-0.5 s
on 2 cores). A keyframe graph has O(M) edges (consecutive + a few retrieval edges), so above a few hundred
keyframes a sparse / banded Cholesky (or a Schur-free block solver) would win clearly.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from mslam_ns.config import BackendConfig
from mslam_ns.cuda.gn import edge_normal_equations, pose_retract

__all__ = ["assemble", "solve_lm", "optimize_graph"]

_LAMBDA_MAX = 1e10  # give up raising the damping beyond this
_LAMBDA_MIN = 1e-12


def assemble(
    H: Tensor,  # [E, 14, 14] block order [i, j]
    g: Tensor,  # [E, 14]
    ii: Tensor,  # [E] int64
    jj: Tensor,  # [E] int64
    n_poses: int,
    n_fixed: int,
) -> tuple[Tensor, Tensor]:
    """Sum the edge blocks of the free poses (index >= n_fixed) into A [7M, 7M] and b = -g [7M] (float64)."""
    M = max(0, n_poses - n_fixed)
    dev = H.device
    A4 = torch.zeros(M, M, 7, 7, dtype=torch.float64, device=dev)
    b2 = torch.zeros(M, 7, dtype=torch.float64, device=dev)
    if M == 0 or H.shape[0] == 0:
        return A4.permute(0, 2, 1, 3).reshape(7 * M, 7 * M), b2.reshape(-1)
    H4 = H.to(torch.float64).reshape(-1, 2, 7, 2, 7).permute(0, 1, 3, 2, 4)  # [E, 2, 2, 7, 7]
    g2 = g.to(torch.float64).reshape(-1, 2, 7)  # [E, 2, 7]
    nodes = torch.stack([ii, jj], dim=1).long() - n_fixed  # [E, 2] free index (negative = fixed)
    for a in range(2):
        ra = nodes[:, a]
        keep = ra >= 0
        b2.index_add_(0, ra[keep], -g2[keep, a])
        for c in range(2):
            rc = nodes[:, c]
            k2 = keep & (rc >= 0)
            A4.index_put_((ra[k2], rc[k2]), H4[k2, a, c], accumulate=True)
    return A4.permute(0, 2, 1, 3).reshape(7 * M, 7 * M), b2.reshape(-1)


def solve_lm(A: Tensor, b: Tensor, damping: float) -> Tensor | None:
    """Solve (A + damping * diag(A) + eps I) dx = b by Cholesky; dx [M, 7] (float64), or None if it fails.

    ``eps`` (1e-9 of the mean diagonal) keeps poses without any residual from making A singular; a failed
    factorisation or a non-finite solution returns None (never raises).
    """
    n = A.shape[0]
    if n == 0:
        return torch.zeros(0, 7, dtype=torch.float64, device=A.device)
    A = A.to(torch.float64)
    b = b.to(torch.float64)
    if not bool(torch.isfinite(A).all()) or not bool(torch.isfinite(b).all()):
        return None
    d = torch.diagonal(A)
    eps = 1e-9 * float(d.abs().mean())
    Ad = A + torch.diag(damping * d.clamp_min(0) + eps)
    L, info = torch.linalg.cholesky_ex(Ad)
    if int(info) != 0:
        return None
    x = torch.cholesky_solve(b[:, None], L)[:, 0]
    if not bool(torch.isfinite(x).all()):
        return None
    return x.reshape(-1, 7)


def optimize_graph(
    Twc: Tensor,  # [N, 8] keyframe poses T_WC
    X: Tensor,  # [N, HW, 3] canonical pointmaps
    C: Tensor,  # [N, HW] average confidences
    ii: Tensor,  # [E] int64
    jj: Tensor,  # [E] int64
    idx: Tensor,  # [E, HW] int64 (pixel of ii matched by each pixel of jj)
    valid: Tensor,  # [E, HW] bool
    Q: Tensor,  # [E, HW] match weights
    mode: str,
    cfg: BackendConfig,
    sigma_ray: float = 0.003,
    sigma_dist: float = 10.0,
    sigma_pixel: float = 1.0,
    sigma_depth: float = 10.0,
    sigma_point: float = 0.05,
    huber: float = 1.345,
    K: Tensor | None = None,  # [3, 3] (calib)
    img_hw: tuple[int, int] | None = None,  # (H, W) (calib)
    pixel_border: float = -10,
    z_eps: float = 1e-6,
    rel_cost_tol: float = 1e-10,
) -> tuple[Tensor, dict[str, Any]]:
    """Levenberg-Marquardt over the free keyframe poses (the first ``cfg.fixed_keyframes`` are the gauge).

    Each iteration evaluates the normal equations once: a step is accepted if the robust cost drops (then the
    damping is divided by 10), otherwise the damping is multiplied by 10 and the step retried. Stops after
    ``cfg.max_iters`` evaluations, when |dx| < ``cfg.delta_norm``, or when the relative cost decrease is below
    ``rel_cost_tol``. Returns the new poses [N, 8] (input dtype) and
    ``info = {iterations, cost_history, converged, failed, reason}``. Invalid inputs raise ValueError (from
    `edge_normal_equations`); numerical failures set ``failed`` and return the best poses found (unchanged
    poses if no step was accepted).
    """
    N = Twc.shape[0]
    n_fixed = min(max(int(cfg.fixed_keyframes), 0), N)
    info: dict[str, Any] = {"iterations": 0, "cost_history": [], "converged": False, "failed": False,
                            "reason": ""}

    def normal_equations(T: Tensor) -> tuple[Tensor, Tensor, float, int]:
        H, g, cost, count = edge_normal_equations(
            mode, T, X, C, ii, jj, idx, valid, Q, sigma_ray=sigma_ray, sigma_dist=sigma_dist,
            sigma_pixel=sigma_pixel, sigma_depth=sigma_depth, sigma_point=sigma_point, C_thresh=cfg.C_conf,
            Q_thresh=cfg.Q_conf, huber=huber, K=K, img_hw=img_hw, pixel_border=pixel_border, z_eps=z_eps,
            return_count=True)
        return H, g, float(cost.double().sum()), int(count.sum())

    H, g, cost, count = normal_equations(Twc)  # validates the inputs even when there is nothing to do
    if ii.numel() == 0 or N - n_fixed <= 0:
        info.update(converged=True, reason="nothing to optimise")
        return Twc, info
    info["cost_history"].append(cost)
    if count == 0:
        info.update(failed=True, reason="no valid residuals")
        return Twc, info
    if not math.isfinite(cost):
        info.update(failed=True, reason="non-finite cost")
        return Twc, info
    lam = float(cfg.damping)
    best = Twc
    for it in range(int(cfg.max_iters)):
        info["iterations"] = it + 1
        A, b = assemble(H, g, ii, jj, N, n_fixed)
        dx = solve_lm(A, b, lam)
        if dx is None:
            lam *= 10.0
            if lam > _LAMBDA_MAX:
                info.update(failed=True, reason="factorisation failed at every damping")
                break
            continue
        step = float(dx.norm())
        if step < cfg.delta_norm:
            info.update(converged=True, reason="small step")
            break
        T_new = pose_retract(best, dx.to(best.dtype), n_fixed)
        H2, g2, cost2, count2 = normal_equations(T_new)
        if math.isfinite(cost2) and cost2 < cost and count2 > 0:
            rel = (cost - cost2) / max(cost, 1e-300)
            best, H, g, cost = T_new, H2, g2, cost2
            info["cost_history"].append(cost)
            lam = max(lam / 10.0, _LAMBDA_MIN)
            if rel < rel_cost_tol:
                info.update(converged=True, reason="small relative cost change")
                break
        else:
            lam *= 10.0
            if lam > _LAMBDA_MAX:
                info.update(converged=True, reason="no descent step at maximum damping")
                break
    return best, info
