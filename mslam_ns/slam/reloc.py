"""`Relocaliser`: put a frame seen after tracking loss back into the map (docs/algorithm.md section 5, less brittle).

For a frame f while lost:
1. query the retrieval database with f's features (without adding f);
2. verify each candidate keyframe c: symmetric decode (f, c), matching both ways, the edge passes when both
   directions have at least `reloc.min_match_frac` valid matches, and a Sim(3) pose T_CcCf is solved from
   c's canonical pointmap and its matches in f (closed-form Umeyama start on c's pixels as predicted in f's
   camera, then the tracker's robust LM);
3. relocalise when at least `reloc.min_accepted` candidates pass (the reference demands all of them, so a
   single bad retrieval hit blocks relocalisation); f's pose comes from the accepted candidate with the most
   valid matches, its edges to every accepted candidate enter the graph, and the graph is optimised.
`try_frame` only reads the map: a failed attempt leaves it exactly as it was. `commit` adds the edges.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import Tensor

from mslam_ns.config import SlamConfig
from mslam_ns.geometry import sim3
from mslam_ns.prior.base import TwoViewPrior
from mslam_ns.slam.backend import Backend, EdgeMatches, match_pair
from mslam_ns.slam.frame import Frame
from mslam_ns.slam.shared_map import SharedMap
from mslam_ns.slam.tracker import Tracker

log = logging.getLogger(__name__)

__all__ = ["Relocaliser", "RelocHit", "umeyama_start"]


@dataclass
class RelocHit:
    kf_id: int
    """The accepted candidate the pose came from."""
    T_kf: Tensor  # [8] T_CcCf
    n_valid: int
    match_frac: float
    edges: list[tuple[int, EdgeMatches, EdgeMatches]] = field(default_factory=list)
    """(candidate c, edge (f, c), edge (c, f)) for every accepted candidate."""
    X_pred: Tensor | None = None  # [H, W, 3] the prior's own pointmap of the frame (intrinsics estimation)


def umeyama_start(X_dst: Tensor, X_src: Tensor, w: Tensor, max_points: int = 4000) -> Tensor:
    """Sim(3) start T with X_dst ~ T X_src from pixel-aligned points ([HW, 3] each, weights [HW]).

    Uses the `max_points` highest-weight pixels; the identity when there are too few.
    """
    from mslam_ns.eval.ate import umeyama

    keep = torch.nonzero(w > 0).flatten()
    if keep.numel() < 10:
        return sim3.identity(device=X_dst.device)
    if keep.numel() > max_points:
        keep = keep[torch.topk(w[keep], max_points).indices]
    src = X_src[keep].double().cpu().numpy()
    dst = X_dst[keep].double().cpu().numpy()
    try:
        s, R, t = umeyama(src, dst, with_scale=True)
    except ValueError:
        return sim3.identity(device=X_dst.device)
    T = sim3.from_se3(torch.as_tensor(R), torch.as_tensor(t), float(s))
    return T.to(device=X_dst.device, dtype=torch.float32)


class Relocaliser:
    """Relocalisation against retrieved keyframes (see module doc)."""

    def __init__(self, shared_map: SharedMap, prior: TwoViewPrior, tracker: Tracker, backend: Backend, cfg: SlamConfig):
        self.map, self.prior, self.tracker, self.backend, self.cfg = shared_map, prior, tracker, backend, cfg
        self.attempts = 0

    def try_frame(self, frame: Frame) -> RelocHit | None:
        """Verify retrieved candidates for `frame`; on success also give the frame its keyframe data
        (X, C, N, D, Q, T_WC). Reads the map only."""
        db = self.backend.retrieval
        feats = self.prior.retrieval_features(frame.enc)
        if db is None or feats is None or len(db) == 0:
            return None
        self.attempts += 1
        cands = db.query(feats, self.cfg.retrieval.k, self.cfg.reloc.min_score)
        dev = self.map.device
        best, best_pred, accepted = None, None, []
        for c, score in cands:
            kf = self.map.keyframes.get(int(c))
            e_fc, e_cf, (p_fc, _p_cf) = match_pair(self.prior, frame.enc, kf.enc, self.cfg, dev)
            frac = min(e_fc.frac, e_cf.frac)
            if frac < self.cfg.reloc.min_match_frac:
                log.debug("reloc: candidate %d (score %.3f) rejected, match fraction %.3f", c, score, frac)
                continue
            H, W = kf.hw
            C_kf_f = p_fc.ji.C.reshape(H * W).to(dev).float()
            X_kf_f = p_fc.ji.X.reshape(H * W, 3).to(dev).float()
            w = (kf.average_conf() > self.cfg.tracking.residual.C_conf).float() * C_kf_f * (C_kf_f > 1.5)
            T0 = umeyama_start(kf.X, X_kf_f, w)
            res = self.tracker.track_matches(kf, p_fc, e_fc.idx.long(), e_fc.valid, T0)
            if not res.ok:
                log.debug("reloc: candidate %d rejected, pose solve failed (%s)", c, res.reason)
                continue
            accepted.append((int(c), e_fc, e_cf))
            if best is None or res.n_valid > best[1].n_valid:
                best, best_pred = (int(c), res), p_fc
        if best is None or len(accepted) < max(1, int(self.cfg.reloc.min_accepted)):
            return None
        c, res = best
        kf = self.map.keyframes.get(c)
        frame.X, frame.C, frame.N = res.X_ff, best_pred.ii.C.reshape(-1).to(dev).float(), 1
        frame.T_WC = sim3.normalize(sim3.mul(kf.T_WC.double(), res.T_kf.double())).to(kf.T_WC)
        return RelocHit(c, res.T_kf, res.n_valid, res.match_frac, accepted, best_pred.ii.X)

    def commit(self, kf_id: int, hit: RelocHit) -> None:
        """The relocalised frame is keyframe `kf_id`: add its edges, index it, optimise the graph."""
        edges = []
        for c, e_fc, e_cf in hit.edges:
            edges += [(kf_id, c, "reloc", {"m": e_fc}), (c, kf_id, "reloc", {"m": e_cf})]
        self.map.add_edges(edges)
        feats = self.backend.retrieval_features(kf_id)
        if feats is not None:
            self.backend.retrieval.add(kf_id, feats)
        self.backend.optimise()
