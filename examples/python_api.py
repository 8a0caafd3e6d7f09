"""The Python API on a video (or image folder / dataset): poses of every frame, keyframes, points.

python examples/python_api.py my_video.mp4                    # MASt3R prior (downloads the checkpoint)
python examples/python_api.py SEQUENCE --prior oracle --img-size 128   # a sequence with depth + GT
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mslam_ns.commands.slam import make_prior, open_dataset
from mslam_ns.config import SlamConfig
from mslam_ns.slam.system import SlamSystem


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--prior", default="mast3r", choices=["mast3r", "oracle"])
    ap.add_argument("--img-size", type=int, default=SlamConfig.img_size)
    ap.add_argument("--max-frames", type=int, default=None)
    args = ap.parse_args()

    source = open_dataset(args.data, max_frames=args.max_frames)  # video, folder or dataset; undistorted
    cfg = SlamConfig(mode="rays", img_size=args.img_size)  # uncalibrated: intrinsics are estimated
    prior = make_prior(source, args.prior, "mast3r", cfg.img_size, seed=0, checkpoint=None, device=cfg.device)
    system = SlamSystem(prior, cfg)
    system.run(source)

    ts, names, T_WC = system.frame_poses()  # every frame: Sim(3) camera -> world, OpenCV axes
    _, _, T_kf = system.keyframe_poses()
    xyz, rgb = system.points()  # fused points in the same world frame
    K = system.intrinsics()  # in ORIGINAL image pixels
    print(f"{len(ts)} frames, {len(T_kf)} keyframes, {len(xyz)} points")
    print(f"first frame {names[0]} at {T_WC[0, :3].tolist()}, last at {T_WC[-1, :3].tolist()}")
    if K is not None:
        print(f"intrinsics fx {K[0, 0]:.1f} fy {K[1, 1]:.1f} cx {K[0, 2]:.1f} cy {K[1, 2]:.1f}")


if __name__ == "__main__":
    main()
