"""Pointmap helpers for tracking: constraining points to known rays and fusing into a keyframe.

Fusion (docs/algorithm.md section 3, step 7), "weighted pointmap":
`X_k <- (C_k X_k + C X) / (C_k + C)`, `C_k <- C_k + C`, `N_k += 1`, with X the keyframe's pixels as seen
by the tracked frame, moved into the keyframe's camera. The backend fuses a verified edge's own-view
pointmap the same way (`fuse_own_view`: same camera, so only the pass's scale has to be aligned).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mslam_ns.slam.frame import Frame


def pixel_rays(K: Tensor, hw: tuple[int, int]) -> Tensor:  # [HW, 3]
    """Per-pixel rays `K^-1 [u, v, 1]` (z = 1) of an image of size hw = (H, W); pixel index u + W v."""
    H, W = hw
    v, u = torch.meshgrid(
        torch.arange(H, dtype=K.dtype, device=K.device), torch.arange(W, dtype=K.dtype, device=K.device), indexing="ij"
    )
    uv1 = torch.stack([u, v, torch.ones_like(u)], -1).reshape(-1, 3)  # [HW, 3]
    return uv1 @ torch.linalg.inv(K).T


def constrain_to_rays(
    X: Tensor,  # [HW, 3] points in the camera of the image they belong to
    rays: Tensor,  # [HW, 3] pixel rays with z = 1 (see `pixel_rays`)
) -> Tensor:  # [HW, 3]
    """Calibrated mode: keep each point's depth, put it on its pixel's known ray (`X = z K^-1 [u, v, 1]`)."""
    return X[:, 2:3] * rays.to(X)


def fuse_into_keyframe(
    kf: Frame,
    X_new: Tensor,  # [HW, 3] keyframe pixels seen by the frame, in the keyframe's camera
    C_new: Tensor,  # [HW] their confidences
    mode: str = "weighted_pointmap",
) -> None:
    """Fuse one observation into keyframe `kf` in place (X, C, N)."""
    assert kf.X is not None and kf.C is not None
    if mode == "weighted_pointmap":
        C_sum = kf.C + C_new
        kf.X = (kf.C[:, None] * kf.X + C_new[:, None] * X_new) / C_sum[:, None]
        kf.C = C_sum
    elif mode == "recent":
        # The newest observation replaces the points; the confidence keeps accumulating so that
        # the average confidence C / N stays comparable with the other modes.
        kf.X = X_new.clone()
        kf.C = kf.C + C_new
    elif mode == "first":
        kf.C = kf.C + C_new
    else:
        raise ValueError(f"unknown filtering mode {mode!r}")
    kf.N += 1


def scale_onto(
    X_ref: Tensor,  # [HW, 3] the keyframe's canonical pointmap
    X: Tensor,  # [HW, 3] another estimate of the same pixels in the same camera
    w: Tensor,  # [HW] weights
) -> float:
    """The scale s minimising sum_n w_n |X_ref_n - s X_n|^2 (1.0 when X carries no weight)."""
    X_ref, X, w = X_ref.double(), X.double(), w.double()
    den = float((w * (X * X).sum(-1)).sum())
    if not den > 0.0:
        return 1.0
    s = float((w * (X_ref * X).sum(-1)).sum()) / den
    return s if s > 0.0 and s == s else 1.0


def fuse_own_view(
    kf: Frame,
    X_pass: Tensor,  # [HW, 3] the keyframe's own pointmap from another decoder pass (its camera, canonicalised)
    C_pass: Tensor,  # [HW] its confidence
    mode: str = "weighted_pointmap",
) -> float:
    """Fuse a second pass's prediction of keyframe `kf`'s own pointmap into it (in place): the pass's scale
    is first aligned to the canonical pointmap (weights: both confidences); returns that scale."""
    assert kf.X is not None and kf.C is not None
    X_pass = X_pass.to(kf.X)
    C_pass = C_pass.to(kf.C)
    s = scale_onto(kf.X, X_pass, kf.average_conf() * C_pass)
    fuse_into_keyframe(kf, s * X_pass, C_pass, mode)
    return s
