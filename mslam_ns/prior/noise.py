"""Error model of the oracle prior: the `OracleNoise` presets and the samplers that apply them.

The oracle (``mslam_ns.prior.oracle``) builds pointmaps from ground-truth depth and poses, then corrupts them
the way MASt3R's predictions are wrong. Every number is a field of `OracleNoise` (docstring next to it);
the presets are

==========================  =======  =======  =====  ==========================================================
field                       none     mast3r   hard   meaning
==========================  =======  =======  =====  ==========================================================
global_scale                0.45     0.45     0.45   network units per metre (unknown to the SLAM)
pass_scale_sigma            0        0.02     0.04   std of log scale of a whole pass (both views)
rot_deg                     0        1.0      2.0    RMS rotation error of X^j_i (deg) at the reference baseline
trans_frac                  0        0.02     0.04   RMS translation error of X^j_i / baseline |t_ij|
rel_scale_sigma             0        0.01     0.02   std of log scale of X^j_i relative to X^i_i (ref. baseline)
depth_noise                 0        0.015    0.03   per-pixel white log-depth noise of X^j_i
depth_lowfreq               0        0.01     0.02   smooth (coarse-grid) log-depth noise of X^j_i
outlier_frac                0        0.05     0.10   fraction of X^j_i pixels with a gross depth error
confident_outlier_frac      0        0.2      0.3    fraction of outliers that keep a high confidence
ii_factor                   -        0.5      0.5    X^i_i gets this fraction of the depth noise and outliers
desc_noise                  0        0.15     0.30   per-view descriptor perturbation (relative norm)
focal_sigma                 0        0.03     0.06   std of log focal of the pinhole a view's rays imply, per pass
pp_sigma                    0        0.01     0.02   std of the principal-point offset / image width (cx), height (cy)
cam_frame_share             -        0.25     0.25   share of the camera-error variance common to an image's passes
==========================  =======  =======  =====  ==========================================================

Rotation and relative-scale errors grow with the baseline, by the factor
``growth(rho) = clip(min_growth + (1 - min_growth) * rho / ref_baseline, min_growth, max_growth)`` where
``rho = |t_ij| / median depth of view i`` (the relative baseline; ref_baseline = 0.1, min_growth = 0.25,
max_growth = 3). Translation errors are proportional to the baseline itself.

Gross outliers multiply the depth by ``exp(+-U(0.3, 1.0))`` (x0.37 .. x2.7). Depth discontinuities (a jump of
more than 5% of the depth inside a 3x3 window, dilated by one pixel) become "flying pixels" (depth blended
between the near and far side) when ``disc_blend`` is set. Confidence ``C`` is 5-20 (a smooth random field)
where reliable and 1-1.5 at discontinuities, invalid ground-truth depth and (most) outliers; a fraction
``confident_outlier_frac`` of the outliers keeps a high confidence, as MASt3R is sometimes confidently
wrong. ``X^j_i`` confidences are 0.8x those of ``X^i_i`` (above 1).

Camera errors (`camera_error`, `perturbed_K`): MASt3R's pointmaps imply a pinhole that is a few percent off. Each
view of a pass is back-projected through its own perturbed pinhole K' (focal x exp(N(0, focal_sigma^2)),
principal point + N(0, pp_sigma^2) x image size; a quarter of that variance is per image, the rest per pass),
so the rays of ``X^i_i`` and ``X^j_i`` are those of K', not of the true K, and matching, tracking and the
intrinsics estimate all see it. The errors are zero-mean over images: fusing many keyframes' estimates
(`mslam_ns.geometry.intrinsics.IntrinsicsFuser`) recovers the true camera within ~1-2%.

Measured on the mast3r preset by tests/prior/test_oracle.py (30-56 pairs of 32x24 views): per-pixel log-depth
error after the best Sim(3) fit 1.6% (X^j_i) / 0.8% (X^i_i), outlier rate 4.9% / 2.5%; per-pair RMS rotation
0.93 deg x growth, translation 2.0% of the baseline, relative-scale std 0.9% x growth, pass-scale std 1.6%.

Sampling (`PassRandom`): the few scalars of a pass (its Sim(3) error, the coarse grids of the smooth fields,
descriptor-bank offsets) come from a numpy generator seeded with ``(seed, i, j, kind)``, the per-pixel samples
from a CPU torch generator seeded from the same key, in float32; per-frame quantities (discontinuities, their
3x3 depth range) are computed once per frame (`DepthDiscs`), and only the pixels that need a sample get one
(flying pixels, outlier magnitudes, low confidences), so a 512x384 view costs a few ms.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields, replace

import numpy as np
import torch

__all__ = [
    "OracleNoise",
    "PRESETS",
    "get_noise",
    "growth",
    "rodrigues",
    "PairError",
    "sample_pair_error",
    "PassRandom",
    "smooth_field",
    "window_max",
    "near_far",
    "discontinuities",
    "DepthDiscs",
    "DepthErrors",
    "corrupt_depth",
    "confidence",
    "preset_table",
    "camera_error",
    "perturbed_K",
]


@dataclass(frozen=True)
class OracleNoise:
    """Magnitudes of the oracle prior's MASt3R-like errors (see the module docstring for the presets)."""

    global_scale: float = 0.45
    """Network units per metre: every pointmap is this factor times metres (the SLAM must not know it)."""
    pass_scale_sigma: float = 0.02
    """Std of the log of one pass's scale (applied to both X^i_i and X^j_i): passes are not scale-consistent."""
    rot_deg: float = 1.0
    """RMS rotation error (degrees) of X^j_i relative to X^i_i at the reference baseline (times growth)."""
    trans_frac: float = 0.02
    """RMS translation error of X^j_i as a fraction of the baseline |t_ij| (so 0 for zero baseline)."""
    rel_scale_sigma: float = 0.01
    """Std of the log scale of X^j_i relative to X^i_i at the reference baseline (times growth)."""
    ref_baseline: float = 0.1
    """Relative baseline |t_ij| / median depth at which the growth factor is 1."""
    min_growth: float = 0.25
    """Growth factor at zero baseline."""
    max_growth: float = 3.0
    """Cap of the growth factor for very wide baselines."""
    depth_noise: float = 0.015
    """Per-pixel white noise: std of log depth of X^j_i (1.5%)."""
    depth_lowfreq: float = 0.01
    """Smooth noise: std of a log-depth field interpolated from a coarse 6x8 grid (1%)."""
    outlier_frac: float = 0.05
    """Fraction of X^j_i pixels with a gross depth error."""
    outlier_log_range: tuple[float, float] = (0.3, 1.0)
    """|log depth factor| of an outlier is uniform in this range (random sign)."""
    confident_outlier_frac: float = 0.2
    """Fraction of outliers that keep a high confidence."""
    ii_factor: float = 0.5
    """X^i_i gets this fraction of depth_noise, depth_lowfreq and outlier_frac."""
    disc_thresh: float = 0.05
    """A pixel is at a depth discontinuity when max/min depth in its 3x3 window exceeds 1 + this."""
    disc_dilate: int = 1
    """Dilation (pixels) of the discontinuity mask."""
    disc_blend: bool = True
    """Discontinuity pixels get a depth blended between the near and the far side (flying pixels)."""
    conf_low: tuple[float, float] = (1.0, 1.5)
    """Confidence range of unreliable pixels (discontinuities, invalid depth, outliers)."""
    conf_high: tuple[float, float] = (5.0, 20.0)
    """Confidence range of reliable pixels (a smooth random field over this range)."""
    desc_noise: float = 0.15
    """Per-view descriptor perturbation: Gaussian of this relative norm added before re-normalising."""
    focal_sigma: float = 0.03
    """Camera error: each view of a pass is back-projected through a perturbed pinhole whose focal lengths are
    the true ones times exp(N(0, focal_sigma^2)) (both axes alike), so its rays imply a focal a few % off."""
    pp_sigma: float = 0.01
    """Camera error: the perturbed pinhole's principal point is offset by N(0, pp_sigma^2) times the image
    width (cx) and height (cy)."""
    cam_frame_share: float = 0.25
    """Fraction of the camera-error variance drawn once per IMAGE (common to all its passes, as MASt3R's errors
    depend on the image content); the rest is drawn per pass and view. Zero-mean over images, so fusing the
    estimates of many keyframes converges to the true camera."""

    def scaled(self, factor: float) -> OracleNoise:
        """A copy with every error magnitude multiplied by ``factor`` (scale, thresholds, C unchanged)."""
        lo, hi = self.outlier_log_range
        return replace(
            self,
            pass_scale_sigma=self.pass_scale_sigma * factor,
            rot_deg=self.rot_deg * factor,
            trans_frac=self.trans_frac * factor,
            rel_scale_sigma=self.rel_scale_sigma * factor,
            depth_noise=self.depth_noise * factor,
            depth_lowfreq=self.depth_lowfreq * factor,
            outlier_frac=min(self.outlier_frac * factor, 0.5),
            confident_outlier_frac=min(self.confident_outlier_frac * (1 + 0.5 * (factor - 1)), 1.0),
            desc_noise=self.desc_noise * factor,
            focal_sigma=self.focal_sigma * factor,
            pp_sigma=self.pp_sigma * factor,
            outlier_log_range=(lo, hi),
        )


_MAST3R = OracleNoise()
PRESETS: dict[str, OracleNoise] = {
    "none": replace(_MAST3R.scaled(0.0), confident_outlier_frac=0.0, disc_blend=False),
    "mast3r": _MAST3R,
    "hard": _MAST3R.scaled(2.0),
}
"""Named presets: ``none`` (exact pointmaps, debug only), ``mast3r`` (typical), ``hard`` (~2x mast3r)."""


def get_noise(noise: str | OracleNoise) -> OracleNoise:
    """Resolve a preset name (``none``, ``mast3r``, ``hard``) or pass an `OracleNoise` through."""
    if isinstance(noise, OracleNoise):
        return noise
    try:
        return PRESETS[str(noise).lower()]
    except KeyError:
        raise ValueError(f"unknown oracle noise preset {noise!r} (choose from {', '.join(PRESETS)})") from None


def growth(noise: OracleNoise, rel_baseline: float) -> float:
    """Error growth factor for a relative baseline |t_ij| / median depth (1 at ``ref_baseline``)."""
    g = noise.min_growth + (1.0 - noise.min_growth) * rel_baseline / noise.ref_baseline
    return float(np.clip(g, noise.min_growth, noise.max_growth))


def rodrigues(phi: np.ndarray) -> np.ndarray:
    """Rotation matrix [3, 3] of the axis-angle vector phi [3] (float64)."""
    th = float(np.linalg.norm(phi))
    if th < 1e-12:
        return np.eye(3)
    k = phi / th
    Kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(th) * Kx + (1 - np.cos(th)) * Kx @ Kx


@dataclass(frozen=True)
class PairError:
    """The sampled errors of one pass (i, j)."""

    pass_scale: float
    """Scale of the whole pass (both views)."""
    R: np.ndarray  # [3, 3]
    """Rotation error of X^j_i (applied in frame i, about its origin)."""
    t: np.ndarray  # [3]
    """Translation error of X^j_i (metres, frame i)."""
    rel_scale: float
    """Scale of X^j_i relative to X^i_i."""

    def matrix(self) -> np.ndarray:  # [4, 4]
        """The relative Sim(3) error E (metres): X^j_i <- rel_scale R X + t (before the pass scale)."""
        M = np.eye(4)
        M[:3, :3] = self.rel_scale * self.R
        M[:3, 3] = self.t
        return M


def sample_pair_error(noise: OracleNoise, rng: np.random.Generator, baseline: float, median_depth: float) -> PairError:
    """Draw the pass scale and the relative Sim(3) error of X^j_i for a pair with the given baseline (m)."""
    g = growth(noise, baseline / max(median_depth, 1e-9))
    phi = rng.normal(size=3) * np.deg2rad(noise.rot_deg) * g / np.sqrt(3.0)
    t = rng.normal(size=3) * noise.trans_frac * baseline / np.sqrt(3.0)
    rel = float(np.exp(rng.normal() * noise.rel_scale_sigma * g))
    ps = float(np.exp(rng.normal() * noise.pass_scale_sigma))
    return PairError(pass_scale=ps, R=rodrigues(phi), t=t, rel_scale=rel)


def camera_error(noise: OracleNoise, seed: int, frame: int, pass_key: tuple[int, ...]) -> np.ndarray | None:
    """(log focal factor, cx offset / W, cy offset / H) [3] of one view of one pass, or None without camera
    error.

    The image-level part is keyed by ``(seed, frame)`` and the per-pass part by ``pass_key`` (e.g.
    ``(seed, i, j, kind, view)``), both from their own generators, so the other errors of a pass are the same
    with and without camera errors.
    """
    if noise.focal_sigma <= 0 and noise.pp_sigma <= 0:
        return None
    share = float(np.clip(noise.cam_frame_share, 0.0, 1.0))
    g_img = np.random.default_rng([int(seed), int(frame), 0xCA3E]).normal(size=3)
    g_pass = np.random.default_rng([*(int(k) for k in pass_key), 0xCA3F]).normal(size=3)
    g = np.sqrt(share) * g_img + np.sqrt(1.0 - share) * g_pass
    return g * np.array([noise.focal_sigma, noise.pp_sigma, noise.pp_sigma])


def perturbed_K(K: np.ndarray, err: np.ndarray | None, width: int, height: int) -> np.ndarray:
    """The pinhole [3, 3] a view's rays follow: K with its focal lengths times exp(err[0]) and its principal
    point moved by (err[1] W, err[2] H); K itself when ``err`` is None."""
    if err is None:
        return K
    Kp = np.array(K, dtype=np.float64, copy=True)
    Kp[0, 0] *= np.exp(err[0])
    Kp[1, 1] *= np.exp(err[0])
    Kp[0, 2] += err[1] * width
    Kp[1, 2] += err[2] * height
    return Kp


class PassRandom:
    """The random streams of one pass, deterministic functions of a key such as ``(seed, i, j, kind)``.

    ``np`` (numpy) draws the few scalars of a pass (its Sim(3) error, coarse grids, bank offsets); ``torch``
    (a CPU `torch.Generator` seeded from the same key) draws the per-pixel samples, in float32, which is
    several times faster than numpy's float64 samplers at 512x384.
    """

    def __init__(self, key: list[int] | tuple[int, ...]) -> None:
        key = [int(k) for k in key]
        self.np = np.random.default_rng(key)
        seed = int(np.random.SeedSequence([*key, 0x70C4]).generate_state(1, np.uint64)[0])
        self.torch = torch.Generator().manual_seed(seed)

    def rand(self, *shape: int) -> torch.Tensor:
        """U(0, 1) float32 samples."""
        return torch.rand(shape, generator=self.torch)

    def randn(self, *shape: int) -> torch.Tensor:
        """N(0, 1) float32 samples."""
        return torch.randn(shape, generator=self.torch)


@functools.lru_cache(maxsize=16)
def _interp_matrix(n: int, g: int) -> torch.Tensor:  # [n, g] float32
    """Rows of 1-D bilinear interpolation weights (``align_corners=True``) from g nodes to n samples."""
    M = torch.zeros(n, g, dtype=torch.float64)
    if g == 1 or n == 1:
        M[:, 0] = 1.0
        return M.float()
    src = torch.arange(n, dtype=torch.float64) * ((g - 1) / (n - 1))
    i0 = src.floor().long().clamp(0, g - 2)
    w = src - i0
    M[torch.arange(n), i0] = 1.0 - w
    M[torch.arange(n), i0 + 1] += w
    return M.float()


def smooth_field(rng: PassRandom, H: int, W: int, grid: tuple[int, int] = (6, 8)) -> torch.Tensor:
    """A smooth random field [H, W] (float32, ~N(0, 1) per grid node, bilinear between nodes).

    Separable: ``rows @ coarse @ cols^T`` with fixed interpolation matrices, i.e. bilinear interpolation with
    ``align_corners=True`` of a coarse normal grid, at the cost of a tiny matrix product.
    """
    coarse = torch.from_numpy(rng.np.normal(size=grid).astype(np.float32))
    return _interp_matrix(H, grid[0]) @ (coarse @ _interp_matrix(W, grid[1]).T)


def window_max(t: torch.Tensor, r: int) -> torch.Tensor:
    """Maximum (logical or for bool) over the (2r+1)x(2r+1) window around each pixel of t [H, W].

    Pixels outside the map are ignored, so this equals ``max_pool2d(t, 2r+1, stride=1, padding=r)``, but is
    computed with shifted slices (single-channel pooling is slow on CPU).
    """
    op = torch.logical_or if t.dtype == torch.bool else torch.maximum
    out = t
    for dim in (0, 1):
        src = out
        out = src.clone()
        n = src.shape[dim]
        for s in range(1, min(r, n - 1) + 1):
            lo, hi = out.narrow(dim, s, n - s), out.narrow(dim, 0, n - s)
            lo.copy_(op(lo, src.narrow(dim, 0, n - s)))
            hi.copy_(op(hi, src.narrow(dim, s, n - s)))
    return out


def near_far(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """3x3-window min and max of z [H, W] (float32 tensors)."""
    return -window_max(-z, 1), window_max(z, 1)


def discontinuities(
    z: np.ndarray | torch.Tensor,
    thresh: float,
    dilate: int,
    near_far_z: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> np.ndarray:
    """Depth-discontinuity mask [H, W] bool of a positive, hole-free depth z [H, W].

    ``near_far_z``: `near_far` of z when the caller has it already.
    """
    if near_far_z is None:
        t = torch.as_tensor(np.ascontiguousarray(z, dtype=np.float32)) if isinstance(z, np.ndarray) else z.float()
        near_far_z = near_far(t)
    zmin, zmax = near_far_z
    disc = zmax > zmin * (1.0 + thresh)
    if dilate > 0:
        disc = window_max(disc, dilate)
    return disc.numpy()


@dataclass(frozen=True)
class DepthDiscs:
    """What a frame needs for flying pixels: its discontinuity pixels and their 3x3 depth range."""

    idx: torch.Tensor  # [n] int64 flat indices of the discontinuity pixels
    near: torch.Tensor  # [n] float32 3x3-window min depth at them
    far: torch.Tensor  # [n] float32 3x3-window max depth at them

    @staticmethod
    def of(
        z: torch.Tensor, disc: np.ndarray | torch.Tensor, near_far_z: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> DepthDiscs:
        zmin, zmax = near_far(z) if near_far_z is None else near_far_z
        idx = torch.as_tensor(disc).reshape(-1).nonzero().reshape(-1)
        return DepthDiscs(idx, zmin.reshape(-1)[idx].contiguous(), zmax.reshape(-1)[idx].contiguous())


@dataclass(frozen=True)
class DepthErrors:
    """The per-pixel errors drawn for one view by `corrupt_depth`."""

    z: torch.Tensor  # [H, W] float32 corrupted depth
    outliers: torch.Tensor  # [n] int64 flat indices of the gross outliers
    confident: torch.Tensor  # [n] bool, the outliers that keep a high confidence

    def unreliable_outliers(self) -> torch.Tensor:  # [m] int64
        """Flat indices of the outliers that get a low confidence."""
        return self.outliers[~self.confident]


def corrupt_depth(
    z: torch.Tensor,  # [H, W] float32, filled (positive everywhere); not modified
    discs: DepthDiscs | None,
    noise: OracleNoise,
    rng: PassRandom,
    level: float,
) -> DepthErrors:
    """Per-pixel depth errors of one view; ``level`` = 1 for X^j_i, ``ii_factor`` for X^i_i.

    Flying pixels at discontinuities (depth ``near + U(0.2, 0.8) (far - near)``), white log-depth noise
    (std ``level * depth_noise``), smooth log-depth noise (``level * depth_lowfreq`` times `smooth_field`),
    and gross outliers (a fraction ``level * outlier_frac`` of the pixels, |log depth| ~ U(outlier_log_range)
    with a random sign, each kept confident with probability ``confident_outlier_frac``). Without any error
    (preset ``none``) the returned depth is ``z`` itself.
    """
    H, W = z.shape
    n = H * W
    if noise.disc_blend and discs is not None and len(discs.idx):
        beta = rng.rand(len(discs.idx)).mul_(0.6).add_(0.2)
        z = z.clone()
        z.view(-1)[discs.idx] = torch.addcmul(discs.near, beta, discs.far - discs.near)
    log_noise: torch.Tensor | None = None
    if level * noise.depth_noise > 0:
        log_noise = rng.randn(H, W).mul_(level * noise.depth_noise)
    if level * noise.depth_lowfreq > 0:
        f = smooth_field(rng, H, W)
        log_noise = (
            f.mul_(level * noise.depth_lowfreq)
            if log_noise is None
            else log_noise.add_(f, alpha=level * noise.depth_lowfreq)
        )
    out = torch.zeros(0, dtype=torch.long)
    confident = torch.zeros(0, dtype=torch.bool)
    if level * noise.outlier_frac > 0:
        out = (rng.rand(n) < level * noise.outlier_frac).nonzero().reshape(-1)
        u = rng.rand(3, len(out))
        lo, hi = noise.outlier_log_range
        mag = u[0].mul_(hi - lo).add_(lo)
        mag = torch.where(u[1] < 0.5, -mag, mag)
        confident = u[2] < noise.confident_outlier_frac
        if log_noise is None:
            log_noise = torch.zeros(H, W)
        log_noise.view(-1)[out] = mag
    if log_noise is not None:
        z = z * log_noise.exp_()
    return DepthErrors(z, out, confident)


def confidence(
    rng: PassRandom,
    unreliable: torch.Tensor,  # [H, W] bool: pixels unreliable in any case (discontinuities, invalid depth)
    noise: OracleNoise,
    factor: float = 1.0,
    extra: torch.Tensor | None = None,  # [m] int64 flat indices of further unreliable pixels (outliers)
) -> torch.Tensor:
    """Confidence [H, W] float32 >= 1: a smooth field in ``conf_high`` where reliable, ``conf_low`` elsewhere.

    ``factor`` scales (C - 1) (0.8 for X^j_i).
    """
    H, W = unreliable.shape
    lo, hi = noise.conf_high
    # 1 + factor * (lo + (hi - lo) * sigmoid(1.5 f) - 1)
    C = smooth_field(rng, H, W).mul_(1.5).sigmoid_().mul_(factor * (hi - lo)).add_(1.0 + factor * (lo - 1.0))
    if extra is not None and len(extra):
        unreliable = unreliable.clone()
        unreliable.view(-1)[extra] = True
    idx = unreliable.reshape(-1).nonzero().reshape(-1)
    if len(idx):
        llo, lhi = noise.conf_low
        C.view(-1)[idx] = rng.rand(len(idx)).mul_(factor * (lhi - llo)).add_(1.0 + factor * (llo - 1.0))
    return C


def preset_table() -> str:
    """The presets as text (for `--help`-style listings and docs)."""

    def fmt(v: object) -> str:
        if isinstance(v, float):
            return f"{v:g}"
        if isinstance(v, tuple):
            return "(" + ", ".join(fmt(x) for x in v) + ")"
        return str(v)

    names = [f.name for f in fields(OracleNoise)]
    rows = [f"{n:<24}" + "".join(f"{fmt(getattr(p, n)):>16}" for p in PRESETS.values()) for n in names]
    return "\n".join([" " * 24 + "".join(f"{k:>16}" for k in PRESETS)] + rows)
