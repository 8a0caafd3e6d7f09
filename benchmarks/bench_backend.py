"""Backend accuracy: ATE and orientation error on multi-lap synthetic loops, frontend only vs with the
keyframe graph (retrieval loop closure + global optimisation), oracle prior (`mast3r` and `hard` noise).

Prints, per (noise, mode): ATE RMSE as % of the path (keyframes, all frames), median orientation error
after position-based Sim(3) alignment (evo `ape -as` style), the drift ratio frontend / backend, loop edges,
and the estimated focal length against the truth. Also the graph solver's time per LM iteration at 50,
200 and 1000 keyframes on a synthetic graph (sparse assembly + SuperLU) against the dense Cholesky.

    .venv/bin/python benchmarks/bench_backend.py [--frames 160] [--size 160] [--laps 2] [--image 160x120]
        [--seeds 8] [--noise mast3r hard] [--modes rays calib] [--skip-solver]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def run_once(seq: Path, noise: str, mode: str, size: int, backend: bool, seed: int = 0) -> dict:
    from mslam_ns.config import SlamConfig
    from mslam_ns.eval.ate import ate
    from mslam_ns.io.sources import open_source
    from mslam_ns.prior.oracle import OraclePrior
    from mslam_ns.slam.system import SlamSystem

    src = open_source(seq)
    cfg = SlamConfig(mode=mode, img_size=size)
    cfg.backend.enabled = backend
    prior = OraclePrior.from_source(src, size=size, noise=noise, seed=seed)
    K = src.intrinsics.K if mode == "calib" else None
    s = SlamSystem(prior, cfg, K=K)
    t0 = time.perf_counter()
    s.run(src)
    wall = time.perf_counter() - t0
    gt_ts, gt = np.asarray(src.timestamps), src.gt_poses
    out = {"wall_s": wall, **s.stats()}
    for name, (ts, _, T) in {"all": s.frame_poses(), "kf": s.keyframe_poses()}.items():
        r = ate(ts.numpy(), T.double().numpy()[:, :7], gt_ts, gt)
        out[name] = (r.rmse_percent_of_path, r.rot_median_deg)
    K_est = s.intrinsics()
    if K_est is not None and src.intrinsics is not None:
        out["focal_err_pct"] = 100 * abs(K_est[0, 0] / src.intrinsics.K[0, 0] - 1)
        w = np.asarray(src[0].image).shape[1]
        out["pp_err_pct"] = 100 * abs(K_est[0, 2] - src.intrinsics.K[0, 2]) / w
    return out


def bench_solver(sizes=(50, 200, 1000)) -> None:
    from mslam_ns.slam.solve import assemble_sparse, solve_lm, solve_sparse

    print("\ngraph solve per LM iteration (assembly + damped solve), chain + 2 loop edges per keyframe:")
    g = torch.Generator().manual_seed(0)
    for n in sizes:
        ii = torch.cat([torch.arange(n - 1), torch.arange(10, n), torch.arange(20, n)])
        jj = torch.cat([torch.arange(1, n), torch.arange(0, n - 10), torch.arange(0, n - 20)])
        E = ii.numel()
        R = torch.randn(E, 14, 14, generator=g, dtype=torch.float64)
        H = R @ R.transpose(1, 2)
        gr = torch.randn(E, 14, generator=g, dtype=torch.float64)
        t0 = time.perf_counter()
        A, b = assemble_sparse(H, gr, ii, jj, n, 1)
        dx = solve_sparse(A, b, 1e-4)
        t_sp = time.perf_counter() - t0
        assert dx is not None
        t_dense = float("nan")
        if n <= 1000:
            t0 = time.perf_counter()
            solve_lm(torch.as_tensor(A.toarray()), torch.as_tensor(b), 1e-4)
            t_dense = time.perf_counter() - t0
        print(
            f"  {n:5d} keyframes, {E:5d} edges: sparse {1e3 * t_sp:8.1f} ms   dense Cholesky "
            f"{1e3 * t_dense:8.1f} ms   ratio {t_dense / t_sp:6.1f}x"
        )


def main() -> None:
    from mslam_ns.io.synthetic import generate_sequence

    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=160)
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--laps", type=int, default=2)
    ap.add_argument("--noise", nargs="+", default=["mast3r", "hard"])
    ap.add_argument("--modes", nargs="+", default=["rays", "calib"])
    ap.add_argument("--image", default=None, help="rendered WxH (default 4:3 at the network size)")
    ap.add_argument("--seeds", type=int, default=1, help="oracle noise seeds 0..N-1 (mean / median printed)")
    ap.add_argument("--skip-solver", action="store_true")
    a = ap.parse_args()
    if a.image:
        W, H = (int(v) for v in a.image.lower().split("x"))
    else:
        W, H = (4 * a.size // 3, a.size) if a.size < 320 else (640, 480)
    with tempfile.TemporaryDirectory() as d:
        seq = generate_sequence(Path(d) / "seq", a.frames, W, H, 3, trajectory=f"loop{a.laps}")
        print(
            f"{a.frames} frames {W}x{H}, {a.laps}-lap loop, network {a.size}; ATE % of path (keyframes / all), "
            "median orientation error deg (all)"
        )
        for noise in a.noise:
            for mode in a.modes:
                cuts, errs, rots = [], [], []
                for seed in range(a.seeds):
                    f = run_once(seq, noise, mode, a.size, backend=False, seed=seed)
                    b = run_once(seq, noise, mode, a.size, backend=True, seed=seed)
                    extra = ""
                    if "focal_err_pct" in b:
                        extra = f"  focal err {b['focal_err_pct']:.2f}%  pp err {b['pp_err_pct']:.2f}% of width"
                    cuts.append(f["all"][0] / max(b["all"][0], 1e-9))
                    errs.append(b["all"][0])
                    rots.append(b["all"][1])
                    print(
                        f"{noise:6s} {mode:5s} seed {seed} frontend {f['kf'][0]:5.2f} / {f['all'][0]:5.2f}%"
                        f" {f['all'][1]:5.2f} deg | backend {b['kf'][0]:5.2f} / {b['all'][0]:5.2f}% {b['all'][1]:5.2f}"
                        f" deg | drift cut {cuts[-1]:4.1f}x  kf {b['keyframes']} loop edges {b['loop_edges']}"
                        f"  wall {f['wall_s']:.0f}/{b['wall_s']:.0f} s{extra}",
                        flush=True,
                    )
                if a.seeds > 1:
                    print(
                        f"{noise:6s} {mode:5s} over {a.seeds} seeds: backend ATE mean {np.mean(errs):.2f}% max "
                        f"{np.max(errs):.2f}%, orientation median {np.median(rots):.2f} deg max {np.max(rots):.2f};"
                        f" drift cut mean {np.mean(cuts):.1f}x median {np.median(cuts):.1f}x min {np.min(cuts):.1f}x"
                        f" ({sum(c >= 3 for c in cuts)} seeds >= 3x)"
                    )
    if not a.skip_solver:
        bench_solver()


if __name__ == "__main__":
    main()
