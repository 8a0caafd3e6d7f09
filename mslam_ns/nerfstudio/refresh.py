"""Refresh training cameras and SLAM-seeded splats when the SLAM backend moves keyframes.

`SlamRefreshStrategy` is a strategy object in the manner of gsplat's (a dataclass with step hooks). Each
``step_pre_forward`` compares the shared map's ``version`` with the one it last applied (one integer read,
no file polling); on a change it takes a snapshot without pointmaps and, for every keyframe whose
``pose_version`` is newer, applies the keyframe's Sim(3) correction ``S_k = T_WC_new * T_WC_old^-1``:

* to every training / evaluation camera of a frame whose world pose changed (a frame anchored on a moved
  keyframe; a frame skipped by the motion filter whose neighbours arrived; in live mode a frame the SLAM had
  not reached when training started, whose camera showed a provisional pose): the frame's correction
  ``S_f = frame_T_WC_new * frame_T_WC_old^-1`` (equal to ``S_k`` while its relative pose is unchanged), in
  nerfstudio's world ``S_ns = D S_f D^-1`` with ``D = dataparser_scale * dataparser_transform``; the camera
  rotates by S's rotation and its centre moves by the full similarity, in every copy nerfstudio holds (the
  datasets' and datamanager's ``Cameras``, the viewer's frusta via ``original_c2w``);
* to the splats seeded from that keyframe (``model.splat_keyframe``): means ``x -> sigma R x + t``,
  log-scales ``+ log sigma``, quaternions ``q_R * q``; their Adam moments are zeroed (they were expressed in
  the old frame);
* and the camera optimiser's adjustments of the moved cameras are reset (with their Adam moments).

Nothing else moves. Usage (a training loop; with ``ns-train`` the model adds `training_callback`)::

    refresh = SlamRefreshStrategy(system.map, train_frames=rows_of_train_images)
    refresh.attach(pipeline, optimizers)          # records the poses the current cameras/splats show
    for step in range(n):
        refresh.step_pre_forward(step)            # cheap unless the map changed
        ...forward / backward / optimiser step...

Live mode (`mslam_ns.nerfstudio.live`): nerfstudio fixes the set of training images at set-up, so every
frame of the input is in the dataset from the start; those the SLAM has not reached yet carry a provisional
pose (`attach(..., pending_T_WC=...)`) and are kept out of training (`MslamDatamanager.set_train_ready`)
until the SLAM poses them, when their cameras move onto the real pose like any other correction. Limit:
splats are seeded from the keyframes present when training starts; regions first seen by later keyframes
are filled by densification, not seeded. Frames beyond the dataset's (``pending_new_frames``) are not
trained on.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mslam_ns.geometry import sim3
from mslam_ns.geometry.conventions import xyzw_to_wxyz

log = logging.getLogger(__name__)

__all__ = ["SlamRefreshStrategy", "sim3_to_matrix", "frames_for_images"]


def sim3_to_matrix(T: np.ndarray) -> np.ndarray:  # [..., 8] -> [..., 4, 4]
    """Sim(3) 8-vectors ``(t, q xyzw, s)`` -> 4x4 ``[[s R, t], [0, 1]]`` (float64)."""
    T = np.asarray(T, dtype=np.float64)
    R = sim3.quat_to_rotmat(torch.from_numpy(T[..., 3:7])).numpy()
    M = np.zeros(T.shape[:-1] + (4, 4))
    M[..., :3, :3] = R * T[..., 7, None, None]
    M[..., :3, 3] = T[..., :3]
    M[..., 3, 3] = 1.0
    return M


def frames_for_images(image_names: list[str], frame_names: list[str]) -> list[int]:
    """SLAM frame row of each image, matched by file stem (-1 where none matches)."""

    def stem(n: str) -> str:
        base = n.replace("\\", "/").rsplit("/", 1)[-1]
        return base.rsplit(".", 1)[0] if "." in base else base

    rows = {stem(n): i for i, n in enumerate(frame_names)}
    return [rows.get(stem(n), -1) for n in image_names]


def _sim_parts(M: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:  # [4, 4] -> sigma, R [3, 3], t [3]
    sigma = float(np.cbrt(np.linalg.det(M[:3, :3])))
    return sigma, M[:3, :3] / sigma, M[:3, 3]


@dataclass
class SlamRefreshStrategy:
    """Keeps cameras and SLAM-seeded splats on the backend's latest keyframe poses (see module docstring)."""

    source: Any
    """The shared map (``SlamSystem.map``) or anything with ``version`` and ``snapshot(since, with_points)``."""
    train_frames: list[int]
    """SLAM frame row of each training image (-1: not a SLAM frame, never moved)."""
    eval_frames: list[int] = field(default_factory=list)
    """SLAM frame row of each evaluation image."""
    every: int = 1
    """Check the map version every this many steps."""
    world_to_ns: np.ndarray | None = None
    """[4, 4] similarity SLAM world -> nerfstudio world; None: taken from the pipeline's dataparser."""

    # state (set by attach / refresh)
    version: int = -1
    kf_T_WC: np.ndarray = field(default_factory=lambda: np.zeros((0, 8)))
    frame_T_WC: np.ndarray = field(default_factory=lambda: np.zeros((0, 8)))
    pending_new_frames: int = 0
    n_known: int = 0
    """Frames the map had posed at the last refresh (the rest of `frame_T_WC` is provisional)."""
    n_refreshes: int = 0
    _pipeline: Any = None
    _optimizers: Any = None
    _viewer: Any = None

    # ---------------------------------------------------------------------------------------- set-up
    def attach(
        self,
        pipeline: Any,
        optimizers: Any = None,
        viewer: Any = None,
        snapshot: Any = None,
        pending_T_WC: np.ndarray | None = None,
    ) -> None:
        """Bind to a pipeline and record the poses its cameras and splats currently show (now, or `snapshot`).

        `pending_T_WC` [M, 8]: the provisional poses the cameras of the M frames after the snapshot's show
        (live mode); those frames are not trained on until the map has them."""
        self._pipeline, self._optimizers, self._viewer = pipeline, optimizers, viewer
        if self.world_to_ns is None:
            out = pipeline.datamanager.train_dataparser_outputs
            D = np.eye(4)
            D[:3, :] = out.dataparser_transform.detach().cpu().double().numpy()
            D[:3, :] *= float(out.dataparser_scale)
            self.world_to_ns = D
        snap = snapshot if snapshot is not None else self.source.snapshot(with_points=False)
        self._record(snap)
        if pending_T_WC is not None and len(pending_T_WC):
            self.frame_T_WC = np.concatenate([self.frame_T_WC, np.asarray(pending_T_WC, dtype=np.float64)])
        self._update_ready(snap)

    def _record(self, snap: Any) -> None:
        self.version = int(snap.version)
        self.kf_T_WC = np.array(snap.T_WC, dtype=np.float64, copy=True)
        self.frame_T_WC = np.array(snap.frame_T_WC, dtype=np.float64, copy=True)
        self.n_known = len(self.frame_T_WC)

    def _update_ready(self, snap: Any) -> None:
        """Tell the datamanager which training images the map has posed (the rest show provisional poses)."""
        dm = getattr(self._pipeline, "datamanager", None)
        if dm is None or not hasattr(dm, "set_train_ready"):
            return
        n = len(snap.frame_T_WC)
        dm.set_train_ready([f < n for f in self.train_frames])

    def training_callback(self) -> Any:
        """A nerfstudio TrainingCallback running `step_pre_forward` before every iteration."""
        from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation

        return TrainingCallback([TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], self.step_pre_forward)

    # ---------------------------------------------------------------------------------------- hooks
    def step_pre_forward(self, step: int) -> bool:
        """Apply the backend's pose changes since the last refresh; True when something moved."""
        if self._pipeline is None or step % max(1, self.every):
            return False
        v = getattr(self.source, "version", None)
        if v is not None and int(v) == self.version:
            return False
        return self.refresh(self.source.snapshot(with_points=False))

    def step_post_backward(self, step: int) -> None:
        """Nothing after backward (present for the strategy interface)."""

    # ---------------------------------------------------------------------------------------- refresh
    @torch.no_grad()
    def refresh(self, snap: Any) -> bool:
        """Apply one snapshot (see module docstring)."""
        K_old = len(self.kf_T_WC)
        moved_kf = [k for k in range(min(K_old, len(snap.T_WC))) if int(snap.pose_version[k]) > self.version]
        n_frames_old = len(self.frame_T_WC)
        n = min(n_frames_old, len(snap.frame_T_WC))
        new_T = np.asarray(snap.frame_T_WC[:n], dtype=np.float64)
        moved_frames = np.flatnonzero((new_T != self.frame_T_WC[:n]).any(axis=1)).tolist()
        S_kf = {k: sim3_to_matrix(snap.T_WC[k]) @ np.linalg.inv(sim3_to_matrix(self.kf_T_WC[k])) for k in moved_kf}
        S_f = {
            f: sim3_to_matrix(snap.frame_T_WC[f]) @ np.linalg.inv(sim3_to_matrix(self.frame_T_WC[f]))
            for f in moved_frames
        }
        self.pending_new_frames = max(0, len(snap.frame_T_WC) - n_frames_old)
        self._record_partial(snap, moved_kf, moved_frames)
        if len(snap.frame_T_WC) > self.n_known:
            self.n_known = len(snap.frame_T_WC)
            self._update_ready(snap)
        if not moved_kf and not moved_frames:
            return False
        D = self.world_to_ns
        assert D is not None
        Dinv = np.linalg.inv(D)
        to_ns = {k: D @ S @ Dinv for k, S in S_kf.items()}
        to_ns_f = {f: D @ S @ Dinv for f, S in S_f.items()}
        moved_train = self._move_cameras(to_ns_f)
        self._move_splats(to_ns)
        self._reset_camera_opt(moved_train)
        self.n_refreshes += 1
        log.info(
            "SLAM refresh: %d keyframes moved, %d frames, %d training cameras, map version %d",
            len(moved_kf),
            len(moved_frames),
            len(moved_train),
            self.version,
        )
        return True

    def _record_partial(self, snap: Any, moved_kf: list[int], moved_frames: list[int]) -> None:
        """Remember the applied poses: moved keyframes/frames take the new ones, the rest keep theirs."""
        self.version = int(snap.version)
        for k in moved_kf:
            self.kf_T_WC[k] = snap.T_WC[k]
        for f in moved_frames:
            self.frame_T_WC[f] = snap.frame_T_WC[f]

    # ---------------------------------------------------------------------------------------- cameras
    def _camera_sets(self) -> list[tuple[Any, list[int]]]:
        """Every distinct nerfstudio camera pose tensor (as its Cameras) with the SLAM frame row of each camera."""
        dm = self._pipeline.datamanager
        found: list[tuple[Any, list[int]]] = []
        seen: set[int] = set()

        def add(cams: Any, rows: list[int]) -> None:
            # Keyed by storage: `Cameras.to(same device)` makes a new object around the same tensors.
            if cams is None or len(rows) != cams.camera_to_worlds.shape[0]:
                return
            key = cams.camera_to_worlds.data_ptr()
            if key not in seen:
                seen.add(key)
                found.append((cams, rows))

        for obj in (getattr(dm, "train_dataset", None), getattr(dm, "train_dataparser_outputs", None)):
            add(getattr(obj, "cameras", None), self.train_frames)
            add(getattr(getattr(obj, "_dataparser_outputs", None), "cameras", None), self.train_frames)
        add(getattr(dm, "train_cameras", None), self.train_frames)
        for obj in (getattr(dm, "eval_dataset", None), getattr(dm, "eval_dataparser_outputs", None)):
            add(getattr(obj, "cameras", None), self.eval_frames)
            add(getattr(getattr(obj, "_dataparser_outputs", None), "cameras", None), self.eval_frames)
        add(getattr(dm, "eval_cameras", None), self.eval_frames)
        return found

    def _move_cameras(self, to_ns_f: dict[int, np.ndarray]) -> list[int]:
        """Move every camera of a corrected frame; returns the moved training image indices."""
        if not to_ns_f:
            return []
        for cams, rows in self._camera_sets():
            c2w = cams.camera_to_worlds
            for i, f in enumerate(rows):
                if f in to_ns_f:
                    c2w[i] = self._moved_c2w(to_ns_f[f], c2w[i])
        moved_train = [i for i, f in enumerate(self.train_frames) if f in to_ns_f]
        viewer = self._viewer
        if viewer is not None and getattr(viewer, "original_c2w", None) is not None:
            for i in moved_train:
                if i in viewer.original_c2w:
                    M = np.eye(4)
                    M[:3] = viewer.original_c2w[i][:3]
                    viewer.original_c2w[i] = self._moved_c2w(
                        to_ns_f[self.train_frames[i]], torch.from_numpy(M[:3])
                    ).numpy()
        return moved_train

    @staticmethod
    def _moved_c2w(S: np.ndarray, c2w: torch.Tensor) -> torch.Tensor:  # [4, 4], [3, 4] -> [3, 4]
        sigma, R, t = _sim_parts(S)
        C = c2w.detach().cpu().double().numpy()
        out = np.concatenate([R @ C[:3, :3], (sigma * R @ C[:3, 3] + t)[:, None]], 1)
        return torch.from_numpy(out).to(c2w)

    def _reset_camera_opt(self, moved_train: list[int]) -> None:
        cam_opt = getattr(self._pipeline.model, "camera_optimizer", None)
        adj = getattr(cam_opt, "pose_adjustment", None)
        if adj is None or not moved_train:
            return
        idx = torch.tensor(moved_train, dtype=torch.long, device=adj.device)
        adj.data[idx] = 0.0
        self._zero_moments(adj, idx)

    # ---------------------------------------------------------------------------------------- splats
    def _move_splats(self, to_ns: dict[int, np.ndarray]) -> None:
        model = self._pipeline.model
        kf = getattr(model, "splat_keyframe", None)
        if kf is None or not to_ns:
            return
        p = model.gauss_params
        for k, S in to_ns.items():
            rows = torch.nonzero(kf == k).squeeze(1).to(p["means"].device)
            if rows.numel() == 0:
                continue
            sigma, R, t = _sim_parts(S)
            Rt = torch.as_tensor(R, dtype=p["means"].dtype, device=p["means"].device)
            tt = torch.as_tensor(t, dtype=p["means"].dtype, device=p["means"].device)
            p["means"].data[rows] = sigma * p["means"].data[rows] @ Rt.T + tt
            p["scales"].data[rows] += math.log(sigma)
            q_wxyz = xyzw_to_wxyz(sim3.rotmat_to_quat(torch.from_numpy(R)).to(p["quats"]))  # gsplat: wxyz
            p["quats"].data[rows] = _quat_mul_wxyz(q_wxyz.expand(rows.numel(), 4), p["quats"].data[rows])
            for name in ("means", "scales", "quats"):
                self._zero_moments(p[name], rows)

    def _zero_moments(self, param: torch.Tensor, rows: torch.Tensor) -> None:
        opts = self._optimizers
        if opts is None:
            return
        opts = getattr(opts, "optimizers", opts)
        for opt in opts.values():
            st = opt.state.get(param)
            if not st:
                continue
            for key in ("exp_avg", "exp_avg_sq"):
                if key in st and st[key].shape[:1] == param.shape[:1]:
                    st[key][rows] = 0.0


def _quat_mul_wxyz(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # [N, 4] x [N, 4] -> [N, 4]
    aw, av = a[:, :1], a[:, 1:]
    bw, bv = b[:, :1], b[:, 1:]
    w = aw * bw - (av * bv).sum(-1, keepdim=True)
    v = aw * bv + bw * av + torch.cross(av, bv, dim=-1)
    return torch.cat([w, v], -1)
