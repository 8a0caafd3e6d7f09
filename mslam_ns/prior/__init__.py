"""Two-view 3D priors: the interface the SLAM depends on, and its implementations (MASt3R, oracle)."""

from mslam_ns.prior.base import Encoding, PairPrediction, TwoViewPrior, ViewPrediction

__all__ = ["Encoding", "PairPrediction", "TwoViewPrior", "ViewPrediction"]
