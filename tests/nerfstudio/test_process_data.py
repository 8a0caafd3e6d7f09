"""`ns-process-data mslam`: nerfstudio's own console script, extended through the installed .pth hook.

Run as subprocesses of the real `ns-process-data` of this environment (nothing imported in-process), on a
small synthetic sequence with the oracle prior.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("nerfstudio")

BIN = Path(sys.executable).parent
NS = BIN / "ns-process-data"
STOCK = ["images", "video", "polycam", "metashape", "realitycapture", "record3d", "odm"]
ARGS = ["--prior", "oracle", "--img-size", "128", "--num-downscales", "1"]


def _ns(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([str(NS), *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def seq(tmp_path_factory) -> Path:
    from mslam_ns.io.synthetic import generate_sequence

    return generate_sequence(tmp_path_factory.mktemp("pd") / "seq", 20, 160, 120, seed=1)


def test_console_script_is_nerfstudios_own():
    """Our package ships no `ns-process-data`: the script is nerfstudio's, so uninstalling us leaves it."""
    from importlib.metadata import distribution

    ours = [e for e in distribution("mslam_ns").entry_points if e.group == "console_scripts"]
    assert "ns-process-data" not in {e.name for e in ours}
    theirs = {e.name: e.value for e in distribution("nerfstudio").entry_points if e.group == "console_scripts"}
    assert theirs["ns-process-data"] == "nerfstudio.scripts.process_data:entrypoint"
    assert "nerfstudio.scripts.process_data" in NS.read_text()
    files = [str(f) for f in distribution("mslam_ns").files or []]
    assert "mslam_ns_process_data.pth" in files  # recorded: `pip uninstall mslam_ns` removes the hook


def test_help_lists_stock_subcommands_and_mslam():
    r = _ns("--help")
    assert r.returncode == 0, r.stderr
    for name in STOCK + ["mslam"]:
        assert name in r.stdout
    r = _ns("mslam", "--help")
    assert r.returncode == 0
    for flag in (
        "--data",
        "--output-dir",
        "--num-frames-target",
        "--num-downscales",
        "--crop-factor",
        "--skip-image-processing",
        "--verbose",
        "--prior",
        "--checkpoint",
        "--calib",
        "--img-size",
        "--device",
        "--mode",
    ):
        assert flag in r.stdout, flag


def test_without_the_hook_nerfstudio_is_untouched():
    """What `pip uninstall mslam_ns` leaves: the same module without our finder has the stock union only."""
    code = (
        "import sys; sys.meta_path[:] = [f for f in sys.meta_path if getattr(f, '__name__', '') != "
        "'_ProcessDataHook']; import nerfstudio.scripts.process_data as m, typing; "
        "print([typing.get_args(a)[1].name for a in typing.get_args(m.Commands)])"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    names = eval(r.stdout.strip().splitlines()[-1])
    assert "mslam" not in names and set(STOCK) <= set(names)


def test_a_stock_subcommand_still_runs(tmp_path, seq):
    """`images` reaches nerfstudio's own code (here it stops at its own check for ffmpeg / COLMAP, which these
    machines do not have; with them it processes)."""
    r = _ns("images", "--data", str(seq / "rgb"), "--output-dir", str(tmp_path / "o"), timeout=300)
    text = r.stdout + r.stderr
    if shutil.which("ffmpeg") and shutil.which("colmap"):
        assert r.returncode == 0 and (tmp_path / "o" / "transforms.json").is_file()
    else:
        assert "Could not find" in text and ("ffmpeg" in text or "COLMAP" in text), text
        assert "mslam" not in text.lower()


def test_mslam_runs_reuses_and_refuses(tmp_path, seq):
    out = tmp_path / "out"
    r = _ns("mslam", "--data", str(seq), "--output-dir", str(out), "--num-frames-target", "10", *ARGS)
    assert r.returncode == 0, r.stdout + r.stderr
    meta = json.loads((out / "transforms.json").read_text())
    assert len(meta["frames"]) == 10 and meta["ply_file_path"] == "sparse_pc.ply"
    assert (out / "sparse_pc.ply").is_file() and (out / "images_2").is_dir()
    assert len(list((out / "images").iterdir())) == 10
    run = out / "mslam_run"
    for name in ("trajectory.txt", "summary.json", "config.yaml"):
        assert (run / name).is_file()
    assert json.loads((run / "summary.json").read_text())["frames"] == 20
    stamp = (run / "summary.json").stat().st_mtime_ns
    # same input + settings: the SLAM result is reused (the run folder is the same file)
    r = _ns("mslam", "--data", str(seq), "--output-dir", str(out), "--num-frames-target", "12", *ARGS)
    assert r.returncode == 0 and "reusing" in r.stdout
    assert (run / "summary.json").stat().st_mtime_ns == stamp
    assert len(json.loads((out / "transforms.json").read_text())["frames"]) == 12
    assert len(list((out / "images").iterdir())) == 12  # no stale images from the first call
    # a foreign non-empty folder is refused, untouched
    other = tmp_path / "other"
    other.mkdir()
    (other / "mine.txt").write_text("keep")
    r = _ns("mslam", "--data", str(seq), "--output-dir", str(other), *ARGS)
    assert r.returncode == 2 and "--overwrite" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert [p.name for p in other.iterdir()] == ["mine.txt"]


@pytest.mark.parametrize("case", ["missing", "bad_video", "zero_frames"])
def test_mslam_bad_input_is_one_line(tmp_path, case):
    data = tmp_path / "in"
    if case == "bad_video":
        data = tmp_path / "clip.mp4"
        data.write_bytes(b"\x00not a video" * 100)
    elif case == "zero_frames":
        data.mkdir()
    out = tmp_path / "out"
    r = _ns("mslam", "--data", str(data), "--output-dir", str(out), *ARGS, timeout=300)
    assert r.returncode == 2, r.stdout + r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and str(data) in err[0]
    assert not out.exists() and not (out / "transforms.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_interrupted_export_keeps_the_finished_slam(tmp_path, seq, monkeypatch):
    """Ctrl-C while the images are written: no transforms.json, and the rerun reuses the finished SLAM run."""
    import mslam_ns.nerfstudio.export as export
    from mslam_ns.nerfstudio.process_data import ProcessMslam, process

    out = tmp_path / "out"
    p = ProcessMslam(data=seq, output_dir=out, prior="oracle", img_size=128, num_downscales=0)
    real = export.write_images

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "write_images", interrupted)
    with pytest.raises(KeyboardInterrupt):
        process(p)
    assert not (out / "transforms.json").exists() and (out / "mslam_run" / "summary.json").is_file()
    stamp = (out / "mslam_run" / "summary.json").stat().st_mtime_ns
    monkeypatch.setattr(export, "write_images", real)
    process(p)
    assert (out / "transforms.json").is_file()
    assert (out / "mslam_run" / "summary.json").stat().st_mtime_ns == stamp
    assert not [q for q in tmp_path.iterdir() if q.name.startswith(".")]
