"""`RunDir`: the ONLY code that knows the names and formats of a run folder's files.

`mslam-ns run`, `eval`, `export`, `ns-process-data mslam`, the `mslam-data` dataparser and the viewer all
read and write a run through this class. Layout:

    trajectory.txt    TUM rows (T_WC, OpenCV axes) of EVERY input frame, original timestamps
    keyframes.txt     TUM rows of the keyframes only
    frames.txt        per input frame, trajectory.txt's order: timestamp keyframe_id is_keyframe lost
                      interpolated name (interpolated = skipped by the motion filter, posed between its
                      tracked neighbours; files without that column are read too)
                      (the name last, so that names with spaces stay one field)
    points.ply        fused confident points in the world frame: x y z (float), red green blue (uchar),
                      confidence (float, average C / N), keyframe (int), u v (float: the source pixel in
                      ORIGINAL image coordinates of that keyframe's image)
    edges.txt         keyframe graph: `i j kind` (kind: seq | loop | reloc)
    matches.txt       per input frame, trajectory.txt's order: `timestamp n_matches` (valid matches of its
                      tracking, -1 where nothing was matched: the first frame, motion-filter skips); optional
                      (runs written before it have none)
    thumbnails/       kf_000012.jpg: each keyframe's network-size image
    summary.json      counts, timings, intrinsics {fx fy cx cy width height} in ORIGINAL image pixels, ...
    config.yaml       the resolved command configuration (reload with `--config OUT/config.yaml`)
    eval.json         written by `mslam-ns eval` / `demo`

Writers expect to be called inside `atomic_output_dir` (the caller owns atomicity of the whole folder);
each file is still written with `atomic_write`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mslam_ns.io.atomic import atomic_write

__all__ = ["RunDir", "RunRecord", "PointCloud", "FrameTable", "DatasetDir"]

_PLY_FIELDS = [
    ("x", "<f4"),
    ("y", "<f4"),
    ("z", "<f4"),
    ("red", "u1"),
    ("green", "u1"),
    ("blue", "u1"),
    ("confidence", "<f4"),
    ("keyframe", "<i4"),
    ("u", "<f4"),
    ("v", "<f4"),
]
_PLY_NAMES = {"<f4": "float", "u1": "uchar", "<i4": "int"}
_PLY_READ = {
    "float": "f4",
    "float32": "f4",
    "double": "f8",
    "uchar": "u1",
    "uint8": "u1",
    "char": "i1",
    "int": "i4",
    "int32": "i4",
    "uint": "u4",
    "short": "i2",
    "ushort": "u2",
}


@dataclass
class PointCloud:
    """Points of a run in the world frame."""

    xyz: np.ndarray  # [P, 3] float32
    rgb: np.ndarray  # [P, 3] uint8
    confidence: np.ndarray  # [P] float32 average confidence C / N
    keyframe: np.ndarray  # [P] int32 keyframe id each point comes from
    uv: np.ndarray  # [P, 2] float32 source pixel in ORIGINAL image coordinates of that keyframe

    def __len__(self) -> int:
        return int(self.xyz.shape[0])

    def select(self, m: np.ndarray) -> PointCloud:
        """The points where the boolean mask / index array `m` [P] selects."""
        return PointCloud(self.xyz[m], self.rgb[m], self.confidence[m], self.keyframe[m], self.uv[m])


FRAMES_COLUMNS = "timestamp keyframe_id is_keyframe lost interpolated name"
FRAMES_V1 = "timestamp keyframe_id is_keyframe lost name"  # before the motion filter


@dataclass
class FrameTable:
    """frames.txt: one row per input frame."""

    timestamps: np.ndarray  # [N] float64
    kf_ids: np.ndarray  # [N] int64
    is_keyframe: np.ndarray  # [N] bool
    lost: np.ndarray  # [N] bool
    names: list[str]
    interpolated: np.ndarray | None = None
    """[N] bool: skipped by the motion filter, posed by interpolation between tracked neighbours (None: none)."""

    def interpolated_mask(self) -> np.ndarray:
        n = len(self.names)
        return np.zeros(n, dtype=bool) if self.interpolated is None else np.asarray(self.interpolated, dtype=bool)


@dataclass
class RunRecord:
    """Everything a run folder holds, as plain arrays (built by `mslam_ns.commands.slam.record_run`)."""

    frames: FrameTable
    frame_T_WC: np.ndarray  # [N, 8] Sim(3) camera -> world of every frame
    keyframe_T_WC: np.ndarray  # [K, 8]
    keyframe_timestamps: np.ndarray  # [K] float64
    points: PointCloud
    summary: dict[str, Any]
    edges: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.int64))  # [E, 2]
    edge_kind: list[str] = field(default_factory=list)
    thumbnails: dict[int, np.ndarray] = field(default_factory=dict)  # kf_id -> [H, W, 3] uint8
    config: dict[str, Any] | None = None
    n_matches: np.ndarray | None = None
    """[N] int: valid matches of every frame (-1: not matched); None: not recorded (no matches.txt)."""


def _user_error(msg: str) -> Exception:
    from mslam_ns.errors import UserError

    return UserError(msg)


class RunDir:
    """A run folder: file names, writers and readers."""

    TRAJECTORY = "trajectory.txt"
    KEYFRAMES = "keyframes.txt"
    FRAMES = "frames.txt"
    POINTS = "points.ply"
    EDGES = "edges.txt"
    MATCHES = "matches.txt"
    THUMBNAILS = "thumbnails"
    SUMMARY = "summary.json"
    CONFIG = "config.yaml"
    EVAL = "eval.json"
    GROUND_TRUTH = "groundtruth.txt"
    REQUIRED = (TRAJECTORY, KEYFRAMES, FRAMES, POINTS, SUMMARY)
    """Files every finished run has (a folder with all of them is a finished run)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def file(self, name: str) -> Path:
        return self.path / name

    def thumbnail_path(self, kf_id: int) -> Path:
        return self.path / self.THUMBNAILS / f"kf_{int(kf_id):06d}.jpg"

    @classmethod
    def is_run(cls, path: str | os.PathLike) -> bool:
        """True when `path` is a finished run folder."""
        p = Path(path)
        return p.is_dir() and all((p / n).is_file() for n in cls.REQUIRED)

    def check(self) -> RunDir:
        """UserError unless this is a finished run folder (naming the first missing file)."""
        if not self.path.is_dir():
            raise _user_error(f"{self.path}: run folder not found")
        for n in self.REQUIRED:
            if not (self.path / n).is_file():
                raise _user_error(f"{self.path}: not a finished run folder ({n} is missing)")
        return self

    # ---- writing ------------------------------------------------------------------------------------
    def write(self, rec: RunRecord) -> None:
        """Write every file of `rec` (call inside `atomic_output_dir`)."""
        from mslam_ns.geometry.conventions import sim3_to_pose7
        from mslam_ns.io.tum import write_tum_trajectory
        from mslam_ns.io.writers import write_json

        self.path.mkdir(parents=True, exist_ok=True)
        write_tum_trajectory(self.file(self.TRAJECTORY), rec.frames.timestamps, sim3_to_pose7(rec.frame_T_WC))
        write_tum_trajectory(self.file(self.KEYFRAMES), rec.keyframe_timestamps, sim3_to_pose7(rec.keyframe_T_WC))
        self.write_frames(rec.frames)
        self.write_points(rec.points)
        self.write_edges(rec.edges, rec.edge_kind)
        if rec.n_matches is not None:
            self.write_matches(rec.frames.timestamps, rec.n_matches)
        self.write_thumbnails(rec.thumbnails)
        summary = dict(rec.summary)
        summary["points"] = len(rec.points)
        write_json(self.file(self.SUMMARY), summary)
        if rec.config is not None:
            self.write_config(rec.config)

    def write_frames(self, t: FrameTable) -> None:
        with atomic_write(self.file(self.FRAMES)) as f:
            f.write(f"# {FRAMES_COLUMNS}\n")
            rows = zip(
                t.timestamps.tolist(),
                t.kf_ids.tolist(),
                t.is_keyframe.tolist(),
                t.lost.tolist(),
                t.interpolated_mask().tolist(),
                t.names,
            )
            for ts, k, iskf, ls, ip, name in rows:
                f.write(f"{ts:.6f} {k} {int(iskf)} {int(ls)} {int(ip)} {name}\n")

    def write_points(self, pc: PointCloud) -> None:
        write_point_cloud(self.file(self.POINTS), pc)

    def write_edges(self, edges: np.ndarray, kinds: list[str]) -> None:
        e = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
        kinds = list(kinds) if len(kinds) == len(e) else ["seq"] * len(e)
        with atomic_write(self.file(self.EDGES)) as f:
            f.write("# i j kind\n")
            for (i, j), k in zip(e.tolist(), kinds):
                f.write(f"{i} {j} {k}\n")

    def write_matches(self, timestamps: np.ndarray, n_matches: np.ndarray) -> None:
        """matches.txt: `timestamp n_matches` per frame (-1: the frame was not matched)."""
        ts = np.asarray(timestamps, dtype=np.float64).reshape(-1)
        n = np.asarray(n_matches, dtype=np.int64).reshape(-1)
        if len(ts) != len(n):
            raise ValueError(f"{len(n)} match counts for {len(ts)} frames")
        with atomic_write(self.file(self.MATCHES)) as f:
            f.write("# timestamp n_matches\n")
            for t, k in zip(ts.tolist(), n.tolist()):
                f.write(f"{t:.6f} {k}\n")

    def write_thumbnails(self, thumbs: dict[int, np.ndarray]) -> None:
        from PIL import Image

        (self.path / self.THUMBNAILS).mkdir(parents=True, exist_ok=True)
        for k, img in sorted(thumbs.items()):
            with atomic_write(self.thumbnail_path(k), "wb") as f:
                Image.fromarray(np.asarray(img, dtype=np.uint8)).save(f, format="JPEG", quality=90)

    def write_config(self, config: dict[str, Any]) -> None:
        import yaml

        from mslam_ns.io.writers import _jsonable

        text = "# resolved configuration of this run; reload with --config " + self.CONFIG + "\n"
        text += yaml.safe_dump(_jsonable(config), sort_keys=False)
        with atomic_write(self.file(self.CONFIG)) as f:
            f.write(text)

    def write_eval(self, report: dict[str, Any]) -> None:
        from mslam_ns.io.writers import write_json

        write_json(self.file(self.EVAL), report)

    # ---- reading ------------------------------------------------------------------------------------
    def read_trajectory(self) -> tuple[np.ndarray, np.ndarray]:
        """(timestamps [N], TUM rows [N, 7]) of every frame."""
        from mslam_ns.io.tum import read_tum_trajectory

        return read_tum_trajectory(self.file(self.TRAJECTORY))

    def read_keyframes(self) -> tuple[np.ndarray, np.ndarray]:
        """(timestamps [K], TUM rows [K, 7]) of the keyframes."""
        from mslam_ns.io.tum import read_tum_trajectory

        return read_tum_trajectory(self.file(self.KEYFRAMES))

    def read_frames(self) -> FrameTable:
        path = self.file(self.FRAMES)
        ts, kf, iskf, lost, interp, names = [], [], [], [], [], []
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise _user_error(f"{path}: cannot read ({e.strerror or e})") from None
        # runs written before the motion filter have no 'interpolated' column
        cols = FRAMES_COLUMNS if any(ln.startswith("#") and "interpolated" in ln for ln in lines[:1]) else FRAMES_V1
        ncol = len(cols.split())
        for n, line in enumerate(lines, start=1):
            if not line.strip() or line.startswith("#"):
                continue
            parts = line.split(" ", ncol - 1)
            if len(parts) != ncol:
                raise _user_error(f"{path}: line {n}: expected '{cols}'")
            try:
                ts.append(float(parts[0]))
                kf.append(int(parts[1]))
                iskf.append(parts[2] == "1")
                lost.append(parts[3] == "1")
                interp.append(ncol == 6 and parts[4] == "1")
            except ValueError:
                raise _user_error(f"{path}: line {n}: not a number") from None
            names.append(parts[-1])
        return FrameTable(
            np.asarray(ts, dtype=np.float64),
            np.asarray(kf, dtype=np.int64),
            np.asarray(iskf, dtype=bool),
            np.asarray(lost, dtype=bool),
            names,
            np.asarray(interp, dtype=bool),
        )

    def read_points(self) -> PointCloud:
        return read_point_cloud(self.file(self.POINTS))

    def read_edges(self) -> tuple[np.ndarray, list[str]]:
        """(edges [E, 2] int64, kinds) of the keyframe graph (empty when the run has no edges file)."""
        path = self.file(self.EDGES)
        if not path.is_file():
            return np.zeros((0, 2), dtype=np.int64), []
        e, kinds = [], []
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip() and not line.startswith("#"):
                i, j, k = line.split()[:3]
                e.append((int(i), int(j)))
                kinds.append(k)
        return np.asarray(e, dtype=np.int64).reshape(-1, 2), kinds

    def read_matches(self) -> np.ndarray | None:
        """[N] int64 valid matches of every frame from matches.txt (-1: not matched); None without the file."""
        path = self.file(self.MATCHES)
        if not path.is_file():
            return None
        out = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip() or line.startswith("#"):
                continue
            parts = line.split()
            try:
                out.append(int(parts[1]))
            except (IndexError, ValueError):
                raise _user_error(f"{path}: line {n}: expected 'timestamp n_matches'") from None
        return np.asarray(out, dtype=np.int64)

    def read_thumbnail(self, kf_id: int) -> np.ndarray | None:
        """[H, W, 3] uint8 network-size image of keyframe `kf_id` (None if not written)."""
        p = self.thumbnail_path(kf_id)
        if not p.is_file():
            return None
        from PIL import Image

        with Image.open(p) as im:
            return np.asarray(im.convert("RGB"))

    def read_summary(self) -> dict[str, Any]:
        return self._read_json(self.SUMMARY)

    def read_eval(self) -> dict[str, Any]:
        """The report `mslam-ns eval` wrote (UserError when there is none)."""
        return self._read_json(self.EVAL, "; run `mslam-ns eval` first")

    def _read_json(self, name: str, hint: str = "") -> dict[str, Any]:
        path = self.file(name)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise _user_error(f"{path}: cannot read ({e.strerror or e}{hint})") from None
        except ValueError as e:
            raise _user_error(f"{path}: not valid JSON ({e})") from None

    def read_config(self) -> dict[str, Any] | None:
        """The resolved configuration (None when the run has no config.yaml)."""
        path = self.file(self.CONFIG)
        if not path.is_file():
            return None
        import yaml

        return yaml.safe_load(path.read_text(encoding="utf-8"))

    def intrinsics(self) -> tuple[np.ndarray, tuple[int, int]] | None:
        """(K [3, 3], (width, height)) in ORIGINAL image pixels from summary.json, or None if unknown."""
        k = self.read_summary().get("intrinsics")
        if not k:
            return None
        K = np.array([[k["fx"], 0.0, k["cx"]], [0.0, k["fy"], k["cy"]], [0.0, 0.0, 1.0]])
        return K, (int(k["width"]), int(k["height"]))

    def frame_poses(self) -> tuple[FrameTable, np.ndarray]:
        """(frames.txt table, camera-to-world 4x4 [N, 4, 4] OpenCV axes) of every frame, in frames.txt order."""
        from mslam_ns.geometry.conventions import pose7_to_c2w

        table = self.read_frames()
        ts, poses = self.read_trajectory()
        if len(ts) != len(table.timestamps) or not np.allclose(ts, table.timestamps, atol=1e-5):
            raise _user_error(f"{self.path}: {self.TRAJECTORY} and {self.FRAMES} disagree (not one run?)")
        return table, pose7_to_c2w(poses)


class DatasetDir:
    """An exported dataset folder (`mslam-ns export`, `ns-process-data mslam`, the dataparser's cache): the
    ONLY code that knows its file names.

        transforms.json   nerfstudio's `nerfstudio-data` format      sparse_pc.ply   seed points
        images/ images_2/ ... frames (and downscaled copies)         depth/          per-frame depth PNGs
        mslam_run/        the run folder behind it (`RunDir`)        sparse/0/       COLMAP text model
    """

    TRANSFORMS = "transforms.json"
    SPARSE_PC = "sparse_pc.ply"
    IMAGES = "images"
    DEPTH = "depth"
    RUN = "mslam_run"
    RUN_PENDING = ".mslam_run.pending"
    """A finished SLAM run not yet swapped in with its export (a rerun with new settings that was interrupted)."""
    COLMAP_MODEL = "sparse/0"
    COLMAP_CAMERAS = "cameras.txt"
    COLMAP_IMAGES = "images.txt"
    COLMAP_POINTS = "points3D.txt"

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"DatasetDir({str(self.path)!r})"

    @classmethod
    def images_folder(cls, downscale: int = 1) -> str:
        """`images` (full resolution) or `images_{downscale}`."""
        return cls.IMAGES if downscale == 1 else f"{cls.IMAGES}_{int(downscale)}"

    @property
    def transforms(self) -> Path:
        return self.path / self.TRANSFORMS

    @property
    def colmap_model(self) -> Path:
        return self.path / self.COLMAP_MODEL

    def is_dataset(self) -> bool:
        return self.transforms.is_file()

    def run(self) -> RunDir:
        return RunDir(self.path / self.RUN)

    def pending_run(self) -> RunDir:
        return RunDir(self.path / self.RUN_PENDING)


def write_point_cloud(path: Path, pc: PointCloud) -> None:
    """Binary little-endian PLY of `pc` (x y z, red green blue, confidence, keyframe, u v), atomically."""
    n = len(pc)
    data = np.empty(n, dtype=np.dtype(_PLY_FIELDS))
    xyz = np.asarray(pc.xyz, dtype=np.float32).reshape(n, 3)
    rgb = np.asarray(pc.rgb, dtype=np.uint8).reshape(n, 3)
    uv = np.asarray(pc.uv, dtype=np.float32).reshape(n, 2)
    data["x"], data["y"], data["z"] = xyz.T
    data["red"], data["green"], data["blue"] = rgb.T
    data["confidence"] = np.asarray(pc.confidence, dtype=np.float32).reshape(n)
    data["keyframe"] = np.asarray(pc.keyframe, dtype=np.int32).reshape(n)
    data["u"], data["v"] = uv.T
    header = ["ply", "format binary_little_endian 1.0", "comment written by mslam_ns", f"element vertex {n}"]
    header += [f"property {_PLY_NAMES[t]} {name}" for name, t in _PLY_FIELDS] + ["end_header"]
    with atomic_write(path, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(data.tobytes())


def read_point_cloud(path: Path) -> PointCloud:
    """A PLY written by `write_point_cloud` (missing extra properties get NaN / -1 / grey)."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise _user_error(f"{path}: cannot read ({e.strerror or e})") from None
    end = raw.find(b"end_header\n")
    if not raw.startswith(b"ply") or end < 0:
        raise _user_error(f"{path}: not a PLY file")
    props, n, fmt = [], 0, ""
    for line in raw[:end].decode("ascii", errors="replace").splitlines():
        tok = line.split()
        if tok[:1] == ["format"]:
            fmt = tok[1]
        elif tok[:2] == ["element", "vertex"]:
            n = int(tok[2])
        elif tok[:1] == ["property"]:
            props.append((tok[2], ("<" if fmt != "binary_big_endian" else ">") + _PLY_READ[tok[1]]))
    if fmt not in ("binary_little_endian", "binary_big_endian"):
        raise _user_error(f"{path}: expected a binary PLY written by mslam_ns")
    rec = np.frombuffer(raw, dtype=np.dtype(props), count=n, offset=end + len(b"end_header\n"))
    names = {p for p, _ in props}

    def col(name: str, default: float, dtype: Any) -> np.ndarray:
        return rec[name].astype(dtype) if name in names else np.full(n, default, dtype=dtype)

    xyz = np.stack([rec["x"], rec["y"], rec["z"]], 1).astype(np.float32)
    rgb = np.stack([col("red", 128, np.uint8), col("green", 128, np.uint8), col("blue", 128, np.uint8)], 1)
    uv = np.stack([col("u", np.nan, np.float32), col("v", np.nan, np.float32)], 1)
    return PointCloud(xyz, rgb, col("confidence", np.nan, np.float32), col("keyframe", -1, np.int32), uv)
