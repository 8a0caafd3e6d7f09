"""`mslam-ns infer`: run MASt3R on one image pair and save the symmetric prediction as .npz."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _resolve(checkpoint: Path | None) -> Path:
    try:
        from mslam_ns.model.weights import resolve_checkpoint
    except ImportError as e:  # the weights helper is optional for this command
        if checkpoint is None:
            from mslam_ns.errors import UserError

            raise UserError(f"no --checkpoint given and the weight cache is unavailable ({e})") from None
        return Path(checkpoint)
    return Path(resolve_checkpoint("mast3r", checkpoint))


def infer(
    image1: Path, image2: Path, checkpoint: Path | None = None, out: Path = Path("pair.npz"), size: int = 512
) -> int:
    """Predict pointmaps, confidences and descriptors for an image pair (both orderings).

    Writes X [4, H, W, 3], C [4, H, W], D [4, H, W, F], Q [4, H, W] stacked as (ii, ji, jj, ij) (X^j_i =
    points of image j in the camera frame of image i), plus img1/img2 (the network crops, uint8).

    Args:
        image1: first image (i).
        image2: second image (j); must pre-process to the same size as image1.
        checkpoint: MASt3R .pth; default: the cached official checkpoint (downloaded if missing).
        out: output .npz path (written atomically).
        size: long-edge size of the network input.
    """
    import torch

    from mslam_ns.errors import UserError
    from mslam_ns.io.atomic import atomic_write
    from mslam_ns.model import load_mast3r
    from mslam_ns.model.preprocess import preprocess_image, to_network_input

    for p in (image1, image2):
        if Path(p).is_dir():
            raise UserError(f"{p}: is a folder, not an image file")
        if not Path(p).is_file():
            raise UserError(f"{p}: image file not found")
    out = Path(out)
    if out.is_dir():
        raise UserError(f"{out}: is a folder; --out names the .npz file to write")
    if any(q.exists() and not q.is_dir() for q in out.parents):
        raise UserError(f"{out}: cannot write there (a parent is not a folder)")
    u1, _ = preprocess_image(Path(image1), size=size)
    u2, _ = preprocess_image(Path(image2), size=size)
    if u1.shape != u2.shape:
        raise UserError(
            f"{image2}: pre-processes to {u2.shape[1]}x{u2.shape[0]}, but {image1} to "
            f"{u1.shape[1]}x{u1.shape[0]}; both images must give the same network size"
        )
    ckpt = _resolve(checkpoint)
    try:
        net = load_mast3r(ckpt, "cpu")
    except ValueError as e:
        raise UserError(str(e)) from None

    H, W = u1.shape[:2]
    with torch.inference_mode():
        f1, p1 = net.encode(to_network_input(u1))
        f2, p2 = net.encode(to_network_input(u2))
        (r11, r21), (r22, r12) = net.decode_symmetric(f1, p1, f2, p2, (H, W))
    order = (r11, r21, r22, r12)

    def stack(key: str) -> np.ndarray:
        return torch.cat([r[key] for r in order]).float().numpy()

    arrays = {
        "X": stack("pts3d"),
        "C": stack("conf"),
        "D": stack("desc"),
        "Q": stack("desc_conf"),
        "img1": u1,
        "img2": u2,
    }
    try:
        with atomic_write(out, "wb") as f:
            np.savez(f, **arrays)
    except OSError as e:  # disk full, permissions: nothing was written (atomic_write cleaned up)
        raise UserError(f"{out}: cannot write ({e.strerror or e})") from None
    print(f"wrote {out}: X/C/D/Q [4, {H}, {W}, ...] (orderings ii, ji, jj, ij)")
    return 0
