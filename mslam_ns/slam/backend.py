"""`Backend`: the keyframe graph and its global optimisation (docs/algorithm.md section 4), loop closure by retrieval.

For each new keyframe n:
1. candidates = {n - 1} (when n was promoted while tracking n - 1) U retrieval top-k above a score
   threshold (`RetrievalDatabase`, when the prior gives retrieval features), then n is added to the database,
   U up to `proximity_k` proximity candidates: keyframes at least `proximity_gap` older than n that see at
   least `proximity_min_overlap` of n's confident points under the current poses (inside the keyframe's own
   ray extent, in front of it; `_proximity`), most overlapping first. Retrieval finds revisits by
   appearance; proximity finds the ones the poses already put in view (after a loop closure, the whole
   revisited stretch), which retrieval's top-k misses when the views' appearance differs;
2. each candidate c is verified: symmetric decode (n, c), dense matching in both directions, and the edge is
   kept when min over both directions of mean(matched & q > Q_conf) >= `min_match_frac` (the consecutive
   edge is always kept); accepted edges are stored in the `SharedMap` with their correspondences
   (two directed edges: pixels of c matched into n, and pixels of n matched into c); with
   `BackendConfig.fuse_edges` each pass's own-view pointmap (X^n_n of (n, c), X^c_c of (c, n)) is also fused
   into its keyframe, scaled onto the canonical pointmap (`fusion.fuse_own_view`), as tracking fuses frames;
3. Levenberg-Marquardt over the keyframe poses (`optimize_graph`); the new poses are written back through
   `SharedMap.set_poses`, so every frame's pose (stored relative to its keyframe) is recomposed. A failed
   optimisation is logged and the previous poses are kept.

Bounded work on long videos (`BackendConfig.window` = W > 0): step 3 optimises only the W newest keyframes;
the older keyframes they share edges with enter the problem held fixed (they are the gauge), and edges among
older keyframes are left out (their correspondences are dropped from memory, `SharedMap`). Every edge keeps
the relative pose of its two keyframes as last optimised (``data["T_rel"]``, with the scene depth of its first
keyframe). When a new keyframe n closes a loop with a keyframe c older than the window, the loop is first
closed on every keyframe: a two-keyframe dense solve (c fixed, Umeyama start) measures T_cn, and a Sim(3)
pose-graph optimisation (`slam/pose_graph.py`) over all keyframes and edges spreads the drift over the loop;
then the windowed dense optimisation refines the newest keyframes against the corrected older ones.
With W = 0 (or fewer keyframes than W) every keyframe is optimised every time, the first
`fixed_keyframes` held fixed, as the reference does.

Two ways to run, one code path: `step(n)` does the work in the caller's thread (deterministic: tests,
evaluation, the default), and `submit(n)` queues it for a worker thread (`BackendConfig.thread`) while
tracking continues; `flush()` waits until the queue is empty, `close()` stops the worker.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from mslam_ns.config import SlamConfig
from mslam_ns.prior.base import PairPrediction, TwoViewPrior
from mslam_ns.slam.shared_map import SharedMap

log = logging.getLogger(__name__)

__all__ = ["Backend", "EdgeMatches", "match_pair"]

_PROXIMITY_POINTS = 2048  # confident points of the new keyframe tested against every older keyframe's view


@dataclass
class EdgeMatches:
    """Correspondences of one directed edge (i, j): for every pixel n of keyframe j, its pixel in i."""

    idx: Tensor  # [HW] int32 pixel of i matched by each pixel of j
    valid: Tensor  # [HW] bool matched (IPM converged + occlusion test)
    q: Tensor  # [HW] float32 match weight sqrt(Q_i[idx] Q_ji)
    frac: float = 0.0
    """mean(valid & q > Q_conf)."""


def _direction(p: PairPrediction, cfg: SlamConfig, dev: torch.device) -> EdgeMatches:
    """Match the second view of pass `p` into its first view: p = (X^i_i, X^j_i)."""
    from mslam_ns.slam.matching import match

    H, W = p.ii.X.shape[:2]
    X_i = p.ii.X.to(dev).float()[None]
    X_ji = p.ji.X.to(dev).float()[None]
    idx, valid = match(X_i, X_ji, p.ii.D.to(dev)[None], p.ji.D.to(dev)[None], None, cfg.matching)
    idx, valid = idx[0], valid[0].bool()
    Q_i = p.ii.Q.reshape(H * W).to(dev).float()
    q = torch.sqrt(Q_i[idx] * p.ji.Q.reshape(H * W).to(dev).float())
    frac = float((valid & (q > cfg.backend.residual.Q_conf)).float().mean())
    return EdgeMatches(idx.to(torch.int32), valid, q.float(), frac)


def match_pair(
    prior: TwoViewPrior, enc_i: Any, enc_j: Any, cfg: SlamConfig, dev: torch.device
) -> tuple[EdgeMatches, EdgeMatches, tuple[PairPrediction, PairPrediction]]:
    """Symmetric decode of (i, j) and matching both ways: (edge (i, j), edge (j, i), the two passes)."""
    p_ij, p_ji = prior.decode_symmetric(enc_i, enc_j)
    return _direction(p_ij, cfg, dev), _direction(p_ji, cfg, dev), (p_ij, p_ji)


@dataclass
class BackendStats:
    steps: int = 0
    edges_tried: int = 0
    edges_accepted: int = 0
    loop_edges: int = 0
    proximity_candidates: int = 0
    pose_graph_runs: int = 0
    fused_passes: int = 0
    optimisations: int = 0
    failed_optimisations: int = 0
    iterations: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    def tick(self, key: str, t0: float) -> None:
        self.timings[key] = self.timings.get(key, 0.0) + time.perf_counter() - t0


class Backend:
    """Keyframe graph + global optimisation over a `SharedMap`."""

    def __init__(
        self,
        shared_map: SharedMap,
        prior: TwoViewPrior,
        cfg: SlamConfig,
        mode: str,
        K_net: Tensor | None = None,
        retrieval: Any = None,
        canonical_points: Callable[[Tensor, tuple[int, int]], Tensor] | None = None,
        observe_pass: Callable[[int, Tensor, Tensor], None] | None = None,
    ):
        """
        Args:
            shared_map: the map (keyframes, edges, poses).
            prior: the two-view prior (symmetric decodes of candidate pairs).
            cfg: the SLAM configuration (matching, backend, retrieval).
            mode: 'rays' or 'calib' (residuals of the graph).
            K_net: [3, 3] intrinsics at network resolution (calib mode).
            retrieval: a `RetrievalDatabase` or None (then only consecutive edges).
            canonical_points: how a view's own pointmap is stored (`Tracker.canonical_points`: on the known or
                self-calibrated rays), for fusing edge decodes (`cfg.backend.fuse_edges`); None = as predicted.
            observe_pass: called as ``observe_pass(kf_id, X [H, W, 3], C [H, W])`` with each accepted edge's
                own-view predictions as decoded (the system's self-calibration takes one more sample of them).
        """
        self.map, self.prior, self.cfg, self.mode = shared_map, prior, cfg, mode
        self.K_net = K_net
        self.retrieval = retrieval
        self.canonical_points = canonical_points
        self.observe_pass = observe_pass
        self.stats = BackendStats()
        self._queue: queue.Queue | None = None
        self._worker: threading.Thread | None = None
        self._error: BaseException | None = None
        self._extent: dict[int, Tensor] = {}  # kf_id -> ray extent [4] (min x/z, max x/z, min y/z, max y/z)

    # ---- one step -----------------------------------------------------------------------------------
    def step(self, kf_id: int, sequential: bool = True) -> None:
        """Connect keyframe `kf_id` to the graph and optimise (in the caller's thread)."""
        t0 = time.perf_counter()
        self.stats.steps += 1
        cands = self._candidates(kf_id, sequential)
        self.stats.tick("retrieval", t0)
        t1 = time.perf_counter()
        added = self.connect(kf_id, cands, sequential)
        self.stats.tick("edges", t1)
        if added:
            # Keyframes 0..kf_id: later ones (made meanwhile, backend thread) have no edges yet and follow
            # the correction of the keyframe they were placed from (`_write_poses`).
            far = self._far_loops(kf_id)
            if far:
                self.close_far_loops(kf_id, far)
            self.optimise(n_keyframes=kf_id + 1)

    def _candidates(self, kf_id: int, sequential: bool) -> list[int]:
        out = [kf_id - 1] if sequential and kf_id > 0 else []
        feats = self.retrieval_features(kf_id)
        if feats is not None:
            hits = self.retrieval.query_and_add(kf_id, feats, self.cfg.retrieval.k, self.cfg.retrieval.min_thresh)
            for c, _score in hits:
                if c != kf_id and c not in out:
                    out.append(int(c))
        for c in self._proximity(kf_id, out):
            out.append(c)
            self.stats.proximity_candidates += 1
        return out

    def _ray_extent(self, kf_id: int) -> Tensor:
        """(min x/z, max x/z, min y/z, max y/z) [4] of keyframe `kf_id`'s canonical pointmap: its field of
        view without intrinsics (rays mode has none). Cached: a spilled keyframe is read from disk once."""
        if kf_id not in self._extent:
            X = self.map.keyframes.raw(kf_id).X.float()
            X = X[X[:, 2] > 0]
            if X.shape[0] == 0:
                self._extent[kf_id] = torch.zeros(4)
            else:
                a, b = X[:, 0] / X[:, 2], X[:, 1] / X[:, 2]
                self._extent[kf_id] = torch.stack([a.min(), a.max(), b.min(), b.max()]).cpu()
        return self._extent[kf_id]

    def _proximity(self, kf_id: int, exclude: list[int]) -> list[int]:
        """Up to `proximity_k` keyframes c <= kf_id - `proximity_gap` (not in `exclude`) ranked by the fraction
        of keyframe `kf_id`'s confident points (confidence above its median, at most `_PROXIMITY_POINTS`) that
        fall in c's view under the current poses; those with a fraction >= `proximity_min_overlap`."""
        from mslam_ns.geometry import sim3

        bc = self.cfg.backend
        olds = [c for c in range(kf_id - int(bc.proximity_gap) + 1) if c not in exclude]
        if int(bc.proximity_k) <= 0 or not olds:
            return []
        f = self.map.keyframes.raw(kf_id)
        X, C = f.X.float().cpu(), f.average_conf().float().cpu()
        X = X[(C > C.median()) & (X[:, 2] > 0)]
        if X.shape[0] == 0:
            return []
        X = X[:: max(1, -(-X.shape[0] // _PROXIMITY_POINTS))]
        T = self.map.keyframes.poses(olds + [kf_id]).double().cpu()
        P_w = sim3.act(T[-1][None], X.double())  # [P, 3] world
        T_inv = sim3.inv(T[:-1])  # [n, 8] world -> each older keyframe
        ext = torch.stack([self._ray_extent(c) for c in olds]).double()  # [n, 4]
        scores = []
        for s in range(0, len(olds), 256):  # chunks: [256, P, 3] at most
            P = sim3.act(T_inv[s : s + 256, None, :], P_w[None])  # [n, P, 3] in each keyframe
            z = P[..., 2]
            zc = z.clamp_min(1e-9)
            a, b = P[..., 0] / zc, P[..., 1] / zc
            e = ext[s : s + 256, :, None]
            inside = (z > 0) & (a > e[:, 0]) & (a < e[:, 1]) & (b > e[:, 2]) & (b < e[:, 3])
            scores.append(inside.double().mean(dim=1))
        frac = torch.cat(scores)
        order = torch.argsort(-frac, stable=True)[: int(bc.proximity_k)]
        return [olds[int(i)] for i in order if float(frac[i]) >= float(bc.proximity_min_overlap)]

    def retrieval_features(self, kf_id: int) -> Tensor | None:
        """Keyframe `kf_id`'s retrieval features [K, F] (the database converts them), or None."""
        if self.retrieval is None:
            return None
        return self.prior.retrieval_features(self.map.keyframes.raw(kf_id).enc)

    def connect(self, kf_id: int, candidates: list[int], sequential: bool = True) -> int:
        """Verify candidate edges of keyframe `kf_id` and add the accepted ones; returns how many."""
        dev = self.map.device
        f_n = self.map.keyframes.raw(kf_id)
        edges = []
        todo = [c for c in candidates if not self.map.has_edge(kf_id, c)]
        B = max(1, int(self.cfg.backend.decode_batch))
        for c, (p_nc, p_cn) in self._decoded(f_n.enc, todo, B):
            e_nc, e_cn = _direction(p_nc, self.cfg, dev), _direction(p_cn, self.cfg, dev)
            self.stats.edges_tried += 1
            consecutive = sequential and c == kf_id - 1
            frac = min(e_nc.frac, e_cn.frac)
            if not consecutive and frac < self.cfg.backend.min_match_frac:
                log.debug("edge (%d, %d) rejected: match fraction %.3f", kf_id, c, frac)
                continue
            kind = "seq" if consecutive else "loop"
            edges += [(kf_id, c, kind, {"m": e_nc}), (c, kf_id, kind, {"m": e_cn})]
            self.stats.edges_accepted += 1
            self.stats.loop_edges += kind == "loop"
            for k, p in ((kf_id, p_nc), (c, p_cn)):
                if self.observe_pass is not None:
                    self.observe_pass(k, p.ii.X, p.ii.C)
                if self.cfg.backend.fuse_edges:
                    self._fuse_pass(k, p)
        if edges:
            self.map.add_edges(edges)
        return len(edges) // 2

    def _decoded(self, enc_n: Any, cands: list[int], B: int):
        """(c, (pass (n, c), pass (c, n))) for every candidate c, decoded B pairs per prior call; each chunk's
        keyframes are read (back from the spill folder when spilled) just before their call."""
        for s in range(0, len(cands), B):
            chunk = cands[s : s + B]
            encs = [self.map.keyframes.raw(c).enc for c in chunk]
            passes = self.prior.decode_symmetric_batch(enc_n, encs)
            del encs
            yield from zip(chunk, passes)

    def _fuse_pass(self, kf_id: int, p: PairPrediction) -> None:
        """Fuse pass p's own-view pointmap X^i_i (i = keyframe `kf_id`) into that keyframe (`fuse_edges`)."""
        from mslam_ns.slam.fusion import fuse_own_view

        hw = (int(p.ii.X.shape[0]), int(p.ii.X.shape[1]))
        X = p.ii.X.reshape(-1, 3).to(self.map.device).float()
        if self.canonical_points is not None:
            X = self.canonical_points(X, hw)
        C = p.ii.C.reshape(-1).to(self.map.device).float()
        with self.map.edit_points(kf_id) as f:
            fuse_own_view(f, X, C, self.cfg.tracking.filtering_mode)
        self.stats.fused_passes += 1

    # ---- global optimisation ------------------------------------------------------------------------
    def _problem(self, n: int) -> tuple[list[int], int, list[tuple[int, int, str, dict]]]:
        """(keyframe ids, fixed first ones in that order, edges) of the dense problem over keyframes 0..n-1."""
        W = int(self.cfg.backend.window)
        edges = [e for e in self.map.edges() if e[0] < n and e[1] < n]
        if W <= 0 or n <= W:
            return list(range(n)), min(max(int(self.cfg.backend.fixed_keyframes), 0), n), edges
        lo = n - W
        edges = [e for e in edges if e[0] >= lo or e[1] >= lo]
        fixed = sorted({k for e in edges for k in e[:2] if k < lo})
        if not fixed:  # a window with no edge to older keyframes (a new map segment): its oldest is the gauge
            fixed = [lo]
        return fixed + [k for k in range(lo, n) if k not in fixed], len(fixed), edges

    def optimise(self, n_keyframes: int | None = None) -> dict:
        """LM over the poses of keyframes 0..n_keyframes-1 (all by default; only the newest `window` of them
        are free on long videos, see the module docstring) with their edges; writes the poses back unless it
        failed, and records each edge's optimised relative pose (``data["T_rel"]``)."""
        import dataclasses

        from mslam_ns.slam.solve import optimize_graph

        t0 = time.perf_counter()
        with self.map.lock:
            n = self.map.num_keyframes() if n_keyframes is None else min(int(n_keyframes), self.map.num_keyframes())
            ids, n_fixed, edges = self._problem(n)
            T0 = self.map.keyframes.poses(ids).clone()
            X, C = self.map.keyframes.pointmaps(ids)
            ms = [self.map.matches(e[3]) for e in edges]
            edges = [e for e, m in zip(edges, ms) if m is not None]  # None: dropped (older than the window)
            ms = [m for m in ms if m is not None]
        if not edges or n < 2:
            return {"reason": "nothing to optimise"}
        dev = X.device
        local = {k: a for a, k in enumerate(ids)}
        ii = torch.tensor([local[e[0]] for e in edges], dtype=torch.long, device=dev)
        jj = torch.tensor([local[e[1]] for e in edges], dtype=torch.long, device=dev)
        # per-edge lists: the solver stacks them a chunk of edges at a time (no whole [E, HW] copies)
        idx = [m.idx.to(dev) for m in ms]
        valid = [m.valid.to(dev) for m in ms]
        q = [m.q.to(dev).float() for m in ms]
        del ms
        hw = self.map.keyframes.meta(0).hw
        K = None if self.K_net is None else self.K_net.to(dev)
        bcfg = dataclasses.replace(self.cfg.backend, fixed_keyframes=n_fixed)
        T, info = optimize_graph(
            T0.float(), X.float(), C.float(), ii, jj, idx, valid, q, self.mode, bcfg, K=K, img_hw=hw
        )
        self.stats.optimisations += 1
        self.stats.iterations += int(info["iterations"])
        if info["failed"] or not bool(torch.isfinite(T).all()):
            self.stats.failed_optimisations += 1
            log.warning("global optimisation failed (%s); keeping the previous poses", info["reason"])
            T = T0
        elif len(info["cost_history"]) > 1:
            self._write_poses(T0, T.to(T0), ids)
        self._record_relative(edges, ii, jj, T.to(T0), X)
        self.stats.tick("optimise", t0)
        return info

    @staticmethod
    def _record_relative(edges: list, ii: Tensor, jj: Tensor, T: Tensor, X: Tensor) -> None:
        """Store each edge's current relative pose and its first keyframe's median depth (pose graph)."""
        from mslam_ns.slam.pose_graph import relative_pose

        Tc = T.detach().double().cpu()
        rel = relative_pose(Tc, ii.cpu(), jj.cpu())
        depth = X[..., 2].median(dim=1).values.abs().clamp_min(1e-6).double().cpu()  # [n]
        for e, T_rel, d in zip(edges, rel, depth[ii.cpu()]):
            e[3]["T_rel"], e[3]["depth"] = T_rel, float(d)

    def _write_poses(self, T_old: Tensor, T_new: Tensor, ids: list[int] | None = None) -> None:
        """Write optimised poses of keyframes `ids` (default 0..n-1, n = len(T_old); ids[-1] must be the newest
        optimised keyframe); keyframes added meanwhile (backend thread) follow the correction of that newest
        one, the keyframe they were tracked from."""
        from mslam_ns.geometry import sim3

        ids = list(range(T_old.shape[0])) if ids is None else list(ids)
        n = max(ids) + 1
        last = ids.index(n - 1)
        with self.map.lock:
            n_now = self.map.num_keyframes()
            if n_now > n:
                corr = sim3.mul(T_new[last].double(), sim3.inv(T_old[last].double()))
                later = self.map.keyframes.poses(list(range(n, n_now))).double()
                T_new = torch.cat([T_new, sim3.normalize(sim3.mul(corr[None], later)).to(T_new)])
                ids = ids + list(range(n, n_now))
            self.map.set_poses(T_new, ids)

    # ---- loop closure beyond the window -------------------------------------------------------------
    def _far_loops(self, kf_id: int) -> list[int]:
        """Keyframes older than the dense window that keyframe `kf_id` has new loop / reloc edges to."""
        W = int(self.cfg.backend.window)
        if W <= 0 or kf_id + 1 <= W:
            return []
        lo = kf_id + 1 - W
        return sorted(
            {e[1] for e in self.map.edges() if e[0] == kf_id and e[1] < lo and e[2] != "seq" and "T_rel" not in e[3]}
        )

    def close_far_loops(self, kf_id: int, far: list[int]) -> dict:
        """Correct every keyframe for the loops keyframe `kf_id` closes with the old keyframes `far`: measure
        each loop's relative pose by a two-keyframe dense solve, then optimise the Sim(3) pose graph."""
        import dataclasses

        from mslam_ns.geometry import sim3
        from mslam_ns.slam.pose_graph import optimise_pose_graph, relative_pose
        from mslam_ns.slam.reloc import umeyama_start
        from mslam_ns.slam.solve import optimize_graph

        t0 = time.perf_counter()
        bcfg = dataclasses.replace(self.cfg.backend, fixed_keyframes=1)
        with self.map.lock:
            n = kf_id + 1
            T_all = self.map.keyframes.poses(list(range(n))).detach().double().cpu()
            edges = [e for e in self.map.edges() if e[0] < n and e[1] < n]
        f_n = self.map.keyframes.get(kf_id)  # on the SLAM device (read back if spilled)
        hw = f_n.hw
        K = None if self.K_net is None else self.K_net.to(f_n.X.device)
        loops: dict[tuple[int, int], tuple[Tensor, float]] = {}
        for c in far:
            f_c = self.map.keyframes.get(c)
            pair = [e for e in edges if {e[0], e[1]} == {c, kf_id}]
            ms = [self.map.matches(e[3]) for e in pair]
            m_cn = next(m for e, m in zip(pair, ms) if e[0] == c)  # pixel of c matched by each pixel of n
            w = (m_cn.valid & (m_cn.q > self.cfg.backend.residual.Q_conf)).float()
            T_cn = umeyama_start(f_c.X[m_cn.idx.long()], f_n.X, w).double().cpu()
            dev = f_n.X.device
            T0 = torch.stack([T_all[c], sim3.mul(T_all[c], T_cn)]).float().to(dev)
            X = torch.stack([f_c.X, f_n.X]).float()
            C = torch.stack([f_c.average_conf(), f_n.average_conf()]).float()
            loc = {c: 0, kf_id: 1}
            ii = torch.tensor([loc[e[0]] for e in pair], dtype=torch.long, device=dev)
            jj = torch.tensor([loc[e[1]] for e in pair], dtype=torch.long, device=dev)
            T, info = optimize_graph(
                T0,
                X,
                C,
                ii,
                jj,
                torch.stack([m.idx for m in ms]).long(),
                torch.stack([m.valid for m in ms]),
                torch.stack([m.q for m in ms]).float(),
                self.mode,
                bcfg,
                K=K,
                img_hw=hw,
            )
            if info["failed"] or not bool(torch.isfinite(T).all()):
                T = T0
            M = sim3.mul(sim3.inv(T[0].double()), T[1].double()).cpu()
            loops[(c, kf_id)] = (M, float(f_c.X[:, 2].median().abs().clamp_min(1e-6)))
        # one term per keyframe pair: its recorded relative pose, else the current one (new edges)
        pairs: dict[tuple[int, int], tuple[Tensor, float]] = {}
        for i, j, _kind, d in edges:
            key = (min(i, j), max(i, j))
            if key in pairs or key in loops:
                continue
            if "T_rel" in d:
                T_rel = d["T_rel"] if i == key[0] else sim3.inv(d["T_rel"])
                pairs[key] = (T_rel, d["depth"])
        for k in range(1, n):  # the frontend chain keeps every keyframe attached, edges or not
            key = (k - 1, k)
            if key not in pairs and key not in loops:
                pairs[key] = (relative_pose(T_all, torch.tensor([k - 1]), torch.tensor([k]))[0], 1.0)
        pairs.update(loops)
        keys = list(pairs)
        Ms = torch.stack([pairs[k][0].double().cpu() for k in keys])
        wts = torch.ones(len(keys), 7, dtype=torch.float64)
        wts[:, :3] = 1.0 / torch.tensor([pairs[k][1] for k in keys], dtype=torch.float64)[:, None] ** 2
        gauge = list(range(min(max(int(self.cfg.backend.fixed_keyframes), 1), n)))
        res = optimise_pose_graph(
            T_all,
            [k[0] for k in keys],
            [k[1] for k in keys],
            Ms,
            wts,
            fixed=gauge,
            iterations=self.cfg.backend.lm.max_iters,
        )
        if bool(torch.isfinite(res.T_WC).all()) and len(res.cost_history) > 1:
            T_old = self.map.keyframes.poses(list(range(n)))
            self._write_poses(T_old, res.T_WC.to(T_old), list(range(n)))
        self.stats.pose_graph_runs += 1
        self.stats.tick("pose_graph", t0)
        return {"cost_history": res.cost_history, "iterations": res.iterations, "pairs": len(keys)}

    # ---- the worker thread --------------------------------------------------------------------------
    def submit(self, kf_id: int, sequential: bool = True) -> None:
        """Queue `step(kf_id)` for the worker thread (started on first use)."""
        self._raise_worker_error()
        if self._worker is None:
            self._queue = queue.Queue()
            self._worker = threading.Thread(target=self._loop, name="mslam-backend", daemon=True)
            self._worker.start()
        self._queue.put((kf_id, sequential))

    def _loop(self) -> None:
        assert self._queue is not None
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if self._error is None:
                    self.step(*item)
                    if self.cfg.memory.trim:
                        from mslam_ns.slam.spill import release_free_memory

                        release_free_memory()
            except BaseException as e:  # reported to the caller at the next submit / flush
                self._error = e
            finally:
                self._queue.task_done()

    def flush(self) -> None:
        """Wait until every queued step is done (no-op without a worker)."""
        if self._queue is not None:
            self._queue.join()
        self._raise_worker_error()

    def close(self) -> None:
        """Finish the queued work and stop the worker thread."""
        if self._worker is not None:
            self.flush()
            self._queue.put(None)
            self._worker.join()
            self._worker, self._queue = None, None

    def _raise_worker_error(self) -> None:
        if self._error is not None:
            e, self._error = self._error, None
            raise RuntimeError(f"backend thread failed: {e}") from e
