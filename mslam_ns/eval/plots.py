"""PNG plots of a run: trajectory against aligned ground truth, ATE over time (as evo draws them), and a
one-page run report (trajectory, per-frame tracking, timings, numbers).

    write_plots(run_dir, gt_file)        -> [run_dir/plot_trajectory.png, run_dir/plot_ate.png]
    write_report(run_dir, n_matches)     -> run_dir/report.png   (`mslam-ns run` writes it after every run)

Matplotlib is used through its object API on an Agg canvas (no global pyplot state, safe in threads).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mslam_ns.errors import UserError
from mslam_ns.eval.ate import EVO_MAX_DIFF, associate_nearest, umeyama

__all__ = ["write_plots", "write_report", "aligned_errors", "COLORS", "TRAJECTORY_PLOT", "ATE_PLOT", "REPORT_PLOT"]

log = logging.getLogger(__name__)

TRAJECTORY_PLOT = "plot_trajectory.png"
ATE_PLOT = "plot_ate.png"
REPORT_PLOT = "report.png"
COLORS = {
    "gt": "#2ca02c",
    "estimate": "#1f5fd6",
    "lost": "#e01b1b",
    "keyframe": "#ff8c00",
    "error": "#17becf",
    "rmse": "#8c564b",
    "median": "#bcbd22",
    "mean": "#9b30d9",
    "matches": "#e377c2",
    "tracked_kf": "#0a7d6e",
    "timings": "#3b3b98",
}
"""Colour of each series, all different (fixed, so that a plot can be checked from its pixels)."""
DPI = 100


def aligned_errors(
    est_ts: np.ndarray,  # [N]
    est_xyz: np.ndarray,  # [N, 3]
    gt_ts: np.ndarray,  # [M]
    gt_xyz: np.ndarray,  # [M, 3]
    max_dt: float = EVO_MAX_DIFF,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """evo's association and Sim(3) alignment (as `mslam_ns.eval.ate.ate`), per pose.

    Returns:
        (estimate indices [K], aligned estimate positions [K, 3], matched GT positions [K, 3], errors [K]).
    """
    ok_e = np.isfinite(est_ts) & np.isfinite(est_xyz).all(axis=1)
    ok_g = np.isfinite(gt_ts) & np.isfinite(gt_xyz).all(axis=1)
    ie_all, ig_all = np.nonzero(ok_e)[0], np.nonzero(ok_g)[0]
    ir, ie = associate_nearest(gt_ts[ig_all], est_ts[ie_all], max_dt)
    if len(ir) < 3:
        raise ValueError(f"only {len(ir)} poses matched the ground truth within {max_dt} s (need at least 3)")
    idx_e, idx_g = ie_all[ie], ig_all[ir]
    order = np.argsort(est_ts[idx_e], kind="stable")
    idx_e, idx_g = idx_e[order], idx_g[order]
    s, R, t = umeyama(est_xyz[idx_e], gt_xyz[idx_g], with_scale=True)
    p = s * est_xyz[idx_e] @ R.T + t
    return idx_e, p, gt_xyz[idx_g], np.linalg.norm(p - gt_xyz[idx_g], axis=1)


def _plane(xyz: np.ndarray) -> tuple[int, int]:
    """The two axes of largest extent (the 'top view' of a ground-truth trajectory)."""
    ext = np.ptp(xyz, axis=0) if len(xyz) else np.ones(3)
    a, b = sorted(np.argsort(ext)[1:].tolist())
    return int(a), int(b)


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    from mslam_ns.io.atomic import atomic_write

    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=DPI)
    return path


def _lost_spans(ax, t: np.ndarray, lost: np.ndarray, label: str = "lost") -> None:
    """Shade the time spans of lost frames."""
    first = True
    i = 0
    while i < len(lost):
        if lost[i]:
            j = i
            while j + 1 < len(lost) and lost[j + 1]:
                j += 1
            dt = (t[min(j + 1, len(t) - 1)] - t[j]) if j + 1 < len(t) else (t[j] - t[max(j - 1, 0)])
            ax.axvspan(
                t[i], t[j] + max(dt, 1e-6), color=COLORS["lost"], alpha=0.25, lw=0, label=label if first else None
            )
            first = False
            i = j + 1
        else:
            i += 1


def _read_run(run_dir: Path):
    from mslam_ns.io.rundir import RunDir

    rd = RunDir(run_dir)
    if not rd.path.is_dir():
        raise UserError(f"{rd.path}: run folder not found")
    if not rd.file(rd.TRAJECTORY).is_file():
        raise UserError(f"{rd.file(rd.TRAJECTORY)}: not found")
    ts, T = rd.read_trajectory()
    lost = np.zeros(len(ts), bool)
    is_kf = np.zeros(len(ts), bool)
    kf_ids = np.zeros(len(ts), np.int64)
    if rd.file(rd.FRAMES).is_file():
        tab = rd.read_frames()
        if len(tab.timestamps) == len(ts):
            lost, is_kf, kf_ids = tab.lost, tab.is_keyframe, tab.kf_ids
    return rd, ts, T, lost, is_kf, kf_ids


def write_plots(run_dir: Path, gt: Path, max_dt: float = EVO_MAX_DIFF) -> list[Path]:
    """Write `plot_trajectory.png` (top view of the Sim(3)-aligned estimate against the ground truth, lost
    frames marked) and `plot_ate.png` (per-frame position error over time with RMSE / mean / median lines)
    into `run_dir`. Alignment and association are those of `mslam-ns eval` (evo's `-as`).

    Args:
        run_dir: output folder of `mslam-ns run` (reads trajectory.txt and frames.txt).
        gt: ground-truth trajectory file (TUM format).
        max_dt: maximum timestamp difference for associating poses (seconds).

    Returns:
        the two PNG paths. Raises UserError when the files are missing or fewer than 3 poses match.
    """
    from mslam_ns.io.tum import read_tum_trajectory

    run_dir, gt = Path(run_dir), Path(gt)
    rd, ts, T, lost, _, _ = _read_run(run_dir)
    if not gt.is_file():
        raise UserError(f"{gt}: file not found")
    gts, gT = read_tum_trajectory(gt)
    try:
        idx, p_est, p_gt, err = aligned_errors(ts, T[:, :3], gts, gT[:, :3], max_dt)
    except ValueError as e:
        raise UserError(f"{rd.file(rd.TRAJECTORY)}: cannot plot against {gt}: {e}") from None
    g_ok = np.isfinite(gT[:, :3]).all(axis=1)
    gt_full = gT[g_ok, :3][np.argsort(gts[g_ok], kind="stable")]
    a, b = _plane(gt_full)
    names = "xyz"

    fig = _figure(7.0, 6.0)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(p_est[:, a], p_est[:, b], "-", color=COLORS["estimate"], lw=2.0, label="estimate (Sim(3)-aligned)")
    ax.plot(gt_full[:, a], gt_full[:, b], "--", color=COLORS["gt"], lw=2.0, label="ground truth")
    lm = lost[idx]
    if lm.any():
        ax.plot(p_est[lm, a], p_est[lm, b], "o", color=COLORS["lost"], ms=6, label=f"lost ({int(lm.sum())})")
    ax.set_xlabel(f"{names[a]} [m]")
    ax.set_ylabel(f"{names[b]} [m]")
    ax.set_aspect("equal", adjustable="datalim")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best")
    rmse = float(np.sqrt(np.mean(err**2)))
    ax.set_title(f"trajectory, top view ({names[a]}-{names[b]}): ATE RMSE {rmse:.4f} m, {len(err)} poses")
    out = [_save(fig, run_dir / TRAJECTORY_PLOT)]

    fig = _figure(8.0, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    t = ts[idx] - ts[idx][0]
    _lost_spans(ax, t, lost[idx])
    ax.plot(t, err, "-", color=COLORS["error"], lw=2.0, label="APE (translation)")
    for key, val in (("rmse", rmse), ("mean", float(np.mean(err))), ("median", float(np.median(err)))):
        ax.axhline(val, ls="--", color=COLORS[key], lw=2.0, label=f"{key} {val:.4f}")
    ax.set_xlabel("time [s]")
    ax.set_ylabel("position error [m]")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left")
    ax.set_title("absolute trajectory error over time (Sim(3)-aligned)")
    out.append(_save(fig, run_dir / ATE_PLOT))
    return out


def write_report(run_dir: Path, n_matches: Sequence[int] | None = None) -> Path:
    """Write `report.png`, the page to open first after a run: trajectory top view (keyframes, lost frames),
    per-frame tracking (matches per frame when known, else the keyframe each frame tracks; lost frames
    shaded), where the time went, and the run's numbers (ATE when eval.json is there).

    Args:
        run_dir: output folder of `mslam-ns run` (reads trajectory.txt, frames.txt, matches.txt,
            summary.json, eval.json).
        n_matches: valid matches of every input frame (trajectory.txt's order; -1: not matched), e.g. the
            run's `StepResult.n_matches`; None: matches.txt's, when the run has one.

    Returns:
        the PNG path.
    """
    import json

    run_dir = Path(run_dir)
    rd, ts, T, lost, is_kf, kf_ids = _read_run(run_dir)
    summary = rd.read_summary() if rd.file(rd.SUMMARY).is_file() else {}
    if n_matches is None:
        n_matches = rd.read_matches()
    ev = {}
    if rd.file(rd.EVAL).is_file():
        try:
            ev = json.loads(rd.file(rd.EVAL).read_text(encoding="utf-8"))
        except ValueError:
            log.warning("%s: not valid JSON; report without ATE", rd.file(rd.EVAL))
    xyz = T[:, :3]
    ok = np.isfinite(xyz).all(axis=1)
    a, b = (0, 2) if ok.sum() < 2 else _plane(xyz[ok])
    names = "xyz"
    fig = _figure(12.0, 8.0)

    ax = fig.add_subplot(2, 2, 1)
    ax.plot(xyz[ok, a], xyz[ok, b], "-", color=COLORS["estimate"], lw=2.0, label="every frame")
    m = ok & is_kf
    ax.plot(xyz[m, a], xyz[m, b], "s", color=COLORS["keyframe"], ms=6, label=f"keyframes ({int(is_kf.sum())})")
    m = ok & lost
    if m.any():
        ax.plot(xyz[m, a], xyz[m, b], "o", color=COLORS["lost"], ms=6, label=f"lost ({int(lost.sum())})")
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel(f"{names[a]}")
    ax.set_ylabel(f"{names[b]}")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    ax.set_title("trajectory (top view, run units)")

    ax = fig.add_subplot(2, 2, 2)
    frame = np.arange(len(ts))
    _lost_spans(ax, frame.astype(np.float64), lost)
    nm = None if n_matches is None else np.asarray(n_matches, dtype=np.float64).reshape(-1)
    if nm is not None and len(nm) == len(ts) and (nm >= 0).any():
        m = nm >= 0  # frames that were matched (not the first one, not motion-filter skips)
        ax.plot(frame[m], nm[m], "-", color=COLORS["matches"], lw=2.0, label="valid matches")
        ax.set_ylabel("matches")
    else:
        if nm is not None:
            log.warning("report: %d match counts for %d frames; showing keyframe ids", len(nm), len(ts))
        ax.step(frame, kf_ids, where="post", color=COLORS["tracked_kf"], lw=2.0, label="keyframe tracked against")
        ax.set_ylabel("keyframe id")
    kf_frames = frame[is_kf]
    if len(kf_frames):
        ax.plot(kf_frames, np.zeros(len(kf_frames)), "|", color=COLORS["keyframe"], ms=12, mew=2, label="new keyframe")
    ax.set_xlabel("frame")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    ax.set_title("tracking per frame")

    ax = fig.add_subplot(2, 2, 3)
    tm = {
        k: float(v)
        for k, v in (summary.get("timings_s") or {}).items()
        if k not in ("total", "prior", "tracking", "track") and isinstance(v, (int, float))
    }
    if tm:
        keys = sorted(tm, key=tm.get)
        ax.barh(keys, [tm[k] for k in keys], color=COLORS["timings"])
        ax.set_xlabel("seconds (whole run)")
    else:
        ax.text(0.5, 0.5, "no timings in summary.json", ha="center", va="center", transform=ax.transAxes)
    total = (summary.get("timings_s") or {}).get("total")
    ax.set_title("where the time went" + (f" (total {total:.1f} s)" if isinstance(total, (int, float)) else ""))

    ax = fig.add_subplot(2, 2, 4)
    ax.axis("off")
    fps = summary.get("fps") or {}
    lines = [
        f"frames: {len(ts)}   keyframes: {int(is_kf.sum()) or summary.get('keyframes', '?')}",
        f"lost frames: {int(lost.sum())}   restarts: {summary.get('restarts', '?')}",
        f"final state: {summary.get('state', '?')}",
    ]
    if fps:
        lines.append(
            f"frames/s: {fps.get('overall', float('nan')):.2f} overall, "
            f"{fps.get('frontend_without_prior', float('nan')):.2f} without the prior"
        )
    if summary.get("points") is not None:
        lines.append(f"points: {summary['points']:,}")
    k = summary.get("intrinsics")
    if k:
        lines.append(
            f"intrinsics ({k.get('source', '?')}): fx {k['fx']:.1f} fy {k['fy']:.1f} cx {k['cx']:.1f} cy {k['cy']:.1f}"
        )
    for key in ("all_frames", "keyframes"):
        r = ev.get(key) if isinstance(ev, dict) else None
        if isinstance(r, dict) and "rmse" in r:
            lines.append(
                f"ATE RMSE {key}: {r['rmse']:.4f} ({r.get('rmse_percent_of_path', float('nan')):.2f}% "
                f"of path), {r.get('n_matched', '?')} poses"
            )
    if summary.get("dataset"):
        lines.append(f"dataset: {summary['dataset']}")
    ax.text(0.0, 1.0, "\n".join(lines), va="top", ha="left", family="monospace", fontsize=10, transform=ax.transAxes)
    ax.set_title(f"run {Path(run_dir).resolve().name}")
    return _save(fig, run_dir / REPORT_PLOT)
