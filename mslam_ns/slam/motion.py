"""Motion filter: decide, before any network work, whether a frame is worth a decode; pose the others.

On a CPU the network costs seconds per frame while consecutive frames of a 30 fps video barely differ. The
filter compares a small blurred grey thumbnail of each incoming frame with the one of the last decoded
frame and estimates the mean image motion between them photometrically: to first order
``I1 - I0 = -grad(I) . u``, so over the image ``mean|I1 - I0| ~ (2 / pi) |u| mean|grad I|`` for motion
directions uniformly spread against the gradients, which gives

    motion ~ (pi / 2) * mean|I1 - I0| / mean|grad I|      (thumbnail pixels; / width = fraction of width)

It costs well under a millisecond per frame, needs no texture model, is exact for a pure translation of a
smooth image in the small-motion limit and saturates (estimates too low) only beyond a few thumbnail pixels,
far above the threshold. A brightness change or a cut raises it (decode: the safe side); a black or flat
frame has no gradient and always counts as moved (so tracking loss is seen as it happens).

Skipped frames are recorded with the keyframe and relative pose of the last tracked frame (a provisional
pose) and flagged `interpolated`; every reader of frame poses replaces those by interpolation on Sim(3)
between the world poses of the nearest tracked frames before and after (`interpolate_skipped`), so they
follow every backend update. A skipped LAST frame is decoded by `SlamSystem.finish()`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mslam_ns.config import MotionFilterConfig
from mslam_ns.geometry import sim3

__all__ = ["MotionFilter", "estimate_motion", "thumbnail", "interpolate_skipped"]

_FLAT = 1e-4  # mean |grad| (grey in [0, 1] per thumbnail pixel) below which a thumbnail has no texture


def thumbnail(image: np.ndarray | Tensor, width: int) -> Tensor:
    """Grey thumbnail [h, width] float32 in [0, 1] of an RGB (or grey) uint8 image [H, W(, 3)]: area
    downsampling, then a [1 2 1] blur (which widens the range where the linear motion estimate holds)."""
    img = torch.from_numpy(np.asarray(image, dtype=np.float32))  # a copy: the input may be read-only
    if img.ndim == 3:
        img = img[..., :3].mean(-1)
    H, W = img.shape
    width = max(8, min(int(width), W))
    height = max(8, round(H * width / W))
    t = F.interpolate(img[None, None] / 255.0, size=(height, width), mode="area")
    k = torch.tensor([0.25, 0.5, 0.25])
    t = F.conv2d(F.pad(t, (1, 1, 0, 0), mode="replicate"), k.view(1, 1, 1, 3))
    t = F.conv2d(F.pad(t, (0, 0, 1, 1), mode="replicate"), k.view(1, 1, 3, 1))
    return t[0, 0]


def estimate_motion(a: Tensor, b: Tensor) -> float:
    """Estimated mean motion between two thumbnails [h, w], in thumbnail pixels (inf when either is flat)."""
    if a.shape != b.shape:
        return math.inf
    m = 0.5 * (a + b)
    gx = (m[1:-1, 2:] - m[1:-1, :-2]) * 0.5
    gy = (m[2:, 1:-1] - m[:-2, 1:-1]) * 0.5
    grad = float(torch.sqrt(gx * gx + gy * gy).mean())
    if grad < _FLAT or float(a.std()) < _FLAT or float(b.std()) < _FLAT:
        return math.inf
    diff = float((b[1:-1, 1:-1] - a[1:-1, 1:-1]).abs().mean())
    return 0.5 * math.pi * diff / grad


class MotionFilter:
    """Keeps the thumbnail of the last decoded frame; `should_skip(image)` for each new frame."""

    def __init__(self, cfg: MotionFilterConfig):
        self.cfg = cfg
        self._ref: Tensor | None = None
        self._last: tuple[int, Tensor] | None = None  # (id of the image, its thumbnail) from should_skip
        self.run_length = 0  # frames skipped since the last decoded one
        self.skipped = 0
        self.last_motion = math.inf

    def should_skip(self, image: np.ndarray | Tensor) -> bool:
        """True when the frame moved less than `min_motion` (fraction of the width) since the last decoded
        frame and fewer than `max_skip` frames have been skipped in a row. Call `decoded(image)` for every
        frame that is not skipped."""
        self._last = None
        if self._ref is None or self.run_length >= self.cfg.max_skip:
            return False
        t = thumbnail(image, self.cfg.thumb_width)
        self._last = (id(image), t)
        self.last_motion = estimate_motion(self._ref, t) / t.shape[1]
        if self.last_motion < self.cfg.min_motion:
            self.run_length += 1
            self.skipped += 1
            return True
        return False

    def decoded(self, image: np.ndarray | Tensor) -> None:
        """The frame went through the network: it is the new reference (the thumbnail `should_skip` just
        made of this same image is reused)."""
        last, self._last = self._last, None
        self._ref = last[1] if last is not None and last[0] == id(image) else thumbnail(image, self.cfg.thumb_width)
        self.run_length = 0

    def reset(self) -> None:
        """Forget the reference (tracking lost: decode every frame until it resumes)."""
        self._ref = None
        self._last = None
        self.run_length = 0


def interpolate_skipped(ts: Tensor, T: Tensor, skipped: Tensor) -> Tensor:
    """World poses with every skipped frame placed on Sim(3) between its nearest non-skipped neighbours.

    ts [N] timestamps, T [N, 8] T_WC, skipped [N] bool. Row k between tracked rows p < k < n gets
    ``T_p exp(a log(T_p^-1 T_n))`` with ``a = (t_k - t_p) / (t_n - t_p)`` (by row when the timestamps do not
    increase). Skipped rows with no tracked row after them keep their (provisional) pose. Returns a new tensor
    in T's dtype and device; T itself when nothing is skipped.
    """
    skipped = torch.as_tensor(skipped, dtype=torch.bool).cpu()
    if not bool(skipped.any()):
        return T
    n = T.shape[0]
    rows = torch.arange(n)
    tracked = rows[~skipped]
    if tracked.numel() == 0:
        return T
    k = rows[skipped]
    pos = torch.searchsorted(tracked, k)  # index in `tracked` of the first tracked row after k
    inner = (pos > 0) & (pos < tracked.numel())
    if not bool(inner.any()):
        return T
    k, p, q = k[inner], tracked[pos[inner] - 1], tracked[pos[inner]]
    t = torch.as_tensor(ts, dtype=torch.float64).cpu()
    dt = t[q] - t[p]
    a = torch.where(dt > 0, (t[k] - t[p]) / dt.clamp_min(1e-12), (k - p).double() / (q - p).double())
    a = a.clamp(0.0, 1.0)
    Td = T.detach().cpu().double()
    Tp, Tq = Td[p], Td[q]
    xi = sim3.log(sim3.mul(sim3.inv(Tp), Tq))  # [m, 7]
    out = Td.clone()
    out[k] = sim3.normalize(sim3.mul(Tp, sim3.exp(a[:, None] * xi)))
    return out.to(T)
