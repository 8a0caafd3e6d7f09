"""Sim(3) pose-graph optimisation: the loop-closure correction of keyframes outside the dense window.

The dense backend (`Backend.optimise`) refines only a window of recent keyframes against fixed older ones, so
that memory and time stay bounded on long videos. When a new keyframe closes a loop with a keyframe older
than the window, the accumulated drift has to be spread over the whole loop first: this module solves

    min_T  sum_(i,j) || log(M_ij^-1 T_i^-1 T_j) ||^2_W      (T_i = T_WC of keyframe i, Sim(3))

over every keyframe pose, one term per graph edge with its measured relative pose ``M_ij`` (the relative
pose of the two keyframes the last time the dense optimisation held one of them free, or, for the new loop
edge, a two-keyframe dense solve), weights ``W`` per tangent component (tau, phi, sigma) with tau divided by
the scene depth of keyframe i so that translation errors are relative. The gauge keyframes are fixed; every
keyframe also gets a negligible prior to its current pose so that disconnected segments stay put.

Gauss-Newton with left perturbations (``T <- Exp(d) T``, as `mslam_ns.geometry.sim3`): with
``A = Adj(M_ij^-1 T_i^-1)`` the residual moves by ``A d_j - A d_i`` (the left Jacobian of log is taken as
the identity, exact at the optimum's small residuals); the sparse normal equations are solved by SuperLU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse
import scipy.sparse.linalg
import torch
from torch import Tensor

from mslam_ns.geometry import sim3

__all__ = ["PoseGraphResult", "optimise_pose_graph", "relative_pose"]

_PRIOR_WEIGHT = 1e-8
"""Weight of each keyframe's pull to its current pose (only keeps disconnected parts non-singular)."""


@dataclass
class PoseGraphResult:
    T_WC: Tensor  # [N, 8] float64
    iterations: int
    cost_history: list[float]


def relative_pose(T_WC: Tensor, i: Tensor, j: Tensor) -> Tensor:  # [E, 8]: T_i^-1 T_j
    """Relative poses ``T_WCi^-1 T_WCj`` (camera j -> camera i) of index pairs."""
    return sim3.mul(sim3.inv(T_WC[i]), T_WC[j])


def _residuals(T: Tensor, ii: Tensor, jj: Tensor, M_inv: Tensor) -> Tensor:  # [E, 7]
    return sim3.log(sim3.mul(M_inv, relative_pose(T, ii, jj)))


def optimise_pose_graph(
    T_WC: Tensor,  # [N, 8]
    ii: Sequence[int] | Tensor,  # [E]
    jj: Sequence[int] | Tensor,  # [E]
    M: Tensor,  # [E, 8] measured T_i^-1 T_j
    weights: Tensor,  # [E, 7] (tau, phi, sigma) inverse variances
    fixed: Sequence[int] = (0,),
    iterations: int = 10,
    tol: float = 1e-10,
) -> PoseGraphResult:
    """Gauss-Newton over the free poses (see the module docstring). Returns float64 poses."""
    T = T_WC.detach().double().cpu().clone()
    N = T.shape[0]
    ii = torch.as_tensor(ii, dtype=torch.long).cpu()
    jj = torch.as_tensor(jj, dtype=torch.long).cpu()
    E = int(ii.numel())
    if M.shape != (E, 8) or weights.shape != (E, 7):
        raise ValueError(f"pose graph: {E} edges need M [E, 8] and weights [E, 7]")
    M_inv = sim3.inv(M.detach().double().cpu())
    w = weights.detach().double().cpu()
    free = np.ones(N, dtype=bool)
    free[[int(f) for f in fixed if 0 <= int(f) < N]] = False
    col = np.full(N, -1, dtype=np.int64)
    col[free] = np.arange(int(free.sum()))
    n_free = int(free.sum())
    history: list[float] = []
    if E == 0 or n_free == 0:
        return PoseGraphResult(T, 0, history)

    def cost(T: Tensor) -> float:
        r = _residuals(T, ii, jj, M_inv)
        return float((w * r * r).sum())

    # block (e, a, b) -> entries of the 7x7 sparse blocks: rows 7 col[a] + r, cols 7 col[b] + c
    rr, cc = np.meshgrid(np.arange(7), np.arange(7), indexing="ij")
    history.append(cost(T))
    for _ in range(iterations):
        r = _residuals(T, ii, jj, M_inv)  # [E, 7]
        A = sim3.adjoint(sim3.mul(M_inv, sim3.inv(T[ii])))  # [E, 7, 7]: dr/dd_j = A, dr/dd_i = -A
        WA = w[:, :, None] * A
        H = (A.transpose(1, 2) @ WA).numpy()  # [E, 7, 7] = A^T W A
        g = (A.transpose(1, 2) @ (w * r)[:, :, None])[..., 0].numpy()  # [E, 7] = A^T W r
        rows, cols, vals = [], [], []
        b = np.zeros(7 * n_free)
        i_np, j_np = ii.numpy(), jj.numpy()
        for a, b_, sign in ((i_np, i_np, 1.0), (j_np, j_np, 1.0), (i_np, j_np, -1.0), (j_np, i_np, -1.0)):
            m = free[a] & free[b_]
            if not m.any():
                continue
            rows.append((7 * col[a[m]])[:, None, None] + rr[None])
            cols.append((7 * col[b_[m]])[:, None, None] + cc[None])
            vals.append(sign * H[m])
        # gradient: J_i^T W r = -g, J_j^T W r = g; the GN step solves H dx = -J^T W r
        mi, mj = free[i_np], free[j_np]
        np.add.at(b, (7 * col[i_np[mi]])[:, None] + np.arange(7)[None], g[mi])
        np.add.at(b, (7 * col[j_np[mj]])[:, None] + np.arange(7)[None], -g[mj])
        diag = np.arange(7 * n_free)
        rows.append(diag)
        cols.append(diag)
        vals.append(np.full(7 * n_free, _PRIOR_WEIGHT))
        Hs = scipy.sparse.coo_matrix(
            (
                np.concatenate([v.ravel() for v in vals]),
                (np.concatenate([x.ravel() for x in rows]), np.concatenate([x.ravel() for x in cols])),
            ),
            shape=(7 * n_free, 7 * n_free),
        ).tocsc()
        dx = scipy.sparse.linalg.spsolve(Hs, b)
        if not np.isfinite(dx).all():
            break
        d = torch.zeros(N, 7, dtype=torch.float64)
        d[torch.as_tensor(free)] = torch.as_tensor(dx).view(n_free, 7)
        T_new = sim3.normalize(sim3.retract(T, d))
        c_new = cost(T_new)
        if c_new > history[-1] * (1 + 1e-9):
            break  # Gauss-Newton overshot (far from the optimum): keep the best poses
        T = T_new
        history.append(c_new)
        if float(np.abs(dx).max()) < tol or history[-2] - c_new <= tol * max(history[-2], 1e-30):
            break
    return PoseGraphResult(T, len(history) - 1, history)
