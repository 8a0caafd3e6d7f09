"""`Tracker`: Sim(3) pose of a frame against the current keyframe (docs/algorithm.md section 3).

Given the asymmetric decode (frame f as view 1, keyframe k as view 2) -> X^f_f, X^k_f (both in f's camera):
1. match keyframe pixels into the frame (IPM + descriptor refinement, warm-started from the previous frame):
   every pixel, or a regular grid of every `pixel_stride`-th pixel in each direction (`TrackingGrid`);
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

import numpy as np
import torch
from torch import Tensor

from mslam_ns.config import MatchingConfig, TrackingConfig
from mslam_ns.geometry import sim3
from mslam_ns.prior.base import PairPrediction
from mslam_ns.slam.frame import Frame
from mslam_ns.slam.fusion import constrain_to_rays, fuse_into_keyframe, pixel_rays
from mslam_ns.slam.lm import levenberg_marquardt
from mslam_ns.slam.solve import solve_lm_host


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
    idx: Tensor | None = None  # [N] int64 frame pixel of every tracked keyframe pixel (warm start of the next frame)
    X_ff: Tensor | None = None  # [HW, 3] the frame's own pointmap (constrained to rays in calib mode)
    X_kf: Tensor | None = None  # [HW, 3] keyframe pixels seen by the frame, in the KEYFRAME camera
    C_kf: Tensor | None = None  # [HW] their confidences
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class TrackingGrid:
    """The keyframe pixels tracked: every `stride`-th pixel in each direction, starting at `offset` (the
    middle of each stride x stride cell). stride 1 = every pixel."""

    stride: int
    hw: tuple[int, int]  # the full image (H, W)
    sel: Tensor  # [N] int64 linear pixel indices u + W v, row-major

    @staticmethod
    def make(stride: int, hw: tuple[int, int], device: torch.device | str) -> TrackingGrid:
        H, W = hw
        o = stride // 2
        v, u = torch.meshgrid(
            torch.arange(o, H, stride, device=device), torch.arange(o, W, stride, device=device), indexing="ij"
        )
        return TrackingGrid(stride, (H, W), (u + W * v).reshape(-1))

    @property
    def offset(self) -> int:
        return self.stride // 2

    @property
    def grid_hw(self) -> tuple[int, int]:  # (H', W') of the grid
        H, W, s, o = *self.hw, self.stride, self.offset
        return (H - o + s - 1) // s, (W - o + s - 1) // s

    def grid_K(self, K: Tensor) -> Tensor:
        """The intrinsics of the grid as an image of its own: grid pixel (u', v') is pixel (o + s u', o + s v')."""
        s, o = self.stride, self.offset
        Kg = K.clone()
        Kg[0, 0], Kg[1, 1] = K[0, 0] / s, K[1, 1] / s
        Kg[0, 2], Kg[1, 2] = (K[0, 2] - o) / s, (K[1, 2] - o) / s
        return Kg

    def cells(self, idx: Tensor) -> tuple[Tensor, int]:
        """The stride x stride cell of each (full-image) pixel index, and the number of cells."""
        H, W, s = *self.hw, self.stride
        if s == 1:
            return idx, H * W
        Wc = (W + s - 1) // s
        return (idx % W) // s + Wc * ((idx // W) // s), Wc * ((H + s - 1) // s)


class Tracker:
    """Frame-to-keyframe tracking. Stateless apart from its configuration and intrinsics."""

    def __init__(
        self,
        cfg: TrackingConfig,
        matching: MatchingConfig,
        mode: str = "rays",
        K: Tensor | None = None,
    ):
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
        self.stride = int(cfg.pixel_stride)
        if self.stride < 1:
            raise ValueError(f"tracking.pixel_stride must be >= 1, not {self.stride}")
        self.K = None if K is None else torch.as_tensor(K, dtype=torch.float32)
        self.K_est: Tensor | None = None  # rays mode: self-calibrated intrinsics (see `set_estimated_K`)
        self._rays: dict[tuple, Tensor] = {}
        self._K_on: dict[str, Tensor] = {}  # known_K() per device (a host-to-device copy is a sync on CUDA)
        self._grids: dict[tuple, TrackingGrid] = {}

    def set_estimated_K(self, K: Tensor | None) -> None:
        """Rays mode: from now on constrain every view's own pointmap to the rays of `K` [3, 3] (network
        pixels; the fused self-calibration), keeping each point's depth. Removes the per-pass camera
        inconsistency of the prior; the residuals stay ray/distance residuals."""
        if self.mode == "rays":
            self.K_est = None if K is None else torch.as_tensor(K, dtype=torch.float32)
            self._rays.clear()
            self._K_on.clear()

    # ---- helpers ------------------------------------------------------------------------------------
    def rays(self, hw: tuple[int, int], device: torch.device) -> Tensor:  # [HW, 3]
        """Pixel rays (z = 1) of the known (calib) or self-calibrated (rays mode) intrinsics."""
        key = (hw, str(device))
        if key not in self._rays:
            self._rays[key] = pixel_rays(self.known_K_on(device).double(), hw).float()
        return self._rays[key]

    def grid(self, hw: tuple[int, int], device: torch.device) -> TrackingGrid:
        """The tracked keyframe pixels of an image of size hw (cached)."""
        key = (tuple(hw), str(device))
        if key not in self._grids:
            self._grids[key] = TrackingGrid.make(self.stride, hw, device)
        return self._grids[key]

    def known_K(self) -> Tensor | None:  # [3, 3] network pixels, or None
        """The intrinsics whose rays `canonical_points` puts a view's pointmap on (calib mode: the given K;
        rays mode: the self-calibrated K once set), or None while the pointmap stays as predicted."""
        return self.K if self.mode == "calib" else self.K_est

    def known_K_on(self, device: torch.device) -> Tensor | None:  # [3, 3] float32 on `device`, or None
        """`known_K()` on `device` (cached until the estimate changes)."""
        K = self.known_K()
        if K is None:
            return None
        if str(device) not in self._K_on:
            self._K_on[str(device)] = K.to(device, torch.float32)
        return self._K_on[str(device)]

    def canonical_points(self, X: Tensor, hw: tuple[int, int]) -> Tensor:  # [HW,3] -> [HW,3]
        """A view's own pointmap as stored: constrained to the known rays in calib mode, or to the
        self-calibrated rays in rays mode once they are set; else as predicted."""
        if self.known_K() is not None:
            return constrain_to_rays(X, self.rays(hw, X.device))
        return X

    # ---- tracking -----------------------------------------------------------------------------------
    def track(self, kf: Frame, pred: PairPrediction, T_init: Tensor, idx_init: Tensor | None = None) -> TrackResult:
        """Track the frame whose decode against keyframe `kf` is `pred` (frame = view 1).

        Args:
            kf: the keyframe (canonical X, C, N on the tracking device).
            pred: `prior.decode(enc_frame, enc_keyframe)`: ii = X^f_f, ji = X^k_f.
            T_init: [8] initial T_CkCf (previous frame's relative pose).
            idx_init: [N] previous frame's matches of the tracked pixels (warm start) or None (identity start).
        """
        from mslam_ns.slam.matching import match

        t0 = _now()
        H, W = pred.ii.X.shape[:2]
        dev = kf.X.device
        grid = self.grid((H, W), dev)
        bound = self.valid_match_bound(kf, pred, grid)
        if bound < self.cfg.min_match_frac * grid.sel.numel():  # cannot track, whatever matching finds: skip it
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
            None if idx_init is None else idx_init.reshape(1, -1).to(dev),
            self.matching,
            query=None if grid.stride == 1 else grid.sel,
            K=self.known_K_on(dev) if self.matching.project_known_rays else None,  # X_ff on K's rays: projection
        )
        res = self.track_matches(kf, pred, idx[0].long(), matched[0].bool(), T_init, grid, X_ff)
        res.timings["match"] = _now() - t0 - res.timings.get("solve", 0.0)
        return res

    def valid_match_bound(self, kf: Frame, pred: PairPrediction, grid: TrackingGrid | None = None) -> int:
        """An upper bound on the valid matches `track_matches` can find, from confidences alone (before any
        matching): a valid match needs Ck > C_conf at the keyframe pixel, C_ff > C_conf at its frame pixel and
        Q_ff * Q_kf_f > Q_conf^2, so at most the keyframe pixels with Ck > C_conf and Q_kf_f * Q_max > Q_conf^2,
        Q_max being the largest Q_ff among frame pixels with C_ff > C_conf (a black or blank frame: 0). Counted
        over the grid's pixels (every pixel without one)."""
        rc = self.cfg.residual
        dev = kf.X.device
        C_ff = pred.ii.C.reshape(-1).to(dev).float()
        Q_ff = pred.ii.Q.reshape(-1).to(dev).float()
        # Q_max on the device (0 without a confident pixel: then no pixel passes), so that the bound costs ONE
        # host read (a device synchronisation on CUDA)
        q_max = torch.where(C_ff > rc.C_conf, Q_ff, torch.zeros_like(Q_ff)).amax().clamp_min(0.0)
        Q_kf_f = pred.ji.Q.reshape(-1).to(dev).float()
        Ck = kf.average_conf()
        if grid is not None and grid.stride > 1:
            Q_kf_f, Ck = Q_kf_f[grid.sel], Ck[grid.sel]
        ok = (Ck > rc.C_conf) & (torch.sqrt(Q_kf_f * q_max) > rc.Q_conf)
        return int(ok.sum())

    def track_matches(
        self,
        kf: Frame,
        pred: PairPrediction,
        idx: Tensor,
        matched: Tensor,
        T_init: Tensor,
        grid: TrackingGrid | None = None,
        X_ff: Tensor | None = None,
    ) -> TrackResult:
        """Steps 3-8 of the tracking given the matches: idx [N] int64 (frame pixel of every tracked keyframe
        pixel: the grid's, or every pixel without a grid) and matched [N] bool. `X_ff` [HW, 3]: the frame's
        canonical pointmap when the caller has it."""
        cfg = self.cfg
        H, W = pred.ii.X.shape[:2]
        HW = H * W
        dev = kf.X.device
        if grid is None or grid.stride == 1:
            grid = None
        if X_ff is None:
            X_ff = self.canonical_points(pred.ii.X.reshape(HW, 3).to(dev).float(), (H, W))  # [HW, 3]
        X_kf_f = pred.ji.X.reshape(HW, 3).to(dev).float()  # [HW, 3] keyframe pixels in f's camera
        C_ff = pred.ii.C.reshape(HW).to(dev).float()
        C_kf_f = pred.ji.C.reshape(HW).to(dev).float()
        Q_ff = pred.ii.Q.reshape(HW).to(dev).float()
        Q_kf = pred.ji.Q.reshape(HW).to(dev).float()  # of the tracked keyframe pixels, below
        idx, matched = idx.to(dev), matched.to(dev)
        X_k, Ck = kf.X, kf.average_conf()
        if grid is not None:
            X_k, Ck, Q_kf = X_k[grid.sel], Ck[grid.sel], Q_kf[grid.sel]
        N = int(idx.numel())

        rc = cfg.residual
        q = torch.sqrt(Q_ff[idx] * Q_kf)  # [N]
        valid = matched & (C_ff[idx] > rc.C_conf) & (Ck > rc.C_conf) & (q > rc.Q_conf)
        good = matched & (q > rc.Q_conf)
        cells, n_cells = (idx, HW) if grid is None else grid.cells(idx)
        # frame pixels (cells) matched at least once: a scatter of the good matches (no sort; no boolean mask,
        # whose nonzero would be a device synchronisation)
        hits = torch.zeros(n_cells, dtype=torch.int32, device=dev).index_add_(0, cells, good.to(torch.int32))
        # the three counts that decide tracking and keyframes, in ONE host read (one sync on CUDA)
        counts = torch.stack([valid.sum(), good.sum(), (hits > 0).sum()]).tolist()
        n_valid, n_good, n_hit = (int(v) for v in counts)
        match_frac = n_good / max(N, 1)
        unique_frac = n_hit / n_cells
        res = TrackResult(
            False,
            T_init.clone(),
            n_valid=n_valid,
            valid_frac=n_valid / N,
            match_frac=match_frac,
            unique_frac=unique_frac,
            idx=idx,
        )
        if n_valid / N < cfg.min_match_frac:
            res.reason = "few_matches"
            return res

        t1 = _now()
        T, iters, cost, ok = self._solve(X_k, Ck, X_ff[idx], C_ff[idx], valid, q, T_init.to(dev), (H, W), grid)
        res.timings["solve"] = _now() - t1
        res.iters, res.cost = iters, cost
        if not ok:
            res.reason = "solver_failed"
            return res
        res.ok, res.T_kf = True, T
        X_kf = sim3.act_points(T, X_kf_f)  # [HW, 3] in the keyframe camera
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
        grid: TrackingGrid | None = None,
    ) -> tuple[Tensor, int, float, bool]:
        """Levenberg-Marquardt (`mslam_ns.slam.lm`) on the frame's pose. Returns (T, iterations, cost, ok).

        With a grid, the inputs are the grid's pixels and calib mode sees the grid as an image of its own
        (`TrackingGrid.grid_K`, pixel residuals and border in grid pixels): the same residuals, whitened alike."""
        from mslam_ns.cuda.gn import edge_normal_equations, pose_retract

        dev = X_k.device
        HW = X_k.shape[0]
        X = torch.stack([X_k, X_f]).float().contiguous()  # [2, HW, 3]
        C = torch.stack([C_k, C_f]).float().contiguous()  # [2, HW]
        ii = torch.zeros(1, dtype=torch.long, device=dev)
        jj = torch.ones(1, dtype=torch.long, device=dev)
        idx_e = torch.arange(HW, device=dev)[None]  # [1, HW]
        valid_e, q_e = valid[None].contiguous(), q[None].float().contiguous()
        I8 = sim3.identity(dtype=torch.float32)
        K = None if self.K is None or self.mode != "calib" else self.K  # [3, 3] on the host
        rc, over = self.cfg.residual, {}
        if grid is not None:
            hw = grid.grid_hw
            if K is not None:
                K = grid.grid_K(K)
                over = {"sigma_pixel": rc.sigma_pixel / grid.stride, "pixel_border": rc.pixel_border / grid.stride}
        K = None if K is None else K.numpy()  # the kernel's intrinsics arguments, read without a tensor call

        # The pose is solved on the host: one read of the 7x7 system, cost and count per LM evaluation (one
        # device synchronisation on CUDA); the inputs are built here, so the kernel's value tests are skipped (a
        # non-finite input gives a non-finite cost, which the LM reports as a failure).
        def linearize(T_f: Tensor):  # T_f [8] on the host
            """The frame's 7x7 block of the Huber-weighted normal equations, b = -g, cost, count."""
            Twc = torch.stack([I8, T_f.float()]).to(dev)  # [2, 8]
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
                residual=rc,
                K=K,
                img_hw=hw,
                return_count=True,
                check=False,
                **over,
            )
            host = torch.cat([H[0, 7:, 7:].reshape(-1), g[0, 7:], cost[:1], n[:1].to(H.dtype)]).double().cpu().numpy()
            return host[:49].reshape(7, 7), -host[49:56], float(host[56]), int(host[57])

        def retract(T_f: Tensor, dx: np.ndarray) -> Tensor:  # Exp(dx) T_f in float64 (the compiled kernel)
            # finite by construction: the LM only steps from a finite cost, with a finite step
            return pose_retract(T_f.double()[None], torch.from_numpy(dx.reshape(1, 7)), 0, check=False)[0].float()

        def step_norm(dx: np.ndarray) -> float:
            return float(np.linalg.norm(dx))

        r = levenberg_marquardt(
            T.float().cpu(), linearize, solve_lm_host, retract, step_norm, self.cfg.lm, max_damping=1e6
        )
        return r.x.to(dev), r.iterations, r.cost, not r.failed


def _now() -> float:
    import time

    return time.perf_counter()
