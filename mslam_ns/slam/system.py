"""`SlamSystem`: the facade the CLI, the nerfstudio integration and the viewer talk to.

`step(raw_frame)` runs the frontend on one frame: encode, track against the current keyframe, fuse, maybe
make a keyframe and hand it to the backend (keyframe graph + global optimisation, same thread or a worker
thread). `run(source)` feeds a whole source and flushes the backend at the end (`finish()`), so the outputs
are complete. Readers use `frame_poses()`, `keyframe_poses()`, `points()`, `intrinsics()` or a consistent
plain-copy `snapshot(since=version)` of the `SharedMap`, safe to take from another thread while it runs.

Parts (each its own file): `SharedMap` (the one owner of keyframes, per-frame records and edges),
`Tracker` (Sim(3) tracking + fusion), `Backend` (graph, retrieval loop closure, global optimisation),
`Relocaliser` (after tracking loss).

Motion filter (`slam/motion.py`; `cfg.motion_filter`, on by default on a CPU): while tracking, a frame that
moved too little since the last decoded one gets no network work; it is recorded `interpolated` and every
pose reader places it between its tracked neighbours. `finish()` decodes a skipped last frame.

Tracking loss: a frame that fails to track is flagged `lost` and keeps the last good relative pose to the
current keyframe. Every following frame first tries to relocalise against keyframes found by retrieval
(`Relocaliser`); on success it becomes a keyframe connected to them and tracking resumes in the same map.
After `max_lost` consecutive failures without relocalisation, the system restarts from a mono decode of the
current frame (if it has confident points) as a new keyframe at the last known pose: a new map segment,
joined to the old one later only by verified loop-closure edges. `restarts` counts these.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mslam_ns.config import SlamConfig
from mslam_ns.geometry import sim3
from mslam_ns.prior.base import PairPrediction, TwoViewPrior
from mslam_ns.slam.frame import Frame
from mslam_ns.slam.shared_map import MapSnapshot, SharedMap
from mslam_ns.slam.spill import release_free_memory
from mslam_ns.slam.tracker import Tracker, TrackResult

log = logging.getLogger(__name__)


class SlamState(str, Enum):
    INIT = "init"
    TRACKING = "tracking"
    LOST = "lost"


@dataclass
class StepResult:
    """What happened to one frame."""

    index: int
    state: SlamState
    is_keyframe: bool
    kf_id: int
    """The keyframe this frame's pose is relative to (its own id if it became a keyframe)."""
    tracked: bool
    n_matches: int = 0
    match_frac: float = 0.0
    reason: str = ""
    """Why tracking failed ('few_matches' | 'solver_failed'), or 'restart' / 'init' / 'reloc'."""
    gn_iters: int = 0
    """Gauss-Newton iterations of the tracking."""
    timings: dict[str, float] = field(default_factory=dict)


class SlamSystem:
    """Dense monocular SLAM over a `TwoViewPrior`."""

    def __init__(
        self,
        prior: TwoViewPrior,
        cfg: SlamConfig | None = None,
        K: Any = None,
        backend: Any = None,
        max_lost: int | None = None,
        resident_keyframes: int | None = None,
    ):
        """
        Args:
            prior: the two-view network (MASt3R or oracle).
            cfg: the SLAM configuration (defaults of docs/algorithm.md).
            K: [3, 3] intrinsics of the ORIGINAL images (required in calib mode; in rays mode they are used
               only for export and are otherwise estimated).
            backend: a replacement for the built-in backend: any object with `step(kf_id)` (called after
               every new keyframe); None = the built-in `Backend` when `cfg.backend.enabled`.
            max_lost: overrides `cfg.max_lost` (consecutive tracking failures without relocalisation after
               which a new keyframe is started, see module doc); None: the config's.
            resident_keyframes: overrides `cfg.resident_keyframes` (with `cfg.offload_keyframes`, the newest
               keyframes kept on the device); None: the config's.
        """
        self.prior = prior
        self.cfg = cfg or SlamConfig()
        self.device = torch.device(self.cfg.device)
        self.K_given = None if K is None else np.asarray(K, dtype=np.float64).reshape(3, 3)
        if self.cfg.mode == "calib" and self.K_given is None:
            raise ValueError("calib mode needs intrinsics K")
        mem = self.cfg.memory
        self.map = SharedMap(
            self.device,
            offload=self.cfg.offload_keyframes,
            resident=self.cfg.resident_keyframes if resident_keyframes is None else resident_keyframes,
            spill=mem.spill,
            # a windowed backend reads the keyframes and edges of its window on every step: keep them in memory
            keep=max(mem.keep, self.cfg.backend.window + 4),  # + a backend thread's lag
            spill_dir=mem.spill_dir,
            cache=mem.cache,
            drop_old_matches=self.cfg.backend.window > 0,
            half=mem.half,
        )
        self._custom_backend = backend
        self.backend: Any = backend
        self.reloc: Any = None
        self.max_lost = max(1, int(self.cfg.max_lost if max_lost is None else max_lost))
        self.state = SlamState.INIT
        self.tracker: Tracker | None = None  # built on the first frame (needs the image transform)
        self.transform: Any = None
        self.restarts = 0
        self.relocalisations = 0
        self.n_lost_total = 0
        self.timings: dict[str, float] = {}
        self._n_lost = 0
        self._T_kf = sim3.identity(device=self.device)  # last good T_CkCf
        self._idx: Tensor | None = None  # warm start
        self._intr = None  # IntrinsicsFuser (rays mode)
        self._intr_lock = threading.Lock()  # the backend thread adds samples of its edge decodes
        self._image_size: tuple[int, int] | None = None
        self.motion_filter = None  # MotionFilter when enabled (`cfg.motion_filter`)
        mf = self.cfg.motion_filter
        if mf.enabled == "on" or (mf.enabled == "auto" and self.device.type == "cpu"):
            from mslam_ns.slam.motion import MotionFilter

            self.motion_filter = MotionFilter(mf)
        self._held: Any = None  # the newest frame if the motion filter skipped it (decoded by finish())
        self._n_steps = 0  # decoded frames (memory trims)
        self._n_frame_samples = 0  # tracked frames offered as intrinsics samples (`self_calib_frames`)

    # views of the shared map kept for callers: keyframe access and per-frame records
    @property
    def keyframes(self):
        return self.map.keyframes

    @property
    def trajectory(self):
        return self.map.frames

    # ---- the step API -------------------------------------------------------------------------------
    def step(self, raw: Any, force: bool = False) -> StepResult:
        """Process one `RawFrame` (index, timestamp, name, image u8 [H, W, 3]).

        With the motion filter on, a frame that moved too little since the last decoded one while tracking is
        only recorded (`reason='skipped'`, posed by interpolation); `force` decodes it regardless."""
        t0 = time.perf_counter()
        mf = self.motion_filter
        if mf is not None:
            self._held = None
            if self.state != SlamState.TRACKING:
                mf.reset()
            elif not force and mf.should_skip(raw.image):
                kf_id = self.keyframes.last.kf_id
                self.map.add_frame(raw.timestamp, raw.name, kf_id, self._T_kf, interpolated=True)
                self._held = raw
                self._tick("motion_filter", t0)
                out = StepResult(int(raw.index), self.state, False, kf_id, True, reason="skipped")
                out.timings = {"total": time.perf_counter() - t0}
                return out
            self._tick("motion_filter", t0)
        out = self._step(raw)
        if mf is not None and out.tracked:
            mf.decoded(raw.image)
        self._n_steps += 1
        if self.cfg.memory.trim and (out.is_keyframe or self._n_steps % 30 == 0):
            release_free_memory()
        return out

    def _step(self, raw: Any) -> StepResult:
        t0 = time.perf_counter()
        frame = self._make_frame(raw)
        self._tick("encode", t0)
        if self.state == SlamState.INIT:
            out = self._start_keyframe(frame, T_WC=sim3.identity(device=self.device), reason="init")
            out.timings = {"total": time.perf_counter() - t0}
            return out
        if self.state == SlamState.LOST and self.reloc is not None:
            t1 = time.perf_counter()
            out = self._relocalise(frame)
            self._tick("reloc", t1)
            if out is not None:
                out.timings = {"total": time.perf_counter() - t0}
                return out
        kf = self.keyframes.last
        t1 = time.perf_counter()
        pred = self.prior.decode(frame.enc, kf.enc)
        self._tick("decode", t1)
        t2 = time.perf_counter()
        res = self.tracker.track(kf, pred, self._T_kf, self._idx)
        for k, v in res.timings.items():
            self.timings[k] = self.timings.get(k, 0.0) + v
        if not res.ok:
            self._tick("track", t2)
            return self._on_failure(frame, kf, res)
        t3 = time.perf_counter()
        with self.map.edit_points(kf.kf_id) as kf_stored:
            self.tracker.fuse(kf_stored, res)
        self._tick("fuse", t3)
        if not res.new_keyframe:  # a promoted frame's pass is the new keyframe's intrinsics sample
            self._observe_frame(pred)
        self._tick("track", t2)
        t_track = time.perf_counter() - t2  # this frame's tracking, fusion and intrinsics sample
        self._n_lost = 0
        self._set_state(SlamState.TRACKING)
        frame.T_WC = sim3.mul(kf.T_WC, res.T_kf)
        if res.new_keyframe:
            out = self._promote(frame, pred, res)
        else:
            self.map.add_frame(frame.timestamp, frame.name, kf.kf_id, res.T_kf)
            self._T_kf, self._idx = res.T_kf, res.idx
            out = StepResult(frame.index, self.state, False, kf.kf_id, True, res.n_valid, res.match_frac)
        out.timings = {"total": time.perf_counter() - t0, **res.timings, "track": t_track}
        out.gn_iters = res.iters
        return out

    def run(self, source: Any, progress: Callable[[StepResult], None] | None = None) -> None:
        """Feed every frame of a `FrameSource` (`progress(step_result)` after each), then `finish()`."""
        try:
            for i in range(len(source)):
                r = self.step(source[i])
                if progress is not None:
                    progress(r)
        finally:
            self.finish()

    def finish(self) -> None:
        """Flush the backend (worker thread: wait for its queue, then stop it) so every pose is final; in
        self-calibrated rays mode put every keyframe's points on the final intrinsics' rays, so that the
        exported points and intrinsics agree exactly (poses are unchanged)."""
        if self._held is not None:  # the last frame was skipped: nothing after it to interpolate towards
            raw, self._held = self._held, None
            self.map.pop_frame()
            self.motion_filter.skipped -= 1
            self.step(raw, force=True)
        if self.backend is not None and hasattr(self.backend, "close"):
            t0 = time.perf_counter()
            self.backend.close()
            self._tick("backend_flush", t0)
        if self.tracker is not None and self.tracker.K_est is not None and self._intr is not None:
            self.tracker.set_estimated_K(torch.as_tensor(self._fused_K(), dtype=torch.float32))
            for i in range(len(self.keyframes)):
                with self.map.edit_points(i) as f:
                    f.X = self.tracker.canonical_points(f.X.to(self.device), f.hw).to(f.X.device)

    # ---- internals ----------------------------------------------------------------------------------
    def _tick(self, key: str, t0: float) -> None:
        self.timings[key] = self.timings.get(key, 0.0) + time.perf_counter() - t0

    def _set_state(self, state: SlamState) -> None:
        self.state = state
        self.map.set_state(state.value)

    def _make_frame(self, raw: Any) -> Frame:
        from mslam_ns.model.preprocess import ImageSizeError, preprocess_image, to_unit_float

        image = np.asarray(raw.image)
        try:
            img, tf = preprocess_image(image, size=self.cfg.img_size)
        except ImageSizeError as e:  # name the frame: the user's file, not an array
            raise ImageSizeError(f"{raw.name}: {e}") from None
        img_t = torch.as_tensor(np.asarray(img)).to(self.device)  # [H, W, 3] uint8
        x = torch.as_tensor(to_unit_float(img)).to(self.device)  # [3, H, W]
        if self.tracker is None:
            self._setup(tf, (int(image.shape[1]), int(image.shape[0])))
        t0 = time.perf_counter()
        enc = self.prior.encode(x, int(raw.index))
        self._tick("prior_encode", t0)
        return Frame(
            int(raw.index), float(raw.timestamp), str(raw.name), img_t, tf, enc, sim3.identity(device=self.device)
        )

    def _setup(self, tf: Any, image_size: tuple[int, int]) -> None:
        """First frame: image transform, tracker, backend, relocaliser (they need the network size)."""
        self.transform = tf
        self._image_size = image_size
        K_net = None
        if self.K_given is not None:
            K_net = torch.as_tensor(np.asarray(tf.K_to_network(self.K_given)), dtype=torch.float32)
        calib = self.cfg.mode == "calib"
        self.tracker = Tracker(self.cfg.tracking, self.cfg.matching, self.cfg.mode, K_net if calib else None)
        self.map.set_camera(self.K_given, image_size)
        if self._custom_backend is None and self.cfg.backend.enabled:
            from mslam_ns.slam.backend import Backend
            from mslam_ns.slam.reloc import Relocaliser

            self.backend = Backend(
                self.map,
                self.prior,
                self.cfg,
                self.cfg.mode,
                K_net if calib else None,
                retrieval=self._make_retrieval(),
                canonical_points=self.tracker.canonical_points,
                observe_pass=self._observe_pass if self.cfg.mode == "rays" else None,
            )
            if self.backend.retrieval is not None:
                self.reloc = Relocaliser(self.map, self.prior, self.tracker, self.backend, self.cfg)

    def _make_retrieval(self) -> Any:
        """A retrieval database when the prior provides retrieval features (else no loop closure)."""
        try:
            from mslam_ns.slam.retrieval import RetrievalDatabase
        except ImportError as e:  # the asmk package is missing: consecutive edges only
            log.warning("retrieval unavailable (%s): no loop closure, no relocalisation", e)
            return None
        codebook = getattr(self.prior, "retrieval_codebook", None)
        return RetrievalDatabase(self.cfg.retrieval, codebook=codebook)

    def _start_keyframe(
        self, frame: Frame, T_WC: Tensor, reason: str, anchor: tuple[int, Tensor] | None = None
    ) -> StepResult:
        """A keyframe from a mono decode (initialisation, restart after loss at `anchor` = (kf, T_CkCf))."""
        t0 = time.perf_counter()
        pred = self.prior.decode_mono(frame.enc)
        self._tick("decode", t0)
        H, W = frame.hw
        v = pred.ii
        frame.T_WC = T_WC
        frame.X = self.tracker.canonical_points(v.X.reshape(H * W, 3).to(self.device).float(), (H, W))
        frame.C, frame.N = v.C.reshape(-1).to(self.device).float(), 1
        kf_id = self._add_keyframe(frame, sequential=False, anchor=anchor, X_pred=v.X)
        self._n_lost = 0
        self._set_state(SlamState.TRACKING)
        return StepResult(frame.index, self.state, True, kf_id, True, H * W, 1.0, reason)

    def _promote(self, frame: Frame, pred: PairPrediction, res: TrackResult) -> StepResult:
        """The tracked frame becomes the new keyframe; its canonical pointmap is its own X^f_f (N = 1)."""
        frame.X = res.X_ff
        frame.C, frame.N = pred.ii.C.reshape(-1).to(self.device).float(), 1
        kf_id = self._add_keyframe(
            frame, sequential=True, anchor=(self.keyframes.last.kf_id, res.T_kf), X_pred=pred.ii.X
        )
        return StepResult(frame.index, self.state, True, kf_id, True, res.n_valid, res.match_frac)

    def _add_keyframe(
        self, frame: Frame, sequential: bool, anchor: tuple[int, Tensor] | None = None, X_pred: Tensor | None = None
    ) -> int:
        """Store a keyframe with its own frame record; hand it to the backend.

        `sequential`: the keyframe was tracked from the previous one (a consecutive edge is added).
        `anchor`: (keyframe, T_CkCf) it was placed from (None for the first keyframe).
        `X_pred`: [H, W, 3] the prior's own pointmap of the keyframe (intrinsics estimation in rays mode).
        """
        a_id, T_a = anchor if anchor is not None else (-1, None)
        with self.map.lock:  # the anchor's pose may be moved by a backend thread: read it and add atomically
            if anchor is not None:
                frame.T_WC = sim3.mul(self.keyframes.meta(a_id).T_WC, T_a.to(frame.T_WC))
            kf_id = self.map.add_keyframe(frame, a_id, T_a)
            self.map.add_frame(frame.timestamp, frame.name, kf_id, sim3.identity(device=self.device), is_keyframe=True)
        self._T_kf, self._idx = sim3.identity(device=self.device), None
        if self.cfg.mode == "rays":
            self._update_intrinsics(frame, X_pred)
        if self.backend is not None:
            t0 = time.perf_counter()
            if self._custom_backend is not None:
                self.backend.step(kf_id)
            elif self.cfg.backend.thread:
                self.backend.submit(kf_id, sequential)
            else:
                self.backend.step(kf_id, sequential)
            self._tick("backend", t0)
        return kf_id

    def _on_failure(self, frame: Frame, kf: Frame, res: TrackResult) -> StepResult:
        self._n_lost += 1
        self.n_lost_total += 1
        self._set_state(SlamState.LOST)
        if self._n_lost >= self.max_lost and self._has_confident_points(frame):
            self.restarts += 1
            T_WC = sim3.mul(kf.T_WC, self._T_kf)
            out = self._start_keyframe(frame, T_WC, reason="restart", anchor=(kf.kf_id, self._T_kf))
            out.n_matches, out.match_frac = res.n_valid, res.match_frac
            return out
        self.map.add_frame(frame.timestamp, frame.name, kf.kf_id, self._T_kf, lost=True)
        return StepResult(frame.index, self.state, False, kf.kf_id, False, res.n_valid, res.match_frac, res.reason)

    def _has_confident_points(self, frame: Frame) -> bool:
        """A restart needs a frame with some confident, matchable prediction (not a black or blurred one)."""
        v = self.prior.decode_mono(frame.enc).ii
        rc = self.cfg.tracking.residual
        ok = (v.C > max(rc.C_conf, 1.5)) & (v.Q > rc.Q_conf)
        return float(ok.float().mean()) >= self.cfg.reloc.restart_min_frac

    def _relocalise(self, frame: Frame) -> StepResult | None:
        """Try to put a frame seen while lost back into the map; None = not relocalised (map unchanged)."""
        if self.cfg.backend.thread and hasattr(self.backend, "flush"):
            self.backend.flush()  # the relocaliser reads and extends the graph: no concurrent backend step
        hit = self.reloc.try_frame(frame)
        if hit is None:
            return None
        self.relocalisations += 1
        kf_id = self.map.add_keyframe(frame, hit.kf_id, hit.T_kf)
        self.map.add_frame(frame.timestamp, frame.name, kf_id, sim3.identity(device=self.device), is_keyframe=True)
        self.reloc.commit(kf_id, hit)
        self._T_kf, self._idx = sim3.identity(device=self.device), None
        if self.cfg.mode == "rays":
            self._update_intrinsics(frame, hit.X_pred)
        self._n_lost = 0
        self._set_state(SlamState.TRACKING)
        return StepResult(frame.index, self.state, True, kf_id, True, hit.n_valid, hit.match_frac, "reloc")

    def _fused_K(self, extra: bool = True) -> np.ndarray | None:
        """The self-calibration's fused K [3, 3] (network pixels), read under its lock (the backend thread
        adds samples); ``extra``: with the edge decodes' samples."""
        with self._intr_lock:
            return self._intr.K(extra=extra)

    def _observe_pass(self, kf_id: int, X: Tensor, C: Tensor, max_pixels: int | None = None) -> None:
        """Uncalibrated mode: one more intrinsics sample from another decoder pass over keyframe `kf_id` (-1:
        a tracked frame's own pass), e.g. the backend's edge decodes: each pass has its own camera error, so
        more passes average it down. `max_pixels`: fit on that many pixels only (`IntrinsicsFuser.update`)."""
        if self._intr is not None:
            with self._intr_lock:
                self._intr.update(X.float().cpu(), C.float().cpu(), extra=True, max_pixels=max_pixels)

    def _observe_frame(self, pred: PairPrediction) -> None:
        """Uncalibrated mode: every `self_calib_frames`-th tracked frame's own pass X^f_f is one more
        intrinsics sample (subsampled fit: `self_calib_frame_points`)."""
        every = int(self.cfg.self_calib_frames)
        if self._intr is None or every <= 0:
            return
        self._n_frame_samples += 1
        if self._n_frame_samples % every == 0:
            t0 = time.perf_counter()
            self._observe_pass(-1, pred.ii.X, pred.ii.C, max_pixels=int(self.cfg.self_calib_frame_points))
            self._tick("intrinsics", t0)

    def _update_intrinsics(self, kf: Frame, X_pred: Tensor | None) -> None:
        """Uncalibrated mode: estimate pinhole intrinsics from the keyframe's predicted pointmap (not the
        canonical one, which may already be constrained to the estimate), fuse them over keyframes, and
        once enough keyframes agree constrain new pointmaps to them (`cfg.self_calibrate`)."""
        from mslam_ns.geometry.intrinsics import IntrinsicsFuser

        if self._intr is None:
            self._intr = IntrinsicsFuser()
        H, W = kf.hw
        X = (kf.X if X_pred is None else X_pred).reshape(H, W, 3).float().cpu()
        with self._intr_lock:
            self._intr.update(X, kf.average_conf().reshape(H, W).cpu(), kf.kf_id)
        K = self.intrinsics()
        if K is not None:
            self.map.set_camera(K, self._image_size)
        if self.cfg.self_calibrate and self._intr.count >= self.cfg.self_calib_keyframes:
            # Every sample: keyframes', tracked frames' (`_observe_frame`) and the edge decodes' passes. With
            # the keyframes' and edges' samples only, taking the edges' online made the orientation error
            # worse on the oracle loops; with the tracked frames' samples too (many more passes) the online
            # estimate is closer and the loops' ATE and orientation both improved (docs/algorithm.md 8).
            self.tracker.set_estimated_K(torch.as_tensor(self._fused_K(), dtype=torch.float32))

    # ---- readers ------------------------------------------------------------------------------------
    def frame_poses(self, frontend: bool = False) -> tuple[Tensor, list[str], Tensor]:
        """(timestamps [N] float64, names, T_WC [N, 8]) of EVERY frame fed so far.

        `frontend`: the poses the frontend alone gives (no backend update; see `SharedMap.frontend_poses`).
        """
        with self.map.lock:
            ts, names = self.trajectory.timestamps(), self.trajectory.names()
            if not frontend:
                return ts, names, self.trajectory.poses()
            if len(names) == 0:
                return ts, names, torch.zeros(0, 8)
            return ts, names, self.trajectory.poses(self.map.frontend_poses().double()).float()

    def keyframe_poses(self) -> tuple[Tensor, list[str], Tensor]:
        """(timestamps [K] float64, names, T_WC [K, 8]) of the keyframes."""
        with self.map.lock:
            kfs = [self.keyframes.meta(i) for i in range(len(self.keyframes))]
            ts = torch.tensor([f.timestamp for f in kfs], dtype=torch.float64)
            return ts, [f.name for f in kfs], self.keyframes.poses()

    def points(self, conf_thresh: float | None = None, max_points: int | None = None) -> tuple[Tensor, Tensor]:
        """Fused confident points of all keyframes in the world frame: xyz [P, 3] float32, rgb [P, 3] uint8.

        A point is kept when its keyframe's average confidence C / N exceeds `conf_thresh` (None:
        `cfg.conf_thresh`).
        `max_points` subsamples uniformly (deterministically).
        """
        conf_thresh = self.cfg.conf_thresh if conf_thresh is None else conf_thresh
        xyz, rgb = [], []
        with self.map.lock:
            for i in range(len(self.keyframes)):
                f = self.keyframes.raw(i)
                m = f.average_conf() > conf_thresh
                X = f.X[m].to(self.device)
                xyz.append(sim3.act(f.T_WC[None], X[None])[0].cpu())
                rgb.append(f.image.reshape(-1, 3)[m].cpu())
        if not xyz:
            return torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.uint8)
        P, C = torch.cat(xyz), torch.cat(rgb)
        if max_points is not None and P.shape[0] > max_points:
            keep = torch.linspace(0, P.shape[0] - 1, max_points).long()
            P, C = P[keep], C[keep]
        return P, C

    def intrinsics(self) -> np.ndarray | None:
        """[3, 3] pinhole intrinsics in ORIGINAL image pixels: the given ones, else the fused estimate."""
        if self.K_given is not None:
            return self.K_given.copy()
        if self._intr is None or self.transform is None:
            return None
        K_net = self._fused_K()
        if K_net is None:
            return None
        return np.asarray(self.transform.K_to_original(K_net), dtype=np.float64)

    def snapshot(self, since: int | None = None, with_points: bool = True) -> MapSnapshot:
        """A consistent plain CPU copy of the map (see `SharedMap.snapshot`)."""
        return self.map.snapshot(since=since, with_points=with_points)

    def stats(self) -> dict:
        """Counts for reports: keyframes, edges, loop edges, relocalisations, backend statistics."""
        edges = self.map.edges()
        out = {
            "keyframes": len(self.keyframes),
            "edges": len(edges) // 2,
            "loop_edges": sum(e[2] == "loop" for e in edges) // 2,
            "reloc_edges": sum(e[2] == "reloc" for e in edges) // 2,
            "relocalisations": self.relocalisations,
            "retrieval": getattr(self.backend, "retrieval", None) is not None,
            "restarts": self.restarts,
        }
        b = getattr(self.backend, "stats", None)
        if b is not None:
            out["backend"] = {
                "optimisations": b.optimisations,
                "failed_optimisations": b.failed_optimisations,
                "iterations": b.iterations,
                "edges_tried": b.edges_tried,
                "proximity_candidates": b.proximity_candidates,
                "timings_s": dict(b.timings),
            }
        return out
