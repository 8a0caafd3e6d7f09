"""`mslam-ns run` writes OUT/report.png (with the run's matches per frame from OUT/matches.txt), atomically, and a
plotting failure never costs the run."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from mslam_ns.cli import main
from mslam_ns.io.rundir import RunDir

pytest.importorskip("matplotlib")
FRAMES = 10


@pytest.fixture(scope="module")
def sequence(tmp_path_factory) -> Path:
    from mslam_ns.io.synthetic import generate_sequence

    return Path(generate_sequence(tmp_path_factory.mktemp("seq") / "seq", FRAMES, 160, 120, 0))


def _run(seq: Path, out: Path, frames: int = FRAMES, *extra: str) -> int:
    args = ["run", str(seq), "--out", str(out), "--img-size", "128", "--max-frames", str(frames), "--quiet"]
    return main(args + list(extra))


@pytest.fixture(scope="module")
def run_out(sequence: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "out"
    assert _run(sequence, out) == 0
    return out


def test_run_writes_the_report(run_out: Path):
    from PIL import Image

    from mslam_ns.eval.plots import COLORS
    from tests.eval.test_plots import quadrants

    path = run_out / "report.png"
    assert path.is_file()
    assert not [p.name for p in run_out.iterdir() if p.name.startswith(".") or "tmp" in p.name]  # no temp files
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (1200, 800)
        img = np.asarray(im.convert("RGB"))
    q = {s: quadrants(img, s) for s in COLORS}
    # The tracking panel shows the recorded matches (not the keyframe-id fallback); the timings and the
    # trajectory are drawn. Measured: 1291 match-curve pixels, 1170 trajectory pixels, 19200-27700
    # timing-bar pixels (bar lengths follow the run's own timings, hence the looser bound).
    assert q["matches"][1] > 860 and sum(q["tracked_kf"]) == 0
    assert q["estimate"][0] > 780 and q["timings"][2] > 10000


def test_matches_per_frame_are_recorded(run_out: Path):
    rd = RunDir(run_out)
    table = rd.read_frames()  # frames.txt is unchanged: the existing reader still reads it
    m = rd.read_matches()
    assert m is not None and len(m) == len(table.timestamps) == FRAMES
    # the first frame starts the map (nothing matched); tracked frames have real counts (128 x 96 pixels)
    assert m[0] == -1
    tracked = m[1:][~table.interpolated_mask()[1:]]
    assert len(tracked) and (tracked > 100).all() and (tracked <= 128 * 96).all()
    rows = [ln.split() for ln in rd.file(rd.MATCHES).read_text().splitlines() if not ln.startswith("#")]
    np.testing.assert_allclose([float(r[0]) for r in rows], table.timestamps, atol=1e-6)


def test_a_plotting_failure_only_warns(sequence: Path, tmp_path: Path, monkeypatch, caplog):
    # matplotlib unusable (not installed, broken backend): the run still succeeds, without a report
    for mod in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(__import__("sys").modules, mod, None)
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        assert _run(sequence, out, frames=4) == 0
    assert RunDir.is_run(out) and not (out / "report.png").exists()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert any("report not written" in r.getMessage() for r in caplog.records)


def test_no_report_skips_it(sequence: Path, tmp_path: Path):
    out = tmp_path / "out"
    assert _run(sequence, out, 4, "--no-report") == 0
    assert RunDir.is_run(out) and (out / "matches.txt").is_file() and not (out / "report.png").exists()
    import yaml

    assert "report" not in yaml.safe_load((out / "config.yaml").read_text())  # not a setting of the run itself
