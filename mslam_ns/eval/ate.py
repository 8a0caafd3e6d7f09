"""Absolute trajectory error (ATE), computed the way ``evo_ape tum GT EST -as`` computes it.

What evo (v1.x) does, and what this module reproduces step by step:

1. Association (``evo.core.sync.associate_trajectories``, nearest-time method): the trajectory with FEWER
   poses is walked (the estimate when both have as many), and each of its stamps is paired with the nearest
   stamp of the other one when ``|dt| <= max_diff`` (evo's CLI default ``--t_max_diff 0.01`` s). On an exact
   tie the earlier stamp wins. A stamp of the longer trajectory may be used twice.
2. Alignment (``PosePath3D.align`` with ``correct_scale=True``): Umeyama's least-squares Sim(3) fit of the
   estimated POSITIONS onto the reference positions (rotations are ignored), then ``p <- s R p + t``.
3. Error (``APE`` with ``PoseRelation.translation_part``): per matched pose ``|p_est - p_ref|``;
   RMSE / mean / median / max over the matched poses.

``evo`` itself is GPL and is only used in the tests, as an oracle for this module.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

__all__ = ["AteResult", "umeyama", "associate_nearest", "ate", "positions_of", "rotations_of", "arc_length"]

EVO_MAX_DIFF = 0.01
"""evo's default maximum timestamp difference for association (seconds)."""


@dataclass
class AteResult:
    """Statistics of the aligned per-pose position errors (units of the reference, usually metres)."""

    rmse: float
    mean: float
    median: float
    max: float
    n_matched: int
    """Number of associated (estimate, reference) pose pairs the statistics are over."""
    scale: float
    """Scale of the alignment (estimate units -> reference units); 1 unless align == "sim3"."""
    path_length: float
    """Arc length of the full-rate reference trajectory over the time span of the matched poses."""
    std: float = 0.0
    min: float = 0.0
    rot_median_deg: float = float("nan")
    """Median orientation error (degrees) after the same position-based alignment (NaN without rotations)."""
    rot_max_deg: float = float("nan")

    @property
    def rmse_percent_of_path(self) -> float:
        """RMSE as a percentage of `path_length` (NaN for a zero-length path)."""
        return 100.0 * self.rmse / self.path_length if self.path_length > 0 else float("nan")

    def to_dict(self) -> dict[str, float | int]:
        """All fields plus ``rmse_percent_of_path`` (JSON-ready)."""
        d: dict[str, float | int] = asdict(self)
        d["rmse_percent_of_path"] = self.rmse_percent_of_path
        return d


def umeyama(
    src: np.ndarray,  # [N, 3]
    dst: np.ndarray,  # [N, 3]
    with_scale: bool = True,
) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity (Umeyama 1991) with ``dst ~ s R src + t``.

    Returns:
        (s, R [3, 3], t [3]); s = 1 when ``with_scale`` is False.

    Raises:
        ValueError: shapes differ, fewer than 3 points, or a degenerate (e.g. collinear) point set.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2:
        raise ValueError(f"umeyama: point sets must have the same [N, m] shape, got {src.shape} and {dst.shape}")
    n, m = src.shape
    if n < m:
        raise ValueError(f"umeyama: need at least {m} points, got {n}")
    mu_src = src.mean(axis=0)
    mu_dst = dst.mean(axis=0)
    xs = src - mu_src  # [N, m]
    ys = dst - mu_dst  # [N, m]
    var_src = float((xs**2).sum()) / n
    cov = ys.T @ xs / n  # [m, m]
    u, d, vt = np.linalg.svd(cov)
    if np.count_nonzero(d > np.finfo(d.dtype).eps) < m - 1:
        raise ValueError("umeyama: degenerate point configuration (covariance rank too low)")
    S = np.eye(m)
    if np.linalg.det(u) * np.linalg.det(vt) < 0.0:
        S[m - 1, m - 1] = -1.0
    R = u @ S @ vt
    s = float(np.trace(np.diag(d) @ S) / var_src) if with_scale else 1.0
    t = mu_dst - s * R @ mu_src
    return s, R, t


def _nearest(
    query: np.ndarray,  # [Q] stamps to place
    ref: np.ndarray,  # [M] stamps searched
    max_dt: float,
) -> tuple[np.ndarray, np.ndarray]:
    """For each query stamp the index of the nearest ref stamp within max_dt (ties -> earlier stamp)."""
    if ref.size == 0 or query.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    order = np.argsort(ref, kind="stable")
    sref = ref[order]
    hi = np.clip(np.searchsorted(sref, query, side="right"), 0, len(sref) - 1)
    lo = np.clip(hi - 1, 0, None)
    d_hi = sref[hi] - query
    d_lo = np.where(hi > 0, query - sref[lo], np.inf)
    # Same decision rule as evo's binary search (equal distances go to the lower stamp).
    take_hi = (d_hi <= max_dt) & (d_hi < d_lo)
    take_lo = ~take_hi & (d_lo <= max_dt) & (d_lo <= d_hi)
    # Queries above the last stamp land on hi = last: their distance is |d_hi| on the lower side.
    above = query > sref[-1]
    take_lo_above = above & (query - sref[-1] <= max_dt)
    keep = np.where(above, take_lo_above, take_hi | take_lo)
    best = np.where(above, len(sref) - 1, np.where(take_hi, hi, lo))
    qi = np.nonzero(keep)[0]
    return qi.astype(np.int64), order[best[qi]].astype(np.int64)


def associate_nearest(
    ts_ref: np.ndarray,  # [M]
    ts_est: np.ndarray,  # [N]
    max_dt: float = EVO_MAX_DIFF,
) -> tuple[np.ndarray, np.ndarray]:
    """evo's nearest-time association: returns (ref indices [K], est indices [K]), in walk order.

    The shorter trajectory is walked (the estimate on a tie), so none of its poses is lost.
    """
    ts_ref = np.asarray(ts_ref, dtype=np.float64)
    ts_est = np.asarray(ts_est, dtype=np.float64)
    if len(ts_est) > len(ts_ref):
        ir, ie = _nearest(ts_ref, ts_est, max_dt)
    else:
        ie, ir = _nearest(ts_est, ts_ref, max_dt)
    return ir, ie


def rotations_of(poses: np.ndarray) -> np.ndarray | None:
    """Rotation matrices [N, 3, 3] from TUM rows [N, 7] / Sim(3) rows [N, 8] (quaternion xyzw) or matrices
    [N, 4, 4] (scale removed); None for position-only rows [N, 3]."""
    poses = np.asarray(poses, dtype=np.float64)
    if poses.ndim == 3 and poses.shape[1:] == (4, 4):
        R = poses[:, :3, :3]
        return R / np.cbrt(np.linalg.det(R))[:, None, None]
    if poses.ndim == 2 and poses.shape[1] in (7, 8):
        x, y, z, w = (poses[:, 3 + k] for k in range(4))
        n = np.sqrt(x * x + y * y + z * z + w * w)
        x, y, z, w = x / n, y / n, z / n, w / n
        return np.stack(
            [
                np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
                np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
                np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
            ],
            1,
        )
    return None


def positions_of(poses: np.ndarray) -> np.ndarray:
    """Positions [N, 3] (float64) from TUM rows [N, 7] / Sim(3) rows [N, 8] or matrices [N, 4, 4]."""
    poses = np.asarray(poses, dtype=np.float64)
    if poses.ndim == 3 and poses.shape[1:] == (4, 4):
        return poses[:, :3, 3].copy()
    if poses.ndim == 2 and poses.shape[1] in (3, 7, 8):
        return poses[:, :3].copy()
    raise ValueError(f"poses must be [N, 7], [N, 8], [N, 3] or [N, 4, 4], got {poses.shape}")


def arc_length(points: np.ndarray) -> float:
    """Length of the polyline through ``points`` [N, 3]."""
    if len(points) < 2:
        return 0.0
    return float(np.linalg.norm(np.diff(points, axis=0), axis=1).sum())


def ate(
    est_ts: np.ndarray,  # [N] seconds
    est_poses: np.ndarray,  # [N, 7] (tx ty tz qx qy qz qw) or [N, 4, 4] T_WC
    gt_ts: np.ndarray,  # [M] seconds
    gt_poses: np.ndarray,  # [M, 7] or [M, 4, 4]
    max_dt: float = EVO_MAX_DIFF,
    align: Literal["sim3", "se3", "none"] = "sim3",
) -> AteResult:
    """ATE of an estimated trajectory against ground truth (``evo_ape tum gt est -as`` for align="sim3").

    Poses with a non-finite timestamp or position (e.g. NaN ground truth of frames without it) are dropped
    before the association.

    Raises:
        ValueError: fewer than 3 matched poses, or a degenerate (e.g. static / collinear) estimate.
    """
    gt_ts = np.asarray(gt_ts, dtype=np.float64).reshape(-1)
    est_ts = np.asarray(est_ts, dtype=np.float64).reshape(-1)
    p_est_all = positions_of(est_poses)
    p_gt_all = positions_of(gt_poses)
    if len(est_ts) != len(p_est_all) or len(gt_ts) != len(p_gt_all):
        raise ValueError("ate: timestamps and poses have different lengths")
    ok_e = np.isfinite(est_ts) & np.isfinite(p_est_all).all(axis=1)
    ok_g = np.isfinite(gt_ts) & np.isfinite(p_gt_all).all(axis=1)
    est_ts, p_est_all = est_ts[ok_e], p_est_all[ok_e]
    gt_ts, p_gt_all = gt_ts[ok_g], p_gt_all[ok_g]
    ir, ie = associate_nearest(gt_ts, est_ts, max_dt)
    if len(ir) < 3:
        raise ValueError(f"ate: only {len(ir)} poses matched the ground truth within {max_dt} s (need at least 3)")
    p_gt = p_gt_all[ir]
    p_est = p_est_all[ie]
    if align == "none":
        s, R, t = 1.0, np.eye(3), np.zeros(3)
    elif align in ("sim3", "se3"):
        s, R, t = umeyama(p_est, p_gt, with_scale=(align == "sim3"))
    else:
        raise ValueError(f"ate: unknown align {align!r} (sim3, se3 or none)")
    p_aligned = s * p_est @ R.T + t
    err = np.linalg.norm(p_aligned - p_gt, axis=1)  # [K]
    rot_med = rot_max = float("nan")
    R_est_all, R_gt_all = rotations_of(est_poses), rotations_of(gt_poses)
    if R_est_all is not None and R_gt_all is not None:
        R_est, R_gt = R_est_all[ok_e][ie], R_gt_all[ok_g][ir]
        D = np.einsum("nji,jk,nkl->nil", R_gt, R, R_est)  # R_gt^T (R_align R_est)
        ang = np.degrees(np.arccos(np.clip((np.trace(D, axis1=1, axis2=2) - 1) / 2, -1, 1)))
        rot_med, rot_max = float(np.median(ang)), float(np.max(ang))
    t0, t1 = gt_ts[ir].min(), gt_ts[ir].max()
    in_span = (gt_ts >= t0) & (gt_ts <= t1)
    span_order = np.argsort(gt_ts[in_span], kind="stable")
    return AteResult(
        rmse=float(np.sqrt(np.mean(err**2))),
        mean=float(np.mean(err)),
        median=float(np.median(err)),
        max=float(np.max(err)),
        n_matched=int(len(err)),
        scale=float(s),
        path_length=arc_length(p_gt_all[in_span][span_order]),
        std=float(np.std(err)),
        min=float(np.min(err)),
        rot_median_deg=rot_med,
        rot_max_deg=rot_max,
    )
