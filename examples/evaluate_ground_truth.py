"""Evaluate against ground truth: a synthetic sequence, the SLAM, and the ATE of its trajectory.

python examples/evaluate_ground_truth.py work/ --frames 60
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mslam_ns.cli import main as mslam_ns
from mslam_ns.io.rundir import RunDir
from mslam_ns.io.synthetic import generate_sequence


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", type=Path)
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--size", type=int, nargs=2, default=(320, 240), metavar=("W", "H"))
    ap.add_argument("--img-size", type=int, default=256)
    args = ap.parse_args()

    seq = generate_sequence(args.work / "sequence", args.frames, *args.size, seed=0)  # has groundtruth.txt
    run = args.work / "run"
    if (
        mslam_ns(
            [
                "run",
                str(seq),
                "--out",
                str(run),
                "--prior",
                "oracle",
                "--img-size",
                str(args.img_size),
                "--overwrite",
                "--quiet",
            ]
        )
        != 0
    ):
        return 2
    if mslam_ns(["eval", str(run), "--gt", str(seq / "groundtruth.txt")]) != 0:
        return 2
    report = RunDir(run).read_eval()
    print(f"all frames: ATE RMSE {report['all_frames']['rmse_percent_of_path']:.2f}% of the path")
    return 0


if __name__ == "__main__":
    sys.exit(main())
