"""The oracle two-view prior: MASt3R-shaped predictions built from ground-truth depth and poses.

It implements `TwoViewPrior` so that the whole SLAM can be run, tested and debugged without the network
weights, with errors that look like MASt3R's (magnitudes: `mslam_ns.prior.noise`, presets ``none``,
``mast3r`` (default), ``hard``; chosen on the command line with ``--oracle-noise``).

What a pass ``decode(i, j)`` returns (everything deterministic per (seed, i, j)):

- ``X^i_i``: view i's depth (nearest-resampled to the network grid, holes filled by push-pull
  interpolation) back-projected with the view's perturbed pinhole (the network intrinsics with a focal error
  of ~3% and a principal-point offset of ~1% of the image size per pass and view, `noise.camera_error`), with
  per-pixel depth noise and outliers at ``ii_factor`` (half) of the X^j_i level.
- ``X^j_i``: view j's (noisy) back-projected depth moved into frame i with the ground-truth relative pose
  ``T_ij = T_WCi^-1 T_WCj``, then a relative Sim(3) error (rotation ~1 deg and scale ~1% growing with the
  baseline, translation ~2% of the baseline).
- Both views are multiplied by a per-pass scale (~2%) and by the GLOBAL scale ``global_scale`` = 0.45
  network units per metre, so trajectories need a Sim(3) alignment to be compared with ground truth.
- ``C``: 5-20 where reliable, 1-1.5 at depth discontinuities, invalid ground-truth depth and outliers.
- ``D``: unit descriptors from the IMAGES: a fixed random projection of the colour patch around each pixel
  (5x5 at dilation 1 and 3 of the slightly blurred image, patch mean removed), so that corresponding
  pixels of two views get similar descriptors; plus a small per-view perturbation.
- ``Q``: from local image gradient energy ``E`` (7x7 box mean of |grad|^2 of the blurred grey image):
  ``Q = 0.2 + 4.8 E / (E + 1e-5)`` -- below 0.5 on flat image regions (even with 8-bit noise), 2-5 on
  texture, so the SLAM's Q threshold (1.5) keeps most pixels of a textured scene, as with MASt3R.

``decode_mono(i)`` returns X^i_i for both views. ``retrieval_features`` gives 256-d descriptors computed from the
image only (whitened random projections of the colour patch at four scales relative to the image size, through
a random Fourier map) at the strongest local maxima of the gradient energy, so revisited places are
retrievable by ASMK (`mslam_ns.slam.retrieval`) without any ground truth in the decision.

Cost (512x384, one CPU thread, `benchmarks/bench_oracle.py`): ``encode`` ~30 ms (depth lookup and filling,
discontinuities, texture energy, and the base descriptors D0 -- two channels-last convolutions -- kept with Q
in an LRU of `_CACHE` frames), ``decode`` ~20 ms, ``decode_mono`` ~15 ms, ``retrieval_features`` ~6 ms (idle
machine; the camera errors add ~3-4%, measured in-run by the benchmark). A
pass only draws its errors (float32, `mslam_ns.prior.noise.PassRandom`), moves the cached depth with one
Sim(3) (``z A K^-1 (u, v, 1) + t`` from separable ray terms) and perturbs D0 with a shifted slice of a fixed
Gaussian bank; the memory of big outputs the caller dropped is recycled (`_OutputPool`), as fresh 19 MB
tensors cost as much in page faults as computing them. The oracle runs its torch ops with ``threads`` (1)
intra-op threads: they are small and memory-bound, and with 2 threads on 2 shared cores every op waits for
a descheduled thread.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mslam_ns.geometry.image_transform import ImageTransform
from mslam_ns.prior.base import Encoding, PairPrediction, TwoViewPrior, ViewPrediction
from mslam_ns.prior.noise import (
    DepthDiscs,
    DepthErrors,
    OracleNoise,
    PassRandom,
    camera_error,
    confidence,
    corrupt_depth,
    discontinuities,
    get_noise,
    near_far,
    perturbed_K,
    sample_pair_error,
    window_max,
)

if TYPE_CHECKING:
    from mslam_ns.io.frames import FrameSource

__all__ = [
    "OraclePrior",
    "OracleFrame",
    "nearest_indices",
    "resample_depth",
    "fill_depth",
    "image_descriptors",
    "texture_energy",
]

_Q_E0 = 1e-5
"""Gradient energy at which Q is half-way between its flat and textured values."""
_N_RETRIEVAL = 256
"""Maximum number of retrieval features per image."""
_RETRIEVAL_SCALES = (120, 60, 30, 15)
"""Retrieval patch scales: the image is area-downsampled by min(H, W) / each (so a scale covers the same part
of the view at any resolution) and described by 5x5 samples at dilations 1 and 2 around the keypoint."""
_RFF_SIGMA2 = 0.3
"""Squared width of the Gaussian kernel of the retrieval features' random Fourier map (unit inputs)."""
_RETRIEVAL_PART = 64
"""Dimensions per scale: retrieval features are [K, 256] (binary ASMK packs signatures in 32-bit words)."""
_CACHE = 8
"""Frames whose base descriptors D0 / Q are kept (LRU; ~20 MB a frame at 512x384)."""


@dataclass
class OracleFrame:
    """`Encoding.data` of the oracle: the network image, the ground-truth depth on the network grid and what
    every pass of the frame needs from them (computed once by `OraclePrior.encode`)."""

    image: Tensor  # [3, H, W] float32 in [0, 1], CPU
    depth: np.ndarray  # [H, W] float32 metres, holes filled (> 0 everywhere)
    valid: np.ndarray  # [H, W] bool, ground-truth depth was valid
    disc: np.ndarray  # [H, W] bool, depth discontinuity
    median_depth: float
    depth_t: Tensor  # [H, W] float32: ``depth`` as a tensor (shared memory)
    unreliable: Tensor  # [H, W] bool: disc | ~valid (low confidence in every pass)
    discs: DepthDiscs  # the discontinuity pixels and their 3x3 depth range (flying pixels)
    energy: Tensor  # [H, W] float32 texture energy E (`texture_energy`)


# --------------------------------------------------------------------------------------------- depth maps
def nearest_indices(
    transform: ImageTransform, depth_shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:  # rows [H, W], cols [H, W] int64
    """For each network pixel, the (row, col) of the nearest pixel of a depth map of ``depth_shape``.

    The depth map may have its own resolution (it is assumed to cover the same field of view as the source
    image). Ties (exactly half-way) go to the higher index.
    """
    W, H = transform.network_size
    sw, sh = transform.source_size
    dh, dw = depth_shape
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    uv = transform.to_original(np.stack([u, v], axis=-1))  # [H, W, 2] source pixels
    ud = (uv[..., 0] + 0.5) * (dw / sw) - 0.5
    vd = (uv[..., 1] + 0.5) * (dh / sh) - 0.5
    ui = np.clip(np.floor(ud + 0.5).astype(np.int64), 0, dw - 1)
    vi = np.clip(np.floor(vd + 0.5).astype(np.int64), 0, dh - 1)
    return vi, ui


def resample_depth(
    depth: np.ndarray,  # [Hd, Wd] metres (0 / NaN invalid), at source resolution or any other
    transform: ImageTransform,
) -> np.ndarray:  # [H, W] float32 on the network grid
    """Nearest-neighbour resampling of a source depth map to the network grid (through ``transform``)."""
    vi, ui = nearest_indices(transform, depth.shape)
    return np.asarray(depth, dtype=np.float32)[vi, ui]


def fill_depth(z: np.ndarray, valid: np.ndarray, default: float = 2.0) -> np.ndarray:
    """Fill invalid pixels of z [H, W] by push-pull (valid-weighted pyramid) interpolation.

    Valid pixels are unchanged; holes get a smooth blend of the surrounding valid depths. A map with no valid
    pixel becomes ``default`` everywhere.
    """
    if valid.all():
        return z.astype(np.float32)
    if not valid.any():
        return np.full(z.shape, default, dtype=np.float32)
    w = torch.from_numpy(valid.astype(np.float32))[None, None]
    zw = torch.from_numpy(np.where(valid, z, 0.0).astype(np.float32))[None, None]
    levels = [(zw, w)]
    while min(levels[-1][1].shape[-2:]) > 1:
        zw_c = F.avg_pool2d(levels[-1][0], 2, ceil_mode=True)
        w_c = F.avg_pool2d(levels[-1][1], 2, ceil_mode=True)
        levels.append((zw_c, w_c))
    top_zw, top_w = levels[-1]
    est = top_zw / top_w.clamp_min(1e-12)  # [1, 1, h, w]: at least one valid somewhere
    est = torch.where(top_w > 0, est, est[top_w > 0].mean())
    for zw_l, w_l in reversed(levels[:-1]):
        up = F.interpolate(est, size=w_l.shape[-2:], mode="bilinear", align_corners=False)
        own = zw_l / w_l.clamp_min(1e-12)
        # Blend: fully valid cells keep their own average, partially valid ones mix, empty ones take `up`.
        est = w_l * own + (1.0 - w_l) * up
    out = est[0, 0].numpy()
    return np.where(valid, z, out).astype(np.float32)


# ------------------------------------------------------------------------------------- image features
def _pad(x: Tensor, p: int) -> Tensor:  # [..., H, W] -> [..., H + 2p, W + 2p], replicate padding
    shape = x.shape
    y = F.pad(x.reshape(1, -1, shape[-2], shape[-1]), (p, p, p, p), mode="replicate")
    return y.reshape(*shape[:-2], shape[-2] + 2 * p, shape[-1] + 2 * p)


def _blur(img: Tensor, passes: int = 1) -> Tensor:  # [..., H, W] -> same
    """``passes`` times the 3x3 binomial blur ([1, 2, 1] / 4 in both directions, replicate padding)."""
    for _ in range(passes):
        p = _pad(img, 1)
        v = torch.add(p[..., :-2, :], p[..., 2:, :]).add_(p[..., 1:-1, :], alpha=2.0)
        img = torch.add(v[..., :-2], v[..., 2:]).add_(v[..., 1:-1], alpha=2.0).mul_(0.0625)
    return img


def _projection_kernels(desc_dim: int, seed: int, n_scales: int = 2) -> list[Tensor]:
    """Fixed random projection kernels [desc_dim, 3, 5, 5], zero-mean over each channel's 5x5 window."""
    rng = np.random.default_rng([seed, 0xD35C, desc_dim])
    out = []
    for _ in range(n_scales):
        k = rng.normal(size=(desc_dim, 3, 5, 5)).astype(np.float32)
        k -= k.mean(axis=(2, 3), keepdims=True)
        out.append(torch.from_numpy(k))
    return out


def _whitened_kernels(dim: int, seed: int, n_scales: int = 2) -> list[Tensor]:
    """Retrieval kernels [dim, 3, 5, 5]: a random projection of a generically WHITENED colour patch.

    The patch is expressed in an opponent colour space (luma, red-green, blue-yellow; chroma weighted 2x) and a
    5x5 DCT basis whose coefficients are weighted by their spatial frequency (capped at 2: natural images
    have ~1/f amplitude spectra, and the blurred image has little above that); the brightness DC term is
    dropped (it would dominate every feature), the chroma DC terms (zero for grey) are kept. Without
    whitening a few low-frequency components dominate every projection, so the binary ASMK signatures of
    unrelated images agree far more than chance (the analogue of MASt3R's PCA pre-whitening).
    """
    n = np.arange(5)
    dct = np.cos(np.pi * (n[None, :] + 0.5) * n[:, None] / 5.0)  # [k, n]
    dct /= np.linalg.norm(dct, axis=1, keepdims=True)
    opp = np.array([[1 / 3, 1 / 3, 1 / 3], [0.5, -0.5, 0.0], [0.25, 0.25, -0.5]])
    opp_w = np.array([1.0, 2.0, 2.0])
    rows = []
    for c in range(3):
        for ky in range(5):
            for kx in range(5):
                f = np.hypot(kx, ky)
                w = (0.0 if c == 0 else 1.0) if f == 0 else min(f, 2.0)  # no brightness DC; chroma DC kept
                spatial = np.outer(dct[ky], dct[kx])  # [5, 5]
                rows.append((opp_w[c] * w) * opp[c][:, None, None] * spatial[None])  # [3, 5, 5]
    A = np.stack(rows).reshape(75, 75)  # whitened coefficients <- raw patch
    rng = np.random.default_rng([seed, 0x3717, dim])
    out = []
    for _ in range(n_scales):
        R = rng.normal(size=(dim, 75)) / np.sqrt(75.0)
        out.append(torch.from_numpy((R @ A).reshape(dim, 3, 5, 5).astype(np.float32)))
    return out


def _normalize_(x: Tensor) -> Tensor:
    """In-place unit L2 norm along the last dimension (as `F.normalize`, eps 1e-12)."""
    return x.div_(torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min_(1e-12))


def image_descriptors(
    image: Tensor,  # [3, H, W] float32 in [0, 1]
    kernels: list[Tensor],  # each [F, 3, 5, 5]
    dilations: tuple[int, ...] = (1, 3),
    blur_passes: int = 1,
) -> Tensor:  # [H, W, F] float32, unit norm
    """Random projections of the local colour patch (patch mean removed), summed over scales, normalised.

    The convolutions run in channels-last layout, so their output is already [H, W, F] in memory.
    """
    x = _blur(image.float(), blur_passes)[None]
    # A tiny fixed bias: flat patches (zero projection) all get the same, arbitrary, direction.
    bias = 1e-5 * kernels[0][:, 0, 0, 0].to(x)
    acc = None
    for n, (k, d) in enumerate(zip(kernels, dilations)):
        p = 2 * d
        xp = F.pad(x, (p, p, p, p), mode="replicate").contiguous(memory_format=torch.channels_last)
        y = F.conv2d(xp, k.to(x), bias=bias if n == 0 else None, dilation=d)
        acc = y if acc is None else acc.add_(y)
    assert acc is not None
    return _normalize_(acc[0].permute(1, 2, 0).contiguous())


def _descriptors_at(
    blurred: Tensor,  # [3, H, W] the blurred image
    kernels: list[Tensor],
    dilations: tuple[int, ...],
    idx: Tensor,  # [K] flat pixel indices
) -> Tensor:  # [K, F] unit
    """`image_descriptors` at a few pixels only (same patches, replicate padding as index clamping)."""
    _, H, W = blurred.shape
    v, u = idx // W, idx % W
    offs = torch.arange(-2, 3)
    bias = 1e-5 * kernels[0][:, 0, 0, 0].to(blurred)
    acc = bias.expand(len(idx), -1).clone()
    for k, d in zip(kernels, dilations):
        rows = (v[:, None] + d * offs).clamp_(0, H - 1)  # [K, 5]
        cols = (u[:, None] + d * offs).clamp_(0, W - 1)
        patch = blurred[:, rows[:, :, None], cols[:, None, :]]  # [3, K, 5, 5]
        acc += patch.permute(1, 0, 2, 3).reshape(len(idx), -1) @ k.to(blurred).reshape(len(k), -1).T
    return _normalize_(acc)


def texture_energy(image: Tensor) -> Tensor:  # [3, H, W] -> [H, W]
    """Local texture: 7x7 box mean of the squared gradient of the blurred grey image.

    The grey image is blurred (5x5 binomial) and differentiated over +-2 pixels, so 8-bit sensor noise on a
    flat wall (~1e-6) stays well below the energy of even smooth texture (~1e-5 .. 1e-3).
    """
    g = _blur(image.float().mean(dim=0), 2)
    gp = _pad(g, 2)
    gx = torch.sub(gp[2:-2, 4:], gp[2:-2, :-4]).mul_(0.25)
    gy = torch.sub(gp[4:, 2:-2], gp[:-4, 2:-2]).mul_(0.25)
    e = _pad(gx.mul_(gx).addcmul_(gy, gy), 3)
    H, W = g.shape
    rows = e[0:H].clone()  # 7-row box sum, then 7-column box sum
    for s in range(1, 7):
        rows += e[s : s + H]
    out = rows[:, 0:W].clone()
    for s in range(1, 7):
        out += rows[:, s : s + W]
    return out.mul_(1.0 / 49.0)


def _unit(x: Tensor) -> Tensor:
    return F.normalize(x, dim=-1)


def _storage_users(t: Tensor) -> int:
    return int(torch._C._storage_Use_Count(t.untyped_storage()._cdata))


class _OutputPool:
    """Recycles the memory of big output tensors once nobody but the pool holds them.

    glibc hands freed blocks of tens of MB back to the system, so every fresh [H, W, F] output costs page
    faults on first write (~5-10 ms for 19 MB, as much as computing it). A buffer is handed out again only
    when its storage has no other user (tensor, view or numpy array): outputs the caller keeps, such as
    keyframe descriptors, are never overwritten. At most ``size`` buffers are tracked (least recently used
    dropped), so the memory the pool keeps alive is bounded.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._bufs: list[Tensor] = []
        self._enabled = hasattr(torch._C, "_storage_Use_Count")
        if self._enabled:
            probe = torch.empty(1)
            self._free_users = _storage_users(probe)  # the buffer itself (+ the probe's temporary storage)
            view = probe.view(1)
            self._enabled = _storage_users(probe) == self._free_users + 1  # views are counted
            del view

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> Tensor:
        if not self._enabled:
            return torch.empty(shape, dtype=dtype)
        n = int(np.prod(shape))
        for k, b in enumerate(self._bufs):
            if b.numel() == n and b.dtype == dtype and _storage_users(b) == self._free_users:
                self._bufs.append(self._bufs.pop(k))
                return b.view(shape)
        b = torch.empty(n, dtype=dtype)
        self._bufs.append(b)
        if len(self._bufs) > self.size:
            self._bufs.pop(0)
        return b.view(shape)


# -------------------------------------------------------------------------------------------- the prior
class OraclePrior(TwoViewPrior):
    """Two-view prior from ground truth with MASt3R-like errors (see the module docstring)."""

    def __init__(
        self,
        depths: Callable[[int], np.ndarray],
        poses_wc: np.ndarray,  # [N, 4, 4] T_WC (metres, OpenCV axes)
        K: np.ndarray,  # [3, 3] intrinsics of the SOURCE image
        transform: ImageTransform,
        noise: str | OracleNoise = "mast3r",
        seed: int = 0,
        desc_dim: int = 24,
        device: torch.device | str = "cpu",
        threads: int | None = 1,
    ) -> None:
        """
        Args:
            depths: frame index -> depth map [H, W] in metres (0 or NaN = invalid), registered to the image.
            poses_wc: ground-truth camera-to-world poses; must be finite.
            K: pinhole intrinsics of the source image (distortion is ignored).
            transform: source -> network image map (the same for every frame).
            noise: preset name (``none``, ``mast3r``, ``hard``) or an `OracleNoise`.
            seed: all random errors are deterministic functions of (seed, i, j).
            desc_dim: descriptor dimension F.
            device: device of the returned tensors.
            threads: torch intra-op threads while the oracle computes (restored afterwards); None keeps the
                caller's setting. Its work is many small memory-bound ops on [H, W] maps, for which extra
                threads gain little and cost a lot as soon as another process shares the cores (every op
                then waits for a descheduled OpenMP thread: 10x slower on 2 busy cores).
        """
        self.depths = depths
        self.poses_wc = np.asarray(poses_wc, dtype=np.float64)
        if self.poses_wc.ndim != 3 or self.poses_wc.shape[1:] != (4, 4):
            raise ValueError(f"OraclePrior: poses_wc must be [N, 4, 4], got {self.poses_wc.shape}")
        if not np.isfinite(self.poses_wc).all():
            raise ValueError("OraclePrior: poses_wc contains non-finite values")
        self._poses_cw = np.linalg.inv(self.poses_wc)
        self.transform = transform
        self.K = np.asarray(transform.K_to_network(np.asarray(K, dtype=np.float64)), dtype=np.float64)
        self.noise = get_noise(noise)
        self.seed = int(seed)
        self.desc_dim = int(desc_dim)
        self.device = torch.device(device)
        self.threads = threads
        W, H = transform.network_size
        self._Kinv = np.linalg.inv(self.K)
        self._u = torch.arange(W, dtype=torch.float64)
        self._v = torch.arange(H, dtype=torch.float64)
        self.rays = self._directions(np.eye(3))  # [H, W, 3] float32 K^-1 (u, v, 1), z = 1
        self._kernels = _projection_kernels(self.desc_dim, self.seed)
        self._retr_kernels = [_whitened_kernels(_RETRIEVAL_PART, self.seed + k) for k in range(len(_RETRIEVAL_SCALES))]
        d = _RETRIEVAL_PART * len(_RETRIEVAL_SCALES)
        g = np.random.default_rng([self.seed, 0x6FF])
        self._rff = (
            torch.from_numpy((g.normal(size=(d, d)) / np.sqrt(_RFF_SIGMA2)).astype(np.float32)),
            torch.from_numpy(g.uniform(0, 2 * np.pi, size=d).astype(np.float32)),
        )
        # frame index -> (its OracleFrame, (D0, Q)); bounded LRU
        self._cache: OrderedDict[int, tuple[OracleFrame, tuple[Tensor, Tensor]]] = OrderedDict()
        self._desc_bank: Tensor | None = None  # [H * W, F] standard normal, made on first use
        self._pool = _OutputPool(6)  # memory of returned descriptors / pointmaps that callers dropped
        self._nearest: dict[tuple[int, ...], np.ndarray] = {}  # depth shape -> flat nearest indices [H * W]

    # ------------------------------------------------------------------------------------ construction
    @classmethod
    def from_source(
        cls,
        source: FrameSource,
        size: int = 512,
        noise: str | OracleNoise = "mast3r",
        seed: int = 0,
        desc_dim: int = 24,
        device: torch.device | str = "cpu",
        threads: int | None = 1,
    ) -> OraclePrior:
        """An oracle for a frame source that has depth, intrinsics and ground-truth poses.

        Frames without a ground-truth pose (NaN rows) take the pose of the nearest frame that has one.

        Raises:
            UserError naming the source when it lacks depth, intrinsics or ground truth.
        """
        from mslam_ns.errors import UserError
        from mslam_ns.model.preprocess import plan_transform

        where = getattr(source, "path", "source")
        if source.intrinsics is None:
            raise UserError(f"{where}: the oracle prior needs intrinsics (none found; pass a calibration)")
        gt = source.gt_poses
        if gt is None:
            raise UserError(f"{where}: the oracle prior needs ground-truth poses (none found)")
        known = np.isfinite(gt).all(axis=(1, 2))
        if not known.any():
            raise UserError(f"{where}: no frame has a ground-truth pose")
        if source.depth(0) is None:
            raise UserError(f"{where}: the oracle prior needs depth maps (the source has none)")
        idx_known = np.nonzero(known)[0]
        # nearest frame with a pose (ties -> the earlier one)
        pos = np.clip(np.searchsorted(idx_known, np.arange(len(gt))), 1, max(len(idx_known) - 1, 1))
        lo, hi = idx_known[pos - 1], idx_known[np.minimum(pos, len(idx_known) - 1)]
        nearest = np.where(np.abs(np.arange(len(gt)) - lo) <= np.abs(hi - np.arange(len(gt))), lo, hi)
        poses = gt[nearest]
        w, h = source.image_size
        transform = plan_transform(w, h, size)

        def depth(i: int) -> np.ndarray:
            d = source.depth(i)
            return np.zeros((h, w), np.float32) if d is None else d

        return cls(
            depth,
            poses,
            source.intrinsics.K,
            transform,
            noise=noise,
            seed=seed,
            desc_dim=desc_dim,
            device=device,
            threads=threads,
        )

    # ---------------------------------------------------------------------------------------- threads
    @contextmanager
    def _threads(self) -> Iterator[None]:
        """Run with ``self.threads`` torch intra-op threads."""
        old = torch.get_num_threads()
        if self.threads is None or self.threads == old:
            yield
            return
        torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            torch.set_num_threads(old)

    def encode(self, image: Tensor, index: int) -> Encoding:
        """Look up (and resample) frame ``index``'s depth; ``image`` [3, H, W] is the network image.

        Everything a pass needs per frame is computed here once: the filled depth, its discontinuities,
        the texture energy, and the base descriptors D0 and Q (those two in a small LRU, recomputed if a
        frame comes back after eviction).
        """
        with self._threads():
            return self._encode(image, index)

    def decode(self, enc_i: Encoding, enc_j: Encoding) -> PairPrediction:
        """Pass (i, j): X^i_i and X^j_i (frame i, network units) with C, D, Q."""
        with self._threads():
            return self._decode(enc_i, enc_j)

    def decode_mono(self, enc_i: Encoding) -> PairPrediction:
        """Pass (i, i): X^i_i for both views (the second with 0.8x confidence and its own descriptor noise)."""
        with self._threads():
            return self._decode_mono(enc_i)

    def retrieval_features(self, enc_i: Encoding) -> Tensor:
        """[K, 256] unit features (multi-scale patch descriptors) at the K <= 256 strongest texture peaks."""
        with self._threads():
            return self._retrieval_features(enc_i)

    # ---------------------------------------------------------------------------------------- encoding
    def _encode(self, image: Tensor, index: int) -> Encoding:
        W, H = self.transform.network_size
        if tuple(image.shape) != (3, H, W):
            raise ValueError(f"OraclePrior.encode: expected a [3, {H}, {W}] image, got {tuple(image.shape)}")
        if not 0 <= index < len(self.poses_wc):
            raise IndexError(f"OraclePrior.encode: frame {index} has no ground truth ({len(self.poses_wc)} poses)")
        raw = np.asarray(self.depths(index), dtype=np.float32)
        if raw.ndim != 2:
            raise ValueError(f"OraclePrior.encode: depth of frame {index} must be [H, W], got {raw.shape}")
        flat = self._nearest.get(raw.shape)
        if flat is None:
            vi, ui = nearest_indices(self.transform, raw.shape)
            flat = self._nearest[raw.shape] = (vi * raw.shape[1] + ui).reshape(-1)
        z = np.take(raw.reshape(-1), flat).reshape(H, W)
        valid = np.isfinite(z) & (z > 0)
        filled = fill_depth(np.where(valid, z, 0.0), valid)
        zt = torch.from_numpy(filled)
        nf = near_far(zt)
        disc = discontinuities(zt, self.noise.disc_thresh, self.noise.disc_dilate, near_far_z=nf)
        med = float(np.median(filled[valid])) if valid.any() else float(np.median(filled))
        img = image.detach().float().cpu()
        unreliable = torch.from_numpy(disc | ~valid)
        data = OracleFrame(
            img, filled, valid, disc, med, zt, unreliable, DepthDiscs.of(zt, disc, nf), texture_energy(img)
        )
        self._features(data, index)
        return Encoding(index=int(index), shape=(H, W), data=data)

    def _features(self, data: OracleFrame, key: int) -> tuple[Tensor, Tensor]:
        """(unit base descriptors D0 [H, W, F], Q [H, W]) of a frame, LRU-cached."""
        hit = self._cache.get(key)
        if hit is not None and hit[0] is data:  # same encoding (not a re-encoded frame)
            self._cache.move_to_end(key)
            return hit[1]
        D0 = image_descriptors(data.image, self._kernels)
        E = data.energy
        Q = E / (E + _Q_E0)
        Q.mul_(4.8).add_(0.2)
        out = (D0, Q)
        self._cache[key] = (data, out)
        self._cache.move_to_end(key)
        if len(self._cache) > _CACHE:
            self._cache.popitem(last=False)
        return out

    # ---------------------------------------------------------------------------------------- decoding
    def _rng(self, i: int, j: int, kind: int) -> PassRandom:
        return PassRandom([self.seed, int(i), int(j), kind])

    def _directions(
        self, A: np.ndarray, Kinv: np.ndarray | None = None, out: Tensor | None = None
    ) -> Tensor:  # [3, 3] -> [H, W, 3]
        """``A K^-1 (u, v, 1)`` (float32) for every pixel (the pixel rays, rotated / scaled by A); ``Kinv``
        replaces the true K^-1 (a view's perturbed pinhole); written into ``out`` when given."""
        B = torch.from_numpy(np.asarray(A, dtype=np.float64) @ (self._Kinv if Kinv is None else Kinv))  # [3, 3]
        cols = (self._u[:, None] * B[:, 0] + B[:, 2]).float()  # [W, 3]
        rows = (self._v[:, None] * B[:, 1]).float()  # [H, 3]
        return torch.add(rows[:, None, :], cols[None, :, :], out=out)

    def _descriptors(self, D0: Tensor, rng: PassRandom) -> Tensor:  # [H, W, F] unit
        """D0 plus this view's perturbation, renormalised."""
        H, W, Fd = D0.shape
        n = H * W
        if self.noise.desc_noise <= 0:
            return self._pool.empty((H, W, Fd)).copy_(D0)
        if self._desc_bank is None or self._desc_bank.shape != (n, Fd):
            g = torch.Generator().manual_seed(self.seed * 7919 + 17)
            self._desc_bank = torch.randn((n, Fd), generator=g)
        # A fixed Gaussian bank, cyclically shifted by a random offset per view: independent-looking noise
        # for every view at the cost of reading the bank instead of H*W*F fresh normal draws.
        r = int(rng.np.integers(0, n))
        c = self.noise.desc_noise / np.sqrt(Fd)
        bank, d0 = self._desc_bank, D0.view(n, Fd)
        D = self._pool.empty((n, Fd))
        torch.add(d0[: n - r], bank[r:], alpha=c, out=D[: n - r])
        if r:
            torch.add(d0[n - r :], bank[:r], alpha=c, out=D[n - r :])
        return _normalize_(D).view(H, W, Fd)

    def _view(self, X: Tensor, C: Tensor, data: OracleFrame, key: int, rng: PassRandom) -> ViewPrediction:
        D0, Q = self._features(data, key)
        dev = self.device
        return ViewPrediction(X=X.to(dev), C=C.to(dev), D=self._descriptors(D0, rng).to(dev), Q=Q.clone().to(dev))

    def _decode(self, enc_i: Encoding, enc_j: Encoding) -> PairPrediction:
        i, j = enc_i.index, enc_j.index
        if i == j:
            return self._decode_mono(enc_i)
        fi: OracleFrame = enc_i.data
        fj: OracleFrame = enc_j.data
        nz = self.noise
        rng = self._rng(i, j, 1)
        T_ij = self._poses_cw[i] @ self.poses_wc[j]  # [4, 4] metres
        err = sample_pair_error(nz, rng.np, float(np.linalg.norm(T_ij[:3, 3])), fi.median_depth)
        ei = corrupt_depth(fi.depth_t, fi.discs, nz, rng, level=nz.ii_factor)
        ej = corrupt_depth(fj.depth_t, fj.discs, nz, rng, level=1.0)
        s = err.pass_scale * nz.global_scale
        M = s * (err.matrix() @ T_ij)  # [4, 4]: frame j (metres) -> frame i (network units)
        Xii = self._points(ei, s * np.eye(3), Kinv=self._camera(i, (i, j, 1, 1)))
        Xji = self._points(ej, M[:3, :3], M[:3, 3], Kinv=self._camera(j, (i, j, 1, 2)))
        Cii = confidence(rng, fi.unreliable, nz, 1.0, extra=ei.unreliable_outliers())
        Cji = confidence(rng, fj.unreliable, nz, 0.8, extra=ej.unreliable_outliers())
        return PairPrediction(ii=self._view(Xii, Cii, fi, i, rng), ji=self._view(Xji, Cji, fj, j, rng))

    def _camera(self, frame: int, key: tuple[int, ...]) -> np.ndarray | None:  # [3, 3] or None
        """K'^-1 of the perturbed pinhole of one view of a pass (`mslam_ns.prior.noise.camera_error`), or None
        (the true K) without camera errors."""
        err = camera_error(self.noise, self.seed, frame, (self.seed, *key))
        if err is None:
            return None
        W, H = self.transform.network_size
        return np.linalg.inv(perturbed_K(self.K, err, W, H))

    def _points(
        self, e: DepthErrors, A: np.ndarray, t: np.ndarray | None = None, Kinv: np.ndarray | None = None
    ) -> Tensor:  # [H, W, 3]
        """``z A K^-1 (u, v, 1) + t`` for the corrupted depth z of a view (float32); ``Kinv``: the view's
        perturbed pinhole (None: the true one)."""
        out = self._pool.empty(tuple(self.rays.shape))
        if t is None and Kinv is None:  # a multiple of the identity: scale the cached rays
            return torch.mul(e.z[..., None], self.rays, out=out).mul_(float(A[0, 0]))
        # in place in the (recycled) output: a fresh [H, W, 3] temporary costs page faults
        self._directions(A, Kinv, out=out).mul_(e.z[..., None])
        if t is not None:
            out.add_(torch.from_numpy(np.asarray(t, dtype=np.float64)).float())
        return out

    def _decode_mono(self, enc_i: Encoding) -> PairPrediction:
        i = enc_i.index
        fi: OracleFrame = enc_i.data
        nz = self.noise
        rng = self._rng(i, i, 2)
        s = float(np.exp(rng.np.normal() * nz.pass_scale_sigma)) * nz.global_scale
        ei = corrupt_depth(fi.depth_t, fi.discs, nz, rng, level=nz.ii_factor)
        X = self._points(ei, s * np.eye(3), Kinv=self._camera(i, (i, i, 2, 1)))
        C = confidence(rng, fi.unreliable, nz, 1.0, extra=ei.unreliable_outliers())
        C2 = C - 1.0
        C2.mul_(0.8).add_(1.0)
        X2 = self._pool.empty(tuple(X.shape)).copy_(X)
        return PairPrediction(ii=self._view(X, C, fi, i, rng), ji=self._view(X2, C2, fi, i, rng))

    # --------------------------------------------------------------------------------------- retrieval
    def _retrieval_features(self, enc_i: Encoding) -> Tensor:
        data: OracleFrame = enc_i.data
        E = data.energy
        H, W = E.shape
        # Keypoints: local maxima of the texture energy in a window that scales with the image.
        r = max(2, min(H, W) // 60)
        peak = E == window_max(E, r)
        b = 8 if min(H, W) > 32 else 2
        cand = peak & (E > 0.1 * _Q_E0)
        border = torch.zeros_like(cand)
        border[b : H - b, b : W - b] = True
        idx = torch.nonzero((cand & border).flatten()).flatten()
        if len(idx) == 0:  # a flat image: fall back to a sparse grid
            vv, uu = torch.meshgrid(torch.arange(b, H - b, 16), torch.arange(b, W - b, 16), indexing="ij")
            idx = (vv * W + uu).flatten()
        order = torch.argsort(E.flatten()[idx], descending=True, stable=True)[:_N_RETRIEVAL]
        idx = idx[order]
        # Descriptors of the colour patch around each keypoint at scales relative to the image size (so that
        # they describe the same scene extent at any resolution; see _RETRIEVAL_SCALES), from the fine
        # texture to most of the view: each scale adds largely independent information.
        parts = []
        for kernels, div in zip(self._retr_kernels, _RETRIEVAL_SCALES):
            sc = max(1, int(round(min(H, W) / div)))
            img = data.image if sc == 1 else F.avg_pool2d(data.image[None], sc, ceil_mode=True)[0]
            h, w = img.shape[-2:]
            v = ((idx // W) // sc).clamp_(max=h - 1)
            u = ((idx % W) // sc).clamp_(max=w - 1)
            parts.append(_descriptors_at(_blur(img, 1), kernels, (1, 2), v * w + u))
        x = _unit(torch.cat(parts, dim=-1))
        # Random Fourier features of a Gaussian kernel: patch descriptors of one scene live in a narrow cone
        # (unrelated patches still have cosine ~0.5), which leaves ASMK's binary residual signatures of
        # unrelated images correlated; the kernel map keeps near-duplicates close (cosine 0.93 -> ~0.8) and
        # makes unrelated patches nearly orthogonal, as learnt retrieval features are.
        Wr, br = self._rff
        return _unit(torch.cos(torch.addmm(br, x, Wr))).float().to(self.device)
