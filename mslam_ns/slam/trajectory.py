"""`Trajectory`: every input frame's pose, stored relative to its keyframe.

Each frame is recorded as (keyframe id, T_CkCf) with T_CkCf the Sim(3) pose of the frame in its keyframe's
camera. `poses()` recomposes `T_WCf = T_WCk * T_CkCf` from the keyframes' CURRENT poses, so when the backend
moves a keyframe, every frame tracked against it moves with it (the published reference keeps poses for
keyframes only). Keyframes themselves are recorded with their own id and the identity.

Frames on which tracking failed still get a pose (the last good relative pose: a constant-position guess)
and are flagged `lost`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mslam_ns.geometry import sim3
from mslam_ns.slam.keyframes import KeyframeStore


@dataclass
class FrameRecord:
    """One input frame's entry."""

    timestamp: float
    name: str
    kf_id: int
    T_kf: Tensor  # [8] T_CkCf (Sim(3), frame camera -> keyframe camera)
    lost: bool = False
    is_keyframe: bool = False


class Trajectory:
    """Per-frame poses relative to keyframes, recomposed on demand."""

    def __init__(self, keyframes: KeyframeStore):
        self.keyframes = keyframes
        self.records: list[FrameRecord] = []

    def __len__(self) -> int:
        return len(self.records)

    def add(self, timestamp: float, name: str, kf_id: int, T_kf: Tensor, lost: bool = False,
            is_keyframe: bool = False) -> int:
        """Record a frame; returns its position in the trajectory."""
        self.records.append(FrameRecord(float(timestamp), str(name), int(kf_id), T_kf.detach().clone(),
                                        bool(lost), bool(is_keyframe)))
        return len(self.records) - 1

    def rebase(self, i: int, kf_id: int, T_kf: Tensor, is_keyframe: bool = False) -> None:
        """Re-anchor record `i` on keyframe `kf_id` (e.g. when the frame itself became that keyframe)."""
        r = self.records[i]
        r.kf_id, r.T_kf, r.is_keyframe = int(kf_id), T_kf.detach().clone(), bool(is_keyframe)

    # ---- read ---------------------------------------------------------------------------------------
    def timestamps(self) -> Tensor:  # [N] float64
        return torch.tensor([r.timestamp for r in self.records], dtype=torch.float64)

    def names(self) -> list[str]:
        return [r.name for r in self.records]

    def lost_mask(self) -> Tensor:  # [N] bool
        return torch.tensor([r.lost for r in self.records], dtype=torch.bool)

    def keyframe_mask(self) -> Tensor:  # [N] bool
        return torch.tensor([r.is_keyframe for r in self.records], dtype=torch.bool)

    def kf_ids(self) -> Tensor:  # [N] int64
        return torch.tensor([r.kf_id for r in self.records], dtype=torch.int64)

    def relative_poses(self) -> Tensor:  # [N, 8]
        return torch.stack([r.T_kf for r in self.records]) if self.records else torch.zeros(0, 8)

    def poses(self) -> Tensor:  # [N, 8] T_WC of every frame
        """Every frame's world pose from its keyframe's current pose (float32, on the keyframe device)."""
        if not self.records:
            return torch.zeros(0, 8)
        T_kf_W = self.keyframes.poses()  # [K, 8]
        ids = self.kf_ids().to(T_kf_W.device)
        rel = self.relative_poses().to(T_kf_W)
        return sim3.mul(T_kf_W[ids], rel)
