"""A procedurally textured room (floor, ceiling, 4 walls, boxes and pillars), rendered by exact ray casting.

World frame: z up, metres. The room is the axis-aligned box `ROOM_LO..ROOM_HI`; objects are solid axis-aligned
boxes standing on the floor (some reach the ceiling: pillars). Every planar face carries its own texture,
stored at `TEXEL` metres per texel (multi-scale value noise + coloured blobs + stripes, deterministic from the
seed) and sampled bilinearly at the exact ray hit point; each face has a constant shade (a fixed directional
light), so a surface point has the same colour in every view. Depth is the exact z of the hit point in the
camera frame (rays are `K^-1 [u, v, 1]`, pixel centres at integer coordinates, OpenCV camera axes).
Everything is numpy, vectorised over pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mslam_ns.io.frames import Intrinsics

__all__ = ["SyntheticRoom", "default_intrinsics", "ROOM_LO", "ROOM_HI"]

ROOM_LO = np.array([-3.0, -2.5, 0.0])
ROOM_HI = np.array([3.0, 2.5, 2.7])
TEXEL = 0.01  # metres per texel
_LIGHT = np.array([0.3, 0.5, 0.8]) / np.linalg.norm([0.3, 0.5, 0.8])


def default_intrinsics(width: int, height: int) -> Intrinsics:
    """Pinhole intrinsics with a ~62 degree horizontal field of view (fx = 525 at 640 px), centred."""
    f = 525.0 * width / 640.0
    return Intrinsics(f, f, (width - 1) / 2.0, (height - 1) / 2.0, width, height)


@dataclass
class _Face:
    axis: int  # normal axis (0 x, 1 y, 2 z)
    value: float  # plane coordinate along the axis
    normal_sign: float  # +1 / -1: direction of the outward normal (towards the viewer)
    lo: np.ndarray  # [2] lower corner in the two tangent axes
    size: np.ndarray  # [2] extent in metres along the tangent axes


def _tangent_axes(axis: int) -> tuple[int, int]:
    return ((1, 2), (0, 2), (0, 1))[axis]


def _value_noise(shape: tuple[int, int], cell: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth random field [h, w] in [0, 1]: random values on a grid of `cell` texels, smoothstep-interpolated."""
    h, w = shape
    gh, gw = int(np.ceil(h / cell)) + 2, int(np.ceil(w / cell)) + 2
    grid = rng.random((gh, gw))
    y = np.arange(h) / cell
    x = np.arange(w) / cell
    y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
    fy, fx = y - y0, x - x0
    fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)
    a = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    b = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return a * (1 - fy)[:, None] + b * fy[:, None]


def _face_texture(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """An RGB texture [h, w, 3] float32 in [0, 1]: coloured multi-scale noise, blobs and stripes."""
    base = rng.uniform(0.25, 0.75, size=3)
    tex = np.broadcast_to(base, (h, w, 3)).copy()
    # multi-scale value noise, a different field per channel at the finer scales (colourful detail)
    for cell, amp, per_channel in ((60, 0.35, False), (20, 0.25, True), (7, 0.2, True), (3, 0.12, True)):
        if per_channel:
            n = np.stack([_value_noise((h, w), cell, rng) for _ in range(3)], axis=-1)
        else:
            n = _value_noise((h, w), cell, rng)[..., None] * rng.uniform(0.5, 1.0, size=3)
        tex += amp * (n - 0.5)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # coloured blobs (soft discs), density ~ 10 per m^2, radius 2-12 cm
    n_blobs = max(3, int(h * w * TEXEL**2 * 10))
    for _ in range(n_blobs):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        r = rng.uniform(2, 12)
        y0, y1 = int(max(0, cy - 2 * r)), int(min(h, cy + 2 * r + 1))
        x0, x1 = int(max(0, cx - 2 * r)), int(min(w, cx + 2 * r + 1))
        if y0 >= y1 or x0 >= x1:
            continue
        d2 = ((yy[y0:y1, x0:x1] - cy) ** 2 + (xx[y0:y1, x0:x1] - cx) ** 2) / r**2
        alpha = np.clip(1.5 - d2, 0, 1)[..., None] * rng.uniform(0.5, 0.9)
        tex[y0:y1, x0:x1] = (1 - alpha) * tex[y0:y1, x0:x1] + alpha * rng.uniform(0, 1, size=3)
    # at most two soft-edged stripe patterns at random orientations, low contrast (repetition hurts matching)
    for _ in range(int(rng.integers(0, 3))):
        ang = rng.uniform(0, np.pi)
        period = rng.uniform(10, 50)
        phase = rng.uniform(0, 2 * np.pi)
        s = np.sin((np.cos(ang) * xx + np.sin(ang) * yy) * 2 * np.pi / period + phase)
        band = np.clip((s - 0.4) / 0.4, 0.0, 1.0)[..., None]
        tex += band * rng.uniform(-0.2, 0.2, size=3)
    return np.clip(tex, 0.0, 1.0).astype(np.float32)


class SyntheticRoom:
    """The textured room of one seed; `render(T_WC, intrinsics)` gives exact RGB and depth."""

    def __init__(self, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.seed = seed
        # solid boxes: (lo, hi) in world coordinates; positions jittered by the seed, kept in front (x > 0.2)
        # and to the sides of the camera's working volume (x in [-2, -0.4], |y| < 0.9).
        j = lambda s: rng.uniform(-s, s)  # noqa: E731
        boxes = [
            ((0.6 + j(0.2), -1.4 + j(0.2), 0.0), (1.4 + j(0.2), -0.6 + j(0.2), 0.8 + j(0.2))),  # crate
            ((1.2 + j(0.2), 0.5 + j(0.2), 0.0), (2.0 + j(0.2), 1.6 + j(0.2), 1.1 + j(0.2))),  # cabinet
            ((0.5 + j(0.1), 0.7 + j(0.1), 0.0), (0.8 + j(0.1), 1.0 + j(0.1), 2.7)),  # pillar to the ceiling
            ((2.2 + j(0.1), -0.4 + j(0.1), 0.0), (2.6 + j(0.1), 0.0 + j(0.1), 1.8 + j(0.2))),  # tall box
            ((-2.0 + j(0.1), 1.4 + j(0.1), 0.0), (-1.6 + j(0.1), 1.8 + j(0.1), 2.7)),  # pillar, back left
            ((-2.6 + j(0.1), -2.0 + j(0.1), 0.0), (-1.8 + j(0.1), -1.4 + j(0.1), 0.6 + j(0.1))),  # low box, back right
        ]
        self.boxes_lo = np.array([b[0] for b in boxes], dtype=np.float64)  # [B, 3]
        self.boxes_hi = np.array([b[1] for b in boxes], dtype=np.float64)  # [B, 3]
        faces: list[_Face] = []
        # room faces: index = 2 * axis + (0 for the low wall, 1 for the high wall); normals point inwards
        for axis in range(3):
            t = list(_tangent_axes(axis))
            for side, value in ((0, ROOM_LO[axis]), (1, ROOM_HI[axis])):
                faces.append(_Face(axis, value, 1.0 if side == 0 else -1.0, ROOM_LO[t], ROOM_HI[t] - ROOM_LO[t]))
        # box faces: 6 per box, same ordering; normals point outwards
        for lo, hi in zip(self.boxes_lo, self.boxes_hi):
            for axis in range(3):
                t = list(_tangent_axes(axis))
                for side, value in ((0, lo[axis]), (1, hi[axis])):
                    faces.append(_Face(axis, value, -1.0 if side == 0 else 1.0, lo[t], hi[t] - lo[t]))
        self.faces = faces
        # textures packed into one flat array; per-face lookup tables
        offsets, widths, heights, chunks = [], [], [], []
        total = 0
        for f in faces:
            w = int(np.ceil(f.size[0] / TEXEL)) + 2
            h = int(np.ceil(f.size[1] / TEXEL)) + 2
            tex = _face_texture(h, w, rng)
            normal = np.zeros(3)
            normal[f.axis] = f.normal_sign
            shade = 0.65 + 0.35 * abs(float(normal @ _LIGHT))
            chunks.append((tex * shade).reshape(-1, 3))
            offsets.append(total)
            widths.append(w)
            heights.append(h)
            total += h * w
        self._atlas = np.concatenate(chunks).astype(np.float32)  # [T, 3]
        self._offset = np.array(offsets, dtype=np.int64)  # [F]
        self._tw = np.array(widths, dtype=np.int64)  # [F]
        self._th = np.array(heights, dtype=np.int64)  # [F]
        self._ax_u = np.array([_tangent_axes(f.axis)[0] for f in faces])  # [F]
        self._ax_v = np.array([_tangent_axes(f.axis)[1] for f in faces])  # [F]
        self._lo_u = np.array([f.lo[0] for f in faces])  # [F]
        self._lo_v = np.array([f.lo[1] for f in faces])  # [F]
        # float32 / int32 copies for the per-pixel shading path
        self._axis = np.array([f.axis for f in faces], dtype=np.int8)  # [F]
        self._lo_u32 = self._lo_u.astype(np.float32)
        self._lo_v32 = self._lo_v.astype(np.float32)
        self._tw32 = self._tw.astype(np.int32)
        self._umax = (self._tw - 1.001).astype(np.float32)
        self._vmax = (self._th - 1.001).astype(np.float32)
        nxt = np.concatenate([self._atlas[1:], self._atlas[-1:]])
        self._atlas_pairs = np.ascontiguousarray(np.concatenate([self._atlas, nxt], axis=1))  # [T, 6]

    def inside_free_space(self, p: np.ndarray, margin: float = 0.3) -> bool:
        """True if the point p [3] is inside the room and at least `margin` from every wall and box."""
        p = np.asarray(p, dtype=np.float64)
        if np.any(p < ROOM_LO + margin) or np.any(p > ROOM_HI - margin):
            return False
        inside = np.all((p > self.boxes_lo - margin) & (p < self.boxes_hi + margin), axis=1)
        return not bool(inside.any())

    def cast(
        self,
        origin: np.ndarray,
        dirs: np.ndarray,
        box_rays: list[np.ndarray | None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Nearest hit along rays `origin + t * dirs`.

        Args:
            origin: [3] world position (inside the room, outside every box).
            dirs: [N, 3] world ray directions (not necessarily unit); float32 or float64 (computed in that type).
            box_rays: optional, per box, the indices of the rays that can hit it (None = all; an empty array skips
                the box); `render` derives them from the boxes' projected bounding rectangles.
        Returns:
            t [N] (ray parameter of the hit, dtype of `dirs`) and face [N] int64 (index into `self.faces`).
        """
        o = [float(x) for x in np.asarray(origin, dtype=np.float64)]
        d = np.asarray(dirs)
        if d.dtype not in (np.float32, np.float64):
            d = d.astype(np.float64)
        tiny = np.finfo(d.dtype).tiny
        # per-axis 1D arrays are much faster than [N, 3] fancy indexing; exact zeros -> tiny (no 0 * inf NaNs)
        ds = [np.ascontiguousarray(d[:, a]) for a in range(3)]
        for x in ds:
            x[x == 0.0] = tiny
        inv = [1.0 / x for x in ds]
        pos = [x > 0 for x in ds]
        # room: each ray leaves through the wall it points at; face = 2 * axis + (1 if the high wall)
        t = face = None
        for a in range(3):
            ta = np.where(pos[a], (float(ROOM_HI[a]) - o[a]) * inv[a], (float(ROOM_LO[a]) - o[a]) * inv[a])
            fa = 2 * a + pos[a].astype(np.int64)
            if t is None:
                t, face = ta, fa
            else:
                closer = ta < t
                t = np.where(closer, ta, t)
                face = np.where(closer, fa, face)
        # boxes: slab entry; the entry face is the low face of the entry axis when moving towards +axis
        for b in range(len(self.boxes_lo)):
            sel = None if box_rays is None else box_rays[b]
            if sel is not None and len(sel) == 0:
                continue
            inv_b = inv if sel is None else [x[sel] for x in inv]
            t_b = t if sel is None else t[sel]
            near = far = near_axis = None
            for a in range(3):
                t1 = (float(self.boxes_lo[b, a]) - o[a]) * inv_b[a]
                t2 = (float(self.boxes_hi[b, a]) - o[a]) * inv_b[a]
                tmin = np.minimum(t1, t2)
                tmax = np.maximum(t1, t2)
                if near is None:
                    near, far, near_axis = tmin, tmax, np.zeros(len(tmin), dtype=np.int64)
                else:
                    later = tmin > near
                    near = np.where(later, tmin, near)
                    near_axis = np.where(later, a, near_axis)
                    far = np.minimum(far, tmax)
            hit = np.flatnonzero((near <= far) & (near > 1e-6) & (near < t_b))
            if len(hit):
                idx = hit if sel is None else sel[hit]
                ax = near_axis[hit]
                t[idx] = near[hit]
                neg = ~np.choose(ax, [pos[0][idx], pos[1][idx], pos[2][idx]])
                face[idx] = 6 + 6 * b + 2 * ax + neg
        return t, face.astype(np.int64)

    def _box_rays(self, T_WC: np.ndarray, intr: Intrinsics) -> list[np.ndarray | None]:
        """Per box, the pixel indices inside its projected bounding rectangle (None when it is partly behind).

        Through a distorting lens the corners' rectangle need not hold the box's image: every ray is tested.
        """
        if intr.has_distortion:
            return [None] * len(self.boxes_lo)
        R, c = T_WC[:3, :3], T_WC[:3, 3]
        out: list[np.ndarray | None] = []
        w, h = intr.width, intr.height
        for lo, hi in zip(self.boxes_lo, self.boxes_hi):
            corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
            pc = (corners - c) @ R  # [8, 3] camera frame
            if np.any(pc[:, 2] <= 1e-3):
                out.append(None if np.any(pc[:, 2] > 1e-3) else np.empty(0, dtype=np.int64))
                continue
            u = intr.fx * pc[:, 0] / pc[:, 2] + intr.cx
            v = intr.fy * pc[:, 1] / pc[:, 2] + intr.cy
            u0, u1 = max(int(np.floor(u.min())) - 1, 0), min(int(np.ceil(u.max())) + 1, w - 1)
            v0, v1 = max(int(np.floor(v.min())) - 1, 0), min(int(np.ceil(v.max())) + 1, h - 1)
            if u0 > u1 or v0 > v1:
                out.append(np.empty(0, dtype=np.int64))
                continue
            out.append((np.arange(v0, v1 + 1)[:, None] * w + np.arange(u0, u1 + 1)[None, :]).ravel())
        return out

    def shade(self, points: np.ndarray, face: np.ndarray) -> np.ndarray:
        """Colours [N, 3] float32 in [0, 1] of world points [N, 3] lying on faces [N] (bilinear texture lookup)."""
        pts = np.asarray(points, dtype=np.float32)
        px, py, pz = pts[:, 0], pts[:, 1], pts[:, 2]
        # the face's normal axis picks the two tangent coordinates: x -> (y, z), y -> (x, z), z -> (x, y)
        ax = self._axis[face]
        pu = np.where(ax == 0, py, px)
        pv = np.where(ax == 2, py, pz)
        pu = (pu - self._lo_u32[face]) * np.float32(1.0 / TEXEL) + np.float32(0.5)
        pv = (pv - self._lo_v32[face]) * np.float32(1.0 / TEXEL) + np.float32(0.5)
        tw = self._tw32[face]
        pu = np.clip(pu, 0.0, self._umax[face])
        pv = np.clip(pv, 0.0, self._vmax[face])
        u0 = pu.astype(np.int32)  # floor: pu >= 0
        v0 = pv.astype(np.int32)
        fu = (pu - u0)[:, None]
        fv = (pv - v0)[:, None]
        base = self._offset[face] + (v0 * tw + u0)
        pair = self._atlas_pairs  # [T, 6]: texel i and its right neighbour i + 1
        top = np.take(pair, base, axis=0)
        bot = np.take(pair, base + tw, axis=0)
        top = top[:, :3] + (top[:, 3:] - top[:, :3]) * fu
        bot = bot[:, :3] + (bot[:, 3:] - bot[:, :3]) * fu
        return top + (bot - top) * fv

    def render(self, T_WC: np.ndarray, intrinsics: Intrinsics) -> tuple[np.ndarray, np.ndarray]:
        """Render one view.

        Args:
            T_WC: [4, 4] camera-to-world (OpenCV camera axes).
            intrinsics: pinhole; with `dist` (OpenCV radial-tangential coefficients) each pixel is rendered
                along the ray the lens maps onto it, so the image AND the depth map are distorted alike.
        Returns:
            rgb [H, W, 3] uint8 and depth [H, W] float32 (metres, camera z; every pixel valid: the room is closed).
        """
        w, h = intrinsics.width, intrinsics.height
        rays = self._rays(intrinsics)  # [H*W, 3] float32, z = 1
        T = np.asarray(T_WC, dtype=np.float64)
        dirs = rays @ T[:3, :3].T.astype(np.float32)  # float32: depth error ~1e-7 relative, twice as fast
        t, face = self.cast(T[:3, 3], dirs, self._box_rays(T, intrinsics))
        pts = T[:3, 3].astype(np.float32) + t[:, None] * dirs
        rgb = self.shade(pts, face)
        rgb8 = np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8).reshape(h, w, 3)
        return rgb8, t.astype(np.float32).reshape(h, w)

    _ray_cache: tuple | None = None

    def _rays(self, intr: Intrinsics) -> np.ndarray:  # [H*W, 3]
        key = (intr.fx, intr.fy, intr.cx, intr.cy, intr.width, intr.height, tuple(intr.dist))
        if self._ray_cache is None or self._ray_cache[0] != key:
            u, v = np.meshgrid(np.arange(intr.width, dtype=np.float64), np.arange(intr.height, dtype=np.float64))
            x, y = (u - intr.cx) / intr.fx, (v - intr.cy) / intr.fy
            if intr.has_distortion:
                x, y = undistort_normalized(x, y, intr.dist)
            rays = np.stack([x, y, np.ones_like(u)], axis=-1)
            self._ray_cache = (key, rays.reshape(-1, 3).astype(np.float32))
        return self._ray_cache[1]


def undistort_normalized(
    xd: np.ndarray, yd: np.ndarray, dist: tuple[float, ...], iters: int = 50
) -> tuple[np.ndarray, np.ndarray]:
    """Invert the lens model: the undistorted normalised coordinates whose distortion is (xd, yd).

    Fixed-point iteration on `x <- x + (xd - distort(x))` (converges for the moderate distortion of real
    lenses; the residual is checked).
    """
    from mslam_ns.io.undistort import distort_normalized

    x, y = xd.copy(), yd.copy()
    for _ in range(iters):
        dx, dy = distort_normalized(x, y, dist)
        x, y = x + (xd - dx), y + (yd - dy)
    dx, dy = distort_normalized(x, y, dist)
    err = float(max(np.abs(dx - xd).max(), np.abs(dy - yd).max()))
    if not err < 1e-9:
        raise ValueError(f"distortion {dist} cannot be inverted over the image (residual {err:.2g})")
    return x, y
