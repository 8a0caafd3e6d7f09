"""A synthetic keyframe graph with exact correspondences, for tests and benchmarks of the GN kernels.

Each keyframe k has an image of H = 2h rows and W columns (pinhole K):
* rows h..2h-1 (the "grid" half) hold its own points X_k[m] = z_m K^-1 [u_m, v_m, 1] (random depth), so the
  calib pixel target of pixel m is exactly where the point projects;
* rows 0..h-1 (the "source" half) hold, for the single edge (i, k) in which k is the source keyframe, the grid
  points of i seen from k: X_k[n] = T_WCk^-1 T_WCi X_i[n + hW], matched by idx[n] = n + hW.
So at the true poses every residual of every mode is zero. Edges form a ring 0 -> 1 -> ... -> N-1 -> 0
(`i = k - 1 mod N` for source k), so every keyframe is a source exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mslam_ns.geometry import sim3


@dataclass
class SyntheticGraph:
    """Poses and correspondences; shapes in comments."""

    Twc: Tensor  # [N, 8] true poses
    X: Tensor  # [N, HW, 3]
    C: Tensor  # [N, HW]
    ii: Tensor  # [E]
    jj: Tensor  # [E]
    idx: Tensor  # [E, HW]
    valid: Tensor  # [E, HW]
    Q: Tensor  # [E, HW]
    K: Tensor  # [3, 3]
    img_hw: tuple[int, int]


def make_graph(
    n: int = 6,
    h: int = 8,
    w: int = 16,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    rot: float = 0.2,
    trans: float = 0.3,
    log_scale: float = 0.2,
) -> SyntheticGraph:
    """Ring graph of `n` keyframes with images of (2h, w) pixels (see module docstring)."""
    g = torch.Generator().manual_seed(seed)
    H, W = 2 * h, w
    HW = H * W
    f = float(W)
    K = torch.tensor([[f, 0.0, (W - 1) / 2], [0.0, f, (H - 1) / 2], [0.0, 0.0, 1.0]], dtype=torch.float64)
    xi = torch.randn(n, 7, generator=g, dtype=torch.float64)
    xi[:, :3] *= trans
    xi[:, 3:6] *= rot
    xi[:, 6] *= log_scale
    xi[0] = 0.0
    Twc = sim3.exp(xi)
    # Grid halves: random depth along the pixel rays.
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    rays = torch.stack([(u - K[0, 2]) / f, (v - K[1, 2]) / f, torch.ones_like(u)], dim=-1).reshape(HW, 3)
    depth = 1.0 + 2.0 * torch.rand(n, HW, 1, generator=g, dtype=torch.float64)
    X = rays * depth  # [n, HW, 3]; the source halves are overwritten below
    hw = h * W
    ii = (torch.arange(n) - 1) % n
    jj = torch.arange(n)
    idx = torch.zeros(n, HW, dtype=torch.int64)
    valid = torch.zeros(n, HW, dtype=torch.bool)
    for e in range(n):
        i, k = int(ii[e]), int(jj[e])
        Tki = sim3.mul(sim3.inv(Twc[k]), Twc[i])
        X[k, :hw] = sim3.act(Tki, X[i, hw:])
        idx[e, :hw] = torch.arange(hw) + hw
        valid[e, :hw] = True
    C = 1.0 + torch.rand(n, HW, generator=g, dtype=torch.float64)
    Q = 2.0 + torch.rand(n, HW, generator=g, dtype=torch.float64)
    return SyntheticGraph(Twc.to(dtype), X.to(dtype), C.to(dtype), ii, jj, idx, valid, Q.to(dtype), K.to(dtype), (H, W))


def perturb(Twc: Tensor, scale: float, n_fixed: int = 1, seed: int = 1) -> Tensor:
    """Poses [N, 8] moved by Exp(scale * randn) for rows >= n_fixed."""
    g = torch.Generator().manual_seed(seed)
    dx = scale * torch.randn(Twc.shape[0], 7, generator=g, dtype=torch.float64)
    dx[:n_fixed] = 0.0
    return sim3.retract(Twc.double(), dx).to(Twc.dtype)
