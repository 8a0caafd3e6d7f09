"""From a video to a trained splatfacto: SLAM, nerfstudio export, then `ns-train` on the result.

python examples/export_and_train.py my_video.mp4 work/          # SLAM + export, prints the train command
python examples/export_and_train.py my_video.mp4 work/ --train  # ... and trains (a GPU is advisable)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from mslam_ns.cli import main as mslam_ns
from mslam_ns.io.rundir import DatasetDir


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("work", type=Path)
    ap.add_argument("--prior", default="mast3r", choices=["mast3r", "oracle"])
    ap.add_argument("--config", type=Path, default=None, help="a preset from configs/")
    ap.add_argument("--img-size", type=int, default=None)
    ap.add_argument("--train", action="store_true", help="run ns-train splatfacto on the export")
    args = ap.parse_args()

    run, dataset = args.work / "run", args.work / "nerfstudio"
    cmd = ["run", str(args.data), "--out", str(run), "--prior", args.prior, "--quiet"]
    cmd += ["--config", str(args.config)] if args.config else []
    cmd += ["--img-size", str(args.img_size)] if args.img_size else []
    if mslam_ns(cmd) != 0:
        return 2
    if mslam_ns(["export", str(run), "--format", "nerfstudio", "--out", str(dataset), "--quiet"]) != 0:
        return 2
    train = ["ns-train", "splatfacto", "--data", str(dataset)]
    print("dataset ready:", DatasetDir(dataset).transforms)
    print("train with:", " ".join(train))
    if args.train:
        return subprocess.call(train)
    return 0


if __name__ == "__main__":
    sys.exit(main())
