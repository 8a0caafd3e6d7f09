"""The dense two-view matcher used by tracking and the backend (docs/algorithm.md section 2).

For every pixel n of image j it finds the pixel of image i that sees the same 3D point, using only
pointmaps expressed in frame i: iterative projective matching (IPM) on the ray image of ``X^i_i``, an
occlusion test, then an optional descriptor refinement. The kernels live in ``mslam_ns.cuda.matching``.

Example (tracking: i = the new frame f, j = the keyframe k, both from the pass decode(f, k))::

    idx, valid = match(pred.ii.X[None], pred.ji.X[None], pred.ii.D[None], pred.ji.D[None], idx_prev)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mslam_ns.config import MatchingConfig
from mslam_ns.cuda.matching import iproj, project_match, ray_image, refine_matches

__all__ = ["match", "pixel_grid"]


def pixel_grid(B: int, H: int, W: int, device: torch.device | str = "cpu") -> Tensor:  # -> [B, H*W, 2] float32
    """(u, v) of every pixel in linear order n = u + W v (the identity initial guess)."""
    n = torch.arange(H * W, device=device)
    uv = torch.stack([n % W, n // W], dim=-1).to(torch.float32)  # [H*W, 2]
    return uv[None].expand(B, H * W, 2)


def _check_inputs(
    X_i: Tensor, X_ji: Tensor, D_i: Tensor, D_ji: Tensor, idx_init: Tensor | None, query: Tensor | None
) -> int:  # -> N, the number of pixels of image j to match
    """Shapes and dtypes, then every value test in ONE host read (one device synchronisation on CUDA): the
    sums of the four float inputs (non-finite iff some entry is, or the sum overflows: then the exact test)
    and the ranges of `query` and `idx_init`. The kernels then run with ``check=False``."""
    if X_i.dim() != 4 or X_i.shape[-1] != 3:
        raise ValueError(f"match: X_i must be [B, H, W, 3], got shape {tuple(X_i.shape)}")
    if X_ji.shape != X_i.shape:
        raise ValueError(f"match: X_ji must have X_i's shape {tuple(X_i.shape)}, got {tuple(X_ji.shape)}")
    B, H, W, _ = X_i.shape
    if D_i.dim() != 4 or tuple(D_i.shape[:3]) != (B, H, W):
        raise ValueError(f"match: D_i must be [B={B}, H={H}, W={W}, F], got shape {tuple(D_i.shape)}")
    if D_ji.shape != D_i.shape:
        raise ValueError(f"match: D_ji must have D_i's shape {tuple(D_i.shape)}, got {tuple(D_ji.shape)}")
    if X_i.dtype != torch.float32 or X_ji.dtype != torch.float32:
        raise ValueError(f"match: X_i and X_ji must be float32, got {X_i.dtype} and {X_ji.dtype}")
    N = H * W
    if query is not None:
        if query.dim() != 1 or query.dtype != torch.int64 or query.device != X_i.device:
            raise ValueError(
                f"match: query must be [N] int64 on {X_i.device}, got {tuple(query.shape)} {query.dtype} "
                f"on {query.device}"
            )
        N = int(query.numel())
    if idx_init is not None and (tuple(idx_init.shape) != (B, N) or idx_init.dtype != torch.int64):
        got = f"{tuple(idx_init.shape)} {idx_init.dtype}"
        raise ValueError(f"match: idx_init must be [B={B}, N={N}] int64, got {got}")
    floats = {"X_i": X_i, "X_ji": X_ji, "D_i": D_i, "D_ji": D_ji}
    ints = {k: t for k, t in (("query", query), ("idx_init", idx_init)) if t is not None and t.numel()}
    # float32 sums (a float64 one costs 4x as much on a CPU); a float32 overflow falls back to the exact test
    vals = [t.sum(dtype=torch.float32).double() for t in floats.values()]
    for t in ints.values():
        vals += [t.min().double(), t.max().double()]  # exact: pixel indices are far below 2^53
    got = torch.stack([v.to(X_i.device) for v in vals]).tolist()  # the one host read
    for (name, t), total in zip(floats.items(), got):
        if not math.isfinite(total) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"match: {name} contains NaN or inf")
    for k, name in enumerate(ints):
        lo, hi = got[4 + 2 * k], got[5 + 2 * k]
        if lo < 0 or hi >= H * W:
            raise ValueError(f"match: {name} values must lie in [0, H*W={H * W})")
    return N


def match(
    X_i: Tensor,  # [B, H, W, 3] float32: X^i_i, image i's pointmap in frame i
    X_ji: Tensor,  # [B, H, W, 3] float32: X^j_i, image j's pointmap in frame i
    D_i: Tensor,  # [B, H, W, F] float16/float32: descriptors of image i's pixels
    D_ji: Tensor,  # [B, H, W, F] same dtype: descriptors of image j's pixels
    idx_init: Tensor | None = None,  # [B, N] int64 warm start (u + W v in image i), None = identity
    cfg: MatchingConfig | None = None,
    query: Tensor | None = None,  # [N] int64 pixels (u + W v) of image j to match; None = every pixel
    K: Tensor | None = None,  # [3, 3] or [B, 3, 3]: X_i lies on the pinhole rays of K (see below); None = IPM
) -> tuple[Tensor, Tensor]:  # idx [B, N] int64, valid [B, N] bool  (N = H*W without `query`)
    """Match every pixel n of image j (or every pixel listed in `query`) to a pixel of image i.

    Returns ``idx[b, n]`` = linear index ``u + W v`` in image i and ``valid[b, n]`` = IPM converged and
    ``|X_i[idx] - X_ji[n]| < cfg.dist_thresh`` (the occlusion test uses the IPM pixel; the refinement then
    moves the valid matches by a few pixels, and leaves an invalid one at its IPM pixel). A pixel's match
    does not depend on which other pixels are matched: with `query` the result is the full result's columns
    `query`. Works on CPU and CUDA tensors, B >= 1.

    `K` (network pixels): the caller's promise that ``X_i = z K^-1 [u, v, 1]`` at every pixel (u, v)
    (`constrain_to_rays`, calibrated tracking). The ray image is then K's own ray field, and the pixel IPM
    converges to is the pinhole projection ``K X^j_i[n]``: it is computed in closed form (`project_match`)
    instead of by LM iterations, and `idx_init` is not needed.
    """
    N = _check_inputs(X_i, X_ji, D_i, D_ji, idx_init, query)
    cfg = cfg or MatchingConfig()
    B, H, W, _ = X_i.shape
    X_i, X_ji = X_i.contiguous(), X_ji.contiguous()
    pts_j = X_ji.reshape(B, H * W, 3)  # [B, HW, 3]
    D_j = D_ji.reshape(B, H * W, -1)
    if query is not None:
        pts_j, D_j = pts_j[:, query], D_j[:, query]  # [B, N, 3], [B, N, F]
    if K is not None:
        p_int, valid = project_match(X_i, pts_j, K, cfg.convergence_thresh, cfg.dist_thresh, check=False)
    else:
        targets = pts_j / torch.linalg.vector_norm(pts_j, dim=-1, keepdim=True).clamp_min(1e-12)  # [B, N, 3]
        if idx_init is None:
            p0 = pixel_grid(B, H, W, X_i.device)
            if query is not None:
                p0 = p0[:, query]
        else:
            p0 = torch.stack([idx_init % W, idx_init // W], dim=-1).to(torch.float32)  # [B, N, 2]
        p, converged = iproj(
            ray_image(X_i, check=False),  # [B, H, W, 9]
            targets.contiguous(),
            p0.contiguous(),
            cfg.max_iter,
            cfg.lambda_init,
            cfg.convergence_thresh,
            cfg.step_tol,
            check=False,
        )
        p_int = p.to(torch.int64)  # truncation; p >= 1 so this is floor. [B, N, 2]
        idx = p_int[..., 0] + W * p_int[..., 1]  # [B, N]
        X_at = torch.gather(X_i.reshape(B, H * W, 3), 1, idx[..., None].expand(B, N, 3))  # [B, N, 3]
        valid = converged & (torch.linalg.vector_norm(X_at - pts_j, dim=-1) < cfg.dist_thresh)
    if cfg.refine:
        # only the valid matches: nothing downstream reads an invalid one's pixel (a warm start aside)
        p_int = refine_matches(D_i, D_j.contiguous(), p_int, cfg.radius, cfg.dilation_max, mask=valid, check=False)
    return p_int[..., 0] + W * p_int[..., 1], valid
