"""Output writers: binary PLY point clouds and JSON summaries, both written atomically.

(TUM trajectories: `mslam_ns.io.tum.write_tum_trajectory`.)
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from mslam_ns.io.atomic import atomic_write

__all__ = ["write_ply", "read_ply", "write_json"]

_PLY_TYPES = {
    "char": "i1",
    "int8": "i1",
    "uchar": "u1",
    "uint8": "u1",
    "short": "i2",
    "int16": "i2",
    "ushort": "u2",
    "uint16": "u2",
    "int": "i4",
    "int32": "i4",
    "uint": "u4",
    "uint32": "u4",
    "float": "f4",
    "float32": "f4",
    "double": "f8",
    "float64": "f8",
}


def write_ply(
    path: str | os.PathLike,
    points: np.ndarray,  # [N, 3] float
    colors: np.ndarray | None = None,  # [N, 3] uint8 (float in [0, 1] is converted)
) -> Path:
    """Write a binary little-endian PLY (`x y z` float32, optional `red green blue` uchar) atomically."""
    pts = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    cols = None
    if colors is not None:
        cols = np.asarray(colors)
        if cols.shape != pts.shape:
            raise ValueError(f"write_ply: colors {cols.shape} must match points {pts.shape}")
        if cols.dtype != np.uint8:
            if np.issubdtype(cols.dtype, np.floating) and cols.size and float(np.nanmax(cols)) <= 1.0:
                cols = cols * 255.0
            cols = np.clip(np.rint(np.nan_to_num(cols)), 0, 255).astype(np.uint8)
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    data = np.empty(len(pts), dtype=np.dtype(fields))
    data["x"], data["y"], data["z"] = pts[:, 0], pts[:, 1], pts[:, 2]
    if cols is not None:
        data["red"], data["green"], data["blue"] = cols[:, 0], cols[:, 1], cols[:, 2]
    header = [
        "ply",
        "format binary_little_endian 1.0",
        "comment written by mslam_ns",
        f"element vertex {len(pts)}",
        "property float x",
        "property float y",
        "property float z",
    ]
    if cols is not None:
        header += ["property uchar red", "property uchar green", "property uchar blue"]
    header.append("end_header")
    path = Path(path)
    with atomic_write(path, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(data.tobytes())
    return path


def read_ply(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """Read the vertices of a PLY (binary little/big endian or ASCII; vertex element with x y z [red green blue]).

    Returns:
        points [N, 3] float32 and colors [N, 3] uint8 (None without colour properties).
    """
    raw = Path(path).read_bytes()
    end = raw.find(b"end_header")
    if not raw.startswith(b"ply") or end < 0:
        raise ValueError(f"{path}: not a PLY file")
    body_start = raw.index(b"\n", end) + 1
    fmt, elements = None, []  # elements: [name, count, [(prop, dtype)]]
    for line in raw[:end].decode("ascii", errors="replace").splitlines():
        tok = line.split()
        if not tok:
            continue
        if tok[0] == "format":
            fmt = tok[1]
        elif tok[0] == "element":
            elements.append([tok[1], int(tok[2]), []])
        elif tok[0] == "property":
            if tok[1] == "list":
                raise ValueError(f"{path}: list properties are not supported by read_ply")
            elements[-1][2].append((tok[2], _PLY_TYPES[tok[1]]))
    if not elements or elements[0][0] != "vertex":
        raise ValueError(f"{path}: first element must be 'vertex'")
    _, n, props = elements[0]
    if fmt == "ascii":
        rows = raw[body_start:].decode("ascii").split("\n")[:n]
        arr = np.array([[float(v) for v in r.split()[: len(props)]] for r in rows]).reshape(n, len(props))
        cols = {name: arr[:, i] for i, (name, _) in enumerate(props)}
    else:
        order = "<" if fmt == "binary_little_endian" else ">"
        dt = np.dtype([(name, order + t) for name, t in props])
        rec = np.frombuffer(raw, dtype=dt, count=n, offset=body_start)
        cols = {name: rec[name] for name, _ in props}
    pts = np.stack([cols["x"], cols["y"], cols["z"]], axis=1).astype(np.float32)
    rgb = None
    if all(c in cols for c in ("red", "green", "blue")):
        rgb = np.stack([cols["red"], cols["green"], cols["blue"]], axis=1).astype(np.uint8)
    return pts, rgb


def _jsonable(obj: Any) -> Any:
    """numpy / Path / dataclass-friendly conversion; non-finite floats become None (valid JSON)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "__dataclass_fields__"):
        import dataclasses

        return _jsonable(dataclasses.asdict(obj))
    return obj


def write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    """Write `obj` as JSON atomically (numpy arrays/scalars, Paths and dataclasses converted; NaN/inf -> null)."""
    text = json.dumps(_jsonable(obj), indent=indent, allow_nan=False) + "\n"  # serialise before opening
    path = Path(path)
    with atomic_write(path, "w") as f:
        f.write(text)
    return path
