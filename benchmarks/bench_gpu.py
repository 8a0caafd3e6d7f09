"""Device timings for `scripts/gpu_check.sh` (also runs on CPU, for checking the script itself).

Prints, on the chosen device, each against a reference measured in the same run:
- matching (IPM + descriptor refinement) per 512x384 pair, vs the PyTorch twin on the same device;
- Gauss-Newton normal equations per edge (rays / calib), vs the twin;
- SLAM tracking frames/s with the oracle prior (frontend + backend), vs the same run on CPU;
- SLAM tracking frames/s with the full random-weight ViT-L network (fp32 and bf16 autocast).
The network's own encoder / decoder timings come from `benchmarks/bench_network.py` (the script calls it).

    python benchmarks/bench_gpu.py [--device cuda] [--frames 40] [--skip-network]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def best_ms(fn, dev: torch.device, repeats: int = 5) -> float:
    fn()
    sync(dev)
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync(dev)
        out.append(1e3 * (time.perf_counter() - t))
    return min(out)


def with_kernels(mode: str):
    """Context: MSLAM_NS_KERNELS=mode (compiled / torch) for the duration."""

    class _Ctx:
        def __enter__(self):
            self.old = os.environ.get("MSLAM_NS_KERNELS")
            os.environ["MSLAM_NS_KERNELS"] = mode

        def __exit__(self, *a):
            if self.old is None:
                os.environ.pop("MSLAM_NS_KERNELS", None)
            else:
                os.environ["MSLAM_NS_KERNELS"] = self.old

    return _Ctx()


def bench_matching(dev: torch.device) -> None:
    from mslam_ns.config import MatchingConfig
    from mslam_ns.cuda.matching.synthetic import two_view_scene
    from mslam_ns.slam.matching import match

    sc = two_view_scene(384, 512)
    X_i = sc.X_i.float().reshape(1, 384, 512, 3).to(dev)
    X_ji = sc.X_ji.float().reshape(1, 384, 512, 3).to(dev)
    g = torch.Generator().manual_seed(0)
    D = torch.nn.functional.normalize(torch.randn(1, 384, 512, 24, generator=g), dim=-1).to(dev)
    cfg = MatchingConfig()
    with with_kernels("compiled"):
        k = best_ms(lambda: match(X_i, X_ji, D, D, None, cfg), dev)
    with with_kernels("torch"):
        t = best_ms(lambda: match(X_i, X_ji, D, D, None, cfg), dev, repeats=2)
    print(f"matching (IPM + refinement) per 512x384 pair on {dev}: {k:8.2f} ms   twin {t:8.1f} ms   {t / k:6.1f}x")


def bench_gn(dev: torch.device) -> None:
    from mslam_ns.cuda.gn import edge_normal_equations
    from mslam_ns.cuda.gn._synthetic import make_graph

    G = make_graph(n=8, h=192, w=512, seed=0, dtype=torch.float32)
    args = [t.to(dev) for t in (G.Twc, G.X, G.C, G.ii, G.jj, G.idx, G.valid, G.Q)]
    E = int(G.ii.numel())
    for mode in ("rays", "calib"):
        kw = {"K": G.K.float().to(dev), "img_hw": G.img_hw}
        with with_kernels("compiled"):
            k = best_ms(lambda mode=mode: edge_normal_equations(mode, *args, **kw), dev) / E
        with with_kernels("torch"):
            t = best_ms(lambda mode=mode: edge_normal_equations(mode, *args, **kw), dev, repeats=2) / E
        print(
            f"GN normal equations per 512x384 edge, {mode:5s} on {dev}: {k:7.3f} ms   twin {t:7.2f} ms   {t / k:6.1f}x"
        )


def slam_fps(seq: Path, prior_name: str, dev: str, size: int, amp: str = "none") -> tuple[float, float, int]:
    """(frames/s overall, frames/s without the prior's encode/decode, keyframes) of one SLAM run."""
    from mslam_ns.config import SlamConfig
    from mslam_ns.io.sources import open_source
    from mslam_ns.slam.system import SlamSystem

    src = open_source(seq)
    if prior_name == "oracle":
        from mslam_ns.prior.oracle import OraclePrior

        prior = OraclePrior.from_source(src, size=size, noise="mast3r", seed=0, device=dev)
    else:
        from benchmarks.bench_network import init_random_
        from mslam_ns.model import Mast3rConfig, build_mast3r
        from mslam_ns.prior.mast3r import Mast3rPrior

        net = build_mast3r(Mast3rConfig(), dev)
        init_random_(net)
        amp_dtype = {"none": None, "bf16": torch.bfloat16}[amp]
        prior = Mast3rPrior(net, amp_dtype=amp_dtype)
    cfg = SlamConfig(mode="rays", img_size=size, device=dev)
    s = SlamSystem(prior, cfg)
    sync(torch.device(dev))
    t = time.perf_counter()
    s.run(src)
    sync(torch.device(dev))
    wall = time.perf_counter() - t
    tm = s.timings
    prior_s = tm.get("prior_encode", 0.0) + tm.get("decode", 0.0)
    n = len(src)
    return n / wall, n / max(wall - prior_s, 1e-9), len(s.keyframes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--skip-network", action="store_true", help="no full-network SLAM run")
    a = ap.parse_args()
    dev = torch.device(a.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    print(f"device {dev} ({name}), torch {torch.__version__}")
    bench_matching(dev)
    bench_gn(dev)
    from mslam_ns.io.synthetic import generate_sequence

    with tempfile.TemporaryDirectory() as d:
        seq = generate_sequence(Path(d) / "seq", a.frames, 640, 480, 0)
        fps, fps_front, kf = slam_fps(seq, "oracle", str(dev), a.size)
        line = f"SLAM, oracle prior, {a.frames} frames at {a.size}: {fps:6.1f} frames/s "
        line += f"({fps_front:6.1f} without the prior)"
        if dev.type == "cuda":
            c, c_front, _ = slam_fps(seq, "oracle", "cpu", a.size)
            line += f"   CPU same run {c:5.1f} frames/s: {fps / c:5.1f}x"
        print(line + f", {kf} keyframes")
        if not a.skip_network:
            for amp in ("none", "bf16") if dev.type == "cuda" else ("none",):
                fps, fps_front, kf = slam_fps(seq, "mast3r", str(dev), a.size, amp)
                print(
                    f"SLAM, full ViT-L (random weights, {amp}), {a.frames} frames at {a.size}: {fps:6.2f} frames/s "
                    f"({fps_front:6.1f} without the network), {kf} keyframes"
                )


if __name__ == "__main__":
    main()
