"""Calibration files -> `Intrinsics`.

Accepted formats (chosen by content, not by extension):

* Text (`calibration.txt`): numbers separated by spaces, tabs or commas; `#` starts a comment.
  One line `fx fy cx cy [k1 k2 p1 p2 [k3 [k4 k5 k6]]]` (4, 8, 9 or 12 numbers), optionally preceded by a
  line `width height` (exactly 2 numbers). Without that line the size is filled in from the frames.
* YAML with `calibration: [fx, fy, cx, cy, k1, ...]` and optional `width`, `height` (MASt3R-SLAM's
  `config/intrinsics.yaml` layout), or a EuRoC `sensor.yaml` (`intrinsics: [fu, fv, cu, cv]`,
  `distortion_coefficients: [...]`, `resolution: [w, h]`).

Any problem -> `UserError("<file>: <what is wrong>")`.
"""

from __future__ import annotations

import os
from pathlib import Path

from mslam_ns.errors import UserError
from mslam_ns.io.frames import Intrinsics

__all__ = ["load_calibration", "parse_calibration_values", "TUM_DEFAULTS", "tum_default_intrinsics"]

# TUM RGB-D published ROS-default calibrations (640x480): fx fy cx cy d0..d4.
TUM_DEFAULTS: dict[str, tuple[float, ...]] = {
    "freiburg1": (517.3, 516.5, 318.6, 255.3, 0.2624, -0.9531, -0.0054, 0.0026, 1.1633),
    "freiburg2": (520.9, 521.0, 325.1, 249.7, 0.2312, -0.7849, -0.0033, -0.0001, 0.9172),
    "freiburg3": (535.4, 539.2, 320.1, 247.6),
}

_N_DIST = (0, 4, 5, 8)


def tum_default_intrinsics(folder_name: str) -> Intrinsics | None:
    """The TUM fr1/fr2/fr3 calibration chosen from a folder name (`..._freiburg2_...` or `fr2`), else None."""
    low = folder_name.lower()
    for key, vals in TUM_DEFAULTS.items():
        short = "fr" + key[-1]
        if key in low or any(tok == short or tok.startswith(short) for tok in low.replace("-", "_").split("_")):
            return Intrinsics(*vals[:4], width=640, height=480, dist=tuple(vals[4:]))
    return None


def parse_calibration_values(values: list[float], where: str, width: int = 0, height: int = 0) -> Intrinsics:
    """`[fx, fy, cx, cy, *dist]` -> Intrinsics, checking counts and signs; `where` names the source in errors."""
    if len(values) - 4 not in _N_DIST:
        raise UserError(
            f"{where}: expected fx fy cx cy [k1 k2 p1 p2 [k3 [k4 k5 k6]]] (4, 8, 9 or 12 numbers), got {len(values)}"
        )
    fx, fy, cx, cy = values[:4]
    if not (fx > 0 and fy > 0):
        raise UserError(f"{where}: focal lengths must be positive, got fx={fx:g} fy={fy:g}")
    if width < 0 or height < 0 or int(width) != width or int(height) != height:
        raise UserError(f"{where}: width/height must be non-negative integers, got {width} {height}")
    return Intrinsics(
        float(fx), float(fy), float(cx), float(cy), int(width), int(height), tuple(float(v) for v in values[4:])
    )


def load_calibration(path: str | os.PathLike) -> Intrinsics:
    """Read a calibration text or YAML file (formats in the module docstring)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: calibration file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read calibration ({getattr(e, 'strerror', None) or e})") from None
    if any(":" in line.split("#", 1)[0] for line in text.splitlines()):
        return _from_yaml(path, text)
    return _from_text(path, text)


def _from_text(path: Path, text: str) -> Intrinsics:
    rows: list[list[float]] = []
    for n, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].replace(",", " ").strip()
        if not line:
            continue
        try:
            rows.append([float(v) for v in line.split()])
        except ValueError:
            raise UserError(f"{path}: line {n}: not a number in {line!r}") from None
    if not rows:
        raise UserError(f"{path}: empty calibration file (expected 'fx fy cx cy [k1 k2 p1 p2 [k3]]')")
    width = height = 0
    if len(rows) == 2 and len(rows[0]) == 2:
        width, height = rows[0]
        rows = rows[1:]
    if len(rows) != 1:
        raise UserError(f"{path}: expected one line 'fx fy cx cy [...]', optionally after a 'width height' line")
    return parse_calibration_values(rows[0], str(path), width, height)


def _from_yaml(path: Path, text: str) -> Intrinsics:
    try:
        import yaml
    except ImportError:  # pragma: no cover - PyYAML comes with the project's dependencies
        raise UserError(f"{path}: reading YAML calibration needs PyYAML (pip install pyyaml)") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        raise UserError(f"{path}: invalid YAML" + (f" near line {line + 1}" if line is not None else "")) from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a YAML mapping with 'calibration' or 'intrinsics'")
    try:
        if "calibration" in data:
            vals = [float(v) for v in data["calibration"]]
            width, height = data.get("width", 0), data.get("height", 0)
        elif "intrinsics" in data:
            dist = data.get("distortion_coefficients") or []
            vals = [float(v) for v in data["intrinsics"]] + [float(v) for v in dist]
            width, height = (data.get("resolution") or [0, 0])[:2]
            model = str(data.get("distortion_model", "radial-tangential"))
            if model not in ("radial-tangential", "radtan", "plumb_bob", "none"):
                raise UserError(f"{path}: distortion model {model!r} not supported (radial-tangential only)")
        else:
            raise UserError(f"{path}: no 'calibration' or 'intrinsics' entry")
        width, height = int(width or 0), int(height or 0)
    except (TypeError, ValueError):
        raise UserError(f"{path}: calibration values must be lists of numbers") from None
    return parse_calibration_values(vals, str(path), width, height)
