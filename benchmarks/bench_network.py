"""MASt3R network speed: full ViT-L 512 config, random weights, one 512x384 pair.

Reports encoder ms per image, symmetric decode (both orderings + heads) ms per pair (batched as one
batch-2 call, and as two separate calls), peak RSS, analytic FLOPs (counted on the meta device) and the
achieved FLOP/s as a fraction of a 2048^3 fp32 matmul measured in the same run.

Per-call decode peak memory above the loaded model (``peak_*_mib``): each case runs in a FRESH subprocess
(build + random init + encode both images, ``malloc_trim``), then the peak resident set of one call minus
the resident set just before it (CPU: VmHWM after resetting it through /proc/self/clear_refs; CUDA:
max_memory_allocated): ``peak_<case>_first_call_mib`` for the process's first call, ``peak_<case>_mib`` for
the next (warmed-up) one, and ``peak_<case>_live_mib``, the peak of live tensors (the CPU allocator's
running total, from the profiler: independent of how malloc keeps or returns freed memory, blind to oneDNN /
MKL scratch memory). The call's returned results are alive at its end and count. Cases: ``decode`` (one
ordering), ``symmetric`` (both orderings, one batched call), ``two_calls`` (both orderings as two `decode`
calls, the first call's results kept while the second runs). ``--only-peak`` prints just these.

    .venv/bin/python benchmarks/bench_network.py                  # CPU, 2 threads
    .venv/bin/python benchmarks/bench_network.py --device cuda --amp bf16

Timings on a shared machine are noisy: compare the fractions of the same-run matmul rate.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import gc
import json
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mslam_ns.model import Mast3rConfig, Mast3rNet, build_mast3r  # noqa: E402


def rss_mb() -> float:
    """Peak resident set size of this process so far, MiB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _proc_status_mib(field: str) -> float:
    """A field of /proc/self/status (VmRSS, VmHWM: kB) in MiB."""
    m = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    if m is None:
        raise RuntimeError(f"/proc/self/status has no {field}")
    return int(m.group(1)) / 1024


def _release_free_heap() -> None:
    """Return freed heap pages to the OS (glibc keeps them otherwise, which would hide a later peak)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_hwm() -> None:
    """Reset VmHWM (the peak RSS) to the current RSS (Linux >= 4.0: write 5 to clear_refs)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


PEAK_CASES = ("decode", "symmetric", "two_calls")


def bench_config(smoke: bool) -> Mast3rConfig:
    cfg = Mast3rConfig()
    if smoke:
        cfg = dataclasses.replace(
            cfg, enc_embed_dim=64, enc_depth=2, enc_num_heads=2, dec_embed_dim=48, dec_depth=10, dec_num_heads=2
        )
    return cfg


def live_tensor_peak_mib(fn) -> float:
    """Peak bytes of live tensors during ``fn()`` above its start (the CPU allocator's running total, from the
    profiler's memory events), MiB."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        res = fn()
    del res
    events = [
        e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]" and e.device_type().name == "CPU"
    ]
    total = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        total += e.nbytes()
        peak = max(peak, total)
    return peak / 2**20


def peak_child(case: str, args: argparse.Namespace) -> dict[str, float]:
    """Runs in a fresh process: the peak memory of one ``case`` call above the loaded model + encodings."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    H, W = args.height, args.width
    net = build_mast3r(bench_config(args.smoke), device)
    init_random_(net)
    g = torch.Generator(device="cpu").manual_seed(1)
    imgs = [(torch.rand(1, 3, H, W, generator=g) * 2 - 1).to(device) for _ in range(2)]
    with torch.inference_mode():
        (f1, p1), (f2, p2) = (net.encode(im) for im in imgs)

    def call():
        with torch.inference_mode():
            if case == "decode":
                return net.decode(f1, p1, f2, p2, (H, W))
            if case == "symmetric":
                return net.decode_symmetric(f1, p1, f2, p2, (H, W))
            first = net.decode(f1, p1, f2, p2, (H, W))
            return first, net.decode(f2, p2, f1, p1, (H, W))

    out = {}
    for label in ("first", "steady"):  # the process's first call, then a warmed-up one
        _release_free_heap()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            res = call()
            torch.cuda.synchronize(device)
            out[label] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        else:
            base = _proc_status_mib("VmRSS")
            _reset_hwm()
            res = call()
            out[label] = _proc_status_mib("VmHWM") - base
        del res
    out["live"] = out["steady"] if device.type == "cuda" else live_tensor_peak_mib(call)
    return out


def measure_peaks(args: argparse.Namespace) -> dict[str, float]:
    """``peak_<case>_mib``, ``peak_<case>_first_call_mib``, ``peak_<case>_live_mib``: one fresh process a case."""
    res: dict[str, float] = {}
    for case in PEAK_CASES:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--peak-child", case, "--device", args.device]
        cmd += ["--threads", str(args.threads), "--height", str(args.height), "--width", str(args.width)]
        cmd += ["--smoke"] if args.smoke else []
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"peak-memory child {case!r} failed:\n{proc.stderr}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        res[f"peak_{case}_mib"] = r["steady"]
        res[f"peak_{case}_first_call_mib"] = r["first"]
        res[f"peak_{case}_live_mib"] = r["live"]
    return res


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
    ap.add_argument(
        "--pairs", type=int, default=1, help="pairs per symmetric decode call (backend.decode_batch); times per pair"
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--smoke", action="store_true", help="a tiny config (checks the script, not the speed)")
    ap.add_argument("--skip-peak", action="store_true", help="skip the per-call peak-memory subprocesses")
    ap.add_argument("--only-peak", action="store_true", help="only the per-call peak-memory figures")
    ap.add_argument("--peak-child", choices=PEAK_CASES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.peak_child is not None:
        print(json.dumps(peak_child(args.peak_child, args)))
        return 0
    if args.only_peak:
        for k, v in measure_peaks(args).items():
            print(f"{k:32s} {v:.4g}")
        return 0

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    H, W = args.height, args.width
    cfg = bench_config(args.smoke)
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
            if args.pairs == 1:
                net.decode_symmetric(*enc[1], *enc[2], (H, W))
            else:  # one keyframe against `pairs` candidates (the same image: the cost does not depend on it)
                f1, p1 = (t.expand(args.pairs, -1, -1) for t in enc[1])
                f2, p2 = (t.expand(args.pairs, -1, -1).contiguous() for t in enc[2])
                net.decode_symmetric(f1, p1, f2, p2, (H, W))

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
    td = [t / args.pairs for t in timed(dec_sym, device, args.repeats)]
    res["pairs_per_call"] = args.pairs
    res["decode_symmetric_ms_per_pair"] = statistics.median(td)
    res["decode_symmetric_cpu_ms_per_pair_per_thread"] = (
        statistics.median(CPU_MS[id(dec_sym)]) / args.threads / args.pairs
    )
    res["rss_peak_mb"] = rss_mb()
    res["rss_inference_delta_mb"] = rss_mb() - rss1
    if not args.skip_unbatched:
        res["decode_two_calls_ms_per_pair"] = statistics.median(timed(dec_two, device, args.repeats))
    res["encoder_gflops"] = enc_flops / 1e9 / (res["encoder_ms_per_image"] * 1e-3)
    res["decode_gflops"] = dec_flops / 1e9 / (res["decode_symmetric_ms_per_pair"] * 1e-3)
    res["encoder_frac_of_matmul"] = res["encoder_gflops"] / mm
    res["decode_frac_of_matmul"] = res["decode_gflops"] / mm
    if not args.skip_unbatched:
        res["two_calls_over_batched_time"] = res["decode_two_calls_ms_per_pair"] / res["decode_symmetric_ms_per_pair"]
    if not args.skip_peak:
        del net, enc  # the children load their own copy
        gc.collect()
        res.update(measure_peaks(args))

    for k, v in res.items():
        print(f"{k:32s} {v:.4g}" if isinstance(v, float) else f"{k:32s} {v}")
    if args.json is not None:
        args.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
