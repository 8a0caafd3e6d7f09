"""Speed of one CPU training step of the PyTorch splat rasteriser, against the dense reference in the same run.

Workload: 160x120 image, 20k Gaussians (SH degree 3) spread over the view with ~4 px footprints (about what
seeding from dense SLAM points gives). One "step" = rasterise + L1 loss + backward + Adam update of every
splat parameter. Reference, in the same run on the same projected splats: compositing forward + backward by
gsplat's tile scheme written in PyTorch (`tiles_reference` below: 16x16 tiles, each tile's depth-sorted list
padded to the longest one, every Gaussian evaluated on every pixel of each tile it touches), against
`raster._composite.composite` (sparse (pixel, splat) pairs); the ratio does not depend on the machine's
absolute speed. The issue's goal: a step well under a second on 2 cores.

    .venv/bin/python benchmarks/bench_raster.py [--splats 20000] [--repeats 5] [--threads 2] [--no-reference]

On a shared, oversubscribed CPU run it with OMP_WAIT_POLICY=PASSIVE (spinning OpenMP threads were ~5x slower).
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from mslam_ns.nerfstudio.raster.guard import forbid_gsplat_cuda

forbid_gsplat_cuda()

from mslam_ns.nerfstudio.raster import rasterize  # noqa: E402
from mslam_ns.nerfstudio.raster._composite import ALPHA_MAX, ALPHA_MIN, composite  # noqa: E402
from mslam_ns.nerfstudio.raster._project import project, view_colors  # noqa: E402

W, H = 160, 120


def tiles_reference(means2d, conics, opacities, colors, radii, depths, width, height, tile=16):
    """gsplat's tile scheme in PyTorch (no early termination): colour [H, W, D]."""
    import math

    tw, th = math.ceil(width / tile), math.ceil(height / tile)
    ids = torch.nonzero(radii > 0).squeeze(1)
    ids = ids[torch.argsort(depths[ids].detach())]
    m, r = means2d[ids].detach(), radii[ids].float()
    x0 = torch.floor((m[:, 0] - r) / tile).clamp(0, tw - 1).long()
    x1 = torch.floor((m[:, 0] + r) / tile).clamp(0, tw - 1).long()
    y0 = torch.floor((m[:, 1] - r) / tile).clamp(0, th - 1).long()
    y1 = torch.floor((m[:, 1] + r) / tile).clamp(0, th - 1).long()
    nx = x1 - x0 + 1
    n = nx * (y1 - y0 + 1)
    g = torch.repeat_interleave(torch.arange(ids.numel()), n)
    local = torch.arange(g.numel()) - (torch.cumsum(n, 0) - n)[g]
    t_of = (y0[g] + local // nx[g]) * tw + x0[g] + local % nx[g]
    order = torch.from_numpy(t_of.numpy().argsort(kind="stable"))
    t_of, g_of = t_of[order], ids[g[order]]
    counts = torch.bincount(t_of, minlength=tw * th)
    K = int(counts.max())
    start = torch.cumsum(counts, 0) - counts
    rank = torch.arange(t_of.numel()) - start[t_of]
    idx = torch.full((tw * th, K), means2d.shape[0], dtype=torch.long)
    idx[t_of, rank] = g_of
    pad = means2d.new_zeros(1)
    mu = torch.cat([means2d, pad.expand(1, 2)])[idx]  # [T, K, 2]
    con = torch.cat([conics, pad.expand(1, 3)])[idx]
    opa = torch.cat([opacities, pad])[idx]
    col = torch.cat([colors, colors.new_zeros(1, colors.shape[1])])[idx]
    sy, sx = torch.meshgrid(torch.arange(tile), torch.arange(tile), indexing="ij")
    t = torch.arange(tw * th)
    px = ((t % tw)[:, None] * tile + sx.reshape(1, -1)).float() + 0.5  # [T, S]
    py = ((t // tw)[:, None] * tile + sy.reshape(1, -1)).float() + 0.5
    dx, dy = px[:, :, None] - mu[:, None, :, 0], py[:, :, None] - mu[:, None, :, 1]  # [T, S, K]
    sig = 0.5 * (con[:, None, :, 0] * dx * dx + con[:, None, :, 2] * dy * dy) + con[:, None, :, 1] * dx * dy
    a = torch.clamp_max(opa[:, None, :] * torch.exp(-sig), ALPHA_MAX)
    a = torch.where((sig >= 0) & (a >= ALPHA_MIN), a, torch.zeros_like(a))
    l1m = torch.log1p(-a)
    w = a * torch.exp(torch.cumsum(l1m, -1) - l1m)
    out = torch.bmm(w, col)  # [T, S, D]
    out = out.reshape(th, tw, tile, tile, -1).permute(0, 2, 1, 3, 4).reshape(th * tile, tw * tile, -1)
    return out[:height, :width]


def make_scene(n: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g) - 0.5) * torch.tensor([4.0, 3.0, 1.0])
    means[:, 2] += 3.0
    return {
        "means": means,
        "quats": torch.randn(n, 4, generator=g),
        "scales": torch.log(torch.rand(n, 3, generator=g) * 0.03 + 0.01),
        "opacities": torch.logit(torch.rand(n, generator=g) * 0.8 + 0.1),
        "sh": torch.randn(n, 16, 3, generator=g) * 0.1,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--splats", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--no-reference", action="store_true", help="skip the (slow) dense reference")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    sc = make_scene(a.splats)
    params = {k: torch.nn.Parameter(v.clone()) for k, v in sc.items()}
    opt = torch.optim.Adam(params.values(), lr=1e-3)
    K = torch.tensor([[[100.0, 0, W / 2], [0, 100.0, H / 2], [0, 0, 1]]])
    V = torch.eye(4)[None]
    target = torch.rand(1, H, W, 3, generator=torch.Generator().manual_seed(1))

    def step() -> None:
        rgb, alpha, info = rasterize(
            params["means"],
            params["quats"],
            torch.exp(params["scales"]),
            torch.sigmoid(params["opacities"]),
            params["sh"],
            V,
            K,
            W,
            H,
            sh_degree=3,
        )
        info["means2d"].retain_grad()  # as the densification strategy does
        loss = (rgb - target).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()
    times = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    best, med = min(times), sorted(times)[len(times) // 2]
    with torch.no_grad():
        p = project(
            params["means"],
            params["quats"],
            torch.exp(params["scales"]),
            torch.sigmoid(params["opacities"]),
            V,
            K,
            W,
            H,
        )
    r = p.radii[0]
    side = (2 * r[r > 0].float() + 1).clamp(max=max(W, H))
    print(
        f"{a.splats} splats at {W}x{H}, {torch.get_num_threads()} threads; visible {int((r > 0).sum())}, "
        f"~{int((side * side).sum()) / 1e6:.2f} M (pixel, splat) pairs"
    )
    print(f"training step (rasterise + loss + backward + Adam): best {best * 1e3:.0f} ms, median {med * 1e3:.0f} ms")
    if a.no_reference:
        return
    m2d = p.means2d[0].detach().requires_grad_(True)
    con = p.conics[0].detach().requires_grad_(True)
    opa = p.opacities[0].detach().requires_grad_(True)
    col = view_colors(params["means"], params["sh"], V, 3)[0].detach().requires_grad_(True)
    args = (m2d, con, opa, col, p.radii[0], p.depths[0], W, H)

    def fb(fn) -> float:
        best_t = math.inf
        for _ in range(max(1, a.repeats // 2)):
            t0 = time.perf_counter()
            out = fn(*args)
            out = out[0] if isinstance(out, tuple) else out
            (out - target[0]).abs().mean().backward()
            best_t = min(best_t, time.perf_counter() - t0)
        return best_t

    ours, ref = fb(composite), fb(tiles_reference)
    print(
        f"compositing forward + backward: sparse pairs {ours * 1e3:.0f} ms, gsplat-style padded tiles (reference) "
        f"{ref * 1e3:.0f} ms: {ref / ours:.1f}x"
    )


if __name__ == "__main__":
    main()
