"""Projection of 3D Gaussians to the image and view-dependent colours, in PyTorch (CPU or any device).

Reuses gsplat 1.4's pure-PyTorch reference pieces, which never touch its CUDA backend:
``_quat_scale_to_covar_preci`` (quaternion wxyz + scales -> world covariance), ``_fully_fused_projection``
(EWA projection with a pinhole camera, the ``eps2d`` screen-space blur, 3-sigma radii, near/far and
off-image culling) and ``_spherical_harmonics``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Projected:
    """Per-camera screen-space Gaussians (C cameras, N Gaussians)."""

    radii: Tensor  # [C, N] int32; 0 = culled
    means2d: Tensor  # [C, N, 2] pixel coordinates (pixel centres at +0.5)
    depths: Tensor  # [C, N] camera z
    conics: Tensor  # [C, N, 3] inverse 2D covariance (a, b, c) of a x^2 + 2 b x y + c y^2
    opacities: Tensor  # [C, N] after the antialiasing compensation (if any)


def project(
    means: Tensor,  # [N, 3] world
    quats: Tensor,  # [N, 4] wxyz, not necessarily normalised
    scales: Tensor,  # [N, 3] (activated)
    opacities: Tensor,  # [N] (activated)
    viewmats: Tensor,  # [C, 4, 4] world -> camera (OpenCV axes)
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    antialiased: bool = False,
) -> Projected:
    """Project Gaussians into every camera (gsplat's EWA projection)."""
    from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci

    covars, _ = _quat_scale_to_covar_preci(quats, scales, compute_covar=True, compute_preci=False)
    radii, means2d, depths, conics, comp = _fully_fused_projection(
        means,
        covars,
        viewmats,
        Ks,
        width,
        height,
        eps2d=eps2d,
        near_plane=near_plane,
        far_plane=far_plane,
        calc_compensations=antialiased,
    )
    opa = opacities[None].expand(viewmats.shape[0], -1)
    if comp is not None:
        opa = opa * comp
    return Projected(radii=radii, means2d=means2d, depths=depths, conics=conics, opacities=opa)


def view_colors(
    means: Tensor,  # [N, 3] world
    colors: Tensor,  # [N, D] / [C, N, D] post-activation, or SH coefficients [N, K, 3] / [C, N, K, 3]
    viewmats: Tensor,  # [C, 4, 4]
    sh_degree: int | None,
) -> Tensor:  # [C, N, D]
    """Per-camera colours: the given colours, or SH evaluated along camera->Gaussian directions (+0.5, >= 0)."""
    C = viewmats.shape[0]
    if sh_degree is None:
        return colors.expand(C, -1, -1) if colors.dim() == 2 else colors
    from gsplat.cuda._torch_impl import _spherical_harmonics

    campos = torch.inverse(viewmats)[:, :3, 3]  # [C, 3]
    dirs = means[None] - campos[:, None]  # [C, N, 3]
    shs = colors.expand(C, -1, -1, -1) if colors.dim() == 3 else colors  # [C, N, K, 3]
    return torch.clamp_min(_spherical_harmonics(sh_degree, dirs, shs) + 0.5, 0.0)
