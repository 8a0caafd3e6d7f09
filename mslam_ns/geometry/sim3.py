"""Sim(3) in pure PyTorch: any batch shape, float32 / float64, autograd-safe at the identity.

Storage: 8-vectors ``(tx, ty, tz, qx, qy, qz, qw, s)`` (translation, unit quaternion xyzw, positive scale)
acting as ``x -> s R x + t``. Tangent: ``(tau[3], phi[3], sigma)`` with ``s = exp(sigma)``. Perturbations
are left-multiplied: ``retract(T, xi) = Exp(xi) * T``. The Lie-algebra matrix of ``xi`` is
``[[sigma I + [phi]x, tau], [0, 0]]``, so ``Exp`` couples translation with rotation and scale through the
Sim(3) V-matrix ``W = int_0^1 exp(u (sigma I + [phi]x)) du`` (see `_w_coeffs`).

Every branch that would divide by a small number uses a Taylor series, and the unused branch of each
``torch.where`` is fed a safe value, so values *and* gradients are finite at the identity.

The compiled kernels use the same formulas (``mslam_ns/cuda/include/sim3.h``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "identity",
    "exp",
    "log",
    "mul",
    "inv",
    "act",
    "act_points",
    "adjoint",
    "adjoint_inv",
    "to_matrix",
    "from_matrix",
    "retract",
    "quat_to_rotmat",
    "rotmat_to_quat",
    "from_se3",
    "hat",
    "so3_exp_quat",
    "so3_log_quat",
    "quat_mul",
    "quat_rotate",
    "w_matrix",
    "normalize",
]

# Below this rotation angle the closed forms are replaced by a Taylor series in theta^2.
_THETA_SMALL = 0.1
# Below this |sigma| the integrals I_n(sigma) use their power series.
_SIGMA_SMALL = 1.0
# Number of terms of the I_n(sigma) power series (|sigma| < 1: last term < 1e-19).
_SIGMA_TERMS = 20
# Number of theta^2 terms in the small-angle series (theta < 0.1: truncation < 1e-14 relative).
_THETA_TERMS = 4


# ----------------------------------------------------------------------------------------------- helpers
def hat(v: Tensor) -> Tensor:
    """Skew-symmetric matrix: v [..., 3] -> [..., 3, 3] with hat(v) x = v x x."""
    x, y, z = v.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack([o, -z, y, z, o, -x, -y, x, o], dim=-1).reshape(*v.shape[:-1], 3, 3)


def quat_mul(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product of xyzw quaternions: a [..., 4], b [..., 4] -> [..., 4]."""
    av, aw = a[..., :3], a[..., 3:]
    bv, bw = b[..., :3], b[..., 3:]
    v = aw * bv + bw * av + torch.cross(av, bv, dim=-1)
    w = aw * bw - (av * bv).sum(-1, keepdim=True)
    return torch.cat([v, w], dim=-1)


def quat_rotate(q: Tensor, x: Tensor) -> Tensor:
    """Rotate points by unit quaternions: q [..., 4], x [..., 3] -> [..., 3] (batch dims broadcast).

    Uses x' = x + w uv + qv x uv with uv = 2 qv x x.
    """
    qv, x = torch.broadcast_tensors(q[..., :3], x)
    uv = 2.0 * torch.cross(qv, x, dim=-1)
    return x + q[..., 3:] * uv + torch.cross(qv, uv, dim=-1)


def quat_to_rotmat(q: Tensor) -> Tensor:
    """Unit quaternion xyzw [..., 4] -> rotation matrix [..., 3, 3]."""
    x, y, z, w = q.unbind(-1)
    xx, yy, zz = x * x, y * y, z * z
    xy, xz, yz = x * y, x * z, y * z
    wx, wy, wz = w * x, w * y, w * z
    r = torch.stack(
        [
            1 - 2 * (yy + zz),
            2 * (xy - wz),
            2 * (xz + wy),
            2 * (xy + wz),
            1 - 2 * (xx + zz),
            2 * (yz - wx),
            2 * (xz - wy),
            2 * (yz + wx),
            1 - 2 * (xx + yy),
        ],
        dim=-1,
    )
    return r.reshape(*q.shape[:-1], 3, 3)


def rotmat_to_quat(R: Tensor) -> Tensor:
    """Rotation matrix [..., 3, 3] -> unit quaternion xyzw [..., 4] with qw >= 0 (Shepperd's method)."""
    m = R
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    tr = m00 + m11 + m22
    # Four candidates, each well conditioned when its 4*q_k^2 term is the largest.
    cands = torch.stack(
        [
            torch.stack([m21 - m12, m02 - m20, m10 - m01, 1 + tr], -1),
            torch.stack([1 + m00 - m11 - m22, m01 + m10, m02 + m20, m21 - m12], -1),
            torch.stack([m01 + m10, 1 - m00 + m11 - m22, m12 + m21, m02 - m20], -1),
            torch.stack([m02 + m20, m12 + m21, 1 - m00 - m11 + m22, m10 - m01], -1),
        ],
        -2,
    )  # [..., 4, 4]; row k is 4 q_k * q
    diag = torch.stack([1 + tr, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    k = diag.argmax(-1, keepdim=True)  # [..., 1]
    q = torch.gather(cands, -2, k[..., None].expand(*k.shape[:-1], 1, 4)).squeeze(-2)
    q = q / q.norm(dim=-1, keepdim=True)
    return torch.where(q[..., 3:] < 0, -q, q)


def normalize(T: Tensor) -> Tensor:
    """Re-normalise the quaternion of T [..., 8] (guards against drift after many compositions)."""
    q = T[..., 3:7]
    return torch.cat([T[..., :3], q / q.norm(dim=-1, keepdim=True), T[..., 7:]], dim=-1)


def so3_exp_quat(phi: Tensor) -> Tensor:
    """SO(3) exponential to a quaternion: phi [..., 3] -> xyzw [..., 4]."""
    th2 = (phi * phi).sum(-1, keepdim=True)
    small = th2 < 1e-4
    th = torch.sqrt(torch.where(small, torch.ones_like(th2), th2))
    half = th * 0.5
    k_big = torch.sin(half) / th
    # sin(th/2)/th = 1/2 - th^2/48 + th^4/3840 - th^6/645120
    k_small = 0.5 - th2 / 48.0 + th2 * th2 / 3840.0 - th2 * th2 * th2 / 645120.0
    w_small = 1.0 - th2 / 8.0 + th2 * th2 / 384.0 - th2 * th2 * th2 / 46080.0
    k = torch.where(small, k_small, k_big)
    w = torch.where(small, w_small, torch.cos(half))
    return torch.cat([k * phi, w], dim=-1)


def so3_log_quat(q: Tensor) -> Tensor:
    """SO(3) logarithm of a unit quaternion xyzw [..., 4] -> phi [..., 3] with |phi| <= pi."""
    q = torch.where(q[..., 3:] < 0, -q, q)
    v, w = q[..., :3], q[..., 3:]
    n2 = (v * v).sum(-1, keepdim=True)
    small = n2 < 1e-8
    n = torch.sqrt(torch.where(small, torch.ones_like(n2), n2))
    f_big = 2.0 * torch.atan2(n, w) / n
    w_safe = torch.where(small, w, torch.ones_like(w))
    # 2 atan(n/w)/n = (2/w) (1 - n^2/(3 w^2) + n^4/(5 w^4))  (w ~ 1 here)
    r2 = n2 / (w_safe * w_safe)
    f_small = (2.0 / w_safe) * (1.0 - r2 / 3.0 + r2 * r2 / 5.0)
    return torch.where(small, f_small, f_big) * v


def _integrals(sigma: Tensor, n_max: int) -> Tensor:
    """I_n(sigma) = int_0^1 u^n exp(sigma u) du for n = 0..n_max: [..., n_max + 1] (series for small |sigma|)."""
    small = sigma.abs() < _SIGMA_SMALL
    # Power series: I_n = sum_k sigma^k / (k! (n + k + 1)), as one matrix product.
    s_ser = torch.where(small, sigma, torch.zeros_like(sigma))
    k = torch.arange(1, _SIGMA_TERMS, dtype=sigma.dtype, device=sigma.device)
    terms = torch.cat([torch.ones_like(s_ser)[..., None], s_ser[..., None] / k], dim=-1).cumprod(-1)  # s^k / k!
    kk = torch.arange(_SIGMA_TERMS, dtype=sigma.dtype, device=sigma.device)
    nn = torch.arange(n_max + 1, dtype=sigma.dtype, device=sigma.device)
    ser = terms @ (1.0 / (kk[:, None] + nn[None, :] + 1.0))
    # Recursion: I_0 = expm1(sigma)/sigma, I_n = (e^sigma - n I_{n-1}) / sigma (stable for |sigma| >= 1).
    s_rec = torch.where(small, torch.full_like(sigma, 2.0), sigma)
    e = torch.exp(s_rec)
    rec = [torch.expm1(s_rec) / s_rec]
    for n in range(1, n_max + 1):
        rec.append((e - n * rec[-1]) / s_rec)
    return torch.where(small[..., None], ser, torch.stack(rec, dim=-1))


def _w_coeffs(sigma: Tensor, th2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Coefficients (c0, B, C) of W = c0 I + B [phi]x + C [phi]x^2 for Sim(3) Exp.

    With theta = |phi| and s = sigma:
        c0 = int e^{su} du,  B = int e^{su} sin(theta u)/theta du,  C = int e^{su} (1 - cos(theta u))/theta^2 du.
    Closed forms use g(z) = expm1(z)/z at z = s + i theta; for theta < 0.1 a series in theta^2 with the
    integrals I_n(s) replaces them (no division by theta).
    """
    n_max = 2 * _THETA_TERMS
    I = _integrals(sigma, n_max).unbind(-1)
    c0 = I[0]
    # Small angle: B = sum_m (-1)^m th^2m/(2m+1)! I_{2m+1},  C = sum_m (-1)^m th^2m/(2m+2)! I_{2m+2}.
    B_s = torch.zeros_like(sigma)
    C_s = torch.zeros_like(sigma)
    p = torch.ones_like(th2)
    for m in range(_THETA_TERMS):
        sign = -1.0 if m % 2 else 1.0
        B_s = B_s + sign * p / math.factorial(2 * m + 1) * I[2 * m + 1]
        C_s = C_s + sign * p / math.factorial(2 * m + 2) * I[2 * m + 2]
        p = p * th2
    # Closed form (theta >= 0.1, so |z| >= 0.1).
    small = th2 < _THETA_SMALL**2
    th2_b = torch.where(small, torch.ones_like(th2), th2)
    th = torch.sqrt(th2_b)
    es = torch.exp(sigma)
    re_e = torch.expm1(sigma) - 2.0 * es * torch.sin(0.5 * th) ** 2  # Re(expm1(z)) = e^s cos(th) - 1
    im_e = es * torch.sin(th)  # Im(expm1(z))
    r2 = sigma * sigma + th2_b
    re_g = (re_e * sigma + im_e * th) / r2  # Re(expm1(z)/z) = int e^{su} cos(th u) du
    im_g = (im_e * sigma - re_e * th) / r2  # Im(expm1(z)/z) = int e^{su} sin(th u) du
    B_b = im_g / th
    C_b = (c0 - re_g) / th2_b
    return c0, torch.where(small, B_s, B_b), torch.where(small, C_s, C_b)


def w_matrix(xi: Tensor) -> Tensor:
    """The Sim(3) V-matrix W(phi, sigma) [..., 3, 3] of a tangent xi [..., 7] (t = W tau in Exp)."""
    phi, sigma = xi[..., 3:6], xi[..., 6]
    th2 = (phi * phi).sum(-1)
    c0, B, C = _w_coeffs(sigma, th2)
    K = hat(phi)
    eye = torch.eye(3, dtype=xi.dtype, device=xi.device).expand_as(K)
    return c0[..., None, None] * eye + B[..., None, None] * K + C[..., None, None] * (K @ K)


def _w_apply(phi: Tensor, sigma: Tensor, tau: Tensor) -> Tensor:
    """W(phi, sigma) tau without forming the matrix: [..., 3]."""
    th2 = (phi * phi).sum(-1)
    c0, B, C = _w_coeffs(sigma, th2)
    pxt = torch.cross(*torch.broadcast_tensors(phi, tau), dim=-1)
    pxpxt = torch.cross(*torch.broadcast_tensors(phi, pxt), dim=-1)
    return c0[..., None] * tau + B[..., None] * pxt + C[..., None] * pxpxt


# ------------------------------------------------------------------------------------------- group ops
def identity(*batch: int, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
    """Identity elements [*batch, 8]."""
    T = torch.zeros(*batch, 8, dtype=dtype, device=device)
    T[..., 6] = 1.0
    T[..., 7] = 1.0
    return T


def exp(xi: Tensor) -> Tensor:
    """Exponential map: tangent (tau, phi, sigma) [..., 7] -> element [..., 8]."""
    tau, phi, sigma = xi[..., :3], xi[..., 3:6], xi[..., 6]
    q = so3_exp_quat(phi)
    t = _w_apply(phi, sigma, tau)
    return torch.cat([t, q, torch.exp(sigma)[..., None]], dim=-1)


def log(T: Tensor) -> Tensor:
    """Logarithm: element [..., 8] -> tangent (tau, phi, sigma) [..., 7] (inverse of `exp`, |phi| <= pi)."""
    t, q, s = T[..., :3], T[..., 3:7], T[..., 7]
    phi = so3_log_quat(q)
    sigma = torch.log(s)
    W = w_matrix(torch.cat([torch.zeros_like(phi), phi, sigma[..., None]], dim=-1))
    tau = torch.linalg.solve(W, t[..., None])[..., 0]
    return torch.cat([tau, phi, sigma[..., None]], dim=-1)


def mul(A: Tensor, B: Tensor) -> Tensor:
    """Composition A * B [..., 8] (apply B first): s = sA sB, R = RA RB, t = sA RA tB + tA."""
    tA, qA, sA = A[..., :3], A[..., 3:7], A[..., 7:]
    tB, qB, sB = B[..., :3], B[..., 3:7], B[..., 7:]
    t = sA * quat_rotate(qA, tB) + tA
    return torch.cat(_bcat(t, quat_mul(qA, qB), sA * sB), dim=-1)


def _bcat(*parts: Tensor) -> list[Tensor]:
    """Broadcast the batch dims of tensors before concatenating them along the last dim."""
    shape = torch.broadcast_shapes(*(p.shape[:-1] for p in parts))
    return [p.expand(*shape, p.shape[-1]) for p in parts]


def inv(T: Tensor) -> Tensor:
    """Inverse [..., 8]: s' = 1/s, q' = conj(q), t' = -(1/s) R^T t."""
    t, q, s = T[..., :3], T[..., 3:7], T[..., 7:]
    qc = torch.cat([-q[..., :3], q[..., 3:]], dim=-1)
    si = 1.0 / s
    return torch.cat([-si * quat_rotate(qc, t), qc, si], dim=-1)


def act(T: Tensor, X: Tensor) -> Tensor:
    """Apply T [..., 8] to points X [..., 3] (broadcasting batch dims): s R X + t.

    For one pose per set of N points pass ``T[..., None, :]`` with X [..., N, 3].
    """
    t, q, s = T[..., :3], T[..., 3:7], T[..., 7:]
    return s * quat_rotate(q, X) + t


def act_points(T: Tensor, X: Tensor) -> Tensor:
    """One pose T [8] applied to many points X [N, 3]: ``X (s R)^T + t`` as one matrix product (what `act`
    computes, to rounding, without broadcasting the quaternion to every point: several times cheaper)."""
    M = to_matrix(T.to(X.dtype))  # [4, 4]: s R | t
    return torch.addmm(M[:3, 3], X, M[:3, :3].T)


def adjoint(T: Tensor) -> Tensor:
    """Adjoint [..., 7, 7] for left perturbations: Exp(Adj(T) xi) T = T Exp(xi).

    Adj = [[s R, [t]x R, -t], [0, R, 0], [0, 0, 1]].
    """
    t, q, s = T[..., :3], T[..., 3:7], T[..., 7]
    R = quat_to_rotmat(q)
    A = torch.zeros(*T.shape[:-1], 7, 7, dtype=T.dtype, device=T.device)
    A[..., :3, :3] = s[..., None, None] * R
    A[..., :3, 3:6] = hat(t) @ R
    A[..., :3, 6] = -t
    A[..., 3:6, 3:6] = R
    A[..., 6, 6] = 1.0
    return A


def adjoint_inv(T: Tensor) -> Tensor:
    """Adj(T)^-1 = Adj(T^-1) [..., 7, 7]."""
    return adjoint(inv(T))


def to_matrix(T: Tensor) -> Tensor:
    """Homogeneous 4x4 [..., 4, 4] with top-left s R and top-right t."""
    t, q, s = T[..., :3], T[..., 3:7], T[..., 7]
    M = torch.zeros(*T.shape[:-1], 4, 4, dtype=T.dtype, device=T.device)
    M[..., :3, :3] = s[..., None, None] * quat_to_rotmat(q)
    M[..., :3, 3] = t
    M[..., 3, 3] = 1.0
    return M


def from_matrix(M: Tensor) -> Tensor:
    """Homogeneous 4x4 [..., 4, 4] (top-left s R, s > 0) -> element [..., 8]."""
    A = M[..., :3, :3]
    s = torch.linalg.det(A).clamp_min(torch.finfo(M.dtype).tiny) ** (1.0 / 3.0)
    R = A / s[..., None, None]
    q = rotmat_to_quat(R)
    return torch.cat([M[..., :3, 3], q, s[..., None]], dim=-1)


def retract(T: Tensor, xi: Tensor) -> Tensor:
    """Left retraction Exp(xi) * T: T [..., 8], xi [..., 7] -> [..., 8]."""
    return mul(exp(xi), T)


def from_se3(R: Tensor, t: Tensor, s: Tensor | float = 1.0) -> Tensor:
    """Build elements [..., 8] from rotation matrices [..., 3, 3], translations [..., 3] and scales."""
    q = rotmat_to_quat(R)
    s_t = torch.as_tensor(s, dtype=t.dtype, device=t.device)
    s_t = s_t.expand(t.shape[:-1]) if s_t.dim() == 0 else s_t
    if s_t.shape == t.shape[:-1]:
        s_t = s_t[..., None]
    return torch.cat(_bcat(t, q, s_t), dim=-1)
