"""Reading a run folder for the viewer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mslam_ns.errors import UserError
from mslam_ns.viewer.rundata import load_run
from tests.viewer import scenes


def test_load_run_reads_every_part(run_dir: Path):
    d = load_run(run_dir)
    assert len(d.frame_timestamps) == scenes.N_FRAMES
    assert np.nonzero(d.frame_lost)[0].tolist() == list(scenes.LOST_FRAMES)
    assert [k.kf_id for k in d.keyframes] == list(range(scenes.N_KEYFRAMES))
    rows = np.linspace(0, scenes.N_FRAMES - 1, scenes.N_KEYFRAMES).astype(int)
    assert [k.name for k in d.keyframes] == [f"frame {r:03d}.png" for r in rows]  # names with spaces kept
    assert all(k.thumbnail is not None and k.thumbnail.shape == (48, 64, 3) for k in d.keyframes)
    assert d.points.shape == (scenes.N_KEYFRAMES * 400, 3)
    assert d.confidence is not None and d.point_kf is not None
    assert sorted(set(d.point_kf.tolist())) == list(range(scenes.N_KEYFRAMES))
    assert d.edge_kind.count("loop") == 1 and d.edges.tolist()[-1] == [4, 0]
    # fov from fy = 50 and the 64 x 48 original images
    assert d.fov_y == pytest.approx(2 * np.arctan(24 / 50))
    assert d.aspect == pytest.approx(64 / 48)


def test_load_run_without_optional_files(run_dir: Path):
    for name in ("edges.txt", "summary.json", "points.ply"):
        (run_dir / name).unlink()
    for p in (run_dir / "thumbnails").iterdir():
        p.unlink()
    d = load_run(run_dir)
    assert len(d.keyframes) == scenes.N_KEYFRAMES and len(d.points) == 0 and len(d.edges) == 0
    assert all(k.thumbnail is None for k in d.keyframes)
    assert d.fov_y is None


def test_load_run_bad_input_names_the_file(tmp_path: Path, run_dir: Path):
    with pytest.raises(UserError, match="run folder not found"):
        load_run(tmp_path / "nope")
    (run_dir / "trajectory.txt").unlink()
    with pytest.raises(UserError, match="trajectory.txt"):
        load_run(run_dir)


def test_frames_table_must_match_trajectory(run_dir: Path):
    lines = (run_dir / "frames.txt").read_text().splitlines()
    (run_dir / "frames.txt").write_text("\n".join(lines[:-3]) + "\n")
    with pytest.raises(UserError, match="frames.txt"):
        load_run(run_dir)


def test_summary_with_intrinsics_size(run_dir: Path):
    s = json.loads((run_dir / "summary.json").read_text())
    s["intrinsics"].update(width=128, height=64)
    (run_dir / "summary.json").write_text(json.dumps(s))
    d = load_run(run_dir)
    assert d.aspect == pytest.approx(2.0)
    assert d.fov_y == pytest.approx(2 * np.arctan(32 / 50))
