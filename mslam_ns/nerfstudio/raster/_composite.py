"""Front-to-back alpha compositing of screen-space Gaussians over (pixel, Gaussian) pairs, PyTorch autograd.

Image formation (the definition `_dense.composite_dense` implements pixel by pixel):
for a pixel centre p = (x + 0.5, y + 0.5) and the Gaussians sorted by depth, Gaussian i contributes when
its radius r_i > 0, p lies in its footprint square |p - mu_i|_inf <= r_i, the conic form
sigma_i = 0.5 (a dx^2 + c dy^2) + b dx dy is >= 0 and alpha_i = min(0.999, o_i exp(-sigma_i)) >= 1/255;
compositing stops before the first Gaussian that would take the transmittance below 1e-4. Then
``colour = sum_i alpha_i T_i c_i`` with ``T_i = prod_{j<i} (1 - alpha_j)`` and ``alpha_out = sum_i alpha_i T_i``.
These are gsplat's rules, except that gsplat lets a Gaussian reach every pixel of each 16x16 tile its
footprint touches; here the footprint square itself bounds it (no tile-size dependence, less work).

How (sparse instead of padded tiles): every pixel of every footprint square becomes one (pixel, Gaussian)
pair; the Gaussians are visited in depth order, so a stable sort of the pairs by pixel leaves each pixel's
run in depth order. Transmittance is a segmented exclusive cumulative sum of log(1 - alpha), accumulated in
float64 (no underflow, no cancellation across runs), and colours are scattered with ``index_add``. Work and
memory are proportional to the number of pairs, not to tiles x longest list. When the pairs exceed
``max_pairs``, the depth-sorted Gaussians are processed in consecutive chunks that carry each pixel's
log-transmittance and "terminated" flag from chunk to chunk, so the result does not depend on chunking.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.999
T_MIN = 1e-4


def _footprints(
    means2d: Tensor,
    radii: Tensor,
    width: int,
    height: int,  # [M, 2], [M] (visible, depth order)
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Pixel boxes x0 [M], y0 [M], nx [M], ny [M] (pixels whose centre is within the footprint square)."""
    m = means2d.detach()
    r = radii.to(m.dtype)
    x0 = torch.ceil(m[:, 0] - r - 0.5).clamp(min=0).long()
    x1 = torch.floor(m[:, 0] + r - 0.5).clamp(max=width - 1).long()
    y0 = torch.ceil(m[:, 1] - r - 0.5).clamp(min=0).long()
    y1 = torch.floor(m[:, 1] + r - 0.5).clamp(max=height - 1).long()
    return x0, y0, (x1 - x0 + 1).clamp(min=0), (y1 - y0 + 1).clamp(min=0)


def _pairs(ids: Tensor, x0: Tensor, y0: Tensor, nx: Tensor, ny: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """(pixel [P], Gaussian [P]) pairs of Gaussians ids (depth order), sorted by pixel then depth."""
    n = nx * ny
    g = torch.repeat_interleave(torch.arange(ids.numel(), device=ids.device), n)
    local = torch.arange(g.numel(), device=ids.device) - (torch.cumsum(n, 0) - n)[g]
    nxg = nx[g]
    pix = (y0[g] + local // nxg) * width + x0[g] + local % nxg
    order = _stable_argsort(pix)
    return pix[order], ids[g[order]]


def _stable_argsort(x: Tensor) -> Tensor:  # [P] -> [P] int64
    """Stable argsort; numpy's single-threaded sort on CPU (torch's parallel CPU sort collapses, 30x slower,
    when the cores are oversubscribed: its OpenMP threads spin-wait)."""
    if x.device.type == "cpu":
        import numpy as np

        return torch.from_numpy(np.argsort(x.numpy(), kind="stable"))
    return torch.sort(x, stable=True)[1]


def _segment_exclusive_cumsum(v: Tensor, pix: Tensor) -> Tensor:  # [P] float64, [P] sorted -> [P]
    """Sum of v over the earlier entries of the same pixel run."""
    cs = torch.cumsum(v, 0)
    excl = cs - v
    start = torch.ones_like(pix, dtype=torch.bool)
    start[1:] = pix[1:] != pix[:-1]
    seg = torch.cumsum(start.long(), 0) - 1
    return excl - excl[start].index_select(0, seg)


def composite(
    means2d: Tensor,  # [N, 2]
    conics: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    colors: Tensor,  # [N, D]
    radii: Tensor,  # [N] int
    depths: Tensor,  # [N]
    width: int,
    height: int,
    max_pairs: int = 1 << 22,
) -> tuple[Tensor, Tensor]:
    """Composite one camera: colour [H, W, D] and alpha [H, W, 1] (no background)."""
    dev = means2d.device
    HW, D = height * width, colors.shape[1]
    ids = torch.nonzero(radii > 0).squeeze(1)
    ids = ids[_stable_argsort(depths[ids].detach())]
    x0, y0, nx, ny = _footprints(means2d[ids], radii[ids], width, height)
    n = nx * ny
    # Depth-ordered chunks of Gaussians with at most max_pairs pairs (a single Gaussian may exceed it).
    bounds = [0]
    if ids.numel():
        csum = torch.cumsum(n, 0)
        while bounds[-1] < ids.numel():
            base = int(csum[bounds[-1] - 1]) if bounds[-1] > 0 else 0
            nxt = int(torch.searchsorted(csum, base + max_pairs, right=True))
            bounds.append(max(nxt, bounds[-1] + 1))

    rgb = colors.new_zeros(HW, D)
    acc = colors.new_zeros(HW)
    log_t = torch.zeros(HW, dtype=torch.float64, device=dev)  # carried log-transmittance per pixel
    done = torch.zeros(HW, dtype=torch.bool, device=dev)
    log_tmin = math.log(T_MIN)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        pix, gi = _pairs(ids[lo:hi], x0[lo:hi], y0[lo:hi], nx[lo:hi], ny[lo:hi], width)
        if pix.numel() == 0:
            continue
        px = (pix % width).to(means2d.dtype) + 0.5
        py = torch.div(pix, width, rounding_mode="floor").to(means2d.dtype) + 0.5
        # index_select (not x[gi]): its backward is a fast index_add, advanced indexing's is a slow index_put.
        mu, con = means2d.index_select(0, gi), conics.index_select(0, gi)
        dx, dy = px - mu[:, 0], py - mu[:, 1]
        sigma = 0.5 * (con[:, 0] * dx * dx + con[:, 2] * dy * dy) + con[:, 1] * dx * dy
        alpha = torch.clamp_max(opacities.index_select(0, gi) * torch.exp(-sigma), ALPHA_MAX)
        with torch.no_grad():
            valid = (sigma >= 0) & (alpha >= ALPHA_MIN) & ~done[pix]
        alpha = torch.where(valid, alpha, torch.zeros_like(alpha))
        l1m = torch.log1p(-alpha).double()
        excl = _segment_exclusive_cumsum(l1m, pix) + log_t.index_select(0, pix)  # log T before each pair
        with torch.no_grad():
            # Keep a pair while the transmittance after it stays >= T_MIN. T only falls along a run, so the first
            # pair that fails stops its pixel: it and every later pair are dropped (here and in later chunks);
            # every kept pair's `excl` sums only kept pairs.
            keep = excl + l1m >= log_tmin
            done = done.index_fill(0, pix[valid & ~keep], True)
        w = torch.where(keep, alpha * torch.exp(excl).to(alpha.dtype), torch.zeros_like(alpha))  # [P]
        rgb = rgb.index_add(0, pix, w[:, None] * colors.index_select(0, gi))
        acc = acc.index_add(0, pix, w)
        log_t = log_t.index_add(0, pix, torch.where(keep, l1m, torch.zeros_like(l1m)))
    acc = acc[:, None]
    if not (rgb.requires_grad or acc.requires_grad):
        # Nothing reached the image: keep the outputs attached to the inputs (zero gradients), as gsplat does,
        # so a loss on an empty view can still be back-propagated.
        tie = sum(t.sum() for t in (means2d, conics, opacities, colors) if t.requires_grad)
        if isinstance(tie, Tensor):
            rgb, acc = rgb + 0.0 * tie, acc + 0.0 * tie
    return rgb.reshape(height, width, D), acc.reshape(height, width, 1)
