"""Dense reference compositor: the image-formation rules of `_composite` applied pixel-parallel, one
Gaussian at a time in depth order (no tiles, no padding, no log-space). Slow; for tests."""

from __future__ import annotations

import torch
from torch import Tensor

from mslam_ns.nerfstudio.raster._composite import ALPHA_MAX, ALPHA_MIN, T_MIN


def composite_dense(
    means2d: Tensor,  # [N, 2]
    conics: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    colors: Tensor,  # [N, D]
    radii: Tensor,  # [N] int
    depths: Tensor,  # [N]
    width: int,
    height: int,
) -> tuple[Tensor, Tensor]:
    """Colour [H, W, D] and alpha [H, W, 1] by a front-to-back loop over the visible Gaussians."""
    ys, xs = torch.meshgrid(
        torch.arange(height, device=means2d.device, dtype=means2d.dtype) + 0.5,
        torch.arange(width, device=means2d.device, dtype=means2d.dtype) + 0.5,
        indexing="ij",
    )
    T = torch.ones(height, width, 1, dtype=means2d.dtype, device=means2d.device)
    done = torch.zeros(height, width, 1, dtype=torch.bool, device=means2d.device)
    rgb = colors.new_zeros(height, width, colors.shape[1])
    ids = torch.nonzero(radii > 0).squeeze(1)
    for i in ids[torch.argsort(depths[ids].detach(), stable=True)].tolist():
        dx, dy = xs - means2d[i, 0], ys - means2d[i, 1]
        a, b, c = conics[i]
        sigma = (0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy)[..., None]
        alpha = torch.clamp_max(opacities[i] * torch.exp(-sigma), ALPHA_MAX)
        r = float(radii[i])
        inside = ((dx.abs() <= r) & (dy.abs() <= r))[..., None]
        use = inside & (sigma >= 0) & (alpha >= ALPHA_MIN) & ~done
        stop = use & (T * (1 - alpha) < T_MIN)
        done = done | stop
        use = use & ~stop
        alpha = torch.where(use, alpha, torch.zeros_like(alpha))
        rgb = rgb + alpha * T * colors[i]
        T = T * (1 - alpha)
    return rgb, 1 - T
