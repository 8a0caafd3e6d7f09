"""Camera trajectories for the synthetic room (T_WC, OpenCV camera axes, world z up).

"loop": the camera travels once around a closed ellipse (about 1.1 m x 0.9 m, ~3.2 m long, with a gentle
height wave) looking towards the +x half of the room (boxes, a pillar, the far wall) while its yaw, pitch and
roll oscillate a little; halfway round it stops for a pure-rotation segment (a yaw/pitch pan out and back with
exactly constant position), then completes the ellipse, so the last frames revisit the first frames' view.
About 70% of the frames go to the travelling part and 30% to the pure rotation. At 120 frames the camera moves
~3.8 cm and turns at most ~1.3 degrees per frame; more frames mean smaller steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Trajectory", "make_trajectory", "look_rotation", "TRAJECTORIES"]

TRAJECTORIES = ("loop",)

_CENTRE = np.array([-1.2, 0.0, 1.4])
_AXES = (0.55, 0.45, 0.08)  # ellipse half-axes x, y and height-wave amplitude


@dataclass
class Trajectory:
    """Poses and the frame ranges of each segment (`{"travel": [(a, b), ...], "rotation": [(a, b)]}`, end-exclusive)."""

    poses: np.ndarray  # [N, 4, 4] T_WC
    segments: dict[str, list[tuple[int, int]]] = field(default_factory=dict)


def look_rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """R_WC [3, 3] of an OpenCV camera (x right, y down, z forward) in a z-up world.

    yaw: heading about world z (0 looks along +x); pitch: positive looks up; roll: about the optical axis.
    Angles in radians.
    """
    cp, sp = np.cos(pitch), np.sin(pitch)
    fwd = np.array([cp * np.cos(yaw), cp * np.sin(yaw), sp])
    right = np.cross(fwd, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    r = np.stack([right, down, fwd], axis=1)
    cr, sr = np.cos(roll), np.sin(roll)
    r_roll = np.array([[cr, -sr, 0.0], [sr, cr, 0.0], [0.0, 0.0, 1.0]])  # about camera z
    return r @ r_roll


def _pose(p: np.ndarray, yaw: float, pitch: float, roll: float) -> np.ndarray:
    t = np.eye(4)
    t[:3, :3] = look_rotation(yaw, pitch, roll)
    t[:3, 3] = p
    return t


def _travel(s: float) -> tuple[np.ndarray, float, float, float]:
    """Position and angles at loop parameter s in [0, 1) (s = 0 and s = 1 give the same pose)."""
    a, b, hz = _AXES
    w = 2 * np.pi * s
    p = _CENTRE + np.array([a * np.cos(w), b * np.sin(w), hz * np.sin(2 * w)])
    yaw = np.radians(12.0) * np.sin(w)
    pitch = np.radians(-6.0) + np.radians(4.0) * np.sin(2 * w)
    roll = np.radians(2.0) * np.sin(3 * w)
    return p, yaw, pitch, roll


def make_trajectory(n_frames: int, kind: str = "loop") -> Trajectory:
    """`n_frames` camera poses of the named trajectory (see the module docstring)."""
    if kind not in TRAJECTORIES:
        raise ValueError(f"unknown trajectory {kind!r}; choose from {', '.join(TRAJECTORIES)}")
    if n_frames < 2:
        raise ValueError("need at least 2 frames")
    n_rot = int(round(0.3 * n_frames)) if n_frames >= 10 else 0
    n_travel = n_frames - n_rot
    first = n_travel // 2  # frames of travel before the rotation segment
    poses = []
    for k in range(first):
        poses.append(_pose(*_travel(k / n_travel)))
    p, yaw, pitch, roll = _travel(first / n_travel)
    for k in range(n_rot):
        tau = k / n_rot
        bump = 0.5 * (1 - np.cos(2 * np.pi * tau))  # 0 -> 1 -> 0
        poses.append(_pose(p, yaw + np.radians(15.0) * bump, pitch + np.radians(5.0) * bump, roll))
    for k in range(first, n_travel):
        poses.append(_pose(*_travel(k / n_travel)))
    segments = {
        "travel": [(0, first), (first + n_rot, n_frames)],
        "rotation": [(first, first + n_rot)] if n_rot else [],
    }
    return Trajectory(np.stack(poses), segments)
