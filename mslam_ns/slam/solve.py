"""Keyframe-graph solver: block-sparse assembly of the per-edge normal equations, sparse damped solves, and
the global Levenberg-Marquardt over all keyframe poses.

The per-edge blocks come from `mslam_ns.cuda.gn.edge_normal_equations` (g = J^T W r, H = J^T W J); the
system solved is ``(A + D) dx = b`` with ``A = sum H`` over the free poses (the first
``cfg.fixed_keyframes`` are the gauge), ``b = -sum g``, and poses update as ``T <- Exp(dx) T``
(`pose_retract`). A keyframe graph has O(M) edges (consecutive + a few retrieval edges per keyframe), so A
is block-sparse with O(E) non-zero 7x7 blocks: it is assembled as a scipy CSC matrix and factorised by
SuperLU (COLAMD ordering), whose cost per iteration grows with the edges and the fill-in of the loops, not
with M^3 (see the graph-solve part of ``benchmarks/bench_backend.py``). Failures (singular systems, non-finite
costs) never raise: the solver reports them in ``info`` and returns the best poses it has (the input poses if
no step was accepted). The damped 7x7 step of frame tracking uses `solve_lm_host` (dense Cholesky on the host,
numpy)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mslam_ns.config import BackendConfig
from mslam_ns.cuda.gn import edge_normal_equations, pose_retract
from mslam_ns.slam.lm import levenberg_marquardt

__all__ = ["assemble", "assemble_sparse", "solve_lm", "solve_lm_host", "solve_sparse", "optimize_graph"]


def _block_entries(
    H: Tensor, g: Tensor, ii: Tensor, jj: Tensor, n_fixed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """COO entries (rows, cols, vals) of sum H and the (index, value) pairs of b = -sum g, free poses only."""
    Hn = H.detach().to(torch.float64).cpu().numpy().reshape(-1, 2, 7, 2, 7)  # [E, a, r, c, s]
    gn = g.detach().to(torch.float64).cpu().numpy().reshape(-1, 2, 7)  # [E, a, r]
    nodes = torch.stack([ii, jj], dim=1).long().cpu().numpy() - n_fixed  # [E, 2] free index (<0 = fixed)
    r7 = np.arange(7)
    rows, cols, vals = [], [], []
    b_idx, b_val = [], []
    for a in range(2):
        na = nodes[:, a]
        ka = na >= 0
        b_idx.append((7 * na[ka, None] + r7).ravel())
        b_val.append(-gn[ka, a].ravel())
        for c in range(2):
            nc = nodes[:, c]
            k = ka & (nc >= 0)
            rr = 7 * na[k, None, None] + r7[None, :, None]  # [e, 7, 1]
            cc = 7 * nc[k, None, None] + r7[None, None, :]  # [e, 1, 7]
            rows.append(np.broadcast_to(rr, (k.sum(), 7, 7)).ravel())
            cols.append(np.broadcast_to(cc, (k.sum(), 7, 7)).ravel())
            vals.append(Hn[k, a, :, c, :].ravel())
    return (
        np.concatenate(rows),
        np.concatenate(cols),
        np.concatenate(vals),
        np.concatenate(b_idx),
        np.concatenate(b_val),
    )


def assemble_sparse(
    H: Tensor,  # [E, 14, 14] block order [i, j]
    g: Tensor,  # [E, 14]
    ii: Tensor,  # [E] int64
    jj: Tensor,  # [E] int64
    n_poses: int,
    n_fixed: int,
) -> tuple[Any, np.ndarray]:
    """Sum the edge blocks of the free poses (index >= n_fixed): A (scipy CSC [7M, 7M]) and b = -g [7M]."""
    import scipy.sparse as sp

    M = max(0, n_poses - n_fixed)
    if M == 0 or H.shape[0] == 0:
        return sp.csc_matrix((7 * M, 7 * M)), np.zeros(7 * M)
    rows, cols, vals, bi, bv = _block_entries(H, g, ii, jj, n_fixed)
    A = sp.coo_matrix((vals, (rows, cols)), shape=(7 * M, 7 * M)).tocsc()  # duplicates are summed
    b = np.zeros(7 * M)
    np.add.at(b, bi, bv)
    return A, b


def assemble(H: Tensor, g: Tensor, ii: Tensor, jj: Tensor, n_poses: int, n_fixed: int) -> tuple[Tensor, Tensor]:
    """Dense version of `assemble_sparse` (tests, and machines without scipy): A [7M, 7M], b [7M] float64."""
    M = max(0, n_poses - n_fixed)
    A = np.zeros((7 * M, 7 * M))
    b = np.zeros(7 * M)
    if M and H.shape[0]:
        rows, cols, vals, bi, bv = _block_entries(H, g, ii, jj, n_fixed)
        np.add.at(A, (rows, cols), vals)
        np.add.at(b, bi, bv)
    return torch.as_tensor(A), torch.as_tensor(b)


def _have_scipy() -> bool:
    try:
        import scipy.sparse.linalg  # noqa: F401
    except ImportError:  # e.g. a bare GPU machine: the dense Cholesky (fine up to a few hundred keyframes)
        return False
    return True


def solve_sparse(A: Any, b: np.ndarray, damping: float) -> np.ndarray | None:
    """Solve (A + damping * diag(A) + eps I) dx = b with SuperLU; dx [M, 7] float64, or None on failure.

    ``eps`` (1e-9 of the mean diagonal) keeps poses without any residual from making A singular.
    """
    import scipy.sparse as sp
    from scipy.sparse.linalg import splu

    n = A.shape[0]
    if n == 0:
        return np.zeros((0, 7))
    if not np.isfinite(A.data).all() or not np.isfinite(b).all():
        return None
    d = A.diagonal()
    eps = 1e-9 * float(np.abs(d).mean()) + 1e-300
    Ad = (A + sp.diags(damping * np.clip(d, 0, None) + eps)).tocsc()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            x = splu(Ad, permc_spec="COLAMD").solve(b)
    except (RuntimeError, ValueError):
        return None
    if not np.isfinite(x).all():
        return None
    return x.reshape(-1, 7)


def solve_lm(A: Tensor, b: Tensor, damping: float) -> Tensor | None:
    """Dense (A + damping * diag(A) + eps I) dx = b by Cholesky; dx [M, 7] float64, or None if it fails."""
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


def solve_lm_host(A: np.ndarray, b: np.ndarray, damping: float) -> np.ndarray | None:
    """`solve_lm` on host arrays (float64 numpy [n, n], [n]): the same damped system, by the same LAPACK
    Cholesky (potrf / potrs), without a torch call; dx [n // 7, 7] or None. Frame tracking's 7x7 pose step
    (its normal equations are read from the device once per evaluation)."""
    import scipy.linalg

    if not (np.isfinite(A).all() and np.isfinite(b).all()):
        return None
    d = np.diagonal(A)
    Ad = A + np.diag(damping * np.clip(d, 0.0, None) + 1e-9 * float(np.abs(d).mean()))
    try:
        x = scipy.linalg.cho_solve(scipy.linalg.cho_factor(Ad, lower=True, check_finite=False), b, check_finite=False)
    except (np.linalg.LinAlgError, ValueError):
        return None
    if not np.isfinite(x).all():
        return None
    return x.reshape(-1, 7)


def optimize_graph(
    Twc: Tensor,  # [N, 8] keyframe poses T_WC
    X: Tensor,  # [N, HW, 3] canonical pointmaps
    C: Tensor,  # [N, HW] average confidences
    ii: Tensor,  # [E] int64
    jj: Tensor,  # [E] int64
    idx: Tensor | Sequence[Tensor],  # [E, HW] int64 / int32 (pixel of ii matched by each pixel of jj)
    valid: Tensor | Sequence[Tensor],  # [E, HW] bool
    Q: Tensor | Sequence[Tensor],  # [E, HW] match weights
    mode: str,
    cfg: BackendConfig,
    K: Tensor | None = None,  # [3, 3] network pixels (calib)
    img_hw: tuple[int, int] | None = None,  # (H, W) (calib)
    sparse: bool | None = None,  # block-sparse SuperLU (default when scipy is there) or dense Cholesky
    edge_chunk: int = 16,
) -> tuple[Tensor, dict[str, Any]]:
    """Levenberg-Marquardt (`mslam_ns.slam.lm`) over the free keyframe poses.

    Residual constants from ``cfg.residual``, iterations / tolerances / damping from ``cfg.lm``. Returns the
    new poses [N, 8] (input dtype) and ``info = {iterations, cost_history, converged, failed, reason}``.
    Invalid inputs raise ValueError (from `edge_normal_equations`); numerical failures set ``failed`` and
    return the best poses found (unchanged poses if no step was accepted).

    Memory: the per-edge blocks are computed ``edge_chunk`` edges at a time (0 = all at once), and
    ``idx`` / ``valid`` / ``Q`` may be sequences of per-edge [HW] tensors (e.g. the edges' own stored
    correspondences), stacked one chunk at a time: the per-pixel inputs are never copied whole.
    """
    N = Twc.shape[0]
    n_fixed = min(max(int(cfg.fixed_keyframes), 0), N)
    E = int(ii.shape[0])
    HW = int(X.shape[1]) if X.dim() == 3 else 0

    def rows(t: Tensor | Sequence[Tensor], a: int, b: int) -> Tensor:
        if isinstance(t, Tensor):
            return t[a:b]
        return torch.stack(list(t[a:b])) if b > a else torch.zeros(0, HW, device=X.device)

    step = E if edge_chunk <= 0 else int(edge_chunk)

    def normal_equations(T: Tensor) -> tuple[Tensor, Tensor, float, int]:
        Hs, gs, cost, count = [], [], 0.0, 0
        for a in range(0, max(E, 1), max(step, 1)):
            b = min(a + step, E)
            i_, v_, q_ = rows(idx, a, b), rows(valid, a, b), rows(Q, a, b)
            if b == a:  # no edge: the inputs are still validated
                i_, v_ = i_.long(), v_.bool()
            H, g, c, n = edge_normal_equations(
                mode,
                T,
                X,
                C,
                ii[a:b],
                jj[a:b],
                i_,
                v_,
                q_,
                residual=cfg.residual,
                K=K,
                img_hw=img_hw,
                return_count=True,
            )
            Hs.append(H)
            gs.append(g)
            cost += float(c.double().sum())
            count += int(n.sum())
        return torch.cat(Hs), torch.cat(gs), cost, count

    first = normal_equations(Twc)  # validates the inputs even when there is nothing to do
    if ii.numel() == 0 or N - n_fixed <= 0:
        return Twc, {
            "iterations": 0,
            "cost_history": [first[2]],
            "converged": True,
            "failed": False,
            "reason": "nothing to optimise",
        }

    sparse = _have_scipy() if sparse is None else sparse

    def linearize(T: Tensor):
        H, g, c, n = first if T is Twc else normal_equations(T)
        A, b = assemble_sparse(H, g, ii, jj, N, n_fixed) if sparse else assemble(H, g, ii, jj, N, n_fixed)
        return A, b, c, n

    def solve(A, b, damping: float):
        if sparse:
            return solve_sparse(A, b, damping)
        dx = solve_lm(A, b, damping)
        return None if dx is None else dx.numpy()

    def retract(T: Tensor, dx: np.ndarray) -> Tensor:
        return pose_retract(T, torch.as_tensor(dx, dtype=T.dtype, device=T.device), n_fixed)

    r = levenberg_marquardt(Twc, linearize, solve, retract, lambda dx: float(np.linalg.norm(dx)), cfg.lm)
    info = {
        "iterations": r.iterations,
        "cost_history": r.cost_history,
        "converged": r.converged,
        "failed": r.failed,
        "reason": r.reason,
    }
    return r.x, info
