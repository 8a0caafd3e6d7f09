"""The CPU preset (`configs/cpu.yaml`) against the every-frame setting: cost and accuracy.

Accuracy: both settings run on the same synthetic 640x480 30 fps sequence with the oracle prior (MASt3R-like
noise, rays mode, backend on); the all-frame ATE (every frame, interpolated ones included) and median
orientation error are compared (goal: preset ATE <= 1.5x every-frame).

Cost with the full network: each network call of those runs is counted (encoder, tracking decode,
symmetric backend decode, mono decode), the full ViT-L with random weights is timed per call at the same
resolution in this run, and the projected wall time is the counts times those unit times plus the SLAM's own
time measured in the run (its wall time minus the oracle's), each setting's network timed in its own
`precision` (a preset with `precision: bf16` is timed in bf16). Goal: a 30 s video (900 frames) under 30 min
on 2 CPU cores, every frame posed.

    .venv/bin/python benchmarks/bench_cpu_preset.py [--frames 900] [--threads 2] [--skip-network]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CALLS = ("encode", "decode", "decode_symmetric", "decode_mono")


def count_calls(prior) -> tuple[dict[str, int], list[float]]:
    """Wrap the prior's network calls on the instance: (call counts, [seconds spent in them])."""
    counts = dict.fromkeys(CALLS, 0)
    spent = [0.0]
    depth = [0]  # only outermost calls count (the oracle's decode_symmetric calls its decode twice)
    for name in CALLS:
        fn = getattr(prior, name)

        def wrapped(*a, _fn=fn, _name=name, **k):
            outer = depth[0] == 0
            counts[_name] += int(outer)
            depth[0] += 1
            t0 = time.perf_counter()
            try:
                return _fn(*a, **k)
            finally:
                depth[0] -= 1
                if outer:
                    spent[0] += time.perf_counter() - t0

        setattr(prior, name, wrapped)
    return counts, spent


def run_setting(seq: Path, cfg) -> dict:
    from mslam_ns.eval.ate import ate
    from mslam_ns.io.sources import open_source
    from mslam_ns.prior.oracle import OraclePrior
    from mslam_ns.slam.system import SlamSystem

    src = open_source(seq)
    prior = OraclePrior.from_source(src, size=cfg.img_size, noise="mast3r", seed=0)
    counts, spent = count_calls(prior)
    system = SlamSystem(prior, cfg)
    t0 = time.perf_counter()
    system.run(src)
    wall = time.perf_counter() - t0
    ts, _, T = system.frame_poses()
    r = ate(ts.numpy(), T.double().numpy()[:, :7], np.asarray(src.timestamps), src.gt_poses)
    return {
        "frames": len(src),
        "posed": int(T.shape[0]),
        "interpolated": int(system.trajectory.interpolated_mask().sum()),
        "keyframes": len(system.keyframes),
        "ate": r.rmse_percent_of_path,
        "rot": r.rot_median_deg,
        "counts": counts,
        "precision": cfg.precision,
        "slam_s": wall - spent[0],
        "wall_s": wall,
    }


def network_unit_times(H: int, W: int, repeats: int, precision: str = "fp32") -> dict[str, float]:
    """Seconds per call of the full ViT-L (random weights) through `Mast3rPrior` in `precision` (the setting's
    `SlamConfig.precision`), best of `repeats`."""
    from benchmarks.bench_network import init_random_
    from mslam_ns.model import Mast3rConfig, build_mast3r
    from mslam_ns.prior.mast3r import AMP_DTYPES, Mast3rPrior

    net = build_mast3r(Mast3rConfig())
    init_random_(net)
    prior = Mast3rPrior(net, amp_dtype=AMP_DTYPES[precision])
    img = torch.rand(3, H, W)
    e1, e2 = prior.encode(img, 0), prior.encode(img.flip(-1), 1)

    def best(fn) -> float:
        fn()
        out = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
        return min(out)

    return {
        "encode": best(lambda: prior.encode(img, 0)),
        "decode": best(lambda: prior.decode(e1, e2)),
        "decode_symmetric": best(lambda: prior.decode_symmetric(e1, e2)),
        "decode_mono": best(lambda: prior.decode_mono(e1)),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=900, help="frames of the synthetic 30 fps sequence")
    ap.add_argument("--trajectory", default="loop2")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1, help="timings of each network call (after a warm-up)")
    ap.add_argument("--skip-network", action="store_true", help="accuracy and call counts only")
    ap.add_argument("--preset", type=Path, default=ROOT / "configs" / "cpu.yaml")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from mslam_ns.commands.options import RunOptions, load_options, to_slam_config
    from mslam_ns.config import SlamConfig
    from mslam_ns.io.synthetic import generate_sequence

    preset = to_slam_config(load_options(RunOptions, args.preset, dataset=".").slam, "rays")
    full = SlamConfig(mode="rays", img_size=preset.img_size)
    full.motion_filter.enabled = "off"
    with tempfile.TemporaryDirectory() as tmp:
        seq = generate_sequence(Path(tmp) / "seq", args.frames, 640, 480, 0, trajectory=args.trajectory)
        res = {"every frame": run_setting(seq, full), f"preset {args.preset.name}": run_setting(seq, preset)}
        from mslam_ns.io.sources import open_source

        H, W = _network_hw(open_source(seq), preset.img_size)
    precisions = {name: r["precision"] for name, r in res.items()}
    units = {}
    if not args.skip_network:
        units = {p: network_unit_times(H, W, args.repeats, p) for p in sorted(set(precisions.values()))}
    seconds = args.frames / 30.0
    print(
        f"CPU preset benchmark: {args.frames} frames ({seconds:.0f} s at 30 fps) 640x480, network {W}x{H}, "
        f"{args.threads} threads, oracle prior (mast3r noise) for accuracy"
    )
    for p, unit in units.items():
        print(f"  full ViT-L (random weights, {p}) per call: " + ", ".join(f"{k} {v:.2f} s" for k, v in unit.items()))
    base = None
    for name, r in res.items():
        c = r["counts"]
        unit = units.get(precisions[name])
        line = (
            f"  {name:22s} ATE {r['ate']:.3f}% of path, rot {r['rot']:.2f} deg; {r['posed']}/{r['frames']} posed "
            f"({r['interpolated']} interpolated), {r['keyframes']} keyframes; calls: "
            + ", ".join(f"{k} {v}" for k, v in c.items())
        )
        print(line)
        if unit is not None:
            net_s = sum(c[k] * unit[k] for k in CALLS)
            total = net_s + r["slam_s"]
            r["projected_s"] = total
            print(
                f"  {'':22s} projected with the full network ({precisions[name]}): {total / 60:.1f} min "
                f"(network {net_s / 60:.1f} min + SLAM {r['slam_s'] / 60:.1f} min)"
            )
        if base is None:
            base = r
        else:
            ratio = r["ate"] / max(base["ate"], 1e-9)
            print(f"  ATE preset / every frame: {ratio:.2f}x (goal <= 1.5x)")
            if unit is not None:
                print(
                    f"  time every frame / preset: {base['projected_s'] / r['projected_s']:.1f}x; preset "
                    f"{r['projected_s'] / 60:.1f} min for {seconds:.0f} s of video (goal < 30 min)"
                )
    return 0


def _network_hw(src, size: int) -> tuple[int, int]:
    from mslam_ns.model.preprocess import preprocess_image

    img, _ = preprocess_image(np.asarray(src[0].image), size=size)
    return int(np.asarray(img).shape[0]), int(np.asarray(img).shape[1])


if __name__ == "__main__":
    raise SystemExit(main())
