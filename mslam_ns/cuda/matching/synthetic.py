"""An analytic two-view scene with known correspondences, for the matching tests and benchmark.

Scene (in the camera frame of view i, OpenCV axes): a tilted background plane and a sphere in front of it,
seen by two pinhole cameras with the same intrinsics. Both pointmaps are exact ray casts, so for every
pixel n of view j the true continuous pixel of its surface point in view i, and whether view i sees that
point (occlusion), are known in closed form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class TwoViewScene:
    X_i: Tensor  # [H, W, 3] X^i_i: view i's pointmap in frame i
    X_ji: Tensor  # [H, W, 3] X^j_i: view j's pointmap in frame i
    uv_true: Tensor  # [H*W, 2] float (u, v): projection into view i of each pixel n of view j
    visible: Tensor  # [H*W] bool: the point of pixel n of j is seen by view i (in front, inside, unoccluded)
    K: Tensor  # [3, 3] intrinsics of both views


def _rot(axis: tuple[float, float, float], angle: float) -> Tensor:  # [3, 3] Rodrigues
    a = torch.tensor(axis, dtype=torch.float64)
    a = a / a.norm()
    Kx = torch.tensor([[0.0, -a[2], a[1]], [a[2], 0.0, -a[0]], [-a[1], a[0], 0.0]], dtype=torch.float64)
    return torch.eye(3, dtype=torch.float64) + math.sin(angle) * Kx + (1 - math.cos(angle)) * Kx @ Kx


def _cast(origin: Tensor, dirs: Tensor, plane: tuple[Tensor, float], sphere: tuple[Tensor, float]) -> Tensor:
    """First hit of rays origin + t dirs (t > 0) with the plane n.X = d or the sphere; dirs [M, 3] -> [M, 3]."""
    n, d = plane
    t_plane = (d - origin @ n) / (dirs @ n)  # [M]
    t_plane = torch.where(t_plane > 0, t_plane, torch.full_like(t_plane, math.inf))
    c, r = sphere
    oc = origin - c
    a = (dirs * dirs).sum(-1)
    b = 2 * (dirs @ oc)
    disc = b * b - 4 * a * (oc @ oc - r * r)
    t_sph = (-b - torch.sqrt(disc.clamp_min(0))) / (2 * a)
    t_sph = torch.where((disc > 0) & (t_sph > 0), t_sph, torch.full_like(t_sph, math.inf))
    t = torch.minimum(t_plane, t_sph)
    return origin + t[:, None] * dirs


def two_view_scene(
    H: int = 48, W: int = 64, focal: float | None = None, angle_deg: float = 3.0, baseline: float = 0.15
) -> TwoViewScene:
    """Build the scene; view j = view i rotated by angle_deg and moved by `baseline` (network units ~ m)."""
    f = focal if focal is not None else 0.8 * W
    K = torch.tensor([[f, 0, (W - 1) / 2], [0, f, (H - 1) / 2], [0, 0, 1]], dtype=torch.float64)
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    pix = torch.stack([u, v, torch.ones_like(u)], -1).reshape(-1, 3)  # [HW, 3]
    rays = pix @ torch.linalg.inv(K).T  # [HW, 3] camera-frame directions (z = 1)
    normal = torch.tensor([0.15, -0.1, -1.0], dtype=torch.float64)
    normal = normal / normal.norm()
    plane = (normal, -3.0)  # points with n.X = -3: about 3 units in front of view i
    sphere = (torch.tensor([0.25, 0.1, 2.0], dtype=torch.float64), 0.45)
    origin_i = torch.zeros(3, dtype=torch.float64)
    X_i = _cast(origin_i, rays, plane, sphere)  # [HW, 3]
    # View j: frame j -> frame i is x -> R x + t.
    R = _rot((0.2, 1.0, 0.1), math.radians(angle_deg))
    t = torch.tensor([baseline, 0.3 * baseline, 0.2 * baseline], dtype=torch.float64)
    X_ji = _cast(t, rays @ R.T, plane, sphere)  # [HW, 3] hit points, already in frame i
    proj = X_ji @ K.T
    uv = proj[:, :2] / proj[:, 2:3]  # [HW, 2]
    inside = (X_ji[:, 2] > 1e-6) & (uv[:, 0] >= 0) & (uv[:, 0] <= W - 1) & (uv[:, 1] >= 0) & (uv[:, 1] <= H - 1)
    seen = _cast(origin_i, X_ji / X_ji[:, 2:3], plane, sphere)  # what view i sees along that ray
    unoccluded = (seen - X_ji).norm(dim=-1) < 1e-6 * X_ji.norm(dim=-1).clamp_min(1.0)
    return TwoViewScene(
        X_i=X_i.reshape(H, W, 3).float(),
        X_ji=X_ji.reshape(H, W, 3).float(),
        uv_true=uv.float(),
        visible=inside & unoccluded,
        K=K.float(),
    )
