"""Speed of the Gauss-Newton normal-equation kernels: compiled CPU vs the PyTorch twin, in the same run.

Workload: 512x384 pointmaps (HW = 196608), float32, ~90% valid matches. Measures one edge (the tracker's
shape: N = 2, E = 1) and a 10-edge graph (N = 11) in each mode (rays, calib, points), in ms per edge, plus one full
`optimize_graph` iteration (normal equations + assembly + Cholesky + retraction + the trial evaluation).
Speed-ups are ratios measured in the same process, so they do not depend on the machine's absolute speed.

    .venv/bin/python benchmarks/bench_gn.py [--repeats 5] [--modes rays calib] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import torch

from mslam_ns.config import BackendConfig, LMConfig
from mslam_ns.cuda import _backend
from mslam_ns.cuda.gn import _torch_impl, edge_normal_equations
from mslam_ns.geometry import sim3
from mslam_ns.slam.solve import optimize_graph

H_IMG, W_IMG = 384, 512
HW = H_IMG * W_IMG
MODES = ("rays", "calib", "points")


def make_problem(n_kf: int, n_edges: int, seed: int = 0) -> dict:
    """Random-depth pointmaps on the 512x384 grid; edge e links keyframe e and e + 1 (plus random extras)."""
    g = torch.Generator().manual_seed(seed)
    f = 400.0
    K = torch.tensor([[f, 0, (W_IMG - 1) / 2], [0, f, (H_IMG - 1) / 2], [0, 0, 1]])
    v, u = torch.meshgrid(
        torch.arange(H_IMG, dtype=torch.float32), torch.arange(W_IMG, dtype=torch.float32), indexing="ij"
    )
    rays = torch.stack([(u - K[0, 2]) / f, (v - K[1, 2]) / f, torch.ones_like(u)], -1).reshape(HW, 3)
    X = rays * (1.0 + 2.0 * torch.rand(n_kf, HW, 1, generator=g))
    xi = 0.05 * torch.randn(n_kf, 7, generator=g, dtype=torch.float64)
    xi[0] = 0
    Twc = sim3.exp(xi).float()
    ii = torch.arange(n_edges) % (n_kf - 1)
    jj = ii + 1
    shift = torch.randint(-3, 4, (n_edges, 1), generator=g)
    idx = (torch.arange(HW)[None] + shift).clamp(0, HW - 1)
    valid = torch.rand(n_edges, HW, generator=g) < 0.9
    Q = 1.0 + 2.0 * torch.rand(n_edges, HW, generator=g)
    C = 1.0 + torch.rand(n_kf, HW, generator=g)
    return dict(Twc=Twc, X=X, C=C, ii=ii, jj=jj, idx=idx, valid=valid, Q=Q, K=K)


def best_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * min(times)


def bench_edges(prob: dict, mode: str, repeats: int) -> tuple[float, float]:
    """(compiled ms, twin ms) for all edges of `prob`."""
    K = prob["K"]
    p = _torch_impl.GnParams(
        fx=float(K[0, 0]), fy=float(K[1, 1]), cx=float(K[0, 2]), cy=float(K[1, 2]), H=H_IMG, W=W_IMG
    )
    args = [prob[k] for k in ("Twc", "X", "C", "ii", "jj", "idx", "valid", "Q")]
    mod = _backend.load("gn", "cpu")
    if mod is None:
        raise SystemExit(f"compiled CPU kernels unavailable: {_backend._errors.get(('gn', 'cpu'))}")
    mode_id = MODES.index(mode)
    t_c = best_ms(lambda: mod.edge_normal_equations(mode_id, *args, p.as_list(), H_IMG, W_IMG), repeats)
    t_t = best_ms(lambda: _torch_impl._edge_normal_equations(mode, *args, p), max(1, repeats // 2))
    return t_c, t_t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--threads", type=int, default=0, help="torch / kernel threads (0: torch's default)")
    a = ap.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs "
        f"(shared machine: timings are best-of-{a.repeats}), HW = {HW}, float32"
    )
    one = make_problem(2, 1, seed=0)
    graph = make_problem(11, 10, seed=1)
    print(f"{'mode':7s} {'edges':>5s} {'compiled ms/edge':>17s} {'twin ms/edge':>13s} {'speed-up':>9s}")
    for mode in a.modes:
        for name, prob in (("1", one), ("10", graph)):
            E = prob["ii"].numel()
            t_c, t_t = bench_edges(prob, mode, a.repeats)
            print(f"{mode:7s} {name:>5s} {t_c / E:17.2f} {t_t / E:13.2f} {t_t / t_c:8.1f}x")
    os.environ["MSLAM_NS_KERNELS"] = "compiled"
    o = one
    t_api = best_ms(
        lambda: edge_normal_equations("rays", o["Twc"], o["X"], o["C"], o["ii"], o["jj"], o["idx"], o["valid"], o["Q"]),
        a.repeats,
    )
    print(f"public edge_normal_equations, tracker shape (N=2, E=1, rays, input checks included): {t_api:.2f} ms")
    cfg = BackendConfig(lm=LMConfig(max_iters=1))
    g = graph
    for mode in a.modes:

        def one_iter() -> None:
            optimize_graph(
                g["Twc"],
                g["X"],
                g["C"],
                g["ii"],
                g["jj"],
                g["idx"],
                g["valid"],
                g["Q"],
                mode,
                cfg,
                K=g["K"],
                img_hw=(H_IMG, W_IMG),
            )

        os.environ["MSLAM_NS_KERNELS"] = "compiled"
        t_iter = best_ms(one_iter, max(1, a.repeats // 2))
        print(
            f"optimize_graph, {mode}, 10 edges / 11 keyframes, 1 LM iteration (2 evaluations, compiled): "
            f"{t_iter:.1f} ms"
        )
    os.environ.pop("MSLAM_NS_KERNELS", None)


if __name__ == "__main__":
    main()
