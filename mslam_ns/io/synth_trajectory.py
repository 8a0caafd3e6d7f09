"""Camera trajectories for the synthetic room (T_WC, OpenCV camera axes, world z up).

"loop": the camera travels once around a closed ellipse (about 1.1 m x 0.9 m, ~3.2 m long, with a gentle
height wave) looking towards the +x half of the room (boxes, a pillar, the far wall) while its yaw, pitch and
roll oscillate a little; halfway round it stops for a pure-rotation segment (a yaw/pitch pan out and back with
exactly constant position), then completes the ellipse, so the last frames revisit the first frames' view.
About 70% of the frames go to the travelling part and 30% to the pure rotation. At 120 frames the camera moves
~3.8 cm and turns at most ~1.3 degrees per frame; more frames mean smaller steps.

"loop2", "loop3" (or ``make_trajectory(n, "loop", laps=L)``): the same ellipse travelled L times, with one
pure-rotation pan (30% of ONE lap's frames) halfway round the first lap. The path spirals slowly (per lap:
the ellipse 4 cm narrower, 2 cm higher, the heading 2 degrees further left, changing smoothly along the way),
so a later lap revisits the earlier laps' places from nearby but not identical viewpoints (loop-closure and
retrieval tests). One lap is exactly the "loop" trajectory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Trajectory", "make_trajectory", "look_rotation", "TRAJECTORIES"]

TRAJECTORIES = ("loop", "loop2", "loop3")

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


_LAP_SHRINK, _LAP_RISE, _LAP_YAW = 0.04, 0.02, np.radians(2.0)  # per-lap path offsets (m, m, rad)


def _travel(s: float, lap: float = 0.0) -> tuple[np.ndarray, float, float, float]:
    """Position and angles at loop parameter s in [0, 1) (s = 0 and s = 1 give the same pose), the path
    offset by ``lap`` laps of spiralling (0 for a single loop)."""
    a, b, hz = _AXES
    a, b = a - _LAP_SHRINK * lap, b - _LAP_SHRINK * lap
    w = 2 * np.pi * s
    p = _CENTRE + np.array([a * np.cos(w), b * np.sin(w), hz * np.sin(2 * w) + _LAP_RISE * lap])
    yaw = np.radians(12.0) * np.sin(w) + _LAP_YAW * lap
    pitch = np.radians(-6.0) + np.radians(4.0) * np.sin(2 * w)
    roll = np.radians(2.0) * np.sin(3 * w)
    return p, yaw, pitch, roll


def _laps_of(kind: str) -> int:
    if kind == "loop":
        return 1
    if kind.startswith("loop") and kind[4:].isdigit() and int(kind[4:]) >= 1:
        return int(kind[4:])
    raise ValueError(f"unknown trajectory {kind!r}; choose from {', '.join(TRAJECTORIES)}")


def make_trajectory(n_frames: int, kind: str = "loop", laps: int | None = None) -> Trajectory:
    """`n_frames` camera poses of the named trajectory (see the module docstring).

    ``laps`` overrides the number of laps of the kind ("loop" 1, "loop2" 2, ...).
    """
    n_laps = _laps_of(kind) if laps is None else int(laps)
    if n_laps < 1:
        raise ValueError(f"laps must be >= 1, got {laps}")
    if n_frames < 2:
        raise ValueError("need at least 2 frames")
    n_rot = int(round(0.3 * n_frames / n_laps)) if n_frames >= 10 * n_laps else 0
    n_travel = n_frames - n_rot
    per_lap = n_travel / n_laps  # travel frames per lap (s advances 1 / per_lap per frame)
    first = int(per_lap) // 2  # frames of travel before the rotation segment

    def travel(k: int) -> np.ndarray:
        s = k / per_lap  # laps travelled so far
        return _pose(*_travel(s % 1.0, s if n_laps > 1 else 0.0))

    poses = [travel(k) for k in range(first)]
    p, yaw, pitch, roll = _travel(first / per_lap, first / per_lap if n_laps > 1 else 0.0)
    for k in range(n_rot):
        tau = k / n_rot
        bump = 0.5 * (1 - np.cos(2 * np.pi * tau))  # 0 -> 1 -> 0
        poses.append(_pose(p, yaw + np.radians(15.0) * bump, pitch + np.radians(5.0) * bump, roll))
    poses += [travel(k) for k in range(first, n_travel)]
    segments = {
        "travel": [(0, first), (first + n_rot, n_frames)],
        "rotation": [(first, first + n_rot)] if n_rot else [],
    }
    return Trajectory(np.stack(poses), segments)
