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

Measured on the mast3r preset by tests/prior/test_oracle.py (30-56 pairs of 32x24 views): per-pixel log-depth
error after the best Sim(3) fit 1.6% (X^j_i) / 0.8% (X^i_i), outlier rate 4.8% / 2.3%; per-pair RMS rotation
0.93 deg x growth, translation 2.0% of the baseline, relative-scale std 0.9% x growth, pass-scale std 1.6%.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "OracleNoise", "PRESETS", "get_noise", "growth", "rodrigues", "PairError", "sample_pair_error",
    "smooth_field", "discontinuities", "corrupt_depth", "confidence", "preset_table",
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
            outlier_log_range=(lo, hi),
        )


_MAST3R = OracleNoise()
PRESETS: dict[str, OracleNoise] = {
    "none": replace(
        _MAST3R.scaled(0.0), confident_outlier_frac=0.0, disc_blend=False
    ),
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


def sample_pair_error(
    noise: OracleNoise, rng: np.random.Generator, baseline: float, median_depth: float
) -> PairError:
    """Draw the pass scale and the relative Sim(3) error of X^j_i for a pair with the given baseline (m)."""
    g = growth(noise, baseline / max(median_depth, 1e-9))
    phi = rng.normal(size=3) * np.deg2rad(noise.rot_deg) * g / np.sqrt(3.0)
    t = rng.normal(size=3) * noise.trans_frac * baseline / np.sqrt(3.0)
    rel = float(np.exp(rng.normal() * noise.rel_scale_sigma * g))
    ps = float(np.exp(rng.normal() * noise.pass_scale_sigma))
    return PairError(pass_scale=ps, R=rodrigues(phi), t=t, rel_scale=rel)


def smooth_field(rng: np.random.Generator, H: int, W: int, grid: tuple[int, int] = (6, 8)) -> np.ndarray:
    """A smooth random field [H, W] (float32, ~N(0, 1) per grid node, bilinear between nodes)."""
    coarse = torch.from_numpy(rng.normal(size=(1, 1, *grid)).astype(np.float32))
    return F.interpolate(coarse, size=(H, W), mode="bilinear", align_corners=True)[0, 0].numpy()


def discontinuities(z: np.ndarray, thresh: float, dilate: int) -> np.ndarray:
    """Depth-discontinuity mask [H, W] bool of a positive, hole-free depth z [H, W]."""
    t = torch.from_numpy(np.ascontiguousarray(z, dtype=np.float32))[None, None]
    zmax = F.max_pool2d(t, 3, stride=1, padding=1)
    zmin = -F.max_pool2d(-t, 3, stride=1, padding=1)
    disc = (zmax > zmin * (1.0 + thresh)).float()
    if dilate > 0:
        disc = F.max_pool2d(disc, 2 * dilate + 1, stride=1, padding=dilate)
    return disc[0, 0].numpy() > 0.5


def _near_far(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """3x3-window min and max of z [H, W]."""
    t = torch.from_numpy(np.ascontiguousarray(z, dtype=np.float32))[None, None]
    zmax = F.max_pool2d(t, 3, stride=1, padding=1)[0, 0].numpy()
    zmin = -F.max_pool2d(-t, 3, stride=1, padding=1)[0, 0].numpy()
    return zmin, zmax


def corrupt_depth(
    z: np.ndarray,  # [H, W] float, filled (positive everywhere)
    disc: np.ndarray,  # [H, W] bool
    noise: OracleNoise,
    rng: np.random.Generator,
    level: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-pixel depth errors of one view; ``level`` = 1 for X^j_i, ``ii_factor`` for X^i_i.

    Returns:
        corrupted depth [H, W] float64, outlier mask [H, W] bool, confident-outlier mask [H, W] bool.
    """
    H, W = z.shape
    z = z.astype(np.float64).copy()
    if noise.disc_blend and disc.any():
        zmin, zmax = _near_far(z)
        beta = rng.uniform(0.2, 0.8, size=(H, W))
        z = np.where(disc, zmin + beta * (zmax - zmin), z)
    log_noise = level * noise.depth_noise * rng.normal(size=(H, W))
    if noise.depth_lowfreq > 0:
        log_noise += level * noise.depth_lowfreq * smooth_field(rng, H, W)
    out = rng.random((H, W)) < level * noise.outlier_frac
    lo, hi = noise.outlier_log_range
    mag = rng.uniform(lo, hi, size=(H, W)) * rng.choice([-1.0, 1.0], size=(H, W))
    log_noise = np.where(out, mag, log_noise)
    confident = out & (rng.random((H, W)) < noise.confident_outlier_frac)
    return z * np.exp(log_noise), out, confident


def confidence(
    rng: np.random.Generator,
    unreliable: np.ndarray,  # [H, W] bool
    noise: OracleNoise,
    factor: float = 1.0,
) -> np.ndarray:
    """Confidence [H, W] float32 >= 1: a smooth field in ``conf_high`` where reliable, ``conf_low`` elsewhere.

    ``factor`` scales (C - 1) (0.8 for X^j_i).
    """
    H, W = unreliable.shape
    lo, hi = noise.conf_high
    u = 1.0 / (1.0 + np.exp(-1.5 * smooth_field(rng, H, W)))  # (0, 1), smooth
    C = lo + (hi - lo) * u
    llo, lhi = noise.conf_low
    C = np.where(unreliable, rng.uniform(llo, lhi, size=(H, W)), C)
    return (1.0 + factor * (C - 1.0)).astype(np.float32)


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
