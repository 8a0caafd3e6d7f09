"""Pointmap helpers for tracking: constraining points to known rays and fusing into a keyframe.

Fusion (docs/algorithm.md section 3, step 7), "weighted pointmap":
`X_k <- (C_k X_k + C X) / (C_k + C)`, `C_k <- C_k + C`, `N_k += 1`, with X the keyframe's pixels as seen
by the tracked frame, moved into the keyframe's camera.
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
