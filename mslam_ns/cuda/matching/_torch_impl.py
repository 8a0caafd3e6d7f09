"""Pure-PyTorch twins of the matching kernels (the reference the compiled kernels are tested against).

Same names as the public ops with a leading underscore. They follow the formulas of ``matching.h`` in the
same floating-point order, so on CPU the LM results usually agree bit for bit with the compiled kernel.
Vectorised over points; the only Python loops are over LM iterations and over the refinement window.
Inputs are assumed checked (see ``mslam_ns.cuda.matching``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_RAY_EPS = 1e-12


def _ray_image(X: Tensor) -> Tensor:  # X [B, H, W, 3] -> [B, H, W, 9]
    """Unit rays of a pointmap plus their x / y gradients (Scharr 3x3, taps +-3/+-10, /32, reflect pad).

    d/du at (v, u) = (3 D(v-1) + 10 D(v) + 3 D(v+1)) / 32 with D(v) = ray(v, u+1) - ray(v, u-1); d/dv alike.
    Written with slices (cheaper on CPU than a 3x3 convolution of three planes).
    """
    B, H, W, _ = X.shape
    rays = X / torch.linalg.vector_norm(X, dim=-1, keepdim=True).clamp_min(_RAY_EPS)  # [B, H, W, 3]
    # reflect padding: row -1 = row 1, row H = row H-2 (same for columns)
    P = torch.cat([rays[:, 1:2], rays, rays[:, H - 2 : H - 1]], dim=1)  # [B, H+2, W, 3]
    P = torch.cat([P[:, :, 1:2], P, P[:, :, W - 2 : W - 1]], dim=2)  # [B, H+2, W+2, 3]
    out = torch.empty(B, H, W, 9, dtype=X.dtype, device=X.device)
    out[..., 0:3] = rays
    Dx = P[:, :, 2:] - P[:, :, :-2]  # [B, H+2, W, 3] central differences along u
    out[..., 3:6] = (3.0 * Dx[:, :-2] + 10.0 * Dx[:, 1:-1] + 3.0 * Dx[:, 2:]) / 32.0
    Dy = P[:, 2:] - P[:, :-2]  # [B, H, W+2, 3] central differences along v
    out[..., 6:9] = (3.0 * Dy[:, :, :-2] + 10.0 * Dy[:, :, 1:-1] + 3.0 * Dy[:, :, 2:]) / 32.0
    return out


def _bilinear9(img: Tensor, H: int, W: int, u: Tensor, v: Tensor) -> Tensor:
    """img [B, H*W, 9], u, v [B, N] -> [B, N, 9] (same cell clamping and sum order as bilinear9)."""
    B = img.shape[0]
    u0 = torch.floor(u).long().clamp(0, W - 2)  # [B, N]
    v0 = torch.floor(v).long().clamp(0, H - 2)
    du = (u - u0.to(u.dtype))[..., None]  # [B, N, 1]
    dv = (v - v0.to(v.dtype))[..., None]
    w00 = (1.0 - du) * (1.0 - dv)
    w01 = du * (1.0 - dv)
    w10 = (1.0 - du) * dv
    w11 = du * dv
    flat = img.reshape(B * H * W, 9)
    i00 = torch.arange(B, device=img.device)[:, None] * (H * W) + v0 * W + u0  # [B, N]
    return w00 * flat[i00] + w01 * flat[i00 + 1] + w10 * flat[i00 + W] + w11 * flat[i00 + W + 1]


def _ray_residual(s: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """s [B, N, 9] samples, t [B, N, 3] targets -> e [B, N, 3] = s * (1 / |s|) - t, cost [B, N] = |e|^2."""
    sq = s[..., 0] * s[..., 0] + s[..., 1] * s[..., 1] + s[..., 2] * s[..., 2]
    # torch's float32 sqrt is not always correctly rounded; via float64 it is (as sqrtf in the kernel).
    n = torch.sqrt(sq.double()).to(sq.dtype).clamp_min(_RAY_EPS)[..., None]
    e = s[..., 0:3] * (1.0 / n) - t
    cost = e[..., 0] * e[..., 0] + e[..., 1] * e[..., 1] + e[..., 2] * e[..., 2]
    return e, cost


def _dot3(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise 3-vector dot product in the kernel's order: (a0 b0 + a1 b1) + a2 b2."""
    return a[..., 0] * b[..., 0] + a[..., 1] * b[..., 1] + a[..., 2] * b[..., 2]


def _lm_step(s: Tensor, e: Tensor, lam: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(J^T J + lam I) delta = -J^T e, closed form. Returns ok [B, N] bool, du, dv [B, N] (0 where not ok)."""
    gx, gy = s[..., 3:6], s[..., 6:9]
    a00 = _dot3(gx, gx) + lam
    a01 = _dot3(gx, gy)
    a11 = _dot3(gy, gy) + lam
    b0 = -_dot3(gx, e)
    b1 = -_dot3(gy, e)
    det = a00 * a11 - a01 * a01
    ok = det > 0
    inv_det = 1.0 / torch.where(ok, det, torch.ones_like(det))
    du = (a11 * b0 - a01 * b1) * inv_det
    dv = (a00 * b1 - a01 * b0) * inv_det
    ok = ok & torch.isfinite(du) & torch.isfinite(dv)
    zero = torch.zeros_like(du)
    return ok, torch.where(ok, du, zero), torch.where(ok, dv, zero)


def _iproj(
    rays_img: Tensor,  # [B, H, W, 9] float32
    targets: Tensor,  # [B, N, 3] float32 unit rays
    p_init: Tensor,  # [B, N, 2] float32 (u, v)
    max_iter: int = 10,
    lambda_init: float = 1e-8,
    cost_thresh: float = 1e-6,
    step_tol: float = 1e-3,
) -> tuple[Tensor, Tensor]:  # p [B, N, 2] float32, converged [B, N] bool
    """Levenberg-Marquardt projective matching of every target ray (twin of ``iproj_point``)."""
    B, H, W, _ = rays_img.shape
    img = rays_img.reshape(B, H * W, 9)
    u = p_init[..., 0].clamp(1.0, float(W - 2))  # [B, N]
    v = p_init[..., 1].clamp(1.0, float(H - 2))
    s = _bilinear9(img, H, W, u, v)  # [B, N, 9]
    e, cost = _ray_residual(s, targets)
    lam = torch.full_like(cost, lambda_init)
    tol = torch.tensor(step_tol, dtype=torch.float32)
    done = torch.zeros_like(cost, dtype=torch.bool)  # [B, N] stopped early (step below step_tol)
    for _ in range(max_iter):
        # Points with cost == 0 stop early in the kernel; here no candidate can beat cost 0, same result.
        ok, du, dv = _lm_step(s, e, lam)
        done = done | (ok & (du.abs() < tol) & (dv.abs() < tol))
        ok = ok & ~done
        un = (u + du).clamp(1.0, float(W - 2))
        vn = (v + dv).clamp(1.0, float(H - 2))
        sn = _bilinear9(img, H, W, un, vn)
        en, cn = _ray_residual(sn, targets)
        acc = ok & (cn < cost)  # [B, N]
        u = torch.where(acc, un, u)
        v = torch.where(acc, vn, v)
        cost = torch.where(acc, cn, cost)
        s = torch.where(acc[..., None], sn, s)
        e = torch.where(acc[..., None], en, e)
        lam = torch.where(acc, lam * 0.1, lam * 10.0)
        if bool(done.all()):
            break
    return torch.stack([u, v], dim=-1), cost < cost_thresh


def _project_match(
    X_i: Tensor,  # [B, H, W, 3] float32 pointmap of image i, on the rays of K
    pts: Tensor,  # [B, N, 3] float32 points X^j_i
    K: Tensor,  # [B, 3, 3] float32
    K_inv: Tensor,  # [B, 3, 3] float32
    cost_thresh: float,
    dist_thresh: float,
) -> tuple[Tensor, Tensor]:  # p [B, N, 2] int64, valid [B, N] bool
    """project_point of matching.h on coordinate planes [B, N] (same operations in the same order)."""
    B, H, W, _ = X_i.shape
    x = pts.permute(2, 0, 1).contiguous()  # [3, B, N]
    k = K.reshape(B, 9, 1)  # entries broadcast over the points
    ki = K_inv.reshape(B, 9, 1)
    nrm = torch.sqrt(x[0] * x[0] + x[1] * x[1] + x[2] * x[2]).clamp_min(_RAY_EPS)
    t = [x[i] / nrm for i in range(3)]
    w = (k[:, 6] * x[0] + k[:, 7] * x[1] + k[:, 8] * x[2]).clamp_min(_RAY_EPS)
    u = ((k[:, 0] * x[0] + k[:, 1] * x[1] + k[:, 2] * x[2]) / w).clamp(1.0, W - 2.0)
    v = ((k[:, 3] * x[0] + k[:, 4] * x[1] + k[:, 5] * x[2]) / w).clamp(1.0, H - 2.0)
    r = [ki[:, 3 * i] * u + ki[:, 3 * i + 1] * v + ki[:, 3 * i + 2] for i in range(3)]  # K^-1 [u, v, 1]
    inv_n = 1.0 / torch.sqrt(r[0] * r[0] + r[1] * r[1] + r[2] * r[2])
    e = [r[i] * inv_n - t[i] for i in range(3)]
    cost = e[0] * e[0] + e[1] * e[1] + e[2] * e[2]
    p = torch.stack([u, v], dim=-1).to(torch.int64)  # u, v >= 1: truncation is floor
    idx = p[..., 0] + W * p[..., 1]  # [B, N]
    X_at = torch.gather(X_i.reshape(B, H * W, 3), 1, idx[..., None].expand(-1, -1, 3)).permute(2, 0, 1)
    d = [X_at[i] - x[i] for i in range(3)]
    dist = torch.sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2])
    return p, (cost < cost_thresh) & (dist < dist_thresh)


def _dot_lanes(a: Tensor, q: Tensor) -> Tensor:
    """dot over the last dim in the kernel's order: 8 interleaved lanes, then ((l0+l4)+(l1+l5))+((l2+l6)+(l3+l7))."""
    prod = a * q  # [..., F]
    Fd = prod.shape[-1]
    pad = (-Fd) % 8
    if pad:
        prod = F.pad(prod, (0, pad))
    chunks = prod.reshape(*prod.shape[:-1], -1, 8)  # [..., F/8, 8]
    acc = chunks[..., 0, :]
    for k in range(1, chunks.shape[-2]):
        acc = acc + chunks[..., k, :]
    return ((acc[..., 0] + acc[..., 4]) + (acc[..., 1] + acc[..., 5])) + (
        (acc[..., 2] + acc[..., 6]) + (acc[..., 3] + acc[..., 7])
    )


def _refine_matches(
    D_i: Tensor,  # [B, H, W, F] float32 or float16
    D_j: Tensor,  # [B, N, F] float32 or float16
    p: Tensor,  # [B, N, 2] int64 (u, v)
    radius: int = 3,
    dilation_max: int = 5,
    mask: Tensor | None = None,  # [B, N] bool: refine these points, return the others as given
) -> Tensor:  # [B, N, 2] int64
    """Multi-dilation descriptor window search (twin of ``refine_point``): dots in float32."""
    B, H, W, Fd = D_i.shape
    Di = D_i.float().reshape(B * H * W, Fd)
    q = D_j.float()  # [B, N, F]
    base = torch.arange(B, device=p.device)[:, None] * (H * W)  # [B, 1]
    u = p[..., 0].clamp(0, W - 1)  # [B, N]
    v = p[..., 1].clamp(0, H - 1)
    for d in range(dilation_max, 0, -1):
        best = torch.zeros(u.shape, dtype=torch.float32, device=p.device)
        bu, bv = u, v
        for dy in range(-radius, radius + 1):
            y = v + dy * d
            in_y = (y >= 0) & (y < H)
            yc = y.clamp(0, H - 1)
            for dx in range(-radius, radius + 1):
                x = u + dx * d
                inside = in_y & (x >= 0) & (x < W)
                score = _dot_lanes(Di[base + yc * W + x.clamp(0, W - 1)], q)  # [B, N]
                better = inside & (score > best)
                best = torch.where(better, score, best)
                bu = torch.where(better, x, bu)
                bv = torch.where(better, y, bv)
        u, v = bu, bv
    out = torch.stack([u, v], dim=-1)
    return out if mask is None else torch.where(mask[..., None], out, p)
