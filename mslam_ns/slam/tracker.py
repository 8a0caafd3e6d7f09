"""`Tracker`: Sim(3) pose of a frame against the current keyframe (docs/algorithm.md section 3).

Given the asymmetric decode (frame f as view 1, keyframe k as view 2) -> X^f_f, X^k_f (both in f's camera):
1. match keyframe pixels into the frame (IPM + descriptor refinement, warm-started from the previous frame);
2. weight q = sqrt(Q^f_f[idx] * Q^k_f); valid = matched & C^f_f[idx] > C_conf & C_k/N_k > C_conf & q > Q_conf;
   fewer than `min_match_frac` valid -> tracking failure;
3. damped Gauss-Newton (Levenberg-Marquardt) with Huber IRLS on T_CkCf: the residual/Jacobian kernel is the
   backend's edge kernel (`mslam_ns.cuda.gn.edge_normal_equations`) on a 2-pose graph
   [keyframe = identity, frame = T_CkCf] of which only the frame block (7x7) is solved;
   a failed factorisation or a non-finite step is a tracking failure, never a crash;
4. the caller fuses the frame's view of the keyframe (`Tracker.fuse`) and decides on a new keyframe from
   `TrackResult.new_keyframe` (match fraction / unique coverage below `match_frac_thresh`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from mslam_ns.config import MatchingConfig, TrackingConfig
from mslam_ns.geometry import sim3
from mslam_ns.prior.base import PairPrediction
from mslam_ns.slam.frame import Frame
from mslam_ns.slam.fusion import constrain_to_rays, fuse_into_keyframe, pixel_rays
from mslam_ns.slam.lm import levenberg_marquardt
from mslam_ns.slam.solve import solve_lm


@dataclass
class TrackResult:
    """Outcome of tracking one frame against one keyframe."""

    ok: bool
    T_kf: Tensor  # [8] T_CkCf (frame camera -> keyframe camera); the initial guess when not ok
    reason: str = ""
    """'' when ok, else 'few_matches' | 'solver_failed'."""
    n_valid: int = 0
    valid_frac: float = 0.0
    match_frac: float = 0.0
    unique_frac: float = 0.0
    new_keyframe: bool = False
    iters: int = 0
    cost: float = float("nan")
    idx: Tensor | None = None  # [HW] int64 frame pixel of every keyframe pixel (warm start of the next frame)
    X_ff: Tensor | None = None  # [HW, 3] the frame's own pointmap (constrained to rays in calib mode)
    X_kf: Tensor | None = None  # [HW, 3] keyframe pixels seen by the frame, in the KEYFRAME camera
    C_kf: Tensor | None = None  # [HW] their confidences
    timings: dict[str, float] = field(default_factory=dict)


class Tracker:
    """Frame-to-keyframe tracking. Stateless apart from its configuration and intrinsics."""

    def __init__(self, cfg: TrackingConfig, matching: MatchingConfig, mode: str = "rays", K: Tensor | None = None):
        """
        Args:
            cfg: tracking parameters.
            matching: matching parameters.
            mode: 'rays' (uncalibrated) or 'calib' (known intrinsics `K`).
            K: [3, 3] intrinsics at NETWORK resolution (required in calib mode).
        """
        if mode not in ("rays", "calib"):
            raise ValueError(f"tracking mode must be 'rays' or 'calib', not {mode!r}")
        if mode == "calib" and K is None:
            raise ValueError("calib mode needs intrinsics K")
        self.cfg, self.matching, self.mode = cfg, matching, mode
        self.K = None if K is None else torch.as_tensor(K, dtype=torch.float32)
        self.K_est: Tensor | None = None  # rays mode: self-calibrated intrinsics (see `set_estimated_K`)
        self._rays: dict[tuple, Tensor] = {}

    def set_estimated_K(self, K: Tensor | None) -> None:
        """Rays mode: from now on constrain every view's own pointmap to the rays of `K` [3, 3] (network
        pixels; the fused self-calibration), keeping each point's depth. Removes the per-pass camera
        inconsistency of the prior; the residuals stay ray/distance residuals."""
        if self.mode == "rays":
            self.K_est = None if K is None else torch.as_tensor(K, dtype=torch.float32)
            self._rays.clear()

    # ---- helpers ------------------------------------------------------------------------------------
    def rays(self, hw: tuple[int, int], device: torch.device) -> Tensor:  # [HW, 3]
        """Pixel rays (z = 1) of the known (calib) or self-calibrated (rays mode) intrinsics."""
        key = (hw, str(device))
        if key not in self._rays:
            K = self.K if self.mode == "calib" else self.K_est
            self._rays[key] = pixel_rays(K.to(device, torch.float64), hw).float()
        return self._rays[key]

    def canonical_points(self, X: Tensor, hw: tuple[int, int]) -> Tensor:  # [HW,3] -> [HW,3]
        """A view's own pointmap as stored: constrained to the known rays in calib mode, or to the
        self-calibrated rays in rays mode once they are set; else as predicted."""
        if self.mode == "calib" or self.K_est is not None:
            return constrain_to_rays(X, self.rays(hw, X.device))
        return X

    # ---- tracking -----------------------------------------------------------------------------------
    def track(self, kf: Frame, pred: PairPrediction, T_init: Tensor, idx_init: Tensor | None = None) -> TrackResult:
        """Track the frame whose decode against keyframe `kf` is `pred` (frame = view 1).

        Args:
            kf: the keyframe (canonical X, C, N on the tracking device).
            pred: `prior.decode(enc_frame, enc_keyframe)`: ii = X^f_f, ji = X^k_f.
            T_init: [8] initial T_CkCf (previous frame's relative pose).
            idx_init: [HW] previous frame's matches (warm start) or None (identity start).
        """
        from mslam_ns.slam.matching import match

        t0 = _now()
        H, W = pred.ii.X.shape[:2]
        dev = kf.X.device
        bound = self.valid_match_bound(kf, pred)
        if bound < self.cfg.min_match_frac * H * W:  # cannot track, whatever the matching finds: skip it
            res = TrackResult(False, T_init.clone(), n_valid=0, idx=idx_init, reason="few_matches")
            res.timings["match"] = _now() - t0
            return res
        X_ff = self.canonical_points(pred.ii.X.reshape(H * W, 3).to(dev).float(), (H, W))  # [HW, 3]
        X_kf_f = pred.ji.X.to(dev).float()  # [H, W, 3] keyframe pixels in f's camera
        idx, matched = match(
            X_ff.reshape(1, H, W, 3),
            X_kf_f[None],
            pred.ii.D.to(dev)[None],
            pred.ji.D.to(dev)[None],
            None if idx_init is None else idx_init.reshape(1, H * W).to(dev),
            self.matching,
        )
        res = self.track_matches(kf, pred, idx[0].long(), matched[0].bool(), T_init)
        res.timings["match"] = _now() - t0 - res.timings.get("solve", 0.0)
        return res

    def valid_match_bound(self, kf: Frame, pred: PairPrediction) -> int:
        """An upper bound on the valid matches `track_matches` can find, from confidences alone (before any
        matching): a valid match needs Ck > C_conf at the keyframe pixel, C_ff > C_conf at its frame pixel and
        Q_ff * Q_kf_f > Q_conf^2, so at most the keyframe pixels with Ck > C_conf and Q_kf_f * Q_max > Q_conf^2,
        Q_max being the largest Q_ff among frame pixels with C_ff > C_conf (a black or blank frame: 0)."""
        rc = self.cfg.residual
        dev = kf.X.device
        C_ff = pred.ii.C.reshape(-1).to(dev).float()
        Q_ff = pred.ii.Q.reshape(-1).to(dev).float()
        conf = C_ff > rc.C_conf
        if not bool(conf.any()):
            return 0
        q_max = float(Q_ff[conf].max())
        Q_kf_f = pred.ji.Q.reshape(-1).to(dev).float()
        ok = (kf.average_conf() > rc.C_conf) & (torch.sqrt(Q_kf_f * q_max) > rc.Q_conf)
        return int(ok.sum())

    def track_matches(
        self, kf: Frame, pred: PairPrediction, idx: Tensor, matched: Tensor, T_init: Tensor
    ) -> TrackResult:
        """Steps 3-8 of the tracking given the matches: idx [HW] int64 (frame pixel of every keyframe
        pixel) and matched [HW] bool."""
        cfg = self.cfg
        H, W = pred.ii.X.shape[:2]
        HW = H * W
        dev = kf.X.device
        X_ff = self.canonical_points(pred.ii.X.reshape(HW, 3).to(dev).float(), (H, W))  # [HW, 3]
        X_kf_f = pred.ji.X.reshape(HW, 3).to(dev).float()  # [HW, 3] keyframe pixels in f's camera
        C_ff = pred.ii.C.reshape(HW).to(dev).float()
        C_kf_f = pred.ji.C.reshape(HW).to(dev).float()
        Q_ff = pred.ii.Q.reshape(HW).to(dev).float()
        Q_kf_f = pred.ji.Q.reshape(HW).to(dev).float()
        idx, matched = idx.to(dev), matched.to(dev)

        rc = cfg.residual
        q = torch.sqrt(Q_ff[idx] * Q_kf_f)  # [HW]
        Ck = kf.average_conf()
        valid = matched & (C_ff[idx] > rc.C_conf) & (Ck > rc.C_conf) & (q > rc.Q_conf)
        n_valid = int(valid.sum())
        good = matched & (q > rc.Q_conf)
        match_frac = float(good.float().mean())
        hit = torch.zeros(HW, dtype=torch.bool, device=dev)
        hit[idx[good]] = True  # frame pixels matched at least once (a scatter: no sort, unlike torch.unique)
        unique_frac = float(hit.sum()) / HW
        res = TrackResult(
            False,
            T_init.clone(),
            n_valid=n_valid,
            valid_frac=n_valid / HW,
            match_frac=match_frac,
            unique_frac=unique_frac,
            idx=idx,
        )
        if n_valid / HW < cfg.min_match_frac:
            res.reason = "few_matches"
            return res

        t1 = _now()
        T, iters, cost, ok = self._solve(kf.X, Ck, X_ff[idx], C_ff[idx], valid, q, T_init.to(dev), (H, W))
        res.timings["solve"] = _now() - t1
        res.iters, res.cost = iters, cost
        if not ok:
            res.reason = "solver_failed"
            return res
        res.ok, res.T_kf = True, T
        X_kf = sim3.act(T[None], X_kf_f[None])[0]  # [HW, 3] in the keyframe camera
        res.X_kf = self.canonical_points(X_kf, (H, W))
        res.C_kf = C_kf_f
        res.X_ff = X_ff
        res.new_keyframe = min(match_frac, unique_frac) < cfg.match_frac_thresh
        return res

    def fuse(self, kf: Frame, res: TrackResult) -> None:
        """Fuse a successful result's view of the keyframe into the keyframe (in place)."""
        if res.ok:
            fuse_into_keyframe(kf, res.X_kf, res.C_kf, self.cfg.filtering_mode)

    # ---- Gauss-Newton -------------------------------------------------------------------------------
    def _solve(
        self,
        X_k: Tensor,  # [HW, 3] keyframe canonical pointmap
        C_k: Tensor,  # [HW] keyframe average confidence
        X_f: Tensor,  # [HW, 3] frame points matched to each keyframe pixel (X^f_f[idx])
        C_f: Tensor,  # [HW] their confidences
        valid: Tensor,  # [HW] bool
        q: Tensor,  # [HW] match weights
        T: Tensor,  # [8] initial T_CkCf
        hw: tuple[int, int],
    ) -> tuple[Tensor, int, float, bool]:
        """Levenberg-Marquardt (`mslam_ns.slam.lm`) on the frame's pose. Returns (T, iterations, cost, ok)."""
        from mslam_ns.cuda.gn import edge_normal_equations

        dev = X_k.device
        HW = X_k.shape[0]
        X = torch.stack([X_k, X_f]).float().contiguous()  # [2, HW, 3]
        C = torch.stack([C_k, C_f]).float().contiguous()  # [2, HW]
        ii = torch.zeros(1, dtype=torch.long, device=dev)
        jj = torch.ones(1, dtype=torch.long, device=dev)
        idx_e = torch.arange(HW, device=dev)[None]  # [1, HW]
        valid_e, q_e = valid[None].contiguous(), q[None].float().contiguous()
        I8 = sim3.identity(dtype=torch.float32, device=dev)
        K = None if self.K is None or self.mode != "calib" else self.K.to(dev)

        def linearize(T_f: Tensor):
            """The frame's 7x7 block of the Huber-weighted normal equations, b = -g, cost, count."""
            Twc = torch.stack([I8, T_f.float()])  # [2, 8]
            H, g, cost, n = edge_normal_equations(
                self.mode,
                Twc,
                X,
                C,
                ii,
                jj,
                idx_e,
                valid_e,
                q_e,
                residual=self.cfg.residual,
                K=K,
                img_hw=hw,
                return_count=True,
            )
            return H[0, 7:, 7:], -g[0, 7:], float(cost[0]), int(n[0])

        def retract(T_f: Tensor, dx: Tensor) -> Tensor:
            return sim3.normalize(sim3.retract(T_f.double(), dx[0])).float()

        r = levenberg_marquardt(
            T.float(), linearize, solve_lm, retract, lambda dx: float(dx.norm()), self.cfg.lm, max_damping=1e6
        )
        return r.x, r.iterations, r.cost, not r.failed


def _now() -> float:
    import time

    return time.perf_counter()
