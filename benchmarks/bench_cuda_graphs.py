"""CUDA graphs for the network (`--cuda-graphs`, `prior/cuda_graphs.py`) against the plain calls, same run.

Full ViT-L at 512x384 with random weights (``--smoke``: the tiny config, to check the script). For the
encoder, the tracking decode (one ordering) and the backend's symmetric decode: ms per call without and
with graphs (best of --repeats, after a first call that captures / warms up), their ratio, and the largest
relative difference of the predictions (graphs replay the same kernels, so it should be ~0). With
``--slam-frames N``: tracking frames/s of a SLAM run (synthetic sequence, full network) without and with graphs.

On a CPU the capture is the eager twin (`eager_capture`): that checks the script, not CUDA graphs.

    python benchmarks/bench_cuda_graphs.py --device cuda --amp bf16 [--slam-frames 20]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_gpu import best_ms, sync  # noqa: E402
from benchmarks.bench_network import bench_config, init_random_  # noqa: E402
from mslam_ns.model import build_mast3r  # noqa: E402
from mslam_ns.prior.cuda_graphs import eager_capture  # noqa: E402
from mslam_ns.prior.mast3r import AMP_DTYPES, Mast3rPrior  # noqa: E402

AMP = {"none": "fp32", "bf16": "bf16", "fp16": "fp16"}


def max_rel(a, b) -> float:
    worst = 0.0
    for pa, pb in zip(a, b):
        for va, vb in ((pa.ii, pb.ii), (pa.ji, pb.ji)):
            for k in ("X", "C", "D", "Q"):
                x, y = getattr(va, k).float(), getattr(vb, k).float()
                worst = max(worst, float((x - y).abs().max() / y.abs().max().clamp_min(1e-12)))
    return worst


def slam_fps(prior: Mast3rPrior, frames: int, dev: str, size: int) -> float:
    from mslam_ns.config import SlamConfig
    from mslam_ns.io.sources import open_source
    from mslam_ns.io.synthetic import generate_sequence
    from mslam_ns.slam.system import SlamSystem

    with tempfile.TemporaryDirectory() as d:
        src = open_source(generate_sequence(Path(d) / "seq", frames, 640, 480, 0))
        s = SlamSystem(prior, SlamConfig(mode="rays", img_size=size, device=dev))
        sync(torch.device(dev))
        t = time.perf_counter()
        s.run(src)
        sync(torch.device(dev))
        return frames / (time.perf_counter() - t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--amp", choices=list(AMP), default="none")
    ap.add_argument("--height", type=int, default=384)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--smoke", action="store_true", help="the tiny config (checks the script, not the speed)")
    ap.add_argument("--slam-frames", type=int, default=0, help="also time a SLAM run of this many frames")
    a = ap.parse_args()
    dev = torch.device(a.device)
    net = build_mast3r(bench_config(a.smoke), dev)
    init_random_(net)
    amp = AMP_DTYPES[AMP[a.amp]]
    capture = None if dev.type == "cuda" else eager_capture
    plain = Mast3rPrior(net, amp_dtype=amp)
    graphed = Mast3rPrior(net, amp_dtype=amp, cuda_graphs=True, graph_capture=capture)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU (eager twin of the capture)"
    print(f"device {dev} ({name}), torch {torch.__version__}, amp {a.amp}, {a.height}x{a.width}")
    g = torch.Generator().manual_seed(1)
    imgs = [torch.rand(3, a.height, a.width, generator=g) for _ in range(2)]
    encs = {}
    rows = []
    for label, prior in (("plain", plain), ("graphs", graphed)):
        e = encs[label] = [prior.encode(im, i) for i, im in enumerate(imgs)]
        rows.append(
            (
                best_ms(lambda p=prior: p.encode(imgs[0], 0), dev, a.repeats),
                best_ms(lambda p=prior, e=e: p.decode(e[0], e[1]), dev, a.repeats),
                best_ms(lambda p=prior, e=e: p.decode_symmetric(e[0], e[1]), dev, a.repeats),
            )
        )
    diff_enc = float((encs["graphs"][0].data[0] - encs["plain"][0].data[0]).abs().max())
    diff_dec = max_rel([plain.decode(*encs["plain"])], [graphed.decode(*encs["graphs"])])
    diff_sym = max_rel(plain.decode_symmetric(*encs["plain"]), graphed.decode_symmetric(*encs["graphs"]))
    for k, what in enumerate(("encoder per image", "decode (one ordering)", "decode_symmetric per pair")):
        p, q = rows[0][k], rows[1][k]
        print(f"  {what:28s} plain {p:8.2f} ms   graphs {q:8.2f} ms   plain/graphs {p / q:5.2f}x")
    print(
        f"  largest difference: encoder features {diff_enc:.3g} (abs), decode {diff_dec:.3g}, "
        f"symmetric {diff_sym:.3g} (rel)"
    )
    if a.slam_frames:
        size = max(a.height, a.width)
        slam_fps(plain, 3, str(dev), size)  # warm-up: kernel loading and first-call costs count for neither
        f0 = slam_fps(plain, a.slam_frames, str(dev), size)
        f1 = slam_fps(graphed, a.slam_frames, str(dev), size)
        print(f"  SLAM {a.slam_frames} frames at {size}: plain {f0:.2f} frames/s, graphs {f1:.2f} ({f1 / f0:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
