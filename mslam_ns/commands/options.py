"""Typed options of the commands that run the SLAM, and `--config FILE` loading.

The SLAM's own settings are NOT re-listed here: `SlamOptions` is `mslam_ns.config.SlamConfig` (every field,
nested groups included, so new fields appear on the command line by themselves) with one change: `mode`
may also be 'auto'. Its defaults are SlamConfig's; nothing here repeats them.

A config file is YAML with the same names as the flags (underscores; nested groups as mappings):

    img_size: 256
    mode: rays
    matching: {refine: false}

`load_options(cls, file)` builds the options from it (unknown keys and wrong types are refused with one
line naming the file and the key); command-line flags then override the file. `mslam-ns run` writes the
resolved options to OUT/config.yaml, which loads back the same way.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import tyro

from mslam_ns.config import SlamConfig
from mslam_ns.errors import UserError

__all__ = ["SlamOptions", "RunOptions", "load_options", "options_to_dict", "to_slam_config", "check_device"]


@dataclass
class SlamOptions(SlamConfig):
    """The SLAM configuration (`mslam_ns.config.SlamConfig`), settable field by field."""

    mode: Literal["auto", "rays", "calib"] = "auto"
    """'auto' (calib when --calib is given, else rays), 'rays' (uncalibrated) or 'calib' (known intrinsics)."""


def to_slam_config(o: SlamConfig, mode: str) -> SlamConfig:
    """A plain `SlamConfig` with the options' values and the resolved mode ('rays' | 'calib')."""
    kw = {f.name: getattr(o, f.name) for f in dataclasses.fields(SlamConfig)}
    kw["mode"] = mode
    check_device(kw["device"])
    if int(kw["tracking"].pixel_stride) < 1:
        raise UserError(f"--tracking.pixel-stride {kw['tracking'].pixel_stride}: must be >= 1 (1 = every pixel)")
    return SlamConfig(**kw)


def check_device(device: str) -> None:
    """UserError (one line) unless torch can use ``device`` here ('cpu', 'cuda', 'cuda:1', ...)."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise UserError(f"--device {device!r}: not a torch device (e.g. cpu, cuda, cuda:1)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: torch sees no CUDA device on this machine (use --device cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")


@dataclass
class RunOptions:
    """Run the SLAM on a video, image folder or dataset; write poses of every frame, keyframes and points.

    (Also the options of the SLAM behind `ns-process-data mslam` and the `mslam-data` dataparser.)
    """

    dataset: tyro.conf.Positional[Path]
    """Video file, image folder, or TUM / EuRoC / 7-Scenes / synthetic sequence folder."""
    out: Path = Path("mslam_out")
    """Output run folder (trajectory.txt, keyframes.txt, frames.txt, points.ply, summary.json, config.yaml)."""
    config: Path | None = None
    """YAML file with defaults for these options (e.g. configs/uncalibrated.yaml, or an earlier run's
    OUT/config.yaml); flags given on the command line override it."""
    overwrite: bool = False
    """Replace an existing non-empty OUT (otherwise it is refused)."""
    prior: Literal["oracle", "mast3r"] = "oracle"
    """'oracle' (ground truth + simulated network noise; needs a sequence with GT) or 'mast3r'."""
    oracle_noise: Literal["none", "mast3r", "hard"] = "mast3r"
    """Noise model of the oracle prior."""
    calib: Path | None = None
    """Intrinsics file; with it the default mode is calibrated."""
    checkpoint: Path | None = None
    """MASt3R checkpoint (for --prior mast3r; default: the cached download)."""
    retrieval_checkpoint: Path | None = None
    """MASt3R retrieval head for loop closure / relocalisation (default: the cached download, unless
    --checkpoint is given: then no retrieval unless this is given too)."""
    codebook: Path | None = None
    """ASMK codebook of the retrieval features (default: the cached download with the default retrieval
    head; otherwise a codebook is trained from the sequence's own features)."""
    stride: int = 1
    """Use every n-th frame."""
    max_frames: int | None = None
    """Stop after this many frames."""
    seed: int = 0
    """Seed of the oracle noise."""
    quiet: bool = False
    """No progress bar."""
    view: bool = False
    """Serve a live browser viewer of the map while the SLAM runs (prints its URL)."""
    host: str = "127.0.0.1"
    """--view: address to listen on (127.0.0.1: this machine only; 0.0.0.0: every interface)."""
    port: int = 8080
    """--view: port (the next free one when it is taken)."""
    report: bool = True
    """Write OUT/report.png (trajectory, keyframes, matches per frame, lost frames, timings)."""
    slam: Annotated[SlamOptions, tyro.conf.arg(name="")] = field(default_factory=SlamOptions)

    # The SLAM's own settings live in `slam` (SlamConfig, with its defaults); this reads one under the name the
    # run code uses (`--conf-thresh` and the config-file key are the SlamConfig field).
    @property
    def conf_thresh(self) -> float:
        """`slam.conf_thresh`."""
        return self.slam.conf_thresh


# ------------------------------------------------------------------------------------------- config files
def _check_value(path: Path, key: str, tp: Any, v: Any, base: Any = None) -> Any:
    """`v` converted to the annotated type `tp` (UserError naming the file and key if it does not fit).
    For a nested dataclass, fields missing from `v` keep their values in `base` (the parent's default)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Annotated:
        return _check_value(path, key, args[0], v, base)
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        if v is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check_value(path, key, a, v)
            except UserError as e:
                errors.append(e)
        raise errors[0] if errors else UserError(f"{path}: {key}: bad value {v!r}")
    if origin is Literal:
        if v not in args:
            raise UserError(f"{path}: {key}: {v!r} is not one of {', '.join(map(repr, args))}")
        return v
    if tp is bool:
        if not isinstance(v, bool):
            raise UserError(f"{path}: {key}: expected true or false, got {v!r}")
        return v
    if tp is int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise UserError(f"{path}: {key}: expected an integer, got {v!r}")
        return v
    if tp is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise UserError(f"{path}: {key}: expected a number, got {v!r}")
        return float(v)
    if tp is str:
        if not isinstance(v, str):
            raise UserError(f"{path}: {key}: expected a string, got {v!r}")
        return v
    if tp is Path:
        if not isinstance(v, str):
            raise UserError(f"{path}: {key}: expected a path, got {v!r}")
        return Path(v)
    if dataclasses.is_dataclass(tp):
        if not isinstance(v, dict):
            raise UserError(f"{path}: {key}: expected a mapping of {tp.__name__} fields")
        return _build(path, tp, v, key + ".", base)
    return v


def _build(path: Path, cls: type, data: dict, prefix: str = "", base: Any = None) -> Any:
    hints = typing.get_type_hints(cls, include_extras=True)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in data:
        if str(k).replace("-", "_") not in names:
            raise UserError(f"{path}: unknown option {prefix}{k!r}")
    kw = {}
    for f in dataclasses.fields(cls):
        key = f.name if f.name in data else f.name.replace("_", "-")
        if key in data:
            kw[f.name] = _check_value(path, prefix + f.name, hints[f.name], data[key], _default_of(f, base))
        elif base is not None:
            kw[f.name] = getattr(base, f.name)
    try:
        return cls(**kw)
    except TypeError as e:
        raise UserError(f"{path}: {e}") from None


def _default_of(f: dataclasses.Field, base: Any) -> Any:
    """The value a field has when nothing sets it: from `base`, else the field's own default."""
    if base is not None:
        return getattr(base, f.name)
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def load_options(cls: type, file: Path | None, **overrides: Any) -> Any:
    """An instance of the options dataclass `cls` with the values of the YAML `file` (None: defaults).

    A field that is neither in the file nor in `overrides` nor has a default is `tyro.MISSING` (required
    on the command line). The SLAM settings may sit at the top level or under `slam:`.
    """
    data: dict = {}
    if file is not None:
        import yaml

        file = Path(file)
        if not file.is_file():
            raise UserError(f"{file}: config file not found")
        try:
            loaded = yaml.safe_load(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"{file}: cannot read config file ({e})") from None
        except yaml.YAMLError as e:
            raise UserError(f"{file}: not valid YAML ({str(e).splitlines()[0]})") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise UserError(f"{file}: a config file must be a mapping of option names to values")
        data = loaded
    data = {**data, **overrides}
    hints = typing.get_type_hints(cls, include_extras=True)
    slam_fields = [f for f in dataclasses.fields(cls) if dataclasses.is_dataclass(_strip(hints[f.name]))]
    top = {f.name for f in dataclasses.fields(cls)}
    for f in slam_fields:  # SLAM settings at the top level (as on the command line) go to the group
        sub_cls = _strip(hints[f.name])
        sub_names = {g.name for g in dataclasses.fields(sub_cls)}
        group = dict(data.pop(f.name, None) or {})
        for k in list(data):
            kk = str(k).replace("-", "_")
            if kk not in top and kk in sub_names:
                group[kk] = data.pop(k)
        data[f.name] = group
    kw = {}
    names = {f.name for f in dataclasses.fields(cls)}
    for k in data:
        if str(k).replace("-", "_") not in names:
            raise UserError(f"{file}: unknown option {k!r}")
    for f in dataclasses.fields(cls):
        if f.name in data:
            kw[f.name] = _check_value(
                file or Path("<options>"), f.name, hints[f.name], data[f.name], _default_of(f, None)
            )
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            kw[f.name] = tyro.MISSING
    return cls(**kw)


def _strip(tp: Any) -> Any:
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def options_to_dict(o: Any) -> dict[str, Any]:
    """The options as a YAML-ready dict (paths as strings), loadable by `load_options`."""
    from mslam_ns.io.writers import _jsonable

    d = _jsonable(dataclasses.asdict(o))
    d.pop("config", None)
    d.pop("overwrite", None)
    for k in ("quiet", "view", "host", "port", "report"):
        d.pop(k, None)
    return d
