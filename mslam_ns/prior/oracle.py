"""The oracle two-view prior: MASt3R-shaped predictions built from ground-truth depth and poses.

It implements `TwoViewPrior` so that the whole SLAM can be run, tested and debugged without the network
weights, with errors that look like MASt3R's (magnitudes: `mslam_ns.prior.noise`, presets ``none``,
``mast3r`` (default), ``hard``; chosen on the command line with ``--oracle-noise``).

What a pass ``decode(i, j)`` returns (everything deterministic per (seed, i, j)):

- ``X^i_i``: view i's depth (nearest-resampled to the network grid, holes filled by push-pull
  interpolation) back-projected with the network intrinsics, with per-pixel depth noise and outliers at
  ``ii_factor`` (half) of the X^j_i level.
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

``decode_mono(i)`` returns X^i_i for both views. ``retrieval_features`` gives descriptors at the strongest
local maxima of the gradient energy (fine + coarse scale), so revisited places are retrievable.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mslam_ns.geometry.image_transform import ImageTransform
from mslam_ns.prior.base import Encoding, PairPrediction, TwoViewPrior, ViewPrediction
from mslam_ns.prior.noise import (
    OracleNoise,
    confidence,
    corrupt_depth,
    discontinuities,
    get_noise,
    sample_pair_error,
)

if TYPE_CHECKING:
    from mslam_ns.io.frames import FrameSource

__all__ = [
    "OraclePrior", "OracleFrame", "nearest_indices", "resample_depth", "fill_depth", "image_descriptors",
    "texture_energy",
]

_Q_E0 = 1e-5
"""Gradient energy at which Q is half-way between its flat and textured values."""
_N_RETRIEVAL = 256
"""Maximum number of retrieval features per image."""
_CACHE = 8
"""Frames whose base descriptors / Q are kept (LRU)."""


@dataclass
class OracleFrame:
    """`Encoding.data` of the oracle: the network image and the ground-truth depth on the network grid."""

    image: Tensor  # [3, H, W] float32 in [0, 1], CPU
    depth: np.ndarray  # [H, W] float32 metres, holes filled (> 0 everywhere)
    valid: np.ndarray  # [H, W] bool, ground-truth depth was valid
    disc: np.ndarray  # [H, W] bool, depth discontinuity
    median_depth: float


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
def _blur(img: Tensor, passes: int = 1) -> Tensor:  # [B, 3, H, W] -> same
    k1 = torch.tensor([1.0, 2.0, 1.0]) / 4.0
    k = (k1[:, None] * k1[None, :]).to(img)[None, None].repeat(3, 1, 1, 1)  # [3, 1, 3, 3]
    for _ in range(passes):
        img = F.conv2d(F.pad(img, (1, 1, 1, 1), mode="replicate"), k, groups=3)
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


def image_descriptors(
    image: Tensor,  # [3, H, W] float32 in [0, 1]
    kernels: list[Tensor],  # each [F, 3, 5, 5]
    dilations: tuple[int, ...] = (1, 3),
    blur_passes: int = 1,
) -> Tensor:  # [H, W, F] float32, unit norm
    """Random projections of the local colour patch (patch mean removed), summed over scales, normalised."""
    x = _blur(image[None].float(), blur_passes)
    acc = None
    for k, d in zip(kernels, dilations):
        p = 2 * d
        y = F.conv2d(F.pad(x, (p, p, p, p), mode="replicate"), k.to(x), dilation=d)
        acc = y if acc is None else acc + y
    assert acc is not None
    # A tiny fixed bias: flat patches (zero projection) all get the same, arbitrary, direction.
    bias = kernels[0][:, 0, 0, 0].to(x).view(1, -1, 1, 1)
    acc = acc + 1e-5 * bias
    return F.normalize(acc[0].permute(1, 2, 0), dim=-1).contiguous()


def texture_energy(image: Tensor) -> Tensor:  # [3, H, W] -> [H, W]
    """Local texture: 7x7 box mean of the squared gradient of the blurred grey image.

    The grey image is blurred (5x5 binomial) and differentiated over +-2 pixels, so 8-bit sensor noise on a
    flat wall (~1e-6) stays well below the energy of even smooth texture (~1e-5 .. 1e-3).
    """
    g = _blur(image.float().mean(dim=0)[None, None].expand(1, 3, -1, -1).contiguous(), 2)[:, :1]
    gp = F.pad(g, (2, 2, 2, 2), mode="replicate")
    gx = 0.25 * (gp[..., 2:-2, 4:] - gp[..., 2:-2, :-4])
    gy = 0.25 * (gp[..., 4:, 2:-2] - gp[..., :-4, 2:-2])
    e = F.pad(gx * gx + gy * gy, (3, 3, 3, 3), mode="replicate")
    return F.avg_pool2d(e, 7, stride=1)[0, 0]


def _unit(x: Tensor) -> Tensor:
    return F.normalize(x, dim=-1)


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
        """
        self.depths = depths
        self.poses_wc = np.asarray(poses_wc, dtype=np.float64)
        if self.poses_wc.ndim != 3 or self.poses_wc.shape[1:] != (4, 4):
            raise ValueError(f"OraclePrior: poses_wc must be [N, 4, 4], got {self.poses_wc.shape}")
        if not np.isfinite(self.poses_wc).all():
            raise ValueError("OraclePrior: poses_wc contains non-finite values")
        self.transform = transform
        self.K = np.asarray(transform.K_to_network(np.asarray(K, dtype=np.float64)), dtype=np.float64)
        self.noise = get_noise(noise)
        self.seed = int(seed)
        self.desc_dim = int(desc_dim)
        self.device = torch.device(device)
        W, H = transform.network_size
        v, u = np.mgrid[0:H, 0:W].astype(np.float64)
        pix = np.stack([u, v, np.ones_like(u)], axis=-1)  # [H, W, 3]
        self.rays = pix @ np.linalg.inv(self.K).T  # [H, W, 3] with z = 1
        self._kernels = _projection_kernels(self.desc_dim, self.seed)
        self._coarse_kernels = _projection_kernels(self.desc_dim, self.seed + 1, n_scales=1)
        # frame index -> (its OracleFrame, (D0, Q, E)); bounded LRU
        self._cache: OrderedDict[int, tuple[OracleFrame, tuple[Tensor, Tensor, Tensor]]] = OrderedDict()
        self._desc_bank: Tensor | None = None  # [H, W, F] standard normal, made on first use
        self._nearest: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]] = {}  # depth shape -> indices

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
    ) -> OraclePrior:
        """An oracle for a frame source that has depth, intrinsics and ground-truth poses.

        Frames without a ground-truth pose (NaN rows) take the pose of the nearest frame that has one.

        Raises:
            UserError naming the source when it lacks depth, intrinsics or ground truth.
        """
        from mslam_ns.cli import UserError
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

        return cls(depth, poses, source.intrinsics.K, transform, noise=noise, seed=seed, desc_dim=desc_dim,
                   device=device)

    # ---------------------------------------------------------------------------------------- encoding
    def encode(self, image: Tensor, index: int) -> Encoding:
        """Look up (and resample) frame ``index``'s depth; ``image`` [3, H, W] is the network image."""
        W, H = self.transform.network_size
        if tuple(image.shape) != (3, H, W):
            raise ValueError(f"OraclePrior.encode: expected a [3, {H}, {W}] image, got {tuple(image.shape)}")
        if not 0 <= index < len(self.poses_wc):
            raise IndexError(f"OraclePrior.encode: frame {index} has no ground truth ({len(self.poses_wc)} poses)")
        raw = np.asarray(self.depths(index), dtype=np.float32)
        if raw.ndim != 2:
            raise ValueError(f"OraclePrior.encode: depth of frame {index} must be [H, W], got {raw.shape}")
        if raw.shape not in self._nearest:
            self._nearest[raw.shape] = nearest_indices(self.transform, raw.shape)
        vi, ui = self._nearest[raw.shape]
        z = raw[vi, ui]
        valid = np.isfinite(z) & (z > 0)
        filled = fill_depth(np.where(valid, z, 0.0), valid)
        disc = discontinuities(filled, self.noise.disc_thresh, self.noise.disc_dilate)
        med = float(np.median(filled[valid])) if valid.any() else float(np.median(filled))
        data = OracleFrame(image.detach().float().cpu(), filled, valid, disc, med)
        return Encoding(index=int(index), shape=(H, W), data=data)

    def _features(self, enc: Encoding) -> tuple[Tensor, Tensor, Tensor]:
        """(unit base descriptors [H, W, F], Q [H, W], gradient energy [H, W]) of a frame, LRU-cached."""
        key = enc.index
        hit = self._cache.get(key)
        if hit is not None and hit[0] is enc.data:  # same encoding (not a re-encoded frame)
            self._cache.move_to_end(key)
            return hit[1]
        img = enc.data.image
        D0 = image_descriptors(img, self._kernels)
        E = texture_energy(img)
        Q = 0.2 + 4.8 * E / (E + _Q_E0)
        out = (D0, Q, E)
        self._cache[key] = (enc.data, out)
        self._cache.move_to_end(key)
        if len(self._cache) > _CACHE:
            self._cache.popitem(last=False)
        return out

    # ---------------------------------------------------------------------------------------- decoding
    def _rng(self, i: int, j: int, kind: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, int(i), int(j), kind])

    def _view(
        self,
        X: np.ndarray,  # [H, W, 3] float64
        C: np.ndarray,  # [H, W] float32
        enc: Encoding,
        rng: np.random.Generator,
    ) -> ViewPrediction:
        D0, Q, _ = self._features(enc)
        if self.noise.desc_noise > 0:
            # A fixed Gaussian bank, cyclically shifted by a random offset per view: independent-looking
            # noise for every view at the cost of a copy instead of H*W*F fresh normal draws.
            if self._desc_bank is None:
                g = torch.Generator().manual_seed(self.seed * 7919 + 17)
                self._desc_bank = torch.randn(D0.shape, generator=g)
            dv, du = int(rng.integers(0, D0.shape[0])), int(rng.integers(0, D0.shape[1]))
            n = torch.roll(self._desc_bank, shifts=(dv, du), dims=(0, 1))
            D = _unit(D0 + (self.noise.desc_noise / np.sqrt(D0.shape[-1])) * n)
        else:
            D = D0.clone()
        dev = self.device
        return ViewPrediction(
            X=torch.from_numpy(X.astype(np.float32)).to(dev),
            C=torch.from_numpy(C).to(dev),
            D=D.to(dev),
            Q=Q.clone().to(dev),
        )

    def _points(self, z: np.ndarray) -> np.ndarray:  # [H, W] -> [H, W, 3] float64
        return z[..., None] * self.rays

    def decode(self, enc_i: Encoding, enc_j: Encoding) -> PairPrediction:
        """Pass (i, j): X^i_i and X^j_i (frame i, network units) with C, D, Q."""
        i, j = enc_i.index, enc_j.index
        if i == j:
            return self.decode_mono(enc_i)
        fi: OracleFrame = enc_i.data
        fj: OracleFrame = enc_j.data
        nz = self.noise
        rng = self._rng(i, j, 1)
        T_ij = np.linalg.inv(self.poses_wc[i]) @ self.poses_wc[j]  # [4, 4] metres
        err = sample_pair_error(nz, rng, float(np.linalg.norm(T_ij[:3, 3])), fi.median_depth)
        zi, out_i, conf_out_i = corrupt_depth(fi.depth, fi.disc, nz, rng, level=nz.ii_factor)
        zj, out_j, conf_out_j = corrupt_depth(fj.depth, fj.disc, nz, rng, level=1.0)
        s = err.pass_scale * nz.global_scale
        M = s * (err.matrix() @ T_ij)  # [4, 4]: frame j (metres) -> frame i (network units)
        Xii = s * self._points(zi)
        Xji = self._points(zj) @ M[:3, :3].T + M[:3, 3]
        Cii = confidence(rng, fi.disc | ~fi.valid | (out_i & ~conf_out_i), nz, 1.0)
        Cji = confidence(rng, fj.disc | ~fj.valid | (out_j & ~conf_out_j), nz, 0.8)
        return PairPrediction(ii=self._view(Xii, Cii, enc_i, rng), ji=self._view(Xji, Cji, enc_j, rng))

    def decode_mono(self, enc_i: Encoding) -> PairPrediction:
        """Pass (i, i): X^i_i for both views (the second with 0.8x confidence and its own descriptor noise)."""
        i = enc_i.index
        fi: OracleFrame = enc_i.data
        nz = self.noise
        rng = self._rng(i, i, 2)
        s = float(np.exp(rng.normal() * nz.pass_scale_sigma)) * nz.global_scale
        zi, out_i, conf_out_i = corrupt_depth(fi.depth, fi.disc, nz, rng, level=nz.ii_factor)
        X = s * self._points(zi)
        unreliable = fi.disc | ~fi.valid | (out_i & ~conf_out_i)
        C = confidence(rng, unreliable, nz, 1.0)
        C2 = (1.0 + 0.8 * (C - 1.0)).astype(np.float32)
        return PairPrediction(ii=self._view(X, C, enc_i, rng), ji=self._view(X, C2, enc_i, rng))

    # --------------------------------------------------------------------------------------- retrieval
    def retrieval_features(self, enc_i: Encoding) -> Tensor:
        """[K, 2F] unit features (fine + coarse patch descriptors) at the K <= 256 strongest texture peaks."""
        D0, _, E = self._features(enc_i)
        img = enc_i.data.image
        Dc = image_descriptors(img, self._coarse_kernels, dilations=(4,), blur_passes=3)
        H, W = E.shape
        peak = E == F.max_pool2d(E[None, None], 9, stride=1, padding=4)[0, 0]
        border = torch.zeros_like(peak)
        b = 8 if min(H, W) > 32 else 2
        border[b : H - b, b : W - b] = True
        cand = peak & border & (E > 0.1 * _Q_E0)
        idx = torch.nonzero(cand.flatten()).flatten()
        if len(idx) == 0:  # a flat image: fall back to a sparse grid
            vv, uu = torch.meshgrid(torch.arange(b, H - b, 16), torch.arange(b, W - b, 16), indexing="ij")
            idx = (vv * W + uu).flatten()
        order = torch.argsort(E.flatten()[idx], descending=True, stable=True)[:_N_RETRIEVAL]
        idx = idx[order]
        feats = torch.cat([D0.reshape(H * W, -1)[idx], Dc.reshape(H * W, -1)[idx]], dim=-1)
        return _unit(feats).float().to(self.device)
