"""`SharedMap`: the ONE owner of the SLAM's map state — keyframes, per-frame records and graph edges.

The frontend (tracking, fusion, new keyframes), the backend (pose updates, edges), the viewer and the
nerfstudio refresh all read and write through it:

- storage grows on demand (a Python list: no fixed ring); with `offload` the per-pixel tensors of all but the
  `resident` newest keyframes live in host memory and are fetched back transparently;
- with `spill` (long videos) the per-pixel tensors and the prior's encoding of all but the `keep` newest
  keyframes, and the correspondences of the edges among those older keyframes, are written to a private
  scratch folder (`SpillStore`) and read back on demand (a small LRU of `cache` keyframes): memory stays
  bounded by `keep`, whatever the length of the video. Poses, frame records and edge metadata stay in memory;
- one re-entrant lock guards every read and write; every write bumps `version` and records, per keyframe,
  the version at which its pose (`pose_version`) and its points (`points_version`) last changed;
- `pop_last()` removes a tentative keyframe (relocalisation); nothing else ever removes one;
- `snapshot(since=v)` returns a consistent plain CPU copy taken under the lock: all poses, every frame's
  record, the edges, and the pointmaps of only the keyframes whose points changed after version `v`;
- `wait_for_change(v, timeout)` blocks until the version passes `v` (readers in other threads).

Every input frame is recorded relative to a keyframe as (kf_id, T_CkCf); world poses are recomposed from
the keyframes' CURRENT poses on every read, so a backend update moves every frame tracked against a moved
keyframe. Two light views keep call sites short: `map.keyframes` (keyframe access) and `map.frames` (the
per-frame records); they hold no state of their own.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mslam_ns.geometry import sim3
from mslam_ns.prior.base import Encoding
from mslam_ns.slam.frame import Frame
from mslam_ns.slam.motion import interpolate_skipped
from mslam_ns.slam.spill import SpillStore, pack_half, unpack_half

__all__ = ["SharedMap", "MapSnapshot", "KeyframeView", "FrameRecord"]


@dataclass
class FrameRecord:
    """One input frame's entry."""

    timestamp: float
    name: str
    kf_id: int
    T_kf: Tensor  # [8] T_CkCf (Sim(3), frame camera -> keyframe camera)
    lost: bool = False
    is_keyframe: bool = False
    interpolated: bool = False
    """Skipped by the motion filter: posed by interpolation between tracked neighbours (`T_kf` provisional)."""


@dataclass
class KeyframeView:
    """Plain copy of one keyframe's per-pixel data (network resolution, keyframe camera, OpenCV axes)."""

    kf_id: int
    frame_index: int
    """Row of this keyframe in the snapshot's per-frame arrays."""
    timestamp: float
    name: str
    hw: tuple[int, int]
    rgb: np.ndarray  # [H, W, 3] uint8
    X: np.ndarray  # [H*W, 3] float32 canonical pointmap in the keyframe camera
    C: np.ndarray  # [H*W] float32 average confidence C / N
    points_version: int


@dataclass
class MapSnapshot:
    """A consistent plain CPU copy of the map (see `SharedMap.snapshot`)."""

    version: int
    state: str
    T_WC: np.ndarray  # [K, 8] float64 keyframe poses
    pose_version: np.ndarray  # [K] int64
    points_version: np.ndarray  # [K] int64
    keyframe_frame_index: np.ndarray  # [K] int64 row of each keyframe in the per-frame arrays
    keyframes: dict[int, KeyframeView]
    """Only keyframes whose points changed after `since` (all of them when `since` is None)."""
    edges: np.ndarray  # [E, 2] int64 (i, j)
    edge_kind: list[str]
    """'seq' | 'loop' | 'reloc' per edge."""
    frame_timestamps: np.ndarray  # [N] float64
    frame_names: list[str]
    frame_kf: np.ndarray  # [N] int64
    frame_T_kf: np.ndarray  # [N, 8] float64 T_CkCf
    frame_T_WC: np.ndarray  # [N, 8] float64 recomposed world poses
    frame_lost: np.ndarray  # [N] bool
    frame_is_keyframe: np.ndarray  # [N] bool
    frame_interpolated: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # [N] bool
    K: np.ndarray | None = None  # [3, 3] intrinsics in ORIGINAL image pixels (given or estimated)
    image_size: tuple[int, int] | None = None
    """(width, height) of the ORIGINAL images."""
    since: int | None = None


@dataclass
class _Slot:
    frame: Frame
    on_host: bool = False
    pose_version: int = 0
    points_version: int = 0
    frame_row: int = -1  # row of the keyframe's own frame record
    anchor: int = -1  # keyframe this one was first placed relative to (-1: the first keyframe)
    T_anchor: Tensor | None = None  # [8] its pose relative to the anchor at creation (frontend chain)
    spilled: bool = False  # `frame` is a stub (meta tensors, no encoding data); the payload is on disk


def _stub(f: Frame) -> Frame:
    """`f` without its payload: the per-pixel tensors become storage-less meta tensors of the same shapes
    (so `hw` and `is_keyframe` still answer) and the encoding keeps only its index and shape."""

    def meta(t: Tensor | None) -> Tensor | None:
        return None if t is None else torch.empty(t.shape, dtype=t.dtype, device="meta")

    enc = Encoding(f.enc.index, f.enc.shape, None)
    return dataclasses.replace(f, image=meta(f.image), enc=enc, X=meta(f.X), C=meta(f.C))


@dataclass
class _Edge:
    i: int
    j: int
    kind: str
    data: dict = field(default_factory=dict)


class SharedMap:
    """Keyframes, per-frame records and graph edges behind one lock, with versions and snapshots."""

    def __init__(
        self,
        device: torch.device | str = "cpu",
        offload: bool = False,
        resident: int = 8,
        spill: bool = False,
        keep: int = 64,
        spill_dir: str | None = None,
        cache: int = 4,
        drop_old_matches: bool = False,
        half: bool = True,
    ):
        """
        Args:
            device: the SLAM device; keyframe access returns tensors there.
            offload: keep only the `resident` newest keyframes' per-pixel tensors on `device`, the rest on
                the host (pinned when the device is CUDA).
            resident: number of newest keyframes kept on the device when offloading (>= 1).
            spill: write the payload of all but the `keep` newest keyframes (and the correspondences of edges
                among them) to a scratch folder, read back on demand.
            keep: number of newest keyframes kept in memory when spilling (>= 2).
            spill_dir: where the scratch folder is made (None: the system's temporary folder).
            cache: spilled keyframes kept loaded (least recently used first out).
            drop_old_matches: free the correspondences of edges between keyframes older than the `keep`
                newest (a windowed backend never reads them again) instead of spilling them.
            half: spill float32 payloads (pointmaps, confidences, encodings, correspondence weights) in float16.
        """
        self.device = torch.device(device)
        self.offload = offload
        self.resident = max(1, int(resident))
        self.spill = bool(spill)
        self.keep = max(2, int(keep))
        self._spill_dir = spill_dir
        self._store: SpillStore | None = None
        self._cache_size = max(0, int(cache))
        self._cache: OrderedDict[int, Frame] = OrderedDict()
        self._hot: list[_Edge] = []  # edges whose correspondences are still in memory (spilling only)
        self._n_spilled_edges = 0
        self.drop_old_matches = bool(drop_old_matches)
        self.half = bool(half)
        self.lock = threading.RLock()
        self._changed = threading.Condition(self.lock)
        self.version = 0
        self.state = "init"
        self._slots: list[_Slot] = []
        self._records: list[FrameRecord] = []
        self._edges: list[_Edge] = []
        self._K: np.ndarray | None = None
        self._image_size: tuple[int, int] | None = None
        self.keyframes = KeyframeAccess(self)
        self.frames = FrameAccess(self)

    # ---- writes (each bumps the version) -----------------------------------------------------------
    def _bump(self) -> int:
        self.version += 1
        self._changed.notify_all()
        return self.version

    def add_keyframe(self, frame: Frame, anchor: int = -1, T_anchor: Tensor | None = None) -> int:
        """Append a keyframe (must carry X, C). Sets and returns its keyframe id.

        `anchor` / `T_anchor` [8]: the keyframe it was placed from and its relative pose then (T_CaCk); they
        define the frontend-only trajectory (`frontend_poses`), i.e. the poses without any backend update.
        """
        if frame.X is None or frame.C is None:
            raise ValueError("a keyframe needs its canonical pointmap X and confidence C")
        with self.lock:
            frame.kf_id = len(self._slots)
            if not -1 <= anchor < frame.kf_id:
                raise IndexError(f"anchor {anchor} is not an earlier keyframe")
            T_a = frame.T_WC if anchor < 0 else T_anchor
            if T_a is None:
                raise ValueError("a keyframe with an anchor needs T_anchor")
            v = self._bump()
            self._slots.append(_Slot(frame, False, v, v, anchor=int(anchor), T_anchor=T_a.detach().clone()))
            self._apply_offload()
            self._apply_spill()
            return frame.kf_id

    def pop_last(self) -> Frame:
        """Remove the newest keyframe (a tentative one), with its edges and frame records."""
        with self.lock:
            if not self._slots:
                raise IndexError("pop_last on an empty map")
            slot = self._slots.pop()
            k = slot.frame.kf_id
            self._edges = [e for e in self._edges if e.i != k and e.j != k]
            self._hot = [e for e in self._hot if e.i != k and e.j != k]
            self._cache.pop(k, None)
            self._records = [r for r in self._records if r.kf_id != k]
            self._bump()
            slot.frame.kf_id = -1
            return slot.frame

    def add_frame(
        self,
        timestamp: float,
        name: str,
        kf_id: int,
        T_kf: Tensor,
        lost: bool = False,
        is_keyframe: bool = False,
        interpolated: bool = False,
    ) -> int:
        """Record an input frame relative to keyframe `kf_id`; returns its row."""
        with self.lock:
            if not 0 <= int(kf_id) < len(self._slots):
                raise IndexError(f"frame record refers to keyframe {kf_id}, map has {len(self._slots)}")
            self._records.append(
                FrameRecord(
                    float(timestamp),
                    str(name),
                    int(kf_id),
                    T_kf.detach().clone(),
                    bool(lost),
                    bool(is_keyframe),
                    bool(interpolated),
                )
            )
            row = len(self._records) - 1
            if is_keyframe:
                self._slots[int(kf_id)].frame_row = row
            self._bump()
            return row

    def pop_frame(self) -> FrameRecord:
        """Remove and return the newest frame record (not a keyframe's own record)."""
        with self.lock:
            if not self._records or self._records[-1].is_keyframe:
                raise IndexError("no non-keyframe frame record to remove")
            rec = self._records.pop()
            self._bump()
            return rec

    def set_poses(self, T_WC: Tensor, ids: Sequence[int] | None = None) -> None:
        """Overwrite keyframe poses (backend update). T_WC: [n, 8]."""
        with self.lock:
            ids = list(range(len(self._slots))) if ids is None else [int(i) for i in ids]
            if tuple(T_WC.shape) != (len(ids), 8):
                raise ValueError(f"expected poses of shape {(len(ids), 8)}, got {tuple(T_WC.shape)}")
            if not bool(torch.isfinite(T_WC).all()):
                raise ValueError("set_poses: non-finite poses")
            v = self._bump()
            for k, i in enumerate(ids):
                s = self._slots[i]
                s.frame.T_WC = T_WC[k].detach().to(s.frame.T_WC).clone()
                s.pose_version = v

    @contextmanager
    def edit_points(self, kf_id: int) -> Iterator[Frame]:
        """Hold the lock while the caller changes keyframe `kf_id`'s pointmap in place (fusion)."""
        with self.lock:
            slot = self._slots[int(kf_id)]
            if not slot.spilled:
                yield slot.frame
            else:  # an old keyframe: edit its loaded payload, then write it back
                f = self._load(slot)
                yield f
                self._write_payload(slot, f)
                slot.frame = _stub(f)  # the stub keeps the edit's non-tensor fields (N: fused observations)
            slot.points_version = self._bump()

    def add_edges(self, edges: Sequence[tuple[int, int, str, dict]]) -> None:
        """Add graph edges (i, j, kind, data); data holds the correspondences the backend keeps."""
        with self.lock:
            n = len(self._slots)
            for i, j, kind, data in edges:
                if not (0 <= i < n and 0 <= j < n):
                    raise IndexError(f"edge ({i}, {j}) outside the map's {n} keyframes")
                self._edges.append(_Edge(int(i), int(j), str(kind), data))
                if self.spill or self.drop_old_matches:
                    self._hot.append(self._edges[-1])
            self._apply_spill()
            self._bump()

    def set_state(self, state: str) -> None:
        with self.lock:
            if state != self.state:
                self.state = state
                self._bump()

    def set_camera(self, K: np.ndarray | None, image_size: tuple[int, int] | None) -> None:
        """Intrinsics [3, 3] (ORIGINAL image pixels) and (width, height) of the original images."""
        with self.lock:
            self._K = None if K is None else np.asarray(K, dtype=np.float64).reshape(3, 3).copy()
            self._image_size = None if image_size is None else (int(image_size[0]), int(image_size[1]))
            self._bump()

    # ---- spilling (long videos) ----------------------------------------------------------------------
    @property
    def spill_store(self) -> SpillStore | None:
        """The scratch store (None until something was spilled)."""
        return self._store

    def _write_payload(self, s: _Slot, f: Frame) -> None:
        assert self._store is not None
        cpu = {k: (None if getattr(f, k) is None else getattr(f, k).detach().cpu()) for k in f.tensor_fields()}
        payload = {**cpu, "enc": f.enc.data}
        self._store.write(f"kf{f.kf_id}", pack_half(payload) if self.half else payload)
        self._cache.pop(f.kf_id, None)

    def _apply_spill(self) -> None:
        """Retire what lies before the `keep` newest keyframes: spill keyframes (`spill`), drop or spill the
        correspondences of edges among them (`drop_old_matches` / `spill`)."""
        if not (self.spill or self.drop_old_matches):
            return
        old = len(self._slots) - self.keep
        if old <= 0:
            return
        if self.spill and self._store is None:
            self._store = SpillStore(self._spill_dir)
        for s in self._slots[:old] if self.spill else ():
            if s.spilled:
                continue
            self._write_payload(s, s.frame)
            s.frame = _stub(s.frame)  # holders of the full object keep it until they drop it
            s.spilled = s.on_host = True
        hot = []
        for e in self._hot:
            m = e.data.get("m")
            if m is None:
                continue
            if e.i < old and e.j < old:
                if self.drop_old_matches:
                    e.data["m"] = None
                else:
                    assert self._store is not None
                    self._n_spilled_edges += 1
                    key = f"e{self._n_spilled_edges}"
                    self._store.write(key, pack_half(m) if self.half else m)
                    e.data["m"], e.data["m_key"] = None, key
            else:
                hot.append(e)
        self._hot = hot

    def _load(self, s: _Slot) -> Frame:
        """The full keyframe `s` (CPU tensors) from the store, through the LRU; current pose and counts."""
        stub = s.frame
        f = self._cache.get(stub.kf_id)
        if f is None:
            assert self._store is not None
            p = unpack_half(self._store.read(f"kf{stub.kf_id}"))
            enc = Encoding(stub.enc.index, stub.enc.shape, p["enc"])
            f = dataclasses.replace(stub, image=p["image"], enc=enc, X=p["X"], C=p["C"])
            if self._cache_size:
                self._cache[stub.kf_id] = f
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(stub.kf_id)
        f.T_WC, f.N = stub.T_WC, stub.N
        return f

    def matches(self, data: dict) -> Any:
        """The correspondences (`EdgeMatches`) of an edge's ``data`` (from `edges`), read back if spilled;
        None if they were dropped (`drop_old_matches`)."""
        m = data.get("m")
        if m is not None or "m_key" not in data:
            return m
        with self.lock:
            assert self._store is not None
            return unpack_half(self._store.read(data["m_key"]))

    def close(self) -> None:
        """Remove the scratch folder (spilled keyframes are gone: call at the very end)."""
        with self.lock:
            if self._store is not None:
                self._store.close()

    def _apply_offload(self) -> None:
        if not self.offload:
            return
        host = torch.device("cpu")
        pin = self.device.type == "cuda"
        for s in self._slots[: max(0, len(self._slots) - self.resident)]:
            if s.on_host or s.spilled:
                continue
            for name in s.frame.tensor_fields():
                t = getattr(s.frame, name)
                if t is not None:
                    t = t.to(host)
                    setattr(s.frame, name, t.pin_memory() if pin else t)
            s.on_host = True

    # ---- reads --------------------------------------------------------------------------------------
    def num_keyframes(self) -> int:
        with self.lock:
            return len(self._slots)

    def num_frames(self) -> int:
        with self.lock:
            return len(self._records)

    def frontend_poses(self) -> Tensor:  # [K, 8]
        """Keyframe poses as the frontend alone placed them (the chain of creation-time relative poses,
        no backend update): what a frontend-only run gives, for drift comparisons."""
        with self.lock:
            out: list[Tensor] = []
            for s in self._slots:
                T = s.T_anchor.double()
                out.append(T if s.anchor < 0 else sim3.mul(out[s.anchor], T))
            return torch.stack(out) if out else torch.zeros(0, 8, dtype=torch.float64)

    def edges(self, kind: str | None = None) -> list[tuple[int, int, str, dict]]:
        """The graph edges (i, j, kind, data), optionally of one kind."""
        with self.lock:
            return [(e.i, e.j, e.kind, e.data) for e in self._edges if kind is None or e.kind == kind]

    def has_edge(self, i: int, j: int) -> bool:
        with self.lock:
            return any(e.i == i and e.j == j for e in self._edges)

    def intrinsics(self) -> np.ndarray | None:
        with self.lock:
            return None if self._K is None else self._K.copy()

    def wait_for_change(self, version: int, timeout_s: float | None = None) -> int:
        """Block until the map version exceeds `version` (or the timeout passes); returns the version."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._changed:
            while self.version <= version:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._changed.wait(left)
            return self.version

    def snapshot(self, since: int | None = None, with_points: bool = True) -> MapSnapshot:
        """A consistent plain copy. Pointmaps only for keyframes whose points changed after `since`."""
        with self.lock:
            K = len(self._slots)
            T = (
                torch.stack([s.frame.T_WC for s in self._slots]).detach().cpu().double().numpy()
                if K
                else np.zeros((0, 8))
            )
            kfs: dict[int, KeyframeView] = {}
            if with_points:
                for s in self._slots:
                    if since is not None and s.points_version <= since:
                        continue
                    f = self._load(s) if s.spilled else s.frame
                    kfs[f.kf_id] = KeyframeView(
                        f.kf_id,
                        s.frame_row,
                        f.timestamp,
                        f.name,
                        f.hw,
                        f.image.detach().cpu().numpy().copy(),
                        f.X.detach().cpu().float().numpy().copy(),
                        f.average_conf().detach().cpu().float().numpy().copy(),
                        s.points_version,
                    )
            recs = self._records
            n = len(recs)
            rel = (
                torch.stack([r.T_kf for r in recs]).detach().cpu().double()
                if n
                else torch.zeros(0, 8, dtype=torch.float64)
            )
            kf = np.array([r.kf_id for r in recs], dtype=np.int64)
            interp = np.array([r.interpolated for r in recs], dtype=bool)
            ts = np.array([r.timestamp for r in recs], dtype=np.float64)
            T_W = (
                interpolate_skipped(
                    torch.as_tensor(ts), sim3.mul(torch.as_tensor(T)[torch.as_tensor(kf)], rel), torch.as_tensor(interp)
                ).numpy()
                if n
                else np.zeros((0, 8))
            )
            return MapSnapshot(
                version=self.version,
                state=self.state,
                T_WC=T,
                pose_version=np.array([s.pose_version for s in self._slots], dtype=np.int64),
                points_version=np.array([s.points_version for s in self._slots], dtype=np.int64),
                keyframe_frame_index=np.array([s.frame_row for s in self._slots], dtype=np.int64),
                keyframes=kfs,
                edges=np.array([(e.i, e.j) for e in self._edges], dtype=np.int64).reshape(-1, 2),
                edge_kind=[e.kind for e in self._edges],
                frame_timestamps=ts,
                frame_names=[r.name for r in recs],
                frame_kf=kf,
                frame_T_kf=rel.numpy(),
                frame_T_WC=T_W,
                frame_lost=np.array([r.lost for r in recs], dtype=bool),
                frame_is_keyframe=np.array([r.is_keyframe for r in recs], dtype=bool),
                frame_interpolated=interp,
                K=None if self._K is None else self._K.copy(),
                image_size=self._image_size,
                since=since,
            )


class KeyframeAccess:
    """Keyframe reads through the map's lock (`map.keyframes`); no state of its own."""

    def __init__(self, m: SharedMap):
        self._m = m

    def __len__(self) -> int:
        return self._m.num_keyframes()

    def __iter__(self) -> Iterator[Frame]:
        for i in range(len(self)):
            yield self.get(i)

    def __getitem__(self, i: int) -> Frame:
        return self.get(i)

    def get(self, i: int) -> Frame:
        """Keyframe `i` with its tensors on the device (a device copy if it was offloaded or spilled)."""
        with self._m.lock:
            s = self._m._slots[i]
            f = self._m._load(s) if s.spilled else s.frame
            return f.to(self._m.device) if s.on_host and self._m.device.type != "cpu" else f

    def raw(self, i: int) -> Frame:
        """Keyframe `i` as stored (tensors possibly in host memory; no copy), or read back if spilled."""
        with self._m.lock:
            s = self._m._slots[i]
            return self._m._load(s) if s.spilled else s.frame

    def meta(self, i: int) -> Frame:
        """Keyframe `i` for its pose, timestamp, name, `hw`: never reads a spilled payload back (the per-pixel
        tensors of a spilled keyframe are storage-less meta tensors here)."""
        with self._m.lock:
            return self._m._slots[i].frame

    def is_offloaded(self, i: int) -> bool:
        with self._m.lock:
            return self._m._slots[i].on_host

    def is_spilled(self, i: int) -> bool:
        with self._m.lock:
            return self._m._slots[i].spilled

    @property
    def last(self) -> Frame:
        with self._m.lock:
            return self.get(len(self._m._slots) - 1)

    def poses(self, ids: Sequence[int] | None = None) -> Tensor:  # [n, 8]
        """Stacked T_WC of the keyframes `ids` (all if None)."""
        with self._m.lock:
            slots = self._m._slots
            ids = range(len(slots)) if ids is None else ids
            if len(ids) == 0:
                return torch.zeros(0, 8, device=self._m.device)
            return torch.stack([slots[i].frame.T_WC for i in ids])

    def set_poses(self, T_WC: Tensor, ids: Sequence[int] | None = None) -> None:
        self._m.set_poses(T_WC, ids)

    def pointmaps(self, ids: Sequence[int] | None = None) -> tuple[Tensor, Tensor]:
        """Stacked canonical pointmaps and AVERAGE confidences on the device: X [n, HW, 3], C [n, HW]."""
        dev = self._m.device
        with self._m.lock:
            ids = range(len(self._m._slots)) if ids is None else ids
            fr = [self.raw(i) for i in ids]
            X = torch.stack([f.X.to(dev) for f in fr])
            C = torch.stack([f.average_conf().to(dev) for f in fr])
            return X, C

    def nbytes(self) -> dict[str, int]:
        """Bytes of keyframe tensors on the device, on the host and spilled to disk (for reports and tests)."""
        dev = host = 0
        with self._m.lock:
            store = self._m._store
            disk = store.nbytes if store is not None else 0
            for s in self._m._slots:
                if s.spilled:
                    continue
                f = s.frame
                n = sum(
                    getattr(f, k).numel() * getattr(f, k).element_size()
                    for k in f.tensor_fields()
                    if getattr(f, k) is not None
                )
                if s.on_host and self._m.device.type != "cpu":
                    host += n
                else:
                    dev += n
        return {"device": dev, "host": host, "disk": disk}


class FrameAccess:
    """Per-frame record reads through the map's lock (`map.frames`); no state of its own."""

    def __init__(self, m: SharedMap):
        self._m = m

    def __len__(self) -> int:
        return self._m.num_frames()

    def _col(self, get: Callable[[FrameRecord], object], dtype: torch.dtype) -> Tensor:
        with self._m.lock:
            return torch.tensor([get(r) for r in self._m._records], dtype=dtype)

    def timestamps(self) -> Tensor:  # [N] float64
        return self._col(lambda r: r.timestamp, torch.float64)

    def names(self) -> list[str]:
        with self._m.lock:
            return [r.name for r in self._m._records]

    def lost_mask(self) -> Tensor:  # [N] bool
        return self._col(lambda r: r.lost, torch.bool)

    def interpolated_mask(self) -> Tensor:  # [N] bool
        return self._col(lambda r: r.interpolated, torch.bool)

    def keyframe_mask(self) -> Tensor:  # [N] bool
        return self._col(lambda r: r.is_keyframe, torch.bool)

    def kf_ids(self) -> Tensor:  # [N] int64
        return self._col(lambda r: r.kf_id, torch.int64)

    def relative_poses(self) -> Tensor:  # [N, 8]
        with self._m.lock:
            recs = self._m._records
            return torch.stack([r.T_kf for r in recs]) if recs else torch.zeros(0, 8)

    def poses(self, T_kf_W: Tensor | None = None) -> Tensor:  # [N, 8] T_WC of every frame
        """Every frame's world pose from its keyframe's CURRENT pose (on the keyframe device), or from the
        keyframe poses `T_kf_W` [K, 8] given; frames skipped by the motion filter are interpolated."""
        with self._m.lock:
            if not self._m._records:
                return torch.zeros(0, 8)
            if T_kf_W is None:
                T_kf_W = self._m.keyframes.poses()  # [K, 8]
            ids = self.kf_ids().to(T_kf_W.device)
            T = sim3.mul(T_kf_W[ids], self.relative_poses().to(T_kf_W))
            return interpolate_skipped(self.timestamps(), T, self.interpolated_mask())
