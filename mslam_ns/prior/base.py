"""The `TwoViewPrior` interface: what the SLAM needs from a two-view 3D network.

The SLAM never talks to a network class directly; MASt3R (`mslam_ns.prior.mast3r`) and the oracle built from
ground truth (`mslam_ns.prior.oracle`) both implement this interface and are interchangeable.

Notation (docs/algorithm.md): ``X^j_i`` = pointmap of image j expressed in the camera frame (OpenCV axes) of image i.
A pass ``decode(i, j)`` returns ``(X^i_i, X^j_i)`` with confidences and descriptors.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass
class Encoding:
    """Per-frame encoder output, computed once and cached on the frame."""

    index: int
    """Frame index in its sequence (the oracle looks up ground truth with it)."""
    shape: tuple[int, int]
    """(H, W) of the network input image."""
    data: Any = None
    """Prior-specific payload (MASt3R: encoder tokens [N, C] and positions)."""


@dataclass
class ViewPrediction:
    """Per-pixel outputs for one view of a pass, all in the camera frame of the pass's FIRST image."""

    X: Tensor  # [H, W, 3] float32 pointmap
    C: Tensor  # [H, W] float32 confidence, >= 1
    D: Tensor  # [H, W, F] descriptors, unit L2 norm (float32 or float16)
    Q: Tensor  # [H, W] float32 descriptor confidence, >= 0

    def to(self, device: torch.device | str) -> ViewPrediction:
        return ViewPrediction(self.X.to(device), self.C.to(device), self.D.to(device), self.Q.to(device))


@dataclass
class PairPrediction:
    """One decoder pass with image i as view 1: ``ii`` = X^i_i, ``ji`` = X^j_i."""

    ii: ViewPrediction
    ji: ViewPrediction


class TwoViewPrior(ABC):
    """A two-view 3D prior. Implementations must be deterministic for the same inputs."""

    #: descriptor dimension F of `ViewPrediction.D`
    desc_dim: int = 24

    @abstractmethod
    def encode(self, image: Tensor, index: int) -> Encoding:
        """Encode one pre-processed image.

        Args:
            image: [3, H, W] float32 in [0, 1], already resized / cropped to the network size.
            index: the frame's index in its sequence.
        """

    @abstractmethod
    def decode(self, enc_i: Encoding, enc_j: Encoding) -> PairPrediction:
        """Asymmetric pass with i as view 1: returns (X^i_i, X^j_i) with C, D, Q."""

    def decode_symmetric(self, enc_i: Encoding, enc_j: Encoding) -> tuple[PairPrediction, PairPrediction]:
        """Both orderings: ((X^i_i, X^j_i), (X^j_j, X^i_j))."""
        return self.decode(enc_i, enc_j), self.decode(enc_j, enc_i)

    def decode_symmetric_batch(
        self, enc_i: Encoding, encs_j: Sequence[Encoding]
    ) -> list[tuple[PairPrediction, PairPrediction]]:
        """`decode_symmetric(enc_i, e)` for every e of `encs_j` (a new keyframe against its candidates); a prior
        may run them as one batched call (MASt3R: one decoder call of batch 2 len(encs_j))."""
        return [self.decode_symmetric(enc_i, e) for e in encs_j]

    def decode_mono(self, enc_i: Encoding) -> PairPrediction:
        """The (i, i) pass used at initialisation and relocalisation."""
        return self.decode(enc_i, enc_i)

    def retrieval_features(self, enc_i: Encoding) -> Tensor | None:
        """Local retrieval features [K, F_r] (float32) for ASMK, or None if this prior has none."""
        return None
