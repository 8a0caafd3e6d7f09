"""`mslam-ns synth OUT`: write a synthetic RGB-D sequence (`mslam_ns.io.synthetic`)."""

from __future__ import annotations

import time
from pathlib import Path

__all__ = ["synth_command"]


def synth_command(
    out: Path,
    frames: int = 120,
    width: int = 640,
    height: int = 480,
    seed: int = 0,
    trajectory: str = "loop",
) -> int:
    """Write a synthetic RGB-D sequence (textured room, exact depth and poses) in the TUM RGB-D layout.

    Args:
        out: output folder (created; an earlier synthetic sequence there is replaced).
        frames: number of frames (30 Hz).
        width: image width in pixels.
        height: image height in pixels.
        seed: scene and texture seed.
        trajectory: camera path: "loop" (a closed loop with a pure-rotation segment halfway).
    """
    from mslam_ns.io.synthetic import generate_sequence

    t0 = time.perf_counter()
    path = generate_sequence(out, frames, width, height, seed, trajectory)
    dt = time.perf_counter() - t0
    print(f"wrote {frames} frames ({width}x{height}, seed {seed}, {trajectory}) to {path} in {dt:.1f} s")
    return 0
