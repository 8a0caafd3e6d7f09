"""`SlamSystem`: the facade the CLI, the nerfstudio integration and the viewer talk to.

One process, one thread of control: `step(raw_frame)` runs the whole frontend on one frame (encode, track
against the current keyframe, fuse, maybe make a keyframe and call the optional backend's `step(kf_id)`).
Readers use `frame_poses()`, `keyframe_poses()`, `points()`, `intrinsics()` or a plain-copy `snapshot()`.

Parts (each its own file): `KeyframeStore` (growing, optional host offload), `Tracker` (Sim(3) tracking +
fusion), `Trajectory` (every frame relative to its keyframe, recomposed from the keyframes' current poses),
and a `backend` supplied later (keyframe graph + global optimisation): any object with `step(kf_id)` that
may move keyframe poses through `KeyframeStore.set_poses`.

Tracking loss (relocalisation proper is a later component): a frame that fails to track is skipped: it gets
the last good relative pose to the current keyframe and is flagged `lost`; the next frame is tried against
the same keyframe. After `max_lost` consecutive failures the system restarts from a mono decode of the
current frame as a new keyframe placed at the last known pose (a new, unconnected map segment; its scale is
that of the mono decode). `restarts` counts these.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Protocol

import numpy as np
import torch
from torch import Tensor

from mslam_ns.config import SlamConfig
from mslam_ns.geometry import sim3
from mslam_ns.prior.base import PairPrediction, TwoViewPrior
from mslam_ns.slam.frame import Frame
from mslam_ns.slam.keyframes import KeyframeStore
from mslam_ns.slam.tracker import Tracker, TrackResult
from mslam_ns.slam.trajectory import Trajectory


class SlamState(str, Enum):
    INIT = "init"
    TRACKING = "tracking"
    LOST = "lost"


class Backend(Protocol):
    """What the facade needs from a backend (keyframe graph + global optimisation, a later component)."""

    def step(self, kf_id: int) -> None: ...


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
    """Why tracking failed ('few_matches' | 'solver_failed'), or 'restart' / 'init'."""
    gn_iters: int = 0
    """Gauss-Newton iterations of the tracking."""
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class SlamSnapshot:
    """A plain CPU copy of the system's state (for the viewer; safe to read while the SLAM goes on)."""

    state: str
    n_frames: int
    timestamps: Tensor  # [N] float64
    names: list[str]
    frame_T_WC: Tensor  # [N, 8]
    lost: Tensor  # [N] bool
    keyframe_T_WC: Tensor  # [K, 8]
    keyframe_index: list[int]
    """Input frame index of each keyframe."""
    points: Tensor | None = None  # [P, 3]
    colors: Tensor | None = None  # [P, 3] uint8


class SlamSystem:
    """Dense monocular SLAM frontend over a `TwoViewPrior`."""

    def __init__(
        self,
        prior: TwoViewPrior,
        cfg: SlamConfig | None = None,
        K: Any = None,
        backend: Backend | None = None,
        max_lost: int = 10,
        resident_keyframes: int = 8,
    ):
        """
        Args:
            prior: the two-view network (MASt3R or oracle).
            cfg: the SLAM configuration (defaults of SPEC.md section 6).
            K: [3, 3] intrinsics of the ORIGINAL images (required in calib mode; in rays mode they are used
               only for export and are otherwise estimated).
            backend: optional object with `step(kf_id)`, called after every new keyframe.
            max_lost: consecutive tracking failures after which a new keyframe is started (see module doc).
            resident_keyframes: with `cfg.offload_keyframes`, the newest keyframes kept on the device.
        """
        self.prior = prior
        self.cfg = cfg or SlamConfig()
        self.device = torch.device(self.cfg.device)
        self.K_given = None if K is None else np.asarray(K, dtype=np.float64).reshape(3, 3)
        if self.cfg.mode == "calib" and self.K_given is None:
            raise ValueError("calib mode needs intrinsics K")
        self.keyframes = KeyframeStore(self.device, offload=self.cfg.offload_keyframes,
                                       resident=resident_keyframes)
        self.trajectory = Trajectory(self.keyframes)
        self.backend = backend
        self.max_lost = max(1, int(max_lost))
        self.state = SlamState.INIT
        self.tracker: Tracker | None = None  # built on the first frame (needs the image transform)
        self.transform: Any = None
        self.restarts = 0
        self.n_lost_total = 0
        self.timings: dict[str, float] = {}
        self._n_lost = 0
        self._T_kf = sim3.identity(device=self.device)  # last good T_CkCf
        self._idx: Tensor | None = None  # warm start
        self._intr = None  # IntrinsicsFuser (rays mode)

    # ---- the step API -------------------------------------------------------------------------------
    def step(self, raw: Any) -> StepResult:
        """Process one `RawFrame` (index, timestamp, name, image u8 [H, W, 3])."""
        t0 = time.perf_counter()
        frame = self._make_frame(raw)
        self._tick("encode", t0)
        if self.state == SlamState.INIT:
            return self._start_keyframe(frame, T_WC=sim3.identity(device=self.device), reason="init")
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
        self.tracker.fuse(kf, res)
        self._tick("fuse", t3)
        self._tick("track", t2)
        self._n_lost, self.state = 0, SlamState.TRACKING
        frame.T_WC = sim3.mul(kf.T_WC, res.T_kf)
        if res.new_keyframe:
            out = self._promote(frame, pred, res)
        else:
            self.trajectory.add(frame.timestamp, frame.name, kf.kf_id, res.T_kf)
            self._T_kf, self._idx = res.T_kf, res.idx
            out = StepResult(frame.index, self.state, False, kf.kf_id, True, res.n_valid, res.match_frac)
        out.timings = {"total": time.perf_counter() - t0, **res.timings}
        out.gn_iters = res.iters
        return out

    def run(self, source: Any, progress: Callable[[StepResult], None] | None = None) -> None:
        """Feed every frame of a `FrameSource`; `progress(step_result)` is called after each."""
        for i in range(len(source)):
            r = self.step(source[i])
            if progress is not None:
                progress(r)

    # ---- internals ----------------------------------------------------------------------------------
    def _tick(self, key: str, t0: float) -> None:
        self.timings[key] = self.timings.get(key, 0.0) + time.perf_counter() - t0

    def _make_frame(self, raw: Any) -> Frame:
        from mslam_ns.model.preprocess import preprocess_image, to_unit_float

        img, tf = preprocess_image(np.asarray(raw.image), size=self.cfg.img_size)
        img_t = torch.as_tensor(np.asarray(img)).to(self.device)  # [H, W, 3] uint8
        x = to_unit_float(img)
        x = torch.as_tensor(x).to(self.device)  # [3, H, W]
        if self.tracker is None:
            self.transform = tf
            K_net = None
            if self.K_given is not None:
                K_net = torch.as_tensor(np.asarray(tf.K_to_network(self.K_given)), dtype=torch.float32)
            self.tracker = Tracker(self.cfg.tracking, self.cfg.matching, self.cfg.mode,
                                   K_net if self.cfg.mode == "calib" else None)
        t0 = time.perf_counter()
        enc = self.prior.encode(x, int(raw.index))
        self._tick("prior_encode", t0)
        return Frame(int(raw.index), float(raw.timestamp), str(raw.name), img_t, tf, enc,
                     sim3.identity(device=self.device))

    def _start_keyframe(self, frame: Frame, T_WC: Tensor, reason: str) -> StepResult:
        """A keyframe from a mono decode (initialisation, restart after loss)."""
        t0 = time.perf_counter()
        pred = self.prior.decode_mono(frame.enc)
        self._tick("decode", t0)
        H, W = frame.hw
        v = pred.ii
        frame.T_WC = T_WC
        frame.X = self.tracker.canonical_points(v.X.reshape(H * W, 3).to(self.device).float(), (H, W))
        frame.C, frame.N = v.C.reshape(-1).to(self.device).float(), 1
        frame.D, frame.Q = v.D.reshape(H * W, -1).to(self.device), v.Q.reshape(-1).to(self.device).float()
        kf_id = self._add_keyframe(frame)
        self.state, self._n_lost = SlamState.TRACKING, 0
        return StepResult(frame.index, self.state, True, kf_id, True, H * W, 1.0, reason)

    def _promote(self, frame: Frame, pred: PairPrediction, res: TrackResult) -> StepResult:
        """The tracked frame becomes the new keyframe; its canonical pointmap is its own X^f_f (N = 1)."""
        H, W = frame.hw
        frame.X = res.X_ff
        frame.C, frame.N = pred.ii.C.reshape(-1).to(self.device).float(), 1
        frame.D = pred.ii.D.reshape(H * W, -1).to(self.device)
        frame.Q = pred.ii.Q.reshape(-1).to(self.device).float()
        kf_id = self._add_keyframe(frame)
        return StepResult(frame.index, self.state, True, kf_id, True, res.n_valid, res.match_frac)

    def _add_keyframe(self, frame: Frame) -> int:
        kf_id = self.keyframes.add(frame)
        self.trajectory.add(frame.timestamp, frame.name, kf_id, sim3.identity(device=self.device),
                            is_keyframe=True)
        self._T_kf, self._idx = sim3.identity(device=self.device), None
        if self.cfg.mode == "rays":
            self._update_intrinsics(frame)
        if self.backend is not None:
            t0 = time.perf_counter()
            self.backend.step(kf_id)
            self._tick("backend", t0)
        return kf_id

    def _on_failure(self, frame: Frame, kf: Frame, res: TrackResult) -> StepResult:
        self._n_lost += 1
        self.n_lost_total += 1
        self.state = SlamState.LOST
        if self._n_lost >= self.max_lost:
            self.restarts += 1
            T_WC = sim3.mul(kf.T_WC, self._T_kf)
            out = self._start_keyframe(frame, T_WC, reason="restart")
            out.n_matches, out.match_frac = res.n_valid, res.match_frac
            return out
        self.trajectory.add(frame.timestamp, frame.name, kf.kf_id, self._T_kf, lost=True)
        return StepResult(frame.index, self.state, False, kf.kf_id, False, res.n_valid, res.match_frac,
                          res.reason)

    def _update_intrinsics(self, kf: Frame) -> None:
        """Uncalibrated mode: estimate pinhole intrinsics from the keyframe's pointmap and fuse them."""
        from mslam_ns.geometry.intrinsics import IntrinsicsFuser

        if self._intr is None:
            self._intr = IntrinsicsFuser()
        H, W = kf.hw
        self._intr.update(kf.X.reshape(H, W, 3).cpu(), kf.average_conf().reshape(H, W).cpu())

    # ---- readers ------------------------------------------------------------------------------------
    def frame_poses(self) -> tuple[Tensor, list[str], Tensor]:
        """(timestamps [N] float64, names, T_WC [N, 8]) of EVERY frame fed so far."""
        return self.trajectory.timestamps(), self.trajectory.names(), self.trajectory.poses()

    def keyframe_poses(self) -> tuple[Tensor, list[str], Tensor]:
        """(timestamps [K] float64, names, T_WC [K, 8]) of the keyframes."""
        kfs = [self.keyframes.raw(i) for i in range(len(self.keyframes))]
        ts = torch.tensor([f.timestamp for f in kfs], dtype=torch.float64)
        return ts, [f.name for f in kfs], self.keyframes.poses()

    def points(self, conf_thresh: float = 1.5, max_points: int | None = None) -> tuple[Tensor, Tensor]:
        """Fused confident points of all keyframes in the world frame: xyz [P, 3] float32, rgb [P, 3] uint8.

        A point is kept when its keyframe's average confidence C / N exceeds `conf_thresh`.
        `max_points` subsamples uniformly (deterministically).
        """
        xyz, rgb = [], []
        for i in range(len(self.keyframes)):
            f = self.keyframes.raw(i)
            m = (f.C / max(f.N, 1)) > conf_thresh
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
        K_net = self._intr.K()
        if K_net is None:
            return None
        return np.asarray(self.transform.K_to_original(K_net), dtype=np.float64)

    def snapshot(self, with_points: bool = False, max_points: int | None = 200_000) -> SlamSnapshot:
        """A plain CPU copy of poses (and optionally points) for the viewer."""
        ts, names, T = self.frame_poses()
        kf_idx = [self.keyframes.raw(i).index for i in range(len(self.keyframes))]
        snap = SlamSnapshot(self.state.value, len(self.trajectory), ts.clone(), list(names),
                            T.detach().cpu().clone(), self.trajectory.lost_mask(),
                            self.keyframes.poses().detach().cpu().clone(), kf_idx)
        if with_points:
            snap.points, snap.colors = self.points(max_points=max_points)
        return snap
