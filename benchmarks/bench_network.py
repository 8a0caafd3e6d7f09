"""MASt3R network speed: full ViT-L 512 config, random weights, one 512x384 pair.

Reports encoder ms per image, symmetric decode (both orderings + heads) ms per pair (batched as one
batch-2 call, and as two separate calls), peak RSS, analytic FLOPs (counted on the meta device) and the
achieved FLOP/s as a fraction of a 2048^3 fp32 matmul measured in the same run.

    .venv/bin/python benchmarks/bench_network.py                  # CPU, 2 threads
    .venv/bin/python benchmarks/bench_network.py --device cuda --amp bf16

Timings on a shared machine are noisy: compare the fractions of the same-run matmul rate.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mslam_ns.model import Mast3rConfig, Mast3rNet, build_mast3r  # noqa: E402


def rss_mb() -> float:
    """Peak resident set size of this process so far, MiB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CPU_MS: dict[int, list[float]] = {}
"""process CPU time (all threads) of each timed call, keyed by id(fn): on a shared machine
cpu_ms / threads estimates the wall time the call would take on a quiet one."""


def timed(fn, device: torch.device, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        sync(device)
        t, c = time.perf_counter(), time.process_time()
        fn()
        sync(device)
        out.append((time.perf_counter() - t) * 1e3)
        CPU_MS.setdefault(id(fn), []).append((time.process_time() - c) * 1e3)
    return out


def matmul_gflops(device: torch.device, n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    best = min(timed(lambda: a @ b, device, repeats))
    return 2 * n**3 / (best * 1e-3) / 1e9


def init_random_(net: torch.nn.Module, seed: int = 0) -> None:
    """Cheap random init in place: N(0, 0.02) weights, zero biases, unit LayerNorm scales."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.device.type == "cpu":
                if name.endswith("bias"):
                    p.zero_()
                elif p.ndim == 1:
                    p.fill_(1.0)
                else:
                    p.normal_(0.0, 0.02, generator=g)
            else:
                p.normal_(0.0, 0.02) if p.ndim > 1 else p.fill_(float(not name.endswith("bias")))


def count_flops(cfg: Mast3rConfig, H: int, W: int) -> tuple[float, float]:
    """(encoder FLOPs per image, symmetric decode FLOPs per pair) via FlopCounterMode on meta tensors."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        net = Mast3rNet(cfg).eval()
        img = torch.empty(1, 3, H, W)
    with torch.inference_mode():
        with FlopCounterMode(display=False) as fc:
            feat, pos = net.encode(img)
        enc = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc:
            net.decode_symmetric(feat, pos, feat, pos, (H, W))
        dec = fc.get_total_flops()
    return float(enc), float(dec)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none", help="autocast dtype (CUDA)")
    ap.add_argument("--height", type=int, default=384)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--skip-unbatched", action="store_true", help="skip the two-call symmetric decode")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--smoke", action="store_true", help="a tiny config (checks the script, not the speed)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    H, W = args.height, args.width
    cfg = Mast3rConfig()
    if args.smoke:
        cfg = dataclasses.replace(
            cfg, enc_embed_dim=64, enc_depth=2, enc_num_heads=2, dec_embed_dim=48, dec_depth=10, dec_num_heads=2
        )
    res: dict[str, float | str | int] = {
        "device": str(device),
        "threads": args.threads,
        "amp": args.amp,
        "H": H,
        "W": W,
        "torch": torch.__version__,
    }
    rss0 = rss_mb()
    t = time.perf_counter()
    net = build_mast3r(cfg, device)
    init_random_(net)
    res["init_s"] = time.perf_counter() - t
    res["params"] = sum(p.numel() for p in {id(p): p for p in net.parameters()}.values())
    res["rss_weights_mb"] = rss_mb() - rss0

    enc_flops, dec_flops = count_flops(cfg, H, W)
    res["encoder_gflop"], res["decode_symmetric_gflop"] = enc_flops / 1e9, dec_flops / 1e9
    mm = matmul_gflops(device)
    res["matmul_gflops"] = mm

    amp = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    ctx = (
        (lambda: torch.autocast(device.type, dtype=amp))
        if amp is not None
        else (lambda: torch.autocast(device.type, enabled=False))
    )
    g = torch.Generator(device="cpu").manual_seed(1)
    img1 = (torch.rand(1, 3, H, W, generator=g) * 2 - 1).to(device)
    img2 = (torch.rand(1, 3, H, W, generator=g) * 2 - 1).to(device)
    enc: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def encode() -> None:
        with torch.inference_mode(), ctx():
            enc[1] = net.encode(img1)
            enc[2] = net.encode(img2)

    def dec_sym() -> None:
        with torch.inference_mode(), ctx():
            net.decode_symmetric(*enc[1], *enc[2], (H, W))

    def dec_two() -> None:
        with torch.inference_mode(), ctx():
            net.decode(*enc[1], *enc[2], (H, W))
            net.decode(*enc[2], *enc[1], (H, W))

    rss1 = rss_mb()
    te = (
        [v / 2 for v in timed(encode, device, args.repeats + 1)][1:]
        if args.repeats > 1
        else [v / 2 for v in timed(encode, device, 1)]
    )
    res["encoder_ms_per_image"] = statistics.median(te)
    res["encoder_cpu_ms_per_image_per_thread"] = statistics.median(CPU_MS[id(encode)][-len(te) :]) / 2 / args.threads
    res["rss_after_encode_mb"] = rss_mb()
    td = timed(dec_sym, device, args.repeats)
    res["decode_symmetric_ms_per_pair"] = statistics.median(td)
    res["decode_symmetric_cpu_ms_per_pair_per_thread"] = statistics.median(CPU_MS[id(dec_sym)]) / args.threads
    res["rss_peak_mb"] = rss_mb()
    res["rss_inference_delta_mb"] = rss_mb() - rss1
    if not args.skip_unbatched:
        res["decode_two_calls_ms_per_pair"] = statistics.median(timed(dec_two, device, args.repeats))
    res["encoder_gflops"] = enc_flops / 1e9 / (res["encoder_ms_per_image"] * 1e-3)
    res["decode_gflops"] = dec_flops / 1e9 / (res["decode_symmetric_ms_per_pair"] * 1e-3)
    res["encoder_frac_of_matmul"] = res["encoder_gflops"] / mm
    res["decode_frac_of_matmul"] = res["decode_gflops"] / mm

    for k, v in res.items():
        print(f"{k:32s} {v:.4g}" if isinstance(v, float) else f"{k:32s} {v}")
    if args.json is not None:
        args.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
