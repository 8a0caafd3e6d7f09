"""Gauss-Newton normal equations on Sim(3) for pointmap correspondences (tracking and the keyframe graph).

Public ops (compiled CPU / CUDA kernels, PyTorch twin as fallback; see ``_backend``):

* `edge_normal_equations` -> per-edge 14x14 Hessian blocks, 14-vector gradients and costs;
* `pose_retract` -> T <- Exp(dx) T for the free poses.

Sign convention: ``g = J^T W r`` is the gradient of ``0.5 * cost``; ``H = J^T W J``; a (damped) step solves
``(H + D) dx = -g`` and is applied with `pose_retract`. Per-pixel formulas: ``gn.h`` (documented there).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from mslam_ns.config import ResidualConfig
from mslam_ns.cuda import _backend
from mslam_ns.cuda.gn import _torch_impl
from mslam_ns.cuda.gn._torch_impl import MODES, GnParams

__all__ = ["MODES", "GnParams", "edge_normal_equations", "kernel_params", "pose_retract"]

_MODE_ID = {"rays": 0, "calib": 1, "points": 2}


def _fail(msg: str) -> None:
    raise ValueError(f"edge_normal_equations: {msg}")


def _check_finite(name: str, t: Tensor) -> None:
    # One reduction instead of an elementwise mask: the sum is non-finite iff some entry is (or overflows).
    if t.numel() and not bool(torch.isfinite(t.sum())):
        _fail(f"{name} contains NaN or Inf")


def _shape(name: str, t: Tensor, shape: Sequence[int | None]) -> None:
    if t.dim() != len(shape) or any(s is not None and s != d for s, d in zip(shape, t.shape)):
        want = ", ".join("?" if s is None else str(s) for s in shape)
        _fail(f"{name} must have shape [{want}], got {list(t.shape)}")


def _prepare(
    mode: str,
    Twc: Tensor,
    X: Tensor,
    C: Tensor,
    ii: Tensor,
    jj: Tensor,
    idx: Tensor,
    valid: Tensor,
    Q: Tensor,
    K: Tensor | np.ndarray | None,
    img_hw: tuple[int, int] | None,
    check: bool = True,
) -> tuple[Tensor, ...]:
    """Validate shapes, dtypes, devices, ranges and finiteness (the last two only with `check`: each is a host
    read, a device synchronisation on CUDA); return contiguous tensors in X's dtype."""
    if mode not in _MODE_ID:
        _fail(f"mode must be one of {MODES}, not {mode!r}")
    if not isinstance(X, Tensor) or X.dtype not in (torch.float32, torch.float64):
        _fail("X must be a float32 or float64 tensor")
    _shape("X", X, (None, None, 3))
    N, HW = X.shape[:2]
    _shape("Twc", Twc, (N, 8))
    _shape("C", C, (N, HW))
    _shape("ii", ii, (None,))
    E = ii.shape[0]
    _shape("jj", jj, (E,))
    _shape("idx_ii2jj", idx, (E, HW))
    _shape("valid_match", valid, (E, HW))
    _shape("Q", Q, (E, HW))
    dev = X.device
    for name, t in (
        ("Twc", Twc),
        ("C", C),
        ("ii", ii),
        ("jj", jj),
        ("idx_ii2jj", idx),
        ("valid_match", valid),
        ("Q", Q),
    ):
        if t.device != dev:
            _fail(f"{name} is on {t.device} but X is on {dev}")
    for name, t in (("ii", ii), ("jj", jj), ("idx_ii2jj", idx)):
        if t.dtype not in (torch.int64, torch.int32):
            _fail(f"{name} must be an integer tensor, got {t.dtype}")
    if valid.dtype != torch.bool:
        _fail(f"valid_match must be bool, got {valid.dtype}")
    dt = X.dtype
    Twc, C, Q = Twc.to(dt), C.to(dt), Q.to(dt)
    ii, jj, idx = ii.long(), jj.long(), idx.long()
    if mode == "calib":
        if K is None or img_hw is None:
            _fail("calib mode needs K [3, 3] and img_hw (H, W)")
        if tuple(K.shape) != (3, 3):
            _fail("K must be a finite [3, 3] matrix")
        if int(img_hw[0]) * int(img_hw[1]) != HW:
            _fail(f"img_hw {tuple(img_hw)} does not match HW={HW}")
    if not check:
        return tuple(t.contiguous() for t in (Twc, X, C, ii, jj, idx, valid, Q))
    _check_finite("Twc", Twc)
    _check_finite("X", X)
    _check_finite("C", C)
    _check_finite("Q", Q)
    if N and not bool((Twc[:, 7] > 0).all()):
        _fail("Twc scales (column 7) must be positive")
    if E:
        lo = torch.minimum(ii.min(), jj.min())
        hi = torch.maximum(ii.max(), jj.max())
        if lo < 0 or hi >= N:
            _fail(f"ii/jj must index the {N} poses")
        if HW:
            mn, mx = torch.aminmax(idx)
            if mn < 0 or mx >= HW:
                _fail(f"idx_ii2jj must be in [0, {HW})")
    if mode == "calib" and not bool(torch.isfinite(torch.as_tensor(K)).all()):
        _fail("K must be a finite [3, 3] matrix")
    return tuple(t.contiguous() for t in (Twc, X, C, ii, jj, idx, valid, Q))


def edge_normal_equations(
    mode: str,
    Twc: Tensor,  # [N, 8] world-from-camera poses (T_WC)
    X: Tensor,  # [N, HW, 3] canonical pointmaps, each in its own camera frame
    C: Tensor,  # [N, HW] average confidences
    ii: Tensor,  # [E] int64
    jj: Tensor,  # [E] int64
    idx_ii2jj: Tensor,  # [E, HW] int64: for pixel n of jj[e], linear index into ii[e]'s pointmap
    valid_match: Tensor,  # [E, HW] bool
    Q: Tensor,  # [E, HW] match weights
    *,
    residual: ResidualConfig | None = None,
    K: Tensor | np.ndarray | None = None,  # [3, 3] (calib); a host array costs no device read
    img_hw: tuple[int, int] | None = None,  # (H, W) with H * W = HW (calib)
    return_count: bool = False,
    check: bool = True,
    **overrides: float,
) -> tuple[Tensor, ...]:
    """Per-edge normal equations of the pointmap residuals (rays / calib / points; formulas in ``gn.h``).

    Per pixel n of keyframe jj[e]: P = T_ij X_j[n], T_ij = T_WCi^-1 T_WCj, compared with X_i[idx[n]].
    The residual constants come from ``residual`` (a `ResidualConfig`; its defaults when None); single
    fields may be overridden by keyword (its field names, or the kernel names ``C_thresh``, ``Q_thresh``,
    ``z_eps``). Returns H [E, 14, 14] (block order [i, j]), g [E, 14] and cost [E] (sum of 2 * Huber(e) of
    the whitened residuals; = robust-weighted squared residuals for inliers), plus count [E] (int64,
    residual-contributing pixels) when ``return_count``. Invalid input -> ValueError. Results are in X's
    dtype. ``check=False`` skips the value tests (finiteness, index ranges, positive scales: host reads, each a
    device synchronisation on CUDA) for a caller whose inputs are known good (the tracker's LM loop).
    """
    Twc, X, C, ii, jj, idx, valid, Q = _prepare(mode, Twc, X, C, ii, jj, idx_ii2jj, valid_match, Q, K, img_hw, check)
    p = kernel_params(residual, K, img_hw, X.shape[1], **overrides)
    H, W = p.H, p.W
    mod = _backend.get("gn", X.device)
    if mod is not None:
        out = mod.edge_normal_equations(_MODE_ID[mode], Twc, X, C, ii, jj, idx, valid, Q, p.as_list(), H, W)
    else:
        out = _torch_impl._edge_normal_equations(mode, Twc, X, C, ii, jj, idx, valid, Q, p)
    return tuple(out) if return_count else tuple(out[:3])


_KERNEL_NAMES = {"C_thresh": "C_conf", "Q_thresh": "Q_conf", "z_eps": "depth_eps"}


def kernel_params(
    residual: ResidualConfig | None,
    K: Tensor | np.ndarray | None,
    img_hw: tuple[int, int] | None,
    HW: int,
    **overrides: float,
) -> GnParams:
    """The ONE mapping from a `ResidualConfig` (+ intrinsics, image size) to the kernels' `GnParams`."""
    rc = dataclasses.replace(residual or ResidualConfig(), **{_KERNEL_NAMES.get(k, k): v for k, v in overrides.items()})
    for name in ("sigma_ray", "sigma_dist", "sigma_pixel", "sigma_depth", "sigma_point", "huber"):
        val = getattr(rc, name)
        if not val > 0:
            _fail(f"{name} must be > 0, got {val}")
    H, W = (int(img_hw[0]), int(img_hw[1])) if img_hw is not None else (1, int(HW))
    fx = fy = 1.0
    cx = cy = 0.0
    if K is not None:
        k = K.tolist() if isinstance(K, Tensor) else np.asarray(K, dtype=np.float64).tolist()  # one read
        fx, fy, cx, cy = (float(v) for v in (k[0][0], k[1][1], k[0][2], k[1][2]))
    return GnParams(
        rc.sigma_ray,
        rc.sigma_dist,
        rc.sigma_pixel,
        rc.sigma_depth,
        rc.sigma_point,
        rc.C_conf,
        rc.Q_conf,
        rc.huber,
        fx,
        fy,
        cx,
        cy,
        rc.depth_eps,
        float(rc.pixel_border),
        H,
        W,
    )


def pose_retract(
    Twc: Tensor,  # [N, 8]
    dx: Tensor,  # [N, 7] (rows < n_fixed ignored) or [N - n_fixed, 7]
    n_fixed: int,
    *,
    check: bool = True,
) -> Tensor:
    """New poses [N, 8]: T <- Exp(dx) T for rows >= n_fixed (quaternions re-normalised); inputs unchanged.
    ``check=False``: no finiteness tests (host reads) for a caller whose inputs are finite by construction."""
    if Twc.dim() != 2 or Twc.shape[1] != 8 or Twc.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"pose_retract: Twc must be a float [N, 8] tensor, got {list(Twc.shape)} {Twc.dtype}")
    N = Twc.shape[0]
    if not 0 <= n_fixed <= N:
        raise ValueError(f"pose_retract: n_fixed={n_fixed} must be in [0, {N}]")
    if dx.dim() != 2 or dx.shape[1] != 7 or dx.shape[0] not in (N, N - n_fixed):
        raise ValueError(f"pose_retract: dx must be [{N}, 7] or [{N - n_fixed}, 7], got {list(dx.shape)}")
    if dx.device != Twc.device:
        raise ValueError(f"pose_retract: dx is on {dx.device} but Twc is on {Twc.device}")
    dx = dx.to(Twc.dtype)
    if check and (not bool(torch.isfinite(dx).all()) or not bool(torch.isfinite(Twc).all())):
        raise ValueError("pose_retract: Twc and dx must be finite")
    mod = _backend.get("gn", Twc.device)
    if mod is not None:
        return mod.pose_retract(Twc.contiguous(), dx.contiguous(), int(n_fixed))
    return _torch_impl._pose_retract(Twc, dx, n_fixed)
