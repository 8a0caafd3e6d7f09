"""Matching ops (docs/algorithm.md section 2): ray image, iterative projective matching, matching on known
pinhole rays, descriptor refinement.

Each public op checks its inputs (shapes, dtypes, devices, finiteness: bad input raises ``ValueError``),
makes them contiguous and dispatches to the compiled kernel for the tensors' device
(``_backend.get("matching", device)``), or to its PyTorch twin in ``_torch_impl`` when none is available
or ``MSLAM_NS_KERNELS=torch``. The per-element math is in ``matching.h``, shared by the CPU and CUDA builds.

Example::

    rays = ray_image(X_ii)                                   # [B, H, W, 9]
    p, ok = iproj(rays, targets, p0)                         # [B, N, 2] float, [B, N] bool
    p_k, valid = project_match(X_ii, X_ji_n, K)              # [B, N, 2] int64, [B, N] bool (X_ii on K's rays)
    p_ref = refine_matches(D_ii, D_ji, p.long())             # [B, N, 2] int64
"""

from __future__ import annotations

import torch
from torch import Tensor

from mslam_ns.cuda import _backend
from mslam_ns.cuda.matching._torch_impl import _iproj, _project_match, _ray_image, _refine_matches

__all__ = ["ray_image", "iproj", "project_match", "refine_matches"]

_MAX_DESCRIPTOR_DIM = 1024


def _check_tensor(op: str, name: str, t: object, ndim: int, dtypes: tuple[torch.dtype, ...]) -> Tensor:
    if not isinstance(t, Tensor):
        raise ValueError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{op}: {name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if t.dtype not in dtypes:
        names = " or ".join(str(d).replace("torch.", "") for d in dtypes)
        raise ValueError(f"{op}: {name} must be {names}, got {str(t.dtype).replace('torch.', '')}")
    return t


def _check_finite(op: str, name: str, t: Tensor) -> None:
    """Raise ValueError if t holds NaN or inf. One float32 reduction; the exact test only if it is not finite."""
    if t.numel() == 0 or not t.is_floating_point():
        return
    if bool(torch.isfinite(t.sum(dtype=torch.float32))):
        return
    if not bool(torch.isfinite(t).all()):  # the sum may also overflow for huge finite values
        raise ValueError(f"{op}: {name} contains NaN or inf")


def _check_devices(op: str, **tensors: Tensor) -> torch.device:
    devices = {name: t.device for name, t in tensors.items()}
    first = next(iter(devices.values()))
    if any(d != first for d in devices.values()):
        listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"{op}: all inputs must be on the same device ({listing})")
    return first


def ray_image(X: Tensor, *, check: bool = True) -> Tensor:  # X [B, H, W, 3] float32 -> [B, H, W, 9] float32
    """Unit rays of pointmap X plus their x and y image gradients (3x3 Scharr filter /32, reflect padding).

    Channels: ray (3), d ray / du (3), d ray / dv (3). Zero points give zero rays. ``check=False`` skips the
    finiteness test (a host read: a device synchronisation on CUDA) for a caller that has made it already.
    """
    X = _check_tensor("ray_image", "X", X, 4, (torch.float32,))
    if X.shape[-1] != 3:
        raise ValueError(f"ray_image: X must be [B, H, W, 3], got shape {tuple(X.shape)}")
    if X.shape[1] < 3 or X.shape[2] < 3:
        raise ValueError(f"ray_image: X must be at least 3x3 pixels, got shape {tuple(X.shape)}")
    if check:
        _check_finite("ray_image", "X", X)
    return _ray_image(X.contiguous())


def iproj(
    rays_img: Tensor,  # [B, H, W, 9] float32 (from ray_image)
    targets: Tensor,  # [B, N, 3] float32 unit rays
    p_init: Tensor,  # [B, N, 2] float32 (u, v) initial pixels
    max_iter: int = 10,
    lambda_init: float = 1e-8,
    cost_thresh: float = 1e-6,
    step_tol: float = 1e-3,
    *,
    check: bool = True,
) -> tuple[Tensor, Tensor]:  # p [B, N, 2] float32 (u, v), converged [B, N] bool
    """Iterative projective matching: for each target ray, the pixel of the ray image that points at it.

    Levenberg-Marquardt on (u, v) (docs/algorithm.md section 2 step 4); pixels stay in [1, W-2] x [1, H-2];
    ``converged`` iff the final |psi_hat(p) - target|^2 < cost_thresh. A point stops early once its
    proposed step is below ``step_tol`` pixels in u and v (0 = always run max_iter iterations).
    ``check=False``: no finiteness tests of the inputs (the caller has made them).
    """
    op = "iproj"
    rays_img = _check_tensor(op, "rays_img", rays_img, 4, (torch.float32,))
    targets = _check_tensor(op, "targets", targets, 3, (torch.float32,))
    p_init = _check_tensor(op, "p_init", p_init, 3, (torch.float32,))
    B, H, W, C = rays_img.shape
    if C != 9 or H < 3 or W < 3:
        raise ValueError(f"{op}: rays_img must be [B, H, W, 9] with H, W >= 3, got shape {tuple(rays_img.shape)}")
    if targets.shape[0] != B or targets.shape[2] != 3:
        raise ValueError(f"{op}: targets must be [B={B}, N, 3], got shape {tuple(targets.shape)}")
    N = targets.shape[1]
    if tuple(p_init.shape) != (B, N, 2):
        raise ValueError(f"{op}: p_init must be [B={B}, N={N}, 2], got shape {tuple(p_init.shape)}")
    if max_iter < 0 or not lambda_init > 0 or not cost_thresh > 0 or not step_tol >= 0:
        raise ValueError(f"{op}: need max_iter >= 0, lambda_init > 0, cost_thresh > 0, step_tol >= 0")
    device = _check_devices(op, rays_img=rays_img, targets=targets, p_init=p_init)
    for name, t in (("rays_img", rays_img), ("targets", targets), ("p_init", p_init)) if check else ():
        _check_finite(op, name, t)
    rays_img, targets, p_init = rays_img.contiguous(), targets.contiguous(), p_init.contiguous()
    mod = _backend.get("matching", device)
    if mod is not None:
        args = (int(max_iter), float(lambda_init), float(cost_thresh), float(step_tol))
        p, converged = mod.iproj(rays_img, targets, p_init, *args)
        return p, converged
    return _iproj(rays_img, targets, p_init, int(max_iter), float(lambda_init), float(cost_thresh), float(step_tol))


def project_match(
    X_i: Tensor,  # [B, H, W, 3] float32: image i's pointmap, on the pinhole rays of K
    pts: Tensor,  # [B, N, 3] float32: the points to match (X^j_i, in camera i)
    K: Tensor,  # [3, 3] or [B, 3, 3] intrinsics of image i (network pixels), any device and float dtype
    cost_thresh: float = 1e-6,
    dist_thresh: float = 0.1,
    *,
    check: bool = True,
) -> tuple[Tensor, Tensor]:  # p [B, N, 2] int64 (u, v), valid [B, N] bool
    """Matching on known rays: IPM's answer on the ray field of a pinhole camera, in closed form, with the
    occlusion test (docs/algorithm.md section 2).

    The pixel is the projection ``K x`` clamped to the box IPM searches ([1, W-2] x [1, H-2]), truncated to
    integers; ``valid`` iff IPM's cost test holds there (the unit ray of K at the clamped pixel is within
    `cost_thresh` of x's, ``|r(p) - x|^2``: a point behind the camera or off the image fails it) and the
    pointmap's point at the pixel is within `dist_thresh` of x. The caller promises
    ``X_i = z K^-1 [u, v, 1]`` at every pixel; then this is what `iproj` converges to, without a ray image
    or iterations. ``check=False``: no finiteness tests of the inputs (the caller has made them).
    """
    op = "project_match"
    X_i = _check_tensor(op, "X_i", X_i, 4, (torch.float32,))
    pts = _check_tensor(op, "pts", pts, 3, (torch.float32,))
    if not isinstance(K, Tensor) or not K.is_floating_point():
        raise ValueError(f"{op}: K must be a floating-point torch.Tensor")
    B, H, W, C = X_i.shape
    if C != 3 or H < 3 or W < 3:
        raise ValueError(f"{op}: X_i must be [B, H, W, 3] with H, W >= 3, got shape {tuple(X_i.shape)}")
    if pts.shape[0] != B or pts.shape[2] != 3:
        raise ValueError(f"{op}: pts must be [B={B}, N, 3], got shape {tuple(pts.shape)}")
    if tuple(K.shape) not in ((3, 3), (B, 3, 3)):
        raise ValueError(f"{op}: K must be [3, 3] or [B={B}, 3, 3], got shape {tuple(K.shape)}")
    if not cost_thresh > 0 or not dist_thresh > 0:
        raise ValueError(f"{op}: need cost_thresh > 0 and dist_thresh > 0")
    device = _check_devices(op, X_i=X_i, pts=pts)
    if check:
        _check_finite(op, "X_i", X_i)
        _check_finite(op, "pts", pts)
        _check_finite(op, "K", K)
    K = K.detach().to(torch.float32).expand(B, 3, 3)
    # inverted where K lives (the host, for the tracker), without inv's singularity test, which on CUDA is a
    # device synchronisation; a singular K gives a non-finite inverse, and then no match is valid
    K_inv = torch.linalg.inv_ex(K).inverse
    K, K_inv = K.to(device).contiguous(), K_inv.to(device).contiguous()
    X_i, pts = X_i.contiguous(), pts.contiguous()
    mod = _backend.get("matching", device)
    if mod is not None:
        return mod.project_match(X_i, pts, K, K_inv, float(cost_thresh), float(dist_thresh))
    return _project_match(X_i, pts, K, K_inv, float(cost_thresh), float(dist_thresh))


def refine_matches(
    D_i: Tensor,  # [B, H, W, F] float16 or float32 descriptors of image i
    D_j: Tensor,  # [B, N, F] same dtype: query descriptors
    p: Tensor,  # [B, N, 2] int64 (u, v) pixels in image i (clamped into the image)
    radius: int = 3,
    dilation_max: int = 5,
    *,
    mask: Tensor | None = None,  # [B, N] bool: refine only these points (None: all)
    check: bool = True,
) -> Tensor:  # [B, N, 2] int64 (u, v)
    """Descriptor refinement: multi-dilation window search for the best dot product (docs/algorithm.md 2.6).

    For d = dilation_max .. 1 the (2 radius + 1)^2 pixels p + d (dx, dy) inside the image are scored with
    dot(D_j[n], D_i[candidate]) (accumulated in float32); the best positive score is the next centre.
    Points outside `mask` are returned as given, the others exactly as without a mask (each point's search
    is independent), at the cost of the masked points only.
    ``check=False``: no finiteness tests of the descriptors (the caller has made them).
    """
    op = "refine_matches"
    D_i = _check_tensor(op, "D_i", D_i, 4, (torch.float16, torch.float32))
    D_j = _check_tensor(op, "D_j", D_j, 3, (torch.float16, torch.float32))
    p = _check_tensor(op, "p", p, 3, (torch.int64,))
    B, H, W, Fd = D_i.shape
    if D_j.shape[0] != B or D_j.shape[2] != Fd:
        raise ValueError(f"{op}: D_j must be [B={B}, N, F={Fd}], got shape {tuple(D_j.shape)}")
    if D_j.dtype != D_i.dtype:
        raise ValueError(f"{op}: D_i and D_j must have the same dtype, got {D_i.dtype} and {D_j.dtype}")
    N = D_j.shape[1]
    if tuple(p.shape) != (B, N, 2):
        raise ValueError(f"{op}: p must be [B={B}, N={N}, 2], got shape {tuple(p.shape)}")
    if not 1 <= Fd <= _MAX_DESCRIPTOR_DIM or H < 1 or W < 1:
        raise ValueError(f"{op}: D_i must be [B, H, W, F] with 1 <= F <= {_MAX_DESCRIPTOR_DIM}, got {tuple(D_i.shape)}")
    if radius < 0 or dilation_max < 0:
        raise ValueError(f"{op}: radius and dilation_max must be >= 0, got {radius}, {dilation_max}")
    if mask is not None:
        mask = _check_tensor(op, "mask", mask, 2, (torch.bool,))
        if tuple(mask.shape) != (B, N):
            raise ValueError(f"{op}: mask must be [B={B}, N={N}] bool, got shape {tuple(mask.shape)}")
        mask = mask.contiguous()
    device = _check_devices(op, D_i=D_i, D_j=D_j, p=p, **({} if mask is None else {"mask": mask}))
    if check:
        _check_finite(op, "D_i", D_i)
        _check_finite(op, "D_j", D_j)
    D_i, D_j, p = D_i.contiguous(), D_j.contiguous(), p.contiguous()
    mod = _backend.get("matching", device)
    if mod is not None:
        return mod.refine_matches(D_i, D_j, p, int(radius), int(dilation_max), mask)
    return _refine_matches(D_i, D_j, p, int(radius), int(dilation_max), mask)
