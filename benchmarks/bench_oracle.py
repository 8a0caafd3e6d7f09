"""Oracle-prior benchmark: ms per encode / decode / decode_mono / retrieval_features at 512x384 on CPU.

Builds a synthetic 640x480 sequence (`mslam_ns.io.synthetic.generate_sequence`, 12 frames) in a temporary
folder, opens it with `open_source` and `OraclePrior.from_source(source, size=512)` (network 512x384), then
runs the SLAM's access pattern frame by frame:

- ``encode(k)`` (includes reading frame k's depth map from disk),
- ``decode(k, k-1)`` (the tracking pass),
- ``decode(k-1, k)`` (the other ordering, as ``decode_symmetric`` does for keyframes),
- ``decode_mono(k)``,
- ``retrieval_features(k)``,

then repeats ``decode`` / ``decode_mono`` on recent pairs ("warm", frames still in the prior's LRU).
Prints, per op, the median and best wall time and the median CPU time of the process (with one thread the
CPU time is what the op costs on an idle machine; the wall time also counts the time other processes took
the cores). ``torch.set_num_threads(--threads)`` (default 2, the demo machine); the oracle itself runs with
``--oracle-threads`` (default: the prior's default, 1; ``none``: the caller's setting).

Measured on the 2-core development machine while other jobs were running (wall times are noisy: compare
figures from one run), median wall ms / median CPU ms; "before" is commit e753948:

======================  =====================  =====================  =====================  =================
op                      before, --threads 2    after, --threads 2     before, --threads 1    after, --threads 1
======================  =====================  =====================  =====================  =================
encode                  68 / 42                43 / 42                11 / 11                40 / 40
decode                  704 / 456              19 / 19                150 / 150              18 / 18
decode (other order)    312 / 188              19 / 19                61 / 61                18 / 18
decode_mono             223 / 141              15 / 15                52 / 52                14 / 14
retrieval_features      318 / 223              4.5 / 4.6              82 / 82                4.2 / 4.2
decode (warm)           252 / 248              19 / 19                71 / 71                18 / 18
======================  =====================  =====================  =====================  =================

Before, ``encode`` only resampled the depth and the first ``decode`` of a frame computed its descriptors;
now ``encode`` does all per-frame work (encode + first decode: 161 ms -> 58 ms on one thread).

Camera errors (issue 7: each view back-projected through its own perturbed pinhole) cost little: the last
line compares the same warm passes with and without them, interleaved in one run. Measured on the loaded
2-core machine, --threads 1 --frames 8 --warm-repeats 6, median CPU ms: decode 35.0 -> 36.1 (x1.03),
decode_mono 28.6 -> 29.7 (x1.04) (the views are written in place into recycled outputs);
``retrieval_features`` (now 256-d: four scales plus a random Fourier map) 8 -> 10-12 ms.

Usage: .venv/bin/python benchmarks/bench_oracle.py [--threads 2] [--oracle-threads none] [--frames 12]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mslam_ns.io.sources import open_source  # noqa: E402
from mslam_ns.io.synthetic import generate_sequence  # noqa: E402
from mslam_ns.model.preprocess import preprocess_image, to_unit_float  # noqa: E402
from mslam_ns.prior.oracle import OraclePrior  # noqa: E402


def timed(fn: Callable[[], object], out: list[tuple[float, float]]) -> object:
    """Run fn, append (wall ms, process CPU ms)."""
    c0, t0 = time.process_time(), time.perf_counter()
    res = fn()
    out.append(((time.perf_counter() - t0) * 1e3, (time.process_time() - c0) * 1e3))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument(
        "--oracle-threads",
        default="default",
        help="OraclePrior(threads=...): an int, 'none' (the caller's setting) or 'default'",
    )
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--noise", default="mast3r")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--warm-repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    kw: dict = {}
    if args.oracle_threads != "default":
        kw["threads"] = None if args.oracle_threads == "none" else int(args.oracle_threads)

    times: dict[str, list[tuple[float, float]]] = {
        k: []
        for k in (
            "encode",
            "decode",
            "decode (other order)",
            "decode_mono",
            "retrieval_features",
            "decode (warm)",
            "decode_mono (warm)",
        )
    }
    with tempfile.TemporaryDirectory() as tmp:
        seq = generate_sequence(Path(tmp) / "seq", n_frames=args.frames, width=640, height=480)
        source = open_source(seq)
        prior = OraclePrior.from_source(source, size=args.size, noise=args.noise, **kw)
        W, H = prior.transform.network_size
        images = [to_unit_float(preprocess_image(source[k].image, size=args.size)[0]) for k in range(len(source))]

        encs = []
        for k in range(len(source)):
            encs.append(timed(lambda: prior.encode(images[k], k), times["encode"]))
            if k > 0:
                timed(lambda: prior.decode(encs[k], encs[k - 1]), times["decode"])
                timed(lambda: prior.decode(encs[k - 1], encs[k]), times["decode (other order)"])
            timed(lambda: prior.decode_mono(encs[k]), times["decode_mono"])
            timed(lambda: prior.retrieval_features(encs[k]), times["retrieval_features"])
        recent = range(max(1, len(source) - 4), len(source))
        for _ in range(args.warm_repeats):
            for k in recent:
                timed(lambda: prior.decode(encs[k], encs[k - 1]), times["decode (warm)"])
                timed(lambda: prior.decode_mono(encs[k]), times["decode_mono (warm)"])
        # The camera errors' cost: the same passes with and without them, interleaved in this run.
        twin = OraclePrior.from_source(
            source, size=args.size, noise=replace(prior.noise, focal_sigma=0.0, pp_sigma=0.0), **kw
        )
        twin_encs = [twin.encode(images[k], k) for k in recent]
        ab: dict[str, list[tuple[float, float]]] = {k: [] for k in ("with", "without", "mono with", "mono without")}
        for _ in range(args.warm_repeats):
            for n, k in enumerate(recent):
                if n == 0:
                    continue
                timed(lambda: prior.decode(encs[k], encs[k - 1]), ab["with"])
                timed(lambda: twin.decode(twin_encs[n], twin_encs[n - 1]), ab["without"])
                timed(lambda: prior.decode_mono(encs[k]), ab["mono with"])
                timed(lambda: twin.decode_mono(twin_encs[n]), ab["mono without"])

    print(
        f"oracle prior ({args.noise}), network {W}x{H}, {len(source)} frames, "
        f"torch threads {torch.get_num_threads()}, oracle threads {getattr(prior, 'threads', 'n/a')}"
    )
    print(f"{'op':<24}{'median ms':>11}{'best ms':>10}{'CPU ms':>9}")
    for name, ts in times.items():
        wall, cpu = [t[0] for t in ts], [t[1] for t in ts]
        print(f"{name:<24}{statistics.median(wall):>11.1f}{min(wall):>10.1f}{statistics.median(cpu):>9.1f}")
    cpu_ms = {k: statistics.median(t[1] for t in v) for k, v in ab.items()}
    print(
        f"camera errors (perturbed pinhole per view), median CPU ms with / without: decode "
        f"{cpu_ms['with']:.1f} / {cpu_ms['without']:.1f} (x{cpu_ms['with'] / cpu_ms['without']:.2f}), "
        f"decode_mono {cpu_ms['mono with']:.1f} / {cpu_ms['mono without']:.1f} "
        f"(x{cpu_ms['mono with'] / cpu_ms['mono without']:.2f})"
    )


if __name__ == "__main__":
    main()
