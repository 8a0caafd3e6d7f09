"""`Frame`: one input image on its way through the SLAM (and, for keyframes, its canonical pointmap).

A frame carries the network-size image, the crop/scale transform back to the original image, the prior's
encoding (computed once) and its pose `T_WC` (Sim(3) 8-vector, camera -> world). Keyframes additionally own
the fused canonical pointmap in their own camera frame: `X` (sum-weighted average), the summed confidence
`C` and the number of fused observations `N`. Nothing else per pixel is kept: every use of a keyframe's
descriptors (tracking, loop closure, relocalisation) decodes it again with the other view, so storing its
own descriptors would cost ~19 MB per 512x384 keyframe for nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from mslam_ns.prior.base import Encoding


@dataclass
class Frame:
    """One frame. Keyframe fields are None for ordinary frames."""

    index: int
    """Position in the input sequence (0-based, after stride / max_frames)."""
    timestamp: float
    """Original timestamp in seconds."""
    name: str
    """Original file name (or `frame_000123` for videos)."""
    image: Tensor  # [H, W, 3] uint8, network size
    transform: Any
    """`ImageTransform` mapping network pixels / intrinsics back to the original image."""
    enc: Encoding
    T_WC: Tensor  # [8] Sim(3) camera -> world
    X: Tensor | None = None  # [HW, 3] float32 canonical pointmap in the keyframe's camera
    C: Tensor | None = None  # [HW] float32 summed confidence
    N: int = 0
    """Number of observations fused into `X` (1 for a fresh keyframe)."""
    kf_id: int = -1
    """Keyframe id (position in the `SharedMap`), -1 for ordinary frames."""
    extra: dict = field(default_factory=dict)
    """Room for later components (retrieval features, reloc state)."""

    @property
    def hw(self) -> tuple[int, int]:
        return int(self.image.shape[0]), int(self.image.shape[1])

    @property
    def is_keyframe(self) -> bool:
        return self.X is not None

    def average_conf(self) -> Tensor:  # [HW]
        """C / N: the confidence used for validity tests."""
        assert self.C is not None, "not a keyframe"
        return self.C / max(self.N, 1)

    def colors(self) -> Tensor:  # [HW, 3] uint8
        return self.image.reshape(-1, 3)

    def tensor_fields(self) -> tuple[str, ...]:
        """Names of the per-pixel tensors the `SharedMap` may offload to host memory."""
        return ("image", "X", "C")

    def to(self, device: torch.device | str) -> Frame:
        """A shallow copy with the per-pixel tensors on `device` (the encoding is left where it is)."""
        kw = {f: (getattr(self, f).to(device) if getattr(self, f) is not None else None) for f in self.tensor_fields()}
        return Frame(
            self.index,
            self.timestamp,
            self.name,
            kw["image"],
            self.transform,
            self.enc,
            self.T_WC,
            kw["X"],
            kw["C"],
            self.N,
            self.kf_id,
            self.extra,
        )
