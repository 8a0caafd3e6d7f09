"""Long videos in bounded memory: a synthetic video of many minutes through the SLAM, with its peak RAM.

The video is rendered on the fly (nothing written to disk): a textured room, a camera going round it lap
after lap (`--lap-s` seconds a lap), `--fps` frames a second, `--render` pixels wide; the oracle prior (MASt3R
noise, rays mode) reads the ground-truth depth of the frames it is asked about. The SLAM runs as a CPU user
runs it: motion filter on, backend on with retrieval, keyframes spilled to a scratch folder
(`cfg.memory`), dense optimisation over a window of keyframes (`cfg.backend.window`).

Printed: frames, decoded frames, keyframes, all-frame ATE, wall time, the process's peak resident memory
(sampled every 0.2 s, and the kernel's own high-water mark), resident memory at every tenth of the video (flat
once the window is full), the scratch folder's size; and, as the reference measured in the same run, the
same SLAM with spilling and windowing off on the first `--ref-s` seconds: its memory growth per keyframe,
projected to the long run's keyframes (the ratio says how much the design saves).

    .venv/bin/python benchmarks/bench_long_video.py [--minutes 20] [--fps 30] [--size 512] [--render 320]
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
import threading
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


class PeakSampler:
    """Peak resident memory sampled in a background thread."""

    def __init__(self, period_s: float = 0.2) -> None:
        self.peak = rss_mib()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, args=(period_s,), daemon=True)
        self._t.start()

    def _run(self, period_s: float) -> None:
        while not self._stop.wait(period_s):
            self.peak = max(self.peak, rss_mib())

    def stop(self) -> float:
        self._stop.set()
        self._t.join()
        return max(self.peak, rss_mib())


def rendered_source(n_frames: int, fps: float, laps: int, width: int, seed: int = 0):
    """A `FrameSource` that renders the synthetic room on demand (LRU of a few frames' image + depth)."""
    from mslam_ns.io.frames import FrameSource
    from mslam_ns.io.synth_scene import SyntheticRoom, default_intrinsics
    from mslam_ns.io.synth_trajectory import make_trajectory

    height = width * 3 // 4
    room = SyntheticRoom(seed)
    traj = make_trajectory(n_frames, "loop", laps=laps)
    intr = default_intrinsics(width, height)

    class Rendered(FrameSource):
        kind = "rendered"

        def __init__(self) -> None:
            super().__init__(
                Path(f"rendered-{n_frames}"),
                timestamps=np.arange(n_frames) / fps,
                names=[f"frame_{k:06d}" for k in range(n_frames)],
                intrinsics=intr,
                gt_poses=traj.poses,
            )
            self._size = (width, height)
            self._lru: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()

        def _render(self, k: int) -> tuple[np.ndarray, np.ndarray]:
            hit = self._lru.get(k)
            if hit is None:
                hit = room.render(traj.poses[k], intr)
                self._lru[k] = hit
                while len(self._lru) > 8:
                    self._lru.popitem(last=False)
            return hit

        def _read_image(self, k: int) -> np.ndarray:
            return self._render(k)[0]

        def _read_depth(self, k: int) -> np.ndarray:
            return self._render(k)[1].astype(np.float32)

    return Rendered()


def run(src, args, bounded: bool, n_frames: int, marks: int = 10) -> dict:
    from mslam_ns.config import SlamConfig
    from mslam_ns.eval.ate import ate
    from mslam_ns.model.preprocess import plan_transform
    from mslam_ns.prior.oracle import OraclePrior
    from mslam_ns.slam.system import SlamSystem

    cfg = SlamConfig(mode="rays", img_size=args.size)
    cfg.motion_filter.enabled = "on"
    cfg.motion_filter.min_motion = args.min_motion
    cfg.motion_filter.max_skip = args.max_skip
    cfg.memory.spill = bounded
    cfg.memory.keep = args.keep
    cfg.backend.window = args.window if bounded else 0
    cfg.memory.trim = bounded and not args.no_trim
    w, h = src.image_size
    prior = OraclePrior(src.depth, src.gt_poses, src.intrinsics.K, plan_transform(w, h, args.size), "mast3r", seed=0)
    gc.collect()
    base = rss_mib()
    sampler = PeakSampler()
    system = SlamSystem(prior, cfg)
    curve = []
    t0 = time.perf_counter()
    step = max(1, n_frames // marks)
    for i in range(n_frames):
        system.step(src[i])
        if (i + 1) % step == 0 or i + 1 == n_frames:
            curve.append((i + 1, len(system.keyframes), round(rss_mib() - base)))
            if args.verbose:
                print(
                    f"  frame {i + 1}: {curve[-1][1]} keyframes, +{curve[-1][2]} MiB, {time.perf_counter() - t0:.0f} s",
                    flush=True,
                )
    system.finish()
    wall = time.perf_counter() - t0
    peak = sampler.stop() - base
    ts, _, T = system.frame_poses()
    r = ate(ts.numpy(), T.double().numpy()[:, :7], np.asarray(src.timestamps[:n_frames]), src.gt_poses[:n_frames])
    st = system.stats()
    store = system.map.spill_store
    out = {
        "frames": n_frames,
        "decoded": n_frames - int(system.trajectory.interpolated_mask().sum()),
        "keyframes": st["keyframes"],
        "loop_edges": st["loop_edges"],
        "pose_graph_runs": getattr(system.backend.stats, "pose_graph_runs", 0),
        "ate_pct": r.rmse_percent_of_path,
        "rot_deg": r.rot_median_deg,
        "wall_s": wall,
        "peak_mib": peak,
        "curve": curve,
        "disk_mib": (store.nbytes if store is not None else 0) / 2**20,
        "in_memory_keyframe_mib": system.keyframes.nbytes()["device"] / 2**20,
    }
    system.map.close()
    del system, prior
    gc.collect()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--lap-s", type=float, default=40.0, help="seconds per lap of the room")
    ap.add_argument("--size", type=int, default=512, help="network image long side")
    ap.add_argument("--render", type=int, default=320, help="rendered frame width (4:3)")
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--keep", type=int, default=64)
    ap.add_argument("--min-motion", type=float, default=0.04)
    ap.add_argument("--max-skip", type=int, default=15)
    ap.add_argument("--ref-s", type=float, default=60.0, help="seconds of the unbounded reference run (0: none)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--no-trim", action="store_true", help="bounded run without malloc_trim (memory.trim)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    n = int(round(args.minutes * 60 * args.fps))
    laps = max(1, int(round(args.minutes * 60 / args.lap_s)))
    src = rendered_source(n, args.fps, laps, args.render)
    print(
        f"video: {n} frames ({args.minutes:g} min at {args.fps:g} fps), {laps} laps, rendered "
        f"{args.render}x{args.render * 3 // 4}, network {args.size}; window {args.window}, keep {args.keep}"
    )
    ref = None
    if args.ref_s > 0:
        n_ref = min(n, int(round(args.ref_s * args.fps)))
        ref = run(src, args, bounded=False, n_frames=n_ref)
        print(
            f"reference (spill off, global optimisation), first {n_ref} frames: {ref['keyframes']} keyframes, "
            f"peak +{ref['peak_mib']:.0f} MiB, ATE {ref['ate_pct']:.2f}% / {ref['rot_deg']:.2f} deg, "
            f"{ref['wall_s']:.0f} s; curve {ref['curve']}",
            flush=True,
        )
    res = run(src, args, bounded=True, n_frames=n)
    print(
        f"bounded run: {res['frames']} frames, {res['decoded']} decoded, {res['keyframes']} keyframes, "
        f"{res['loop_edges']} loop edges, {res['pose_graph_runs']} pose-graph runs, {res['wall_s']:.0f} s"
    )
    print(f"  all-frame ATE {res['ate_pct']:.2f}% of the path, median rotation {res['rot_deg']:.2f} deg")
    print(
        f"  peak RSS +{res['peak_mib']:.0f} MiB above the start (kernel high-water mark "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB for the whole process); "
        f"scratch folder {res['disk_mib']:.0f} MiB; keyframe tensors in memory {res['in_memory_keyframe_mib']:.0f} MiB"
    )
    print(f"  (frame, keyframes, RSS MiB above start): {res['curve']}")
    if ref is not None and ref["keyframes"] > 1:
        per_kf = ref["peak_mib"] / ref["keyframes"]
        proj = per_kf * res["keyframes"]
        print(
            f"reference growth {per_kf:.1f} MiB per keyframe -> {proj:.0f} MiB projected for "
            f"{res['keyframes']} keyframes unbounded; bounded/projected {res['peak_mib'] / proj:.3f}"
        )


if __name__ == "__main__":
    main()
