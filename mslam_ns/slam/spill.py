"""`SpillStore`: a scratch folder where the `SharedMap` keeps what it moved out of memory.

Long videos make thousands of keyframes; each holds its image, fused pointmap and confidence, the prior's
encoding (MASt3R: the encoder tokens) and ~1.8 MB per directed graph edge of correspondences (512x384). Only
the newest keyframes and the edges among them are needed at every step (tracking, the backend's optimisation
window); the rest is read back only for loop closure, relocalisation, snapshots and export. The map writes
those payloads here (one file per keyframe or edge, `torch.save`), keeps a stub in memory and reads a payload
back when somebody asks for it. The files hold tensors and plain containers only (arrays as tensors, our
dataclasses as tagged dicts, see `_plain`), and are read back with `torch.load(weights_only=True)`: the folder
may sit where the user said (`memory.spill_dir`), so nothing read from it is ever unpickled as code.

The folder is the map's own: made with `tempfile.mkdtemp` (under ``root`` when given, else the system's
temporary folder), removed by `close()`, at interpreter exit or when the store is garbage-collected. Files are
written to a temporary name and renamed, so a payload is either whole or absent.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import shutil
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["SpillStore", "pack_half", "unpack_half", "release_free_memory"]


@dataclass
class _Half:
    """A float32 tensor or array stored in float16 (`pack_half`)."""

    value: Any


def _map_leaves(obj: Any, leaf: Any) -> Any:
    """``obj`` rebuilt with ``leaf`` applied to everything that is not a tuple, list, dict or dataclass."""
    if isinstance(obj, tuple):
        return tuple(_map_leaves(v, leaf) for v in obj)
    if isinstance(obj, list):
        return [_map_leaves(v, leaf) for v in obj]
    if isinstance(obj, dict):
        return {k: _map_leaves(v, leaf) for k, v in obj.items()}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, (type, _Half)):
        fields = {f.name: _map_leaves(getattr(obj, f.name), leaf) for f in dataclasses.fields(obj) if f.init}
        return dataclasses.replace(obj, **fields)
    return leaf(obj)


def _to_half(v: Any) -> Any:
    if isinstance(v, torch.Tensor) and v.dtype == torch.float32:
        return _Half(v.half())
    if isinstance(v, np.ndarray) and v.dtype == np.float32:
        return _Half(v.astype(np.float16))
    return v


def _from_half(v: Any) -> Any:
    if not isinstance(v, _Half):
        return v
    return v.value.float() if isinstance(v.value, torch.Tensor) else v.value.astype(np.float32)


def pack_half(obj: Any) -> Any:
    """``obj`` with every float32 tensor / array inside it (tuples, lists, dicts, dataclasses) in float16.

    For payloads whose precision needs are far coarser than float32: fused pointmaps and confidences of old
    keyframes (float16 keeps ~5e-4 relative, the prior's pointmaps are good to ~1e-2), encoder tokens.
    """
    return _map_leaves(obj, _to_half)


def unpack_half(obj: Any) -> Any:
    """Inverse of `pack_half` (float16 back to float32)."""
    return _map_leaves(obj, _from_half)


_LIBC: Any = None


def release_free_memory() -> bool:
    """Give memory the C allocator holds but no longer uses back to the system (glibc ``malloc_trim``).

    Tensors of a few MB are allocated from the heap and freed in an order the allocator cannot coalesce,
    so without this a long run's resident memory creeps up by tens of MB per keyframe with no live data
    behind it (measured: 640 MiB more after 18 keyframes at 512x384, against 94 MiB of live tensors).
    Returns False where there is no glibc (then it does nothing).
    """
    global _LIBC
    if _LIBC is None:
        try:
            import ctypes

            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC is False:
        return False
    _LIBC.malloc_trim(0)
    return True


_TAG = "__mslam_spill__"  # key of the tagged dicts `_plain` writes (a payload's own dicts never use it)


def _plain(obj: Any) -> Any:
    """``obj`` as tensors, numbers, strings and tuples / lists / dicts of them (what ``weights_only`` loads):
    numpy arrays become tensors, `_Half` and dataclasses tagged dicts. Inverse: `_rebuild`."""
    if isinstance(obj, torch.Tensor) or obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise TypeError("SpillStore: object arrays cannot be spilled")
        return {_TAG: "ndarray", "value": torch.from_numpy(np.ascontiguousarray(obj).copy())}
    if isinstance(obj, _Half):
        return {_TAG: "half", "value": _plain(obj.value)}
    if isinstance(obj, tuple):
        return tuple(_plain(v) for v in obj)
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        cls = type(obj)
        fields = {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
        return {_TAG: "dataclass", "type": f"{cls.__module__}:{cls.__qualname__}", "fields": fields}
    raise TypeError(f"SpillStore: cannot spill a {type(obj).__name__}")


def _dataclass_type(name: str) -> type:
    """The dataclass ``module:qualname``, which must be one of this package's (nothing else is built)."""
    module, _, qualname = name.partition(":")
    if not module.startswith("mslam_ns."):
        raise ValueError(f"SpillStore: refusing to rebuild {name!r} (not an mslam_ns dataclass)")
    cls: Any = importlib.import_module(module)
    for part in qualname.split("."):
        cls = getattr(cls, part)
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise ValueError(f"SpillStore: {name!r} is not a dataclass")
    return cls


def _rebuild(obj: Any) -> Any:
    """Inverse of `_plain`."""
    if isinstance(obj, tuple):
        return tuple(_rebuild(v) for v in obj)
    if isinstance(obj, list):
        return [_rebuild(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    kind = obj.get(_TAG)
    if kind == "ndarray":
        return obj["value"].numpy()
    if kind == "half":
        return _Half(_rebuild(obj["value"]))
    if kind == "dataclass":
        return _dataclass_type(obj["type"])(**{k: _rebuild(v) for k, v in obj["fields"].items()})
    return {k: _rebuild(v) for k, v in obj.items()}


def _remove(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


class SpillStore:
    """Key -> payload files in a private scratch folder (see the module docstring)."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        if root is not None:
            Path(root).mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix="mslam-spill-", dir=None if root is None else str(root)))
        self._sizes: dict[str, int] = {}
        self.writes = 0
        self.reads = 0
        self._finalizer = weakref.finalize(self, _remove, str(self.path))

    def _file(self, key: str) -> Path:
        return self.path / f"{key}.pt"

    def write(self, key: str, payload: Any) -> None:
        """Store ``payload`` (tensors, arrays, numbers, strings, dataclasses and containers of them) under
        ``key``."""
        if not self._finalizer.alive:
            raise RuntimeError("SpillStore: write after close()")
        f = self._file(key)
        tmp = f.with_suffix(".tmp")
        torch.save(_plain(payload), tmp)
        os.replace(tmp, f)
        self._sizes[key] = f.stat().st_size
        self.writes += 1

    def read(self, key: str) -> Any:
        """The payload stored under ``key`` (a fresh copy in memory; CPU tensors)."""
        if key not in self._sizes:
            raise KeyError(f"SpillStore: nothing stored under {key!r}")
        self.reads += 1
        # tensors and plain containers only (`_plain`): never unpickle code, wherever the folder is
        return _rebuild(torch.load(self._file(key), map_location="cpu", weights_only=True))

    def delete(self, key: str) -> None:
        if self._sizes.pop(key, None) is not None:
            self._file(key).unlink(missing_ok=True)

    def __contains__(self, key: str) -> bool:
        return key in self._sizes

    def __len__(self) -> int:
        return len(self._sizes)

    @property
    def nbytes(self) -> int:
        """Bytes on disk."""
        return sum(self._sizes.values())

    def close(self) -> None:
        """Remove the folder and everything in it."""
        self._sizes.clear()
        self._finalizer()
