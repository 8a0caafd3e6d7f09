"""Pinhole intrinsics from pointmaps (docs/algorithm.md section 8.2): fit, then fuse over keyframes.

A pointmap ``X`` [H, W, 3] expressed in its own camera frame (``X^i_i``) tells, for each pixel (u, v), the
ray direction (a, b) = (x/z, y/z). A pinhole camera maps it to ``u = fx a + cx``, ``v = fy b + cy``.
The fit minimises the sum of (confidence-weighted) Euclidean pixel residuals

    sum_n  w_n | [u_n - fx a_n - cx,  v_n - fy b_n - cy] |

by Weiszfeld-style iteratively re-weighted least squares (each step: weighted least squares with weights
``w_n / max(|r_n|, eps)``), started from the weighted least-squares solution. The L1 (not squared) cost keeps
gross outliers (wrong depth discontinuities, sky, mismatched points) from dominating the estimate, but each
outlier still pulls in proportion to its leverage |(a, b)|, so a few trimmed least-squares steps follow
(residuals beyond 3 robust sigmas dropped), which remove the remaining bias. With 10% gross outliers and
0.5% point noise the focal error is well below 1% (tests/geometry/test_intrinsics.py).

Pixel convention: pixel (u, v) has its CENTRE at integer coordinates (u = column index, v = row index, as in
OpenCV), so the default principal point is the image centre ((W - 1) / 2, (H - 1) / 2). Everything is in the
pixel units of the pointmap's image (the network image); map K to the original image with the frame's
``ImageTransform`` (``K_to_original``).

Fusion over keyframes (`IntrinsicsFuser`): one fit per keyframe (focal and principal point), then a robust
weighted mean per parameter; measured on oracle runs with the MASt3R-like camera errors of
`mslam_ns.prior.noise` (3% focal, 1% principal point per pass), see tests/geometry/test_intrinsics.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["estimate_focal", "estimate_intrinsics", "fit_pinhole", "IntrinsicsFuser", "weighted_median"]

_MIN_Z = 1e-6
_EPS_RES = 1e-9  # pixels: floor of |r| in the Weiszfeld weights
_WEISZFELD_TOL = 1e-10  # relative: Weiszfeld stops once an iteration moves the parameters by less
_MIN_SIGMA = 1e-3  # pixels: floor of the robust residual scale used for trimming


def _as_numpy(a) -> np.ndarray:
    """numpy float64 view of a numpy array or a torch tensor (any device)."""
    if hasattr(a, "detach"):
        a = a.detach().to("cpu").double().numpy()
    return np.asarray(a, dtype=np.float64)


def _rays_and_pixels(
    X,  # [H, W, 3] numpy array or torch tensor (any device)
    C,  # [H, W] the same, or None
    max_pixels: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Valid pixels' (a, b) = (x/z, y/z), pixel coordinates (u, v) and weights; each [M] float64. With
    `max_pixels` below H * W only that many pixels, evenly spread in raster order, are looked at (and only they
    are copied and converted)."""
    H, W = X.shape[:2]
    if max_pixels is not None and H * W > max_pixels:
        sel = np.linspace(0, H * W - 1, int(max_pixels)).round().astype(np.int64)
        Xs = _as_numpy(X.reshape(H * W, 3)[sel])  # a torch tensor takes the numpy index too
        ws = np.ones(len(sel)) if C is None else _as_numpy(C.reshape(H * W)[sel])
        v, u = np.divmod(sel, W)
    else:
        Xs = _as_numpy(X).reshape(H * W, 3)
        ws = np.ones(H * W) if C is None else _as_numpy(C).reshape(H * W)
        v, u = np.divmod(np.arange(H * W), W)
    x, y, z = Xs[:, 0], Xs[:, 1], Xs[:, 2]
    ok = np.isfinite(Xs).all(axis=-1) & (z > _MIN_Z) & np.isfinite(ws) & (ws > 0)
    zz = z[ok]
    return x[ok] / zz, y[ok] / zz, u[ok].astype(np.float64), v[ok].astype(np.float64), ws[ok]


def fit_pinhole(
    X,  # [H, W, 3] pointmap in its own camera frame (numpy or torch)
    C=None,  # [H, W] confidence (weights), or None for uniform
    pp: tuple[float, float] | None = None,
    shared_focal: bool = True,
    fit_pp: bool = False,
    iters: int = 10,
    refine_iters: int = 3,
    trim_k: float = 3.0,
    max_points: int = 40000,
    max_pixels: int | None = None,
) -> tuple[float, float, float, float]:
    """Robust pinhole fit; returns (fx, fy, cx, cy) in the pointmap's pixel units.

    Args:
        pp: fixed principal point (cx, cy) when ``fit_pp`` is False; default the image centre.
        shared_focal: one focal for both axes (square pixels), else fx and fy separately.
        fit_pp: also estimate (cx, cy) (poorly conditioned for narrow fields of view; off by default).
        iters: at most this many Weiszfeld re-weighting iterations after the least-squares start (fewer once
            an iteration moves the parameters by less than 1e-10 of their size).
        refine_iters: at most this many final trimmed least-squares iterations (fewer once the same pixels
            are kept twice: the solution then repeats) (pixels with a residual above
            ``trim_k * 1.4826 * weighted median residual`` are dropped); 0 = pure Weiszfeld.
        trim_k: trimming threshold in robust standard deviations.
        max_points: above this many valid pixels an evenly strided subset is used (speed).
        max_pixels: look at only this many pixels, evenly spread over the image (speed on large images:
            skips the per-pixel work on the rest); None = every pixel.
    Raises:
        ValueError: fewer than 8 pixels with positive depth and weight.
    """
    H, W = X.shape[:2]
    a, b, u, v, w = _rays_and_pixels(X, C, max_pixels)
    if len(a) < 8:
        raise ValueError(f"fit_pinhole: only {len(a)} pixels with positive depth and weight")
    cx0, cy0 = ((W - 1) / 2.0, (H - 1) / 2.0) if pp is None else (float(pp[0]), float(pp[1]))
    if len(a) > max_points:
        sel = np.linspace(0, len(a) - 1, max_points).round().astype(np.int64)
        a, b, u, v, w = a[sel], b[sel], u[sel], v[sel], w[sel]
    M = len(a)
    zeros, ones = np.zeros(M), np.ones(M)
    # Linear model r = target - A theta, rows stacked as [u-rows; v-rows]: A [2M, P], target [2M].
    cols_u: list[np.ndarray] = []
    cols_v: list[np.ndarray] = []
    if shared_focal:
        cols_u.append(a)
        cols_v.append(b)
    else:
        cols_u += [a, zeros]
        cols_v += [zeros, b]
    if fit_pp:
        cols_u += [ones, zeros]
        cols_v += [zeros, ones]
        tu, tv = u, v
    else:
        tu, tv = u - cx0, v - cy0
    # The 2M rows [u-rows; v-rows] as the columns of one contiguous [P, 2M] array (fast weighted products).
    AT = np.ascontiguousarray(np.concatenate([np.stack(cols_u, axis=1), np.stack(cols_v, axis=1)]).T)
    t = np.concatenate([tu, tv])  # [2M]
    theta = _weighted_lstsq(AT, t, w)
    for _ in range(iters):
        r = _residual_norm(AT, t, theta)
        prev, theta = theta, _weighted_lstsq(AT, t, w / np.maximum(r, _EPS_RES))
        if np.abs(theta - prev).max() <= _WEISZFELD_TOL * np.abs(theta).max():
            break  # converged: the remaining iterations would move theta by less than this
    kept = None
    for _ in range(refine_iters):
        # Trimmed least squares: residuals beyond trim_k robust sigmas get no weight at all (the L1 fit
        # still feels far outliers in proportion to their leverage |(a, b)|; this removes them).
        r = _residual_norm(AT, t, theta)
        sigma = max(1.4826 * weighted_median(r, w), _MIN_SIGMA)
        keep = r < trim_k * sigma
        if keep.sum() < 8 or (kept is not None and np.array_equal(keep, kept)):
            break  # the same pixels kept give the same solution again: exactly what more iterations give
        theta, kept = _weighted_lstsq(AT, t, w * keep), keep
    fx = float(theta[0])
    fy = fx if shared_focal else float(theta[1])
    if fit_pp:
        cx, cy = float(theta[-2]), float(theta[-1])
    else:
        cx, cy = cx0, cy0
    return fx, fy, cx, cy


def _residual_norm(
    AT: np.ndarray,  # [P, 2M] the model's rows (u-rows, then v-rows) as columns
    t: np.ndarray,  # [2M] targets
    theta: np.ndarray,  # [P]
) -> np.ndarray:
    """Euclidean pixel residual per point [M]."""
    r = t - _combine(theta, AT)
    M = len(t) // 2
    return np.sqrt(r[:M] * r[:M] + r[M:] * r[M:])


def _combine(theta: np.ndarray, AT: np.ndarray) -> np.ndarray:
    """theta @ AT [2M] as P element-wise products. The fit's products are skinny (P <= 4 rows); as BLAS calls
    they woke OpenBLAS's threads, which on 2 cores contend with torch's (an 8000-pixel fit in a process that
    had run torch: median 11.8 ms with BLAS products, 3.9 ms with these and `_weighted_lstsq`'s einsums,
    which never call BLAS; 3.2 ms with OPENBLAS_NUM_THREADS=1)."""
    out = theta[0] * AT[0]
    for k in range(1, len(theta)):
        out += theta[k] * AT[k]
    return out


def _weighted_lstsq(
    AT: np.ndarray,  # [P, 2M]
    t: np.ndarray,  # [2M]
    w: np.ndarray,  # [M] per point (both of its rows)
) -> np.ndarray:
    """argmin_theta sum w (|tu - Au theta|^2 + |tv - Av theta|^2) via the P x P normal equations."""
    ATw = AT * np.concatenate([w, w])  # [P, 2M]
    H = np.einsum("pn,qn->pq", ATw, AT)  # [P, P]
    g = np.einsum("pn,n->p", ATw, t)  # [P]
    return np.linalg.solve(H + 1e-12 * np.trace(H) * np.eye(len(g)), g)


def estimate_focal(
    X,  # [H, W, 3] pointmap in its own camera frame
    C=None,  # [H, W] confidence or None
    pp: tuple[float, float] | None = None,
    iters: int = 10,
) -> float:
    """One shared focal length (pixels) with the principal point fixed (default: image centre)."""
    return fit_pinhole(X, C, pp=pp, shared_focal=True, fit_pp=False, iters=iters)[0]


def estimate_intrinsics(
    X,  # [H, W, 3]
    C=None,  # [H, W]
    fit_pp: bool = False,
    shared_focal: bool = True,
    iters: int = 10,
    max_pixels: int | None = None,
) -> tuple[float, float, float, float]:
    """(fx, fy, cx, cy) of the pointmap's image; by default one focal and the image centre as pp."""
    return fit_pinhole(X, C, shared_focal=shared_focal, fit_pp=fit_pp, iters=iters, max_pixels=max_pixels)


def weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """The value at which the cumulative weight first reaches half of the total (lower weighted median)."""
    values = np.asarray(values, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    cw = np.cumsum(weights[order])
    k = int(np.searchsorted(cw, 0.5 * cw[-1], side="left"))
    return float(values[order][k])


@dataclass
class IntrinsicsFuser:
    """Fuses per-keyframe pinhole estimates into one K, keeping every keyframe's own value.

    Each keyframe's canonical pointmap gives one robust fit (`fit_pinhole`: focal and, by default, principal
    point); the fused K is, per parameter, a robust weighted mean: the weighted median, then the weighted mean
    of the keyframes within ``trim_k`` robust sigmas (1.4826 x weighted MAD, floored at ``min_spread`` of the
    median) of it. A keyframe seen again (same ``kf_id``, e.g. after its pointmap was refined) replaces its
    earlier estimate. MASt3R's (and the oracle's) camera errors are a few percent per pass and roughly
    zero-mean over images, so the fused value is much closer than any single keyframe's; the per-keyframe
    values stay available (`per_keyframe`) for zooming videos.

    Usage::

        fuser = IntrinsicsFuser()
        for kf in keyframes:
            fuser.update(kf.X.reshape(H, W, 3), kf.C.reshape(H, W), kf_id=kf.kf_id)
        K = fuser.K()  # [3, 3] network pixels, or None
    """

    reducer: str = "robust"
    """"robust" (trimmed weighted mean around the weighted median), "median" or "mean" (weighted)."""
    fit_pp: bool = True
    """Estimate the principal point per keyframe (else it is the image centre)."""
    trim_k: float = 3.0
    """Robust fusion: keyframes beyond this many robust sigmas from the median are left out."""
    min_spread: float = 0.002
    """Robust fusion: floor of the robust sigma, relative to the median focal (and applied to cx, cy too)."""
    max_pp_offset: float = 0.15
    """A keyframe whose fitted principal point is further than this fraction of the image size from the
    centre is refitted with the centre as principal point (a degenerate pointmap, e.g. a flat wall far away)."""
    samples: dict[int, tuple[float, float, float, float, float]] = field(default_factory=dict)
    """kf_id -> (fx, fy, cx, cy, weight) of every keyframe added."""
    extra: list[tuple[float, float, float, float, float]] = field(default_factory=list)
    """(fx, fy, cx, cy, weight) of further decoder passes (``add(..., extra=True)``: e.g. the passes of the
    backend's edge decodes); fused like the keyframes' samples, not counted as keyframes."""
    _next_id: int = -1

    def add(
        self,
        fx: float,
        fy: float,
        cx: float,
        cy: float,
        weight: float = 1.0,
        kf_id: int | None = None,
        extra: bool = False,
    ) -> None:
        """Add (or replace) one estimate; non-finite or non-positive-focal estimates and zero weights are
        ignored. Without ``kf_id`` the sample gets a fresh negative id; ``extra`` adds it to `extra` (another
        pass over an image already sampled) instead."""
        vals = (fx, fy, cx, cy, weight)
        if not (all(np.isfinite(vals)) and fx > 0 and fy > 0 and weight > 0):
            return
        if extra:
            self.extra.append(tuple(float(x) for x in vals))  # type: ignore[arg-type]
            return
        if kf_id is None:
            kf_id, self._next_id = self._next_id, self._next_id - 1
        self.samples[int(kf_id)] = tuple(float(x) for x in vals)  # type: ignore[assignment]

    def update(
        self, X, C=None, kf_id: int | None = None, extra: bool = False, max_pixels: int | None = None
    ) -> tuple[float, float, float, float] | None:
        """Estimate from one keyframe's pointmap X [H, W, 3] (and confidence C [H, W]) and add it.

        The sample's weight is the summed confidence of its valid pixels. `max_pixels`: fit on only this many
        pixels, evenly spread (speed; the weight is then their sum scaled to the whole image). Returns the
        keyframe's own estimate (fx, fy, cx, cy), or None when it could not be estimated.
        """
        # numpy or torch as given: with `max_pixels` only the sampled pixels are copied and converted
        Xn, Cn = (X, C) if max_pixels is not None else (_as_numpy(X), None if C is None else _as_numpy(C))
        H, W = Xn.shape[:2]
        try:
            est = estimate_intrinsics(Xn, Cn, fit_pp=self.fit_pp, max_pixels=max_pixels)
            if self.fit_pp and (
                abs(est[2] - (W - 1) / 2.0) > self.max_pp_offset * W
                or abs(est[3] - (H - 1) / 2.0) > self.max_pp_offset * H
            ):
                est = estimate_intrinsics(Xn, Cn, fit_pp=False, max_pixels=max_pixels)
        except (ValueError, np.linalg.LinAlgError):
            return None
        weight = float(_rays_and_pixels(Xn, Cn, max_pixels)[4].sum())
        if max_pixels is not None and H * W > max_pixels:
            weight *= H * W / int(max_pixels)
        self.add(*est, weight=weight, kf_id=kf_id, extra=extra)
        return est

    @property
    def count(self) -> int:
        return len(self.samples)

    def estimate(self, extra: bool = True) -> tuple[float, float, float, float] | None:
        """Fused (fx, fy, cx, cy) of the keyframes' samples and (``extra``) the further passes' ones, or None
        before any sample."""
        rows = list(self.samples.values()) + (list(self.extra) if extra else [])
        if not rows:
            return None
        s = np.asarray(rows)  # [K, 5]
        w = s[:, 4]
        if self.reducer == "mean":
            out = (s[:, :4] * w[:, None]).sum(axis=0) / w.sum()
        elif self.reducer == "median":
            out = np.array([weighted_median(s[:, k], w) for k in range(4)])
        elif self.reducer == "robust":
            out = np.empty(4)
            floor = self.min_spread * weighted_median(s[:, 0], w)
            for k in range(4):
                med = weighted_median(s[:, k], w)
                sigma = max(1.4826 * weighted_median(np.abs(s[:, k] - med), w), floor)
                keep = np.abs(s[:, k] - med) <= self.trim_k * sigma
                out[k] = float((s[keep, k] * w[keep]).sum() / w[keep].sum())
        else:
            raise ValueError(f"IntrinsicsFuser: unknown reducer {self.reducer!r} (robust, median or mean)")
        return float(out[0]), float(out[1]), float(out[2]), float(out[3])

    def K(self, extra: bool = True) -> np.ndarray | None:
        """The fused 3x3 intrinsics matrix (float64, network pixels), or None before any sample."""
        e = self.estimate(extra)
        return None if e is None else _K_of(*e)

    def per_keyframe(self) -> dict[int, np.ndarray]:
        """kf_id -> that keyframe's own 3x3 estimate (network pixels)."""
        return {k: _K_of(*v[:4]) for k, v in self.samples.items()}


def _K_of(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:  # [3, 3]
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
