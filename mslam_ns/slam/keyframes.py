"""`KeyframeStore`: the keyframes, growing on demand, with optional host offload of old keyframe tensors.

The published reference preallocates a fixed GPU ring of 512 keyframes (about 4 GiB) and crashes when it
overflows. Here keyframes live in a plain Python list, so the store grows as long as memory lasts. When
`offload` is on, the tensors of all but the `resident` most recent keyframes are moved to host memory
(pinned when the device is CUDA); `get(i)` and the stacked accessors fetch them back transparently.
Poses are small and always stay on the device.

Only the newest keyframe is ever modified by tracking (fusion); the backend only moves poses
(`set_poses`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from mslam_ns.slam.frame import Frame


class KeyframeStore:
    """Growing list of keyframe `Frame`s with stacked accessors for the backend."""

    def __init__(self, device: torch.device | str = "cpu", offload: bool = False, resident: int = 8):
        """
        Args:
            device: the SLAM device; `get` returns tensors there.
            offload: keep only the `resident` newest keyframes' tensors on `device`, the rest on the host.
            resident: number of newest keyframes kept on the device when offloading (>= 1).
        """
        self.device = torch.device(device)
        self.offload = offload
        self.resident = max(1, int(resident))
        self._frames: list[Frame] = []
        self._on_host: list[bool] = []

    # ---- growth -------------------------------------------------------------------------------------
    def add(self, frame: Frame) -> int:
        """Append a keyframe (must carry X, C). Sets and returns its keyframe id."""
        if frame.X is None or frame.C is None:
            raise ValueError("a keyframe needs its canonical pointmap X and confidence C")
        frame.kf_id = len(self._frames)
        self._frames.append(frame)
        self._on_host.append(False)
        self._apply_offload()
        return frame.kf_id

    def _apply_offload(self) -> None:
        if not self.offload:
            return
        host = torch.device("cpu")
        pin = self.device.type == "cuda"
        for i in range(len(self._frames) - self.resident):
            if self._on_host[i]:
                continue
            f = self._frames[i]
            for name in f.tensor_fields():
                t = getattr(f, name)
                if t is not None:
                    t = t.to(host)
                    setattr(f, name, t.pin_memory() if pin else t)
            self._on_host[i] = True

    # ---- access -------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._frames)

    def __iter__(self) -> Iterator[Frame]:
        for i in range(len(self._frames)):
            yield self.get(i)

    def __getitem__(self, i: int) -> Frame:
        return self.get(i)

    def get(self, i: int) -> Frame:
        """Keyframe `i` with its tensors on the device (a device copy if it was offloaded)."""
        f = self._frames[i]
        if self._on_host[i] and self.device.type != "cpu":
            return f.to(self.device)
        return f

    def raw(self, i: int) -> Frame:
        """Keyframe `i` as stored (tensors possibly in host memory); no copy."""
        return self._frames[i]

    def is_offloaded(self, i: int) -> bool:
        return self._on_host[i]

    @property
    def last(self) -> Frame:
        return self.get(len(self._frames) - 1)

    # ---- stacked accessors (backend) ----------------------------------------------------------------
    def poses(self, ids: Sequence[int] | None = None) -> Tensor:  # [n, 8]
        """Stacked T_WC of the keyframes `ids` (all if None)."""
        ids = range(len(self._frames)) if ids is None else ids
        if len(ids) == 0:
            return torch.zeros(0, 8, device=self.device)
        return torch.stack([self._frames[i].T_WC for i in ids])

    def set_poses(self, T_WC: Tensor, ids: Sequence[int] | None = None) -> None:
        """Overwrite keyframe poses (backend update). T_WC: [n, 8]."""
        ids = list(range(len(self._frames))) if ids is None else list(ids)
        if T_WC.shape != (len(ids), 8):
            raise ValueError(f"expected poses of shape {(len(ids), 8)}, got {tuple(T_WC.shape)}")
        for k, i in enumerate(ids):
            self._frames[i].T_WC = T_WC[k].to(self._frames[i].T_WC)

    def pointmaps(self, ids: Sequence[int] | None = None) -> tuple[Tensor, Tensor]:
        """Stacked canonical pointmaps and AVERAGE confidences on the device: X [n, HW, 3], C [n, HW]."""
        ids = range(len(self._frames)) if ids is None else ids
        X = torch.stack([self._frames[i].X.to(self.device) for i in ids])
        C = torch.stack([(self._frames[i].C / max(self._frames[i].N, 1)).to(self.device) for i in ids])
        return X, C

    def descriptors(self, ids: Sequence[int]) -> tuple[Tensor, Tensor]:
        """Stacked descriptors D [n, HW, F] and descriptor confidences Q [n, HW] on the device."""
        D = torch.stack([self._frames[i].D.to(self.device) for i in ids])
        Q = torch.stack([self._frames[i].Q.to(self.device) for i in ids])
        return D, Q

    def nbytes(self) -> dict[str, int]:
        """Bytes of keyframe tensors on the device and on the host (for reports and tests)."""
        dev = host = 0
        for f, on_host in zip(self._frames, self._on_host):
            n = sum(getattr(f, k).numel() * getattr(f, k).element_size()
                    for k in f.tensor_fields() if getattr(f, k) is not None)
            if on_host and self.device.type != "cpu":
                host += n
            else:
                dev += n
        return {"device": dev, "host": host}
