"""Building blocks shared by the commands that run the SLAM (`run`, `demo`, `ns-process-data mslam`, the
`mslam-data` dataparser): open the input, build the prior, drive a `SlamSystem` with a progress bar, and
turn the finished system into a `RunRecord` for `RunDir`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from mslam_ns.config import SlamConfig
from mslam_ns.errors import UserError
from mslam_ns.io.atomic import check_writable
from mslam_ns.io.rundir import FrameTable, PointCloud, RunDir, RunRecord

log = logging.getLogger(__name__)

__all__ = [
    "open_dataset",
    "open_run_source",
    "make_prior",
    "resolve_mode",
    "run_slam",
    "record_run",
    "evaluate_run",
    "check_out",
    "execute_run",
    "input_fingerprint",
    "write_run_report",
]


# ------------------------------------------------------------------------------------------- inputs
def open_dataset(dataset: Path, stride: int = 1, max_frames: int | None = None, calib: Path | None = None):
    """`open_source` with every failure turned into one `UserError` line naming the file; undistorted."""
    from mslam_ns.io.sources import open_source

    dataset = Path(dataset)
    if not dataset.exists():
        raise UserError(f"{dataset}: no such file or folder")
    if calib is not None and not Path(calib).is_file():
        raise UserError(f"{calib}: calibration file not found")
    try:
        source = open_source(dataset, stride=stride, max_frames=max_frames, calib=calib)
    except UserError:
        raise
    except (OSError, ValueError, RuntimeError) as e:
        raise UserError(f"{dataset}: {e}") from None
    if len(source) == 0:
        raise UserError(f"{dataset}: no frames")
    from mslam_ns.io.undistort import undistorted

    return undistorted(source)  # the SLAM works on pinhole images: lens distortion is removed here


def make_prior(
    source,
    prior: str,
    oracle_noise: str,
    img_size: int,
    seed: int,
    checkpoint: Path | None,
    device: str,
    retrieval_checkpoint: Path | None = None,
    codebook: Path | None = None,
    precision: str = "fp32",
    cuda_graphs: bool = False,
):
    """The two-view prior chosen on the command line.

    MASt3R: the network, plus its retrieval head and codebook (loop closure, relocalisation): the given files,
    else the cached downloads when the network is the default one too; a custom `checkpoint` without a
    `retrieval_checkpoint` runs without retrieval (consecutive edges only), with a warning. Every file given
    is checked before anything is loaded or downloaded; a file the chosen prior would not use is refused."""
    network_files = (("--checkpoint", checkpoint), ("--retrieval-checkpoint", retrieval_checkpoint))
    unused = [(flag, f) for flag, f in (*network_files, ("--codebook", codebook)) if f is not None]
    if prior != "mast3r" and unused:
        flag, f = unused[0]
        raise UserError(f"{f}: {flag} is for --prior mast3r; the {prior} prior would not use it")
    if codebook is not None and retrieval_checkpoint is None and checkpoint is not None:
        raise UserError(
            f"{codebook}: --codebook indexes the retrieval head's features; with a custom --checkpoint it "
            "needs --retrieval-checkpoint too"
        )
    if precision != "fp32" and prior != "mast3r":
        raise UserError(
            f"--precision {precision}: sets the network's arithmetic (--prior mast3r); the {prior} prior has none"
        )
    if precision == "fp16" and str(device).startswith("cpu"):
        raise UserError("--precision fp16: needs a CUDA device (--device cuda); on a CPU use bf16")
    if cuda_graphs and (prior != "mast3r" or not str(device).startswith("cuda")):
        why = f"the {prior} prior has no network" if prior != "mast3r" else f"not --device {device}"
        raise UserError(f"--cuda-graphs: runs the MASt3R network (--prior mast3r) on a CUDA device; {why}")
    if prior == "oracle":
        from mslam_ns.prior.oracle import OraclePrior

        if source.gt_poses is None:
            raise UserError(
                f"{source.path}: the oracle prior needs ground-truth poses and depth "
                "(a TUM / synthetic sequence); use --prior mast3r"
            )
        try:
            return OraclePrior.from_source(source, size=img_size, noise=oracle_noise, seed=seed, device=device)
        except ValueError as e:
            raise UserError(f"{source.path}: {e}") from None
    if prior == "mast3r":
        try:
            from mslam_ns.model import load_mast3r
            from mslam_ns.model.weights import resolve_checkpoint
            from mslam_ns.prior.mast3r import AMP_DTYPES, Mast3rPrior
        except ImportError as e:
            raise UserError(f"mast3r prior unavailable: {e}") from None
        from mslam_ns.model.codebook import check_codebook, load_codebook

        for name, f in (("mast3r", checkpoint), ("retrieval", retrieval_checkpoint)):
            if f is not None:
                resolve_checkpoint(name, f)  # the given files exist and are readable before any download
        cb_path = codebook  # read (and its format checked) before anything is loaded or downloaded
        words = None if cb_path is None else load_codebook(cb_path)
        net = load_mast3r(resolve_checkpoint("mast3r", checkpoint), device=device)
        default_files = checkpoint is None and retrieval_checkpoint is None
        if retrieval_checkpoint is None and not default_files:
            log.warning("no --retrieval-checkpoint for this --checkpoint: no loop closure, no relocalisation")
            return Mast3rPrior(net, amp_dtype=AMP_DTYPES[precision], cuda_graphs=cuda_graphs)
        from mslam_ns.model import load_retrieval

        head = load_retrieval(resolve_checkpoint("retrieval", retrieval_checkpoint), net)
        prior_obj = Mast3rPrior(net, head, amp_dtype=AMP_DTYPES[precision], cuda_graphs=cuda_graphs)
        if words is None and default_files:
            cb_path = resolve_checkpoint("codebook")
            words = load_codebook(cb_path)
        if words is not None:
            import torch

            dim = int(prior_obj.retrieval_features(prior_obj.encode(torch.zeros(3, 32, 32), 0)).shape[-1])
            prior_obj.retrieval_codebook = check_codebook(words, str(cb_path), dim)
            log.info("codebook %s: %d words of dimension %d", cb_path, *prior_obj.retrieval_codebook.shape)
        return prior_obj
    raise UserError(f"unknown prior {prior!r}")


def resolve_mode(mode: str, calib: Path | None, source) -> tuple[str, np.ndarray | None]:
    """(mode, K for the SLAM). 'auto' = calib when --calib is given, else rays. In rays mode the intrinsics
    are estimated unless the user gave --calib (then they are used as given, for export)."""
    K = None if source.intrinsics is None else np.asarray(source.intrinsics.K, dtype=np.float64)
    if mode == "auto":
        mode = "calib" if calib is not None else "rays"
    if mode == "calib" and K is None:
        raise UserError(f"{source.path}: calib mode needs intrinsics (pass --calib FILE)")
    return mode, (K if mode == "calib" or calib is not None else None)


def dataset_intrinsics(source) -> dict | None:
    if source.intrinsics is None:
        return None
    K = np.asarray(source.intrinsics.K, dtype=np.float64)
    return {"fx": float(K[0, 0]), "fy": float(K[1, 1]), "cx": float(K[0, 2]), "cy": float(K[1, 2])}


def check_out(out: Path, overwrite: bool) -> None:
    """OUT must be a folder that does not exist yet or is empty, unless --overwrite."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out}: folder is not empty (pass --overwrite to replace it)")
    check_writable(out)  # a real probe: os.access says yes as root and cannot see a path under a file


def open_run_source(run: RunDir):
    """The run's input frames again (same stride / max_frames / calibration, undistorted like the run)."""
    cfg = run.read_config() or {}
    dataset = cfg.get("dataset") or run.read_summary().get("dataset")
    if not dataset or not Path(dataset).exists():
        raise UserError(f"{run.path}: the run's input {dataset!r} is not there any more (needed for the images)")
    calib = cfg.get("calib")
    return open_dataset(
        Path(dataset), int(cfg.get("stride") or 1), cfg.get("max_frames"), Path(calib) if calib else None
    )


# ------------------------------------------------------------------------------------------- running
def _progress(total: int, quiet: bool, label: str = "SLAM"):
    """A rich progress bar with frames/s, keyframes and state; returns (progress, callback)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    prog = Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[fps]:.1f} frames/s  kf {task.fields[kf]}  {task.fields[state]}"),
        disable=quiet,
        transient=False,
    )
    task = prog.add_task("slam", total=total, fps=0.0, kf=0, state="init")
    t0 = time.perf_counter()
    count = [0]

    def callback(system, r) -> None:
        count[0] += 1
        fps = count[0] / max(time.perf_counter() - t0, 1e-9)
        state = getattr(r.state, "value", r.state)
        prog.update(task, advance=1, fps=fps, kf=_num_keyframes(system), state=state)

    return prog, callback


def _num_keyframes(system) -> int:
    return len(system.map.keyframes)


def run_slam(
    source,
    prior_obj,
    cfg: SlamConfig,
    K: np.ndarray | None,
    max_lost: int | None = None,
    quiet: bool = True,
    on_system=None,
    on_step=None,
):
    """Run a `SlamSystem` over a whole source. Returns (system, summary dict).

    `on_system(system)` is called before the first frame and may return an object with `.stop()`
    (e.g. a live viewer), stopped when the run ends or fails. `on_step(step_result)` is called after
    every frame (e.g. to record its match count)."""
    from mslam_ns.slam.system import SlamSystem

    system = SlamSystem(prior_obj, cfg, K=K, max_lost=max_lost)
    handle = on_system(system) if on_system is not None else None
    try:
        return _drive(system, source, quiet, on_step)
    finally:
        if handle is not None:
            handle.stop()


def _drive(system, source, quiet: bool, on_step=None):
    prog, cb = _progress(len(source), quiet)
    t0 = time.perf_counter()

    def progress(r) -> None:
        cb(system, r)
        if on_step is not None:
            on_step(r)

    with prog:
        system.run(source, progress=progress)
    return system, run_summary(system, source, time.perf_counter() - t0)


def match_count(r) -> int:
    """A frame's valid matches for matches.txt (-1 where nothing was matched: the first frame, skips)."""
    return -1 if r.reason in ("init", "skipped") else int(r.n_matches)


def run_summary(system, source, wall: float) -> dict:
    """summary.json's counts, timings, intrinsics, image transform, graph statistics and configuration of the
    frames `system` has processed so far (`wall`: seconds they took)."""
    cfg = system.cfg
    tm = dict(system.timings)
    prior_s = tm.get("prior_encode", 0.0) + tm.get("decode", 0.0)
    track_s = tm.get("track", 0.0)
    snap = _snapshot(system, with_points=False)
    n = len(snap.frame_timestamps)
    K_est = system.intrinsics()
    W, H = source.image_size
    return {
        "frames": n,
        "keyframes": int(len(snap.T_WC)),
        "lost_frames": int(np.asarray(snap.frame_lost).sum()),
        "interpolated_frames": int(np.asarray(snap.frame_interpolated).sum()),
        "restarts": system.restarts,
        "state": getattr(system.state, "value", system.state),
        "timings_s": {"total": wall, "prior": prior_s, "tracking": track_s, **{k: v for k, v in sorted(tm.items())}},
        "fps": {"overall": n / max(wall, 1e-9), "frontend_without_prior": n / max(track_s, 1e-9)},
        "intrinsics": None
        if K_est is None
        else {
            "fx": float(K_est[0, 0]),
            "fy": float(K_est[1, 1]),
            "cx": float(K_est[0, 2]),
            "cy": float(K_est[1, 2]),
            "width": int(W),
            "height": int(H),
            "source": "given" if system.K_given is not None else "estimated",
            "pixels": "original image",
        },
        "image_transform": None if system.transform is None else system.transform.to_dict(),
        "undistorted": type(source).__name__ == "UndistortedSource",
        "graph": system.stats(),
        "config": dataclasses.asdict(cfg),
    }


def _snapshot(system, with_points: bool = True):
    """A consistent plain copy of the system's shared map (`SharedMap.snapshot`)."""
    return system.map.snapshot(since=None, with_points=with_points)


def _keyframe_timestamps(snap, system) -> np.ndarray:  # [K] float64
    """Timestamps of the keyframes: their own frame records' (`keyframe_frame_index`)."""
    rows = np.asarray(snap.keyframe_frame_index)
    if len(rows) == len(snap.T_WC) and (rows >= 0).all():
        return np.asarray(snap.frame_timestamps, dtype=np.float64)[rows]
    kts, _, _ = system.keyframe_poses()
    return kts.numpy()


def keyframe_points(snap, transform, conf_thresh: float) -> PointCloud:
    """Confident points of every keyframe in the world frame, with colour, confidence, keyframe id and the
    ORIGINAL-image pixel they come from."""
    import torch

    from mslam_ns.geometry import sim3

    parts = []
    for k in sorted(snap.keyframes):
        v = snap.keyframes[k]
        H, W = v.hw
        m = np.asarray(v.C) > conf_thresh
        if not m.any():
            continue
        X = torch.as_tensor(np.asarray(v.X)[m], dtype=torch.float64)
        T = torch.as_tensor(np.asarray(snap.T_WC[k]), dtype=torch.float64)
        Xw = sim3.act(T[None], X[None])[0].numpy().astype(np.float32)
        jj, ii = np.divmod(np.arange(H * W)[m], W)  # row, column in the network image
        uv_net = np.stack([ii, jj], 1).astype(np.float64)
        uv = np.asarray(transform.to_original(uv_net)) if transform is not None else uv_net
        parts.append(
            PointCloud(
                Xw,
                np.asarray(v.rgb).reshape(-1, 3)[m],
                np.asarray(v.C)[m].astype(np.float32),
                np.full(int(m.sum()), k, dtype=np.int32),
                uv.astype(np.float32),
            )
        )
    if not parts:
        z = np.zeros
        return PointCloud(
            z((0, 3), np.float32), z((0, 3), np.uint8), z(0, np.float32), z(0, np.int32), z((0, 2), np.float32)
        )
    return PointCloud(
        *(np.concatenate([getattr(p, f) for p in parts]) for f in ("xyz", "rgb", "confidence", "keyframe", "uv"))
    )


def record_run(
    system, summary: dict, conf_thresh: float, config: dict | None = None, snap=None, n_matches=None
) -> RunRecord:
    """The finished system (or its map snapshot `snap`, taken with points) as a `RunRecord` (what
    `RunDir.write` writes). `n_matches`: every frame's `match_count`, in order (matches.txt; dropped
    when it does not cover every frame record)."""
    snap = _snapshot(system, with_points=True) if snap is None else snap
    if n_matches is not None and len(n_matches) != len(snap.frame_timestamps):
        log.debug("%d match counts for %d frames: matches.txt not written", len(n_matches), len(snap.frame_timestamps))
        n_matches = None
    kf_ts = _keyframe_timestamps(snap, system)
    table = FrameTable(
        np.asarray(snap.frame_timestamps, dtype=np.float64),
        np.asarray(snap.frame_kf),
        np.asarray(snap.frame_is_keyframe, dtype=bool),
        np.asarray(snap.frame_lost, dtype=bool),
        list(snap.frame_names),
        np.asarray(snap.frame_interpolated, dtype=bool),
    )
    return RunRecord(
        frames=table,
        frame_T_WC=np.asarray(snap.frame_T_WC),
        keyframe_T_WC=np.asarray(snap.T_WC),
        keyframe_timestamps=np.asarray(kf_ts),
        points=keyframe_points(snap, system.transform, conf_thresh),
        summary=summary,
        edges=np.asarray(snap.edges),
        edge_kind=list(snap.edge_kind),
        thumbnails={k: v.rgb for k, v in snap.keyframes.items()},
        config=config,
        n_matches=None if n_matches is None else np.asarray(n_matches, dtype=np.int64),
    )


def evaluate_run(system, source) -> dict:
    """ATE (Sim(3)-aligned, with the median orientation error after that alignment) of all frames and of
    keyframes against the source's ground truth; `frontend_all_frames` is the same run's frontend-only
    trajectory (no backend updates), for the drift the backend removed."""
    from mslam_ns.eval.ate import ate
    from mslam_ns.geometry.conventions import sim3_to_pose7

    snap = _snapshot(system, with_points=False)
    gt = source.gt_poses
    gt_ts = np.asarray(source.timestamps, dtype=np.float64)
    kf_ts = _keyframe_timestamps(snap, system)
    f_ts, _, f_T = system.frame_poses(frontend=True)
    out = {}
    for name, (t, P) in {
        "all_frames": (snap.frame_timestamps, snap.frame_T_WC),
        "keyframes": (kf_ts, snap.T_WC),
        "frontend_all_frames": (f_ts.numpy(), f_T.double().numpy()),
    }.items():
        r = ate(np.asarray(t), sim3_to_pose7(P), gt_ts, gt)
        d = r.to_dict()
        d["rmse_percent_of_path"] = 100.0 * r.rmse / max(r.path_length, 1e-12)
        out[name] = d
    return out


# ------------------------------------------------------------------------------------------- caching
def input_fingerprint(path: Path, chunk: int = 1 << 20) -> str:
    """A content hash of a video / folder (relative names, sizes, first and last MiB of every file)."""
    path = Path(path)
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for p in files[:100_000]:
        rel = p.name if p == path else str(p.relative_to(path))
        if rel.startswith(".") or "/." in rel:
            continue
        size = p.stat().st_size
        h.update(f"{rel}\0{size}\0".encode())
        with open(p, "rb") as f:
            h.update(f.read(chunk))
            if size > 2 * chunk:
                f.seek(-chunk, 2)
                h.update(f.read(chunk))
    return h.hexdigest()[:20]


def settings_key(options: dict[str, Any], fingerprint: str) -> str:
    """Cache key of a SLAM result: input content + every setting that changes it."""
    d = {k: v for k, v in options.items() if k not in ("out", "dataset", "quiet", "overwrite", "config")}
    return hashlib.sha256((fingerprint + json.dumps(d, sort_keys=True, default=str)).encode()).hexdigest()[:20]


def _live_viewer(o):
    """`on_system` callback of `run --view`: a live viewer on the system's shared map."""

    def start(system):
        try:
            from mslam_ns.viewer.live import start_live_viewer
        except ImportError as e:
            raise UserError(f"--view needs the viewer extra (pip install 'mslam_ns[viewer]'): {e}") from None
        if getattr(system, "map", None) is None:
            raise UserError("--view: this SlamSystem has no shared map to show")
        try:
            handle = start_live_viewer(system.map, host=o.host, port=o.port)
        except OSError as e:
            raise UserError(f"--view: cannot listen on {o.host}:{o.port} ({e.strerror or e})") from None
        from rich.console import Console

        Console(stderr=True).print(
            f"live viewer at [bold]{handle.url}[/] (stops when the run ends; `mslam-ns view OUT` shows the result)"
        )
        return handle

    return start


def execute_run(o, out: Path, extra_summary: dict | None = None, replace: bool | None = None) -> RunDir:
    """Run the SLAM for `RunOptions` `o` and write the run folder `out` atomically. Returns its RunDir."""
    from mslam_ns.commands.options import options_to_dict, to_slam_config
    from mslam_ns.io.atomic import atomic_output_dir

    o = dataclasses.replace(
        o, dataset=Path(o.dataset).absolute(), calib=None if o.calib is None else Path(o.calib).absolute()
    )
    source = open_dataset(o.dataset, o.stride, o.max_frames, o.calib)
    mode, K = resolve_mode(o.slam.mode, o.calib, source)
    cfg = to_slam_config(o.slam, mode)
    prior_obj = make_prior(
        source,
        o.prior,
        o.oracle_noise,
        cfg.img_size,
        o.seed,
        o.checkpoint,
        cfg.device,
        o.retrieval_checkpoint,
        o.codebook,
        cfg.precision,
        cfg.cuda_graphs,
    )
    matches: list[int] = []
    system, summary = run_slam(
        source,
        prior_obj,
        cfg,
        K,
        quiet=o.quiet,
        on_system=_live_viewer(o) if o.view else None,
        on_step=lambda r: matches.append(match_count(r)),
    )
    summary.update(
        {
            "dataset": str(o.dataset),
            "prior": o.prior,
            "dataset_intrinsics": dataset_intrinsics(source),
            "oracle_noise": o.oracle_noise if o.prior == "oracle" else None,
            **(extra_summary or {}),
        }
    )
    with atomic_output_dir(out, replace=o.overwrite if replace is None else replace) as tmp:
        RunDir(tmp).write(record_run(system, summary, o.conf_thresh, options_to_dict(o), n_matches=matches))
    if o.report:
        write_run_report(out)
    return RunDir(out)


def write_run_report(run_dir: Path) -> Path | None:
    """OUT/report.png (`mslam_ns.eval.plots.write_report`, written atomically); a failure only logs a warning:
    the report never costs the user a finished run."""
    try:
        from mslam_ns.eval.plots import write_report

        return write_report(Path(run_dir))
    except Exception as e:  # matplotlib missing or broken, a plotting error: the run itself is fine
        log.warning("run report not written (%s: %s)", type(e).__name__, e)
        return None
