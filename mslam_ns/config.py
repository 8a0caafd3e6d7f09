"""Typed configuration of the SLAM system (SPEC.md section 6 defaults).

Every field has a docstring right after it; tyro turns them into CLI help. There is no global config dict:
each component receives the dataclass it needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class MatchingConfig:
    """Iterative projective matching + descriptor refinement (SPEC.md section 2)."""

    max_iter: int = 10
    """Levenberg-Marquardt iterations per query pixel."""
    lambda_init: float = 1e-8
    """Initial LM damping."""
    convergence_thresh: float = 1e-6
    """A pixel converged when |psi_hat(p) - x|^2 falls below this (about 1e-3 rad)."""
    step_tol: float = 1e-3
    """Early exit: a pixel stops iterating once its LM step is below this (pixels) in u and v; 0 disables."""
    dist_thresh: float = 0.1
    """Occlusion test: |X_i[p] - X^j_i[n]| must be below this (network units)."""
    radius: int = 3
    """Descriptor refinement search radius (the window is (2r+1)^2 at each dilation)."""
    dilation_max: int = 5
    """Descriptor refinement starts at this dilation and goes down to 1."""
    refine: bool = True
    """Run the descriptor refinement after IPM."""


@dataclass
class TrackingConfig:
    """Frame-to-keyframe Sim(3) tracking (SPEC.md section 3)."""

    min_match_frac: float = 0.05
    """Below this fraction of valid matches the frame is skipped and the system relocalises."""
    max_iters: int = 50
    """Gauss-Newton iterations."""
    C_conf: float = 0.0
    """Minimum (average) confidence of both pointmaps."""
    Q_conf: float = 1.5
    """Minimum match (descriptor-confidence) weight."""
    rel_error: float = 1e-3
    """Stop when |d cost| / cost falls below this."""
    delta_norm: float = 1e-3
    """Stop when |tau| falls below this."""
    huber: float = 1.345
    """Huber constant on the whitened residual."""
    match_frac_thresh: float = 0.333
    """A new keyframe is made when the match fraction / unique coverage drops below this."""
    sigma_ray: float = 0.003
    sigma_dist: float = 10.0
    sigma_pixel: float = 1.0
    sigma_depth: float = 10.0
    sigma_point: float = 0.05
    pixel_border: int = -10
    """Calibrated residuals: pixels closer than this to the border are ignored (negative = allowed outside)."""
    depth_eps: float = 1e-6
    """Calibrated residuals: minimum depth."""
    damping: float = 1e-6
    """Levenberg-Marquardt damping added to the 7x7 normal matrix (relative to its diagonal)."""
    filtering_mode: Literal["weighted_pointmap", "recent", "first"] = "weighted_pointmap"
    """How a tracked frame's pointmap is fused into its keyframe."""


@dataclass
class BackendConfig:
    """Keyframe graph and global optimisation (SPEC.md section 4)."""

    C_conf: float = 0.0
    Q_conf: float = 1.5
    min_match_frac: float = 0.1
    """An edge is kept when both directions have at least this fraction of valid matches."""
    max_iters: int = 10
    delta_norm: float = 1e-8
    """Stop when |dx| falls below this."""
    damping: float = 1e-6
    """Levenberg-Marquardt damping (relative to the diagonal)."""
    fixed_keyframes: int = 1
    """Number of leading keyframes held fixed (the gauge)."""


@dataclass
class RetrievalConfig:
    """Image retrieval for loop closure (SPEC.md section 5)."""

    k: int = 3
    """Number of retrieved candidates per new keyframe."""
    min_thresh: float = 5e-3
    """Minimum retrieval score."""


@dataclass
class RelocConfig:
    """Relocalisation after a tracking failure."""

    min_match_frac: float = 0.3
    strict: bool = True
    """Every candidate edge must pass."""


@dataclass
class SlamConfig:
    """The whole SLAM system."""

    mode: Literal["rays", "calib"] = "rays"
    """'rays' = uncalibrated (ray + distance residuals); 'calib' = known intrinsics (pixel + log-depth)."""
    img_size: int = 512
    """Long side of the network input (MASt3R: 512). Smaller sizes are for the oracle prior / tests."""
    device: str = "cpu"
    """Torch device for the SLAM tensors ('cpu', 'cuda', 'cuda:1', ...)."""
    offload_keyframes: bool = False
    """Keep old keyframe tensors in host memory when running on a GPU."""
    matching: MatchingConfig = field(default_factory=MatchingConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    reloc: RelocConfig = field(default_factory=RelocConfig)
