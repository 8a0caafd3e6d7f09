"""CPU (any-device) Gaussian-splat rasteriser with gradients, a drop-in for the subset of
``gsplat.rasterization`` that splatfacto uses.

Pipeline: `_project.project` (gsplat's own pure-PyTorch EWA projection: covariances, 2D means, conics,
3-sigma radii, culling) -> `_project.view_colors` (spherical harmonics) -> `_composite.composite`
(sparse (pixel, Gaussian) pairs in depth order, front-to-back compositing in log-transmittance; its
docstring states the exact image-formation rules). Everything is PyTorch autograd, so gradients reach
means, quats, scales, opacities, colours and the view matrices (camera optimisation).
`_dense.composite_dense` is the slow pixel-by-pixel reference the tests compare against. Nothing here
calls gsplat's CUDA backend.

Example::

    render, alpha, info = rasterize(means, quats, scales, opacities, colors, viewmats, Ks, W, H, sh_degree=3)
    info["means2d"].retain_grad()  # what gsplat's DefaultStrategy reads after backward
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from mslam_ns.nerfstudio.raster._composite import composite
from mslam_ns.nerfstudio.raster._project import project, view_colors
from mslam_ns.nerfstudio.raster.guard import GsplatCudaForbidden, forbid_gsplat_cuda

__all__ = ["rasterize", "forbid_gsplat_cuda", "GsplatCudaForbidden"]

RenderMode = Literal["RGB", "D", "ED", "RGB+D", "RGB+ED"]


def rasterize(
    means: Tensor,  # [N, 3] world
    quats: Tensor,  # [N, 4] wxyz
    scales: Tensor,  # [N, 3] activated
    opacities: Tensor,  # [N] activated
    colors: Tensor,  # [N, D] / [C, N, D], or SH [N, K, 3] / [C, N, K, 3] when sh_degree is set
    viewmats: Tensor,  # [C, 4, 4] world -> camera, OpenCV axes
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    sh_degree: int | None = None,
    render_mode: RenderMode = "RGB",
    rasterize_mode: Literal["classic", "antialiased"] = "classic",
    eps2d: float = 0.3,
    backgrounds: Tensor | None = None,  # [C, D]
    max_pairs: int = 1 << 22,
    **_ignored: Any,  # gsplat-only options (packed, absgrad, sparse_grad, radius_clip, tile_size): no effect here
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Render C cameras: (render [C, H, W, X], alphas [C, H, W, 1], info) like ``gsplat.rasterization``.

    X is D for "RGB", 1 for "D"/"ED", D + 1 for "RGB+D"/"RGB+ED" (depth last; "ED" divides by alpha).
    ``info`` carries ``radii [C, N]``, ``means2d [C, N, 2]`` (retain_grad-able), ``depths``, ``conics``,
    ``opacities``, ``width``, ``height``, ``n_cameras`` — the keys gsplat's strategies read.
    """
    if render_mode not in ("RGB", "D", "ED", "RGB+D", "RGB+ED"):
        raise ValueError(f"render_mode must be RGB, D, ED, RGB+D or RGB+ED, not {render_mode!r}")
    proj = project(
        means,
        quats,
        scales,
        opacities,
        viewmats,
        Ks,
        width,
        height,
        eps2d=eps2d,
        near_plane=near_plane,
        far_plane=far_plane,
        antialiased=rasterize_mode == "antialiased",
    )
    C = viewmats.shape[0]
    if render_mode in ("D", "ED"):
        feats = proj.depths[..., None]  # [C, N, 1]
    else:
        feats = view_colors(means, colors, viewmats, sh_degree)  # [C, N, D]
        if render_mode in ("RGB+D", "RGB+ED"):
            feats = torch.cat([feats, proj.depths[..., None]], -1)
    renders, alphas = [], []
    for c in range(C):
        rgb, acc = composite(
            proj.means2d[c],
            proj.conics[c],
            proj.opacities[c],
            feats[c],
            proj.radii[c],
            proj.depths[c],
            width,
            height,
            max_pairs=max_pairs,
        )
        renders.append(rgb)
        alphas.append(acc)
    render, alpha = torch.stack(renders), torch.stack(alphas)
    if render_mode in ("ED", "RGB+ED"):
        render = torch.cat([render[..., :-1], render[..., -1:] / alpha.clamp_min(1e-10)], -1)
    if backgrounds is not None:
        bg = backgrounds[:, None, None, :]
        if render_mode in ("RGB+D", "RGB+ED"):
            render = torch.cat([render[..., :-1] + (1 - alpha) * bg, render[..., -1:]], -1)
        elif render_mode == "RGB":
            render = render + (1 - alpha) * bg
    info = {
        "radii": proj.radii,
        "means2d": proj.means2d,
        "depths": proj.depths,
        "conics": proj.conics,
        "opacities": proj.opacities,
        "width": width,
        "height": height,
        "n_cameras": C,
        "camera_ids": None,
        "gaussian_ids": None,
    }
    return render, alpha, info
