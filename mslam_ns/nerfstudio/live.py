"""Live training: the SLAM keeps running in a background thread while `ns-train` trains on what it has.

    ns-train mslam-splatfacto --data VIDEO --pipeline.datamanager.dataparser.live True

`LiveSlam` runs a `SlamSystem` over the input in a thread. The `mslam-data` dataparser starts it, waits for
the warm-up (`live_warmup_frames` frames tracked, at least two keyframes and an intrinsics estimate), and
writes a nerfstudio dataset of EVERY selected frame from that state: frames the SLAM has posed carry their
poses, the others a provisional one (the newest posed frame's) and are not trained on yet. nerfstudio then
parses it as usual, so cameras, the dataparser transform and scale follow its conventions exactly; the
session rides along in the dataparser outputs' metadata (``mslam_live``).

During training the model's `SlamRefreshStrategy` (`mslam_ns.nerfstudio.refresh`) reads the shared map's
version before every step: frames the SLAM reaches join the training set with their real poses, and as the
backend moves keyframes (loop closure, global optimisation) the cameras and the splats seeded from them
follow. When the SLAM finishes, the finished run and its dataset are written to the dataparser's cache (the
key a non-live `ns-train` on the same input and settings looks for), so the next run starts at once.

Limits: the intrinsics are the warm-up estimate (rays mode) for the whole training; splats are seeded from
the warm-up keyframes only; if training ends before the SLAM, the SLAM thread stops with the process and
nothing is cached.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from mslam_ns.nerfstudio.refresh import SlamRefreshStrategy

log = logging.getLogger(__name__)

__all__ = ["LiveSlam", "LiveRefreshStrategy"]


@dataclasses.dataclass
class LiveRefreshStrategy(SlamRefreshStrategy):
    """The refresh strategy of a live run: also reports the SLAM thread's failure to the trainer."""

    live: Any = None

    def step_pre_forward(self, step: int) -> bool:
        if self.live is not None:
            self.live.check()
        return super().step_pre_forward(step)


class LiveSlam:
    """One SLAM run in a background thread, with what the dataparser and the training refresh need."""

    def __init__(
        self,
        options: Any,
        warmup_frames: int,
        num_frames_target: int | None = None,
        num_downscales: int = 3,
        max_points: int = 500_000,
        final_dest: Path | None = None,
        cache_key: str | None = None,
    ):
        """
        Args:
            options: the SLAM's `RunOptions` (`mslam_ns.nerfstudio.process_data.run_options`).
            warmup_frames: frames the SLAM tracks before training starts.
            num_frames_target: about this many evenly spread input frames become dataset images (None: all).
            num_downscales, max_points: as for `ns-process-data mslam`.
            final_dest: where the finished dataset is written for reuse (None: nowhere).
            cache_key: the settings key stored in the finished run's summary.json.
        """
        from mslam_ns.commands.options import to_slam_config
        from mslam_ns.commands.slam import make_prior, open_dataset, resolve_mode
        from mslam_ns.nerfstudio.process_data import select_frames
        from mslam_ns.slam.system import SlamSystem

        o = dataclasses.replace(options, dataset=Path(options.dataset).absolute())
        self.options = o
        self.source = open_dataset(o.dataset, o.stride, o.max_frames, o.calib)
        mode, K = resolve_mode(o.slam.mode, o.calib, self.source)
        cfg = to_slam_config(o.slam, mode)
        prior = make_prior(
            self.source, o.prior, o.oracle_noise, cfg.img_size, o.seed, o.checkpoint, cfg.device,
            o.retrieval_checkpoint, o.codebook, cfg.precision, cfg.cuda_graphs,
        )  # fmt: skip
        self.system = SlamSystem(prior, cfg, K=K)  # cfg carries max_lost
        self.warmup_frames = max(1, min(int(warmup_frames), len(self.source)))
        self.frames = None if num_frames_target is None else select_frames(len(self.source), num_frames_target)
        self.num_downscales, self.max_points = num_downscales, max_points
        self.final_dest, self.cache_key = final_dest, cache_key
        self.n_done = 0
        self.done = False
        self.error: BaseException | None = None
        self.wall_s = 0.0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self.warmup_snapshot: Any = None
        self.pending_T_WC: np.ndarray | None = None

    def __deepcopy__(self, memo: dict) -> LiveSlam:  # nerfstudio deep-copies dataset metadata: share, not copy
        return self

    # ---- the thread -----------------------------------------------------------------------------------
    def start(self) -> LiveSlam:
        self._thread = threading.Thread(target=self._run, name="mslam-live-slam", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        t0 = time.perf_counter()
        try:
            for i in range(len(self.source)):
                self.system.step(self.source[i])
                with self._cond:
                    self.n_done = i + 1
                    self._cond.notify_all()
            self.system.finish()
            self.wall_s = time.perf_counter() - t0
            if self.final_dest is not None:
                self._write_final()
        except BaseException as e:  # reported to the trainer by `check()`
            log.error("live SLAM failed: %s", e)
            self.error = e
        finally:
            with self._cond:
                self.done = True
                self._cond.notify_all()

    def check(self) -> None:
        """Raise the SLAM thread's error, if it had one."""
        if self.error is not None:
            raise RuntimeError(f"live SLAM failed: {self.error}") from self.error

    def join(self, timeout_s: float | None = None) -> bool:
        """Wait for the SLAM to finish; True when it has."""
        if self._thread is not None:
            self._thread.join(timeout_s)
        return self.done

    def _ready(self) -> bool:
        s = self.system
        return self.n_done >= self.warmup_frames and len(s.keyframes) >= 2 and s.intrinsics() is not None

    def wait_warmup(self, timeout_s: float | None = None) -> None:
        """Block until the warm-up is reached (or the SLAM ended)."""
        with self._cond:
            self._cond.wait_for(lambda: self.done or self._ready(), timeout_s)
        self.check()
        if not self.done and not self._ready():
            raise TimeoutError(f"live SLAM: no warm-up after {timeout_s} s")

    # ---- datasets -------------------------------------------------------------------------------------
    def _record(self, snap: Any, pad: bool):
        """A `RunRecord` of `snap`, with the frames the SLAM has not reached appended at a provisional pose
        (`pad`). Returns (record, provisional poses [M, 8])."""
        from mslam_ns.commands.options import options_to_dict
        from mslam_ns.commands.slam import record_run, run_summary
        from mslam_ns.io.rundir import FrameTable

        summary = run_summary(self.system, self.source, self.wall_s)
        if self.cache_key is not None:
            summary["cache_key"] = self.cache_key
        summary.update({"dataset": str(self.options.dataset), "prior": self.options.prior, "live": True})
        rec = record_run(self.system, summary, self.options.conf_thresh, options_to_dict(self.options), snap=snap)
        n, N = len(rec.frames.names), len(self.source)
        pending = np.zeros((0, 8))
        if pad and n < N:
            last_kf = int(rec.frames.kf_ids[-1])
            pending = np.repeat(np.asarray(rec.frame_T_WC[-1:], dtype=np.float64), N - n, axis=0)
            t = rec.frames
            rec.frames = FrameTable(
                np.concatenate([t.timestamps, np.asarray(self.source.timestamps[n:], dtype=np.float64)]),
                np.concatenate([t.kf_ids, np.full(N - n, last_kf, dtype=np.int64)]),
                np.concatenate([t.is_keyframe, np.zeros(N - n, dtype=bool)]),
                np.concatenate([t.lost, np.zeros(N - n, dtype=bool)]),
                list(t.names) + [str(x) for x in list(self.source.names)[n:]],
                np.concatenate([t.interpolated_mask(), np.zeros(N - n, dtype=bool)]),
            )
            rec.frame_T_WC = np.concatenate([np.asarray(rec.frame_T_WC, dtype=np.float64), pending])
            rec.summary["frames"] = N
            rec.summary["provisional_frames"] = N - n
        return rec, pending

    def _write_dataset(self, dest: Path, rec: Any) -> None:
        from mslam_ns.io.atomic import atomic_output_dir
        from mslam_ns.io.rundir import RunDir
        from mslam_ns.nerfstudio.export import write_nerfstudio
        from mslam_ns.nerfstudio.process_data import RUN_SUBDIR

        with atomic_output_dir(Path(dest), replace=True) as tmp:
            RunDir(tmp / RUN_SUBDIR).write(rec)
            write_nerfstudio(
                RunDir(tmp / RUN_SUBDIR),
                self.source,
                tmp,
                self.num_downscales,
                frames=self.frames,
                max_points=self.max_points,
            )

    def write_warmup_dataset(self, dest: Path) -> Path:
        """The nerfstudio dataset of every selected frame at the current (warm-up) state; remembers that
        state for `make_strategy`."""
        snap = self.system.map.snapshot(with_points=True)
        rec, self.pending_T_WC = self._record(snap, pad=True)
        self.warmup_snapshot = dataclasses.replace(snap, keyframes={})
        self._write_dataset(dest, rec)
        return Path(dest)

    def _write_final(self) -> None:
        rec, _ = self._record(self.system.map.snapshot(with_points=True), pad=False)
        self._write_dataset(self.final_dest, rec)
        log.info("live SLAM finished (%d frames, %.0f s); dataset cached in %s", self.n_done, self.wall_s,
                 self.final_dest)  # fmt: skip

    # ---- training -------------------------------------------------------------------------------------
    def make_strategy(self, pipeline: Any, optimizers: Any = None, viewer: Any = None) -> Any:
        """A `SlamRefreshStrategy` bound to `pipeline`, starting from the warm-up state its cameras show."""
        from mslam_ns.nerfstudio.refresh import frames_for_images

        if self.warmup_snapshot is None:
            raise RuntimeError("write_warmup_dataset() first: the cameras show its poses")
        names = [str(x) for x in self.source.names]
        dm = pipeline.datamanager
        train = frames_for_images([str(p) for p in dm.train_dataparser_outputs.image_filenames], names)
        eval_out = getattr(getattr(dm, "eval_dataset", None), "_dataparser_outputs", None)
        evals = frames_for_images([str(p) for p in eval_out.image_filenames], names) if eval_out is not None else []
        strategy = LiveRefreshStrategy(self.system.map, train_frames=train, eval_frames=evals, live=self)
        strategy.attach(pipeline, optimizers, viewer, snapshot=self.warmup_snapshot, pending_T_WC=self.pending_T_WC)
        return strategy
