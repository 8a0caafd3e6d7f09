"""Typed configuration of the SLAM system (docs/algorithm.md section 6 defaults).

Every field has a docstring right after it; tyro turns them into CLI help. There is no global config dict:
each component receives the dataclass it needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class MatchingConfig:
    """Iterative projective matching + descriptor refinement (docs/algorithm.md section 2)."""

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
    project_known_rays: bool = True
    """Tracking with known intrinsics (calib mode, and rays mode once self-calibrated) puts the frame's pointmap
    on K's pinhole rays, whose IPM fixed point is the projection through K: match in that closed form (no ray
    image, no LM iterations). False: iterate IPM there too."""


@dataclass
class ResidualConfig:
    """Residual weighting and gating shared by tracking and the keyframe graph (the GN kernels' parameters).

    One place for these constants: `mslam_ns.cuda.gn.edge_normal_equations(..., residual=cfg)` maps them
    onto the kernel parameters.
    """

    sigma_ray: float = 0.003
    """Rays mode: standard deviation of the unit-ray residual."""
    sigma_dist: float = 10.0
    """Rays mode: standard deviation of the distance residual (network units)."""
    sigma_pixel: float = 1.0
    """Calib mode: standard deviation of the pixel residual."""
    sigma_depth: float = 10.0
    """Calib mode: standard deviation of the log-depth residual."""
    sigma_point: float = 0.05
    """Points mode: standard deviation of the 3D point residual."""
    huber: float = 1.345
    """Huber constant on the whitened residual."""
    C_conf: float = 0.0
    """Minimum (average) confidence of both pointmaps for a pixel to count."""
    Q_conf: float = 1.5
    """Minimum match (descriptor-confidence) weight for a pixel to count."""
    pixel_border: int = -10
    """Calib mode: pixels closer than this to the border are ignored (negative = allowed outside)."""
    depth_eps: float = 1e-6
    """Calib mode: minimum depth."""


@dataclass
class LMConfig:
    """Damped Gauss-Newton (Levenberg-Marquardt) iterations, shared by tracking and the graph."""

    max_iters: int = 50
    """Maximum number of normal-equation evaluations."""
    rel_error: float = 1e-3
    """Stop when the relative cost decrease of an accepted step falls below this."""
    delta_norm: float = 1e-3
    """Stop when the step norm |dx| falls below this."""
    damping: float = 1e-6
    """Initial damping, relative to the normal matrix's diagonal (divided by 10 after a good step)."""


@dataclass
class TrackingConfig:
    """Frame-to-keyframe Sim(3) tracking (docs/algorithm.md section 3)."""

    min_match_frac: float = 0.05
    """Below this fraction of valid matches the frame is skipped and the system relocalises."""
    match_frac_thresh: float = 0.333
    """A new keyframe is made when the match fraction / unique coverage drops below this."""
    residual: ResidualConfig = field(default_factory=ResidualConfig)
    lm: LMConfig = field(default_factory=LMConfig)
    filtering_mode: Literal["weighted_pointmap", "recent", "first"] = "weighted_pointmap"
    """How a tracked frame's pointmap is fused into its keyframe."""
    pixel_stride: int = 1
    """Track on a regular grid of every `pixel_stride`-th keyframe pixel in each direction (1 = every pixel, as
    the reference). Matching and the pose solve then cost about 1/stride^2 as much: on 2 CPU cores at 512x384,
    stride 2 takes the frontend from 8 to 16 frames/s (rays mode, refinement on). The unique coverage of the
    keyframe test counts stride x stride cells, which makes fewer keyframes on noisy matches; all-frame ATE
    with the backend, oracle prior, 4 seeds: 0.61% -> 0.70% (mast3r rays), 0.23% -> 0.27% (calib), 0.72% ->
    0.75% (hard rays); without the backend 1.03% -> 0.93% (mast3r rays). Fusion, keyframes, the backend and
    relocalisation always use every pixel."""


@dataclass
class BackendConfig:
    """Keyframe graph and global optimisation (docs/algorithm.md section 4)."""

    enabled: bool = True
    """Build the keyframe graph and optimise it after every new keyframe (off = frontend only)."""
    thread: bool = False
    """Run the backend in its own thread fed by a queue while tracking continues (flushed at the end);
    off = deterministic: the backend step runs after each new keyframe in the caller's thread."""
    min_match_frac: float = 0.1
    """An edge is kept when both directions have at least this fraction of valid matches."""
    residual: ResidualConfig = field(default_factory=ResidualConfig)
    lm: LMConfig = field(default_factory=lambda: LMConfig(max_iters=10, rel_error=1e-6, delta_norm=1e-8))
    fixed_keyframes: int = 1
    """Number of leading keyframes held fixed (the gauge)."""
    window: int = 64
    """Keyframes optimised densely after each new keyframe: the newest `window` ones, the older keyframes
    they share edges with held fixed. A loop closure to a keyframe outside the window first corrects every
    keyframe by a Sim(3) pose-graph optimisation (`slam/pose_graph.py`). 0 = every keyframe every time (the
    reference's global optimisation: memory and time grow with the video)."""
    fuse_edges: bool = True
    """Fuse each accepted edge's own-view pointmaps (X^i_i of the pass (i, j) and X^j_j of (j, i), scaled onto
    the keyframe's canonical pointmap) into the two keyframes, as a tracked frame's view is fused: every
    verified pair decode also averages down the per-pass errors of the keyframes the graph stands on (the
    reference uses edge decodes for correspondences only)."""
    decode_batch: int = 1
    """Candidate pairs of a new keyframe decoded per network call (`TwoViewPrior.decode_symmetric_batch`: with
    MASt3R one decoder call of batch 2 x this). 1 = one symmetric pair per call: on the 2-core development CPU
    two pairs per call took 9.1-9.8 s per pair against 8.8-9.2 s one at a time (bf16: 3.9 against 3.8-4.2), so
    batching more pairs only pays where the decoder is not already saturated (a GPU; `bench_gpu.py` times it)."""
    proximity_k: int = 2
    """Loop candidates by proximity, added to retrieval's: up to this many keyframes (verified by matching like
    every candidate) that see at least `proximity_min_overlap` of the new keyframe's confident points under
    the current poses. 0 = retrieval only (the reference)."""
    proximity_gap: int = 4
    """Proximity candidates are at least this many keyframes older than the new one (the newest ones are
    linked by tracking and the consecutive edges already)."""
    proximity_min_overlap: float = 0.5
    """Fraction of the new keyframe's confident points a proximity candidate must have in its view."""


@dataclass
class RetrievalConfig:
    """Image retrieval for loop closure (docs/algorithm.md section 5)."""

    k: int = 3
    """Number of retrieved candidates per new keyframe."""
    min_thresh: float = 5e-3
    """Minimum retrieval score."""
    query_assignments: int = 5
    """ASMK visual words per feature when querying (multiple assignment)."""
    add_assignments: int = 1
    """ASMK visual words per feature when adding a keyframe."""
    alpha: float = 3.0
    """ASMK selectivity exponent applied to the binary similarity."""
    sim_thresh: float = 0.0
    """ASMK similarity threshold (word matches below it count nothing)."""
    codebook_words: int = 1024
    """Without the official codebook: words of the codebook trained from the sequence's own features."""
    train_feats_per_word: int = 16
    """Self-trained codebook: features per word; it has min(codebook_words, stored features / this) words,
    is retrained whenever the stored features double, and is final once it has ``codebook_words`` words."""


@dataclass
class RelocConfig:
    """Relocalisation after a tracking failure (docs/algorithm.md section 5, made less brittle)."""

    min_match_frac: float = 0.3
    """A candidate edge passes when both directions have at least this fraction of valid matches."""
    min_accepted: int = 1
    """Relocalise when at least this many retrieved candidates pass (the reference demands all of them)."""
    min_score: float = 1e-3
    """Retrieval score a relocalisation candidate needs: lower than loop closure's `retrieval.min_thresh`,
    since every candidate is verified by matching and a pose solve (a flat or black frame scores below it)."""
    restart_min_frac: float = 0.1
    """A restart (a new map segment after `max_lost` failures) needs at least this fraction of confident
    pixels (confidence and descriptor confidence) in the frame's mono decode: never from a black frame."""


@dataclass
class MotionFilterConfig:
    """Which frames are worth a network decode (cheap, before the encoder); the frames in between are posed
    by interpolation on Sim(3) between their tracked neighbours and flagged `interpolated` in frames.txt."""

    enabled: Literal["auto", "on", "off"] = "auto"
    """'auto': on when the SLAM runs on the CPU, off on a GPU (where every frame can be decoded)."""
    min_motion: float = 0.01
    """Decode a frame once its estimated mean image motion since the last decoded frame reaches this fraction
    of the image width (a photometric estimate on small blurred grey thumbnails, see `slam/motion.py`)."""
    max_skip: int = 5
    """Never skip more than this many frames in a row."""
    thumb_width: int = 96
    """Width in pixels of the thumbnails the motion is estimated on."""


@dataclass
class MemoryConfig:
    """Bounded memory on long videos: old keyframes go to a scratch folder (`slam/spill.py`)."""

    spill: bool = True
    """Write the image, pointmap, confidence and encoding of all but the `keep` newest keyframes, and the
    correspondences of the graph edges among them, to a scratch folder; they are read back on demand (loop
    closure, relocalisation, snapshots, export). The folder is removed at the end of the run."""
    keep: int = 64
    """Newest keyframes kept in memory (>= 2; at least `backend.window` avoids reads while optimising)."""
    spill_dir: str | None = None
    """Where the scratch folder is made (default: the system's temporary folder)."""
    cache: int = 4
    """Spilled keyframes kept loaded after a read (least recently used first out)."""
    trim: bool = True
    """After every backend step and every 30 tracked frames, give the memory the C allocator holds but no
    longer uses back to the system (glibc ``malloc_trim``; without it resident memory creeps up by tens of MB
    per keyframe on long runs with no live data behind it)."""
    half: bool = True
    """Spill float32 payloads (old keyframes' pointmaps and confidences, their encodings) in float16: ~5e-4
    relative, far below the prior's own error, and half the disk."""


@dataclass
class SlamConfig:
    """The whole SLAM system."""

    mode: Literal["rays", "calib"] = "rays"
    """'rays' = uncalibrated (ray + distance residuals); 'calib' = known intrinsics (pixel + log-depth)."""
    img_size: int = 512
    """Long side of the network input (MASt3R: 512). Smaller sizes are for the oracle prior / tests."""
    device: str = "cpu"
    """Torch device for the SLAM tensors ('cpu', 'cuda', 'cuda:1', ...)."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """The MASt3R network's arithmetic (--prior mast3r): 'fp32', or autocast to 'bf16' / 'fp16' (the outputs
    stay float32). `benchmarks/bench_precision.py` measures drift and speed: on the 2-core development CPU
    (AVX512-BF16) bf16 encodes 1.5x and decodes 1.9x faster; on CPUs without bf16 instructions it is slower.
    fp16 is for CUDA (refused on a CPU). The drift is measured on random weights only (README, "Precision")."""
    cuda_graphs: bool = False
    """The MASt3R network's encoder and decodes as CUDA graphs (--prior mast3r on CUDA): captured once per image
    size, then replayed as one launch (`prior/cuda_graphs.py`). Off by default until `scripts/gpu_check.sh`
    has measured it on a GPU (its `cuda_graphs` step compares it with the plain run)."""
    self_calibrate: bool = True
    """Rays mode: once `self_calib_keyframes` keyframes have given an intrinsics estimate, constrain every
    new pointmap to the rays of the fused estimate (depth kept), like calib mode with estimated intrinsics."""
    self_calib_keyframes: int = 1
    """Keyframes fused into the intrinsics estimate before it is used (see `self_calibrate`). 1: from the first
    keyframe on; the tracked frames' samples (`self_calib_frames`) refine it at every keyframe. On the two-lap
    oracle loop (8 seeds, rays) 1 gave a mean ATE of 0.38% (mast3r) / 0.37% (hard), 3 gave 0.48% / 0.49%: one
    shared camera, even an early one, removes the per-pass camera inconsistency sooner."""
    self_calib_frames: int = 1
    """Rays mode: every this many tracked (non-keyframe) frames, the frame's own pointmap X^f_f from its
    tracking decode is one more intrinsics sample (each decoder pass has its own camera error; more passes
    average it down, and the estimate is used online). 0 = keyframes and edge decodes only."""
    self_calib_frame_points: int = 8000
    """Pixels a tracked frame's intrinsics fit looks at, evenly spread over the image (speed: 13-16 ms per frame
    at 512x384 in `bench_frontend.py`; a keyframe's fit looks at every pixel and fits at most 40000 of them)."""
    offload_keyframes: bool = False
    """Keep old keyframe tensors in host memory when running on a GPU."""
    resident_keyframes: int = 8
    """With `offload_keyframes`: the newest keyframes kept on the device (the older ones in host memory)."""
    max_lost: int = 10
    """Consecutive tracking failures without relocalisation after which the system restarts: a new keyframe
    from a mono decode of the frame (a new map segment; see `reloc.restart_min_frac`)."""
    conf_thresh: float = 1.5
    """Points (the run's points.ply, `SlamSystem.points`, the viewer's initial threshold): a keyframe pixel is
    kept when its average confidence exceeds this."""
    matching: MatchingConfig = field(default_factory=MatchingConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    reloc: RelocConfig = field(default_factory=RelocConfig)
    motion_filter: MotionFilterConfig = field(default_factory=MotionFilterConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
