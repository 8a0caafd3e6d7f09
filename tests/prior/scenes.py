"""Small ground-truth scenes for the oracle-prior tests (plain arrays and the synthetic room)."""

from __future__ import annotations

import numpy as np
import torch

from mslam_ns.geometry.image_transform import ImageTransform


def look_at(position: np.ndarray, yaw: float, pitch: float = 0.0) -> np.ndarray:
    """T_WC [4, 4] of a camera at ``position`` (world z up) looking horizontally at heading ``yaw``."""
    fwd = np.array([np.cos(yaw) * np.cos(pitch), np.sin(yaw) * np.cos(pitch), -np.sin(pitch)])
    down0 = np.array([0.0, 0.0, -1.0])
    right = np.cross(down0, fwd)
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    T = np.eye(4)
    T[:3, :3] = np.stack([right, down, fwd], axis=1)
    T[:3, 3] = position
    return T


def pinhole(W: int, H: int, f: float | None = None) -> np.ndarray:
    f = 0.8 * W if f is None else f
    return np.array([[f, 0.0, (W - 1) / 2], [0.0, f, (H - 1) / 2], [0.0, 0.0, 1.0]])


def backproject(z: np.ndarray, K: np.ndarray) -> np.ndarray:
    """[H, W] depth -> [H, W, 3] camera points (pixel centres at integers)."""
    H, W = z.shape
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    return np.stack([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z], axis=-1)


def smooth_depth(H: int, W: int, seed: int) -> np.ndarray:
    """A smooth, discontinuity-free positive depth map [H, W] (a tilted, gently curved surface)."""
    rng = np.random.default_rng(seed)
    v, u = np.mgrid[0:H, 0:W] / max(H, W)
    z = 2.5 + rng.uniform(-0.5, 0.5) * u + rng.uniform(-0.3, 0.3) * v + 0.1 * np.sin(3 * u + rng.uniform(0, 6))
    return z.astype(np.float32)


def random_poses(n: int, seed: int, step: float = 0.25) -> np.ndarray:
    """[n, 4, 4] T_WC: a random walk of small translations / rotations (baselines ~ step * depth scale)."""
    rng = np.random.default_rng(seed)
    poses = np.zeros((n, 4, 4))
    for k in range(n):
        phi = rng.normal(size=3) * 0.05
        th = np.linalg.norm(phi)
        Kx = np.array([[0, -phi[2], phi[1]], [phi[2], 0, -phi[0]], [-phi[1], phi[0], 0]]) / max(th, 1e-12)
        R = np.eye(3) + np.sin(th) * Kx + (1 - np.cos(th)) * Kx @ Kx
        poses[k] = np.eye(4)
        poses[k, :3, :3] = R
        poses[k, :3, 3] = rng.normal(size=3) * step
    return poses


def random_image(H: int, W: int, seed: int) -> torch.Tensor:
    """[3, H, W] float32 smooth-ish random texture in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, H // 4 + 1, W // 4 + 1, generator=g)
    return torch.nn.functional.interpolate(x, size=(H, W), mode="bilinear", align_corners=False)[0]


def identity(W: int, H: int) -> ImageTransform:
    return ImageTransform.identity(W, H)
