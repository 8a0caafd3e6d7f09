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


def _ns(*args: str, timeout: float = 600, path: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    if path is not None:
        env["PATH"] = path + os.pathsep + env.get("PATH", "")
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
    """`images` runs nerfstudio's own code end to end without external tools: `--skip-colmap
    --skip-image-processing --colmap-model-path` on our COLMAP export (converted to binary by pycolmap), and
    writes its transforms.json with every frame and our intrinsics. nerfstudio 1.1.5 checks in `__post_init__`
    that ffmpeg and COLMAP exist even when it will call neither: `--colmap-cmd true` answers the COLMAP check,
    and an `ffmpeg` on PATH that fails loudly if ever run answers the other (it is not run)."""
    pycolmap = pytest.importorskip("pycolmap")
    from mslam_ns.cli import main

    run, o = tmp_path / "run", tmp_path / "o"
    assert main(["run", str(seq), "--out", str(run), "--prior", "oracle", "--img-size", "128", "--quiet"]) == 0
    assert main(["export", str(run), "--format", "colmap", "--out", str(o), "--quiet"]) == 0
    (o / "colmap" / "sparse" / "0").mkdir(parents=True)
    pycolmap.Reconstruction(str(o / "sparse" / "0")).write_binary(str(o / "colmap" / "sparse" / "0"))
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "ffmpeg").write_text("#!/bin/sh\necho 'ffmpeg shim was run' >&2\nexit 3\n")
    (shim / "ffmpeg").chmod(0o755)
    r = _ns(
        "images",
        "--data",
        str(o / "images"),
        "--output-dir",
        str(o),
        "--skip-colmap",
        "--skip-image-processing",
        "--colmap-model-path",
        "colmap/sparse/0",
        "--colmap-cmd",
        "true",
        timeout=300,
        path=str(shim),
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "mslam" not in (r.stdout + r.stderr).lower() and "shim was run" not in r.stdout + r.stderr
    meta = json.loads((o / "transforms.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert len(meta["frames"]) == 20 and abs(meta["fl_x"] - summary["intrinsics"]["fx"]) < 1e-3


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


def _run_poses_in_transforms(out: Path) -> None:
    """transforms.json's poses are those of the run folder next to it (the pair belongs together)."""
    import numpy as np

    from mslam_ns.geometry.conventions import to_nerfstudio_c2w
    from mslam_ns.io.rundir import RunDir

    meta = json.loads((out / "transforms.json").read_text())
    table, c2w = RunDir(out / "mslam_run").frame_poses()
    index = {n: i for i, n in enumerate(table.names)}
    M = to_nerfstudio_c2w(c2w)
    for f in meta["frames"]:
        np.testing.assert_allclose(f["transform_matrix"], M[index[f["original_name"]]], atol=1e-6)


def test_interrupted_rerun_with_new_settings_keeps_the_old_pair(tmp_path, seq, monkeypatch, capsys):
    """A rerun with other SLAM settings, interrupted in its export (a file-system copy fails): transforms.json
    and mslam_run/ stay the old, matching pair; the next call reuses the new SLAM result and swaps both in."""
    from mslam_ns.nerfstudio.process_data import ProcessMslam, process

    out = tmp_path / "out"
    p = ProcessMslam(data=seq, output_dir=out, prior="oracle", img_size=128, num_downscales=0)
    process(p)
    old_meta = (out / "transforms.json").read_bytes()
    old_key = json.loads((out / "mslam_run" / "summary.json").read_text())["cache_key"]
    p2 = ProcessMslam(data=seq, output_dir=out, prior="oracle", img_size=96, num_downscales=0)

    def no_space(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shutil, "copytree", no_space)  # the export's copy of the run folder
    with pytest.raises(OSError):
        process(p2)
    assert (out / "transforms.json").read_bytes() == old_meta
    assert json.loads((out / "mslam_run" / "summary.json").read_text())["cache_key"] == old_key
    _run_poses_in_transforms(out)
    pending = out / ".mslam_run.pending"
    new_key = json.loads((pending / "summary.json").read_text())["cache_key"]
    assert new_key != old_key
    stamp = (pending / "summary.json").stat().st_mtime_ns
    monkeypatch.undo()
    capsys.readouterr()
    process(p2)
    assert "reusing" in capsys.readouterr().out
    summary = out / "mslam_run" / "summary.json"
    assert json.loads(summary.read_text())["cache_key"] == new_key and summary.stat().st_mtime_ns == stamp
    assert (out / "transforms.json").read_bytes() != old_meta
    _run_poses_in_transforms(out)
    assert not pending.exists() and not [q for q in tmp_path.iterdir() if q.name.startswith(".")]


@pytest.mark.parametrize("case", ["parent_is_a_file", "under_proc", "bad_crop"])
def test_unusable_output_or_crop_is_refused_before_the_slam(tmp_path, seq, case):
    """Refused with one line, exit 2, before any SLAM work (nothing is written). Read-only places as root:
    `os.access` says yes for a path under a regular file and under /proc (procfs refuses new files even to
    root), so the check creates a file; a chmod'ed folder would not stop root."""
    import time

    out = tmp_path / "out"
    extra: list[str] = []
    if case == "parent_is_a_file":
        (tmp_path / "afile").write_text("x")
        out = tmp_path / "afile" / "out"
    elif case == "under_proc":
        if not Path("/proc/self").is_dir():
            pytest.skip("no /proc")
        out = Path("/proc") / f"mslam_ns_test_{os.getpid()}" / "out"
    else:
        extra = ["--crop-factor", "0.6", "0.5", "0", "0"]
    t0 = time.perf_counter()
    r = _ns("mslam", "--data", str(seq), "--output-dir", str(out), *ARGS, *extra, timeout=300)
    dt = time.perf_counter() - t0
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1, r.stdout + r.stderr
    assert (str(out) in err[0]) if case != "bad_crop" else ("crop factor" in err[0])
    assert not out.exists() and not [q for q in tmp_path.iterdir() if q.name.startswith(".")]
    print(f"{case}: refused in {dt:.1f} s")


@pytest.mark.parametrize("exc, code", [(OSError, 2), (RuntimeError, 1)])
def test_every_failure_exits_non_zero_with_one_line(tmp_path, seq, monkeypatch, capsys, exc, code):
    """An OSError mid-run (a file-system copy fails) is exit 2, anything unexpected exit 1: one line each
    (nerfstudio's own entrypoint would log a RuntimeError and exit 0)."""
    from mslam_ns.nerfstudio.process_data import ProcessMslam

    def fail(src, dst, *a, **k):
        raise OSError(28, "No space left on device", str(dst)) if exc is OSError else RuntimeError("boom")

    monkeypatch.setattr(shutil, "copytree", fail)
    p = ProcessMslam(data=seq, output_dir=tmp_path / "out", prior="oracle", img_size=128, num_downscales=0)
    with pytest.raises(SystemExit) as e:
        p.main()
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == code and len(err) == 1, err
    assert err[0].startswith("ns-process-data mslam: error:")
    assert ("No space left on device" in err[0] and "mslam_run" in err[0]) if exc is OSError else "boom" in err[0]
    assert not (tmp_path / "out" / "transforms.json").exists()


def test_precision_reaches_the_slam(tmp_path, seq):
    """`--precision` goes into the SLAM's options (and the dataparser's cache key); with the oracle prior,
    which has no network, it is refused with one line before any work."""
    from mslam_ns.nerfstudio.process_data import ProcessMslam, run_options

    p = ProcessMslam(data=seq, output_dir=tmp_path / "o", prior="mast3r", precision="bf16")
    assert run_options(p, tmp_path / "o").slam.precision == "bf16"
    assert run_options(ProcessMslam(data=seq, output_dir=tmp_path / "o"), tmp_path / "o").slam.precision == "fp32"
    out = tmp_path / "out"
    r = _ns("mslam", "--data", str(seq), "--output-dir", str(out), *ARGS, "--precision", "bf16")
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and "--precision bf16" in err[0], r.stdout + r.stderr
    assert not out.exists()


def test_cuda_graphs_reach_the_slam(tmp_path, seq):
    """`--cuda-graphs` goes into the SLAM's options; on this CPU-only run it is refused with one line before
    any work (the graphed network itself: tests/prior/test_cuda_graphs.py)."""
    from mslam_ns.nerfstudio.process_data import ProcessMslam, run_options

    p = ProcessMslam(data=seq, output_dir=tmp_path / "o", prior="mast3r", cuda_graphs=True)
    assert run_options(p, tmp_path / "o").slam.cuda_graphs is True
    assert run_options(ProcessMslam(data=seq, output_dir=tmp_path / "o"), tmp_path / "o").slam.cuda_graphs is False
    out = tmp_path / "out"
    r = _ns("mslam", "--data", str(seq), "--output-dir", str(out), *ARGS, "--cuda-graphs")
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and "--cuda-graphs" in err[0], r.stdout + r.stderr
    assert not out.exists()
