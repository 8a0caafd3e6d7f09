"""Failures end cleanly: a run that fails half-way (corrupt frame, an error while writing, Ctrl-C) leaves no
partial output and no stale files in OUT, and the README's promises about the command line hold (exit code 2
and one line naming the file for bad input; file names with spaces survive into frames.txt).

The interrupt tests run `mslam-ns` in a subprocess and send a real SIGINT. They are driven by events, not
by sleeps: a small driver marks (by creating a file) the moment the run reaches the point to interrupt, and
the test waits for that mark before it signals.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mslam_ns.cli import main
from mslam_ns.io.synthetic import generate_sequence

REPO = Path(__file__).resolve().parents[1]
TINY_CKPT = REPO / "tests" / "data" / "mast3r" / "tiny_A" / "checkpoint.pth"
RUN = ["--img-size", "128", "--quiet"]  # 160x120 frames -> 128x96 network images


def _tree(path: Path) -> dict[str, bytes]:
    """Every file under `path` (relative name -> bytes)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _leftovers(parent: Path, name: str) -> list[str]:
    """Temporary siblings of `parent / name` left behind by an atomic write (`.NAME.*`)."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


@pytest.fixture(scope="module")
def seq(tmp_path_factory) -> Path:
    return generate_sequence(tmp_path_factory.mktemp("fail") / "seq", 10, 160, 120, 0)


@pytest.fixture(scope="module")
def good_run(seq, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("good") / "out"
    assert main(["run", str(seq), "--out", str(out), *RUN]) == 0
    return out


def _corrupt_copy(seq: Path, dst: Path, frame: int = 5) -> tuple[Path, Path]:
    shutil.copytree(seq, dst)
    bad = sorted((dst / "rgb").iterdir())[frame]
    bad.write_bytes(bad.read_bytes()[:200])  # a truncated PNG in the middle of the sequence
    return dst, bad


# ------------------------------------------------------------------------------------------ mid-run failures
def test_corrupt_frame_mid_run_leaves_no_output(seq, tmp_path, capsys) -> None:
    data, bad = _corrupt_copy(seq, tmp_path / "data")
    out = tmp_path / "out"
    assert main(["run", str(data), "--out", str(out), *RUN]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and bad.name in err[0] and err[0].startswith("mslam-ns: error:"), err
    assert not out.exists()
    assert _leftovers(tmp_path, "out") == []


def test_failed_overwrite_keeps_the_earlier_run_whole(seq, good_run, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    shutil.copytree(good_run, out)
    before = _tree(out)
    data, bad = _corrupt_copy(seq, tmp_path / "data")
    assert main(["run", str(data), "--out", str(out), "--overwrite", *RUN]) == 2
    assert bad.name in capsys.readouterr().err
    assert _tree(out) == before  # the earlier run, complete: nothing half-replaced, nothing added
    assert _leftovers(tmp_path, "out") == []


def test_error_while_writing_leaves_no_partial_output(seq, good_run, tmp_path, monkeypatch, capsys) -> None:
    """The disk fills up while the run folder is written: OUT keeps the earlier run, nothing else remains."""
    from mslam_ns.io.rundir import RunDir

    out = tmp_path / "out"
    shutil.copytree(good_run, out)
    before = _tree(out)

    def disk_full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(RunDir, "write_points", disk_full)  # fault injection: trajectory files are already written
    assert main(["run", str(seq), "--out", str(out), "--overwrite", *RUN]) == 2  # one line, no traceback
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0], err
    assert _tree(out) == before
    assert _leftovers(tmp_path, "out") == []
    fresh = tmp_path / "fresh"
    assert main(["run", str(seq), "--out", str(fresh), *RUN]) == 2
    assert not fresh.exists() and _leftovers(tmp_path, "fresh") == []


# ------------------------------------------------------------------------------------------------ Ctrl-C
_DRIVER = r"""
import os, signal, sys, time
from pathlib import Path
mark, where = Path(sys.argv[1]), sys.argv[2]
# A terminal's Ctrl-C: Python's own SIGINT handler, also when this suite was started as a background job of a
# shell without job control (which starts it with SIGINT ignored, and every child inherits that).
signal.signal(signal.SIGINT, signal.default_int_handler)

def reached():
    mark.write_text("here")
    # wait for the test's SIGINT (raised here as KeyboardInterrupt). Not signal.pause(): a SIGINT that lands
    # after the interpreter's last signal check and before pause(2) would leave it waiting for ever.
    while True:
        time.sleep(0.01)

if where == "slam":
    from mslam_ns.slam.system import SlamSystem
    step = SlamSystem.step
    def traced(self, raw):
        if raw.index == 3:
            reached()
        return step(self, raw)
    SlamSystem.step = traced
else:
    from mslam_ns.io.rundir import RunDir
    write_points = RunDir.write_points
    def traced(self, pc):
        write_points(self, pc)  # points.ply is in the temporary folder now
        reached()
    RunDir.write_points = traced
from mslam_ns.cli import main
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.parametrize("where", ["slam", "writing"])
def test_ctrl_c_leaves_no_partial_output(seq, good_run, tmp_path, where) -> None:
    out = tmp_path / "out"
    shutil.copytree(good_run, out)
    before = _tree(out)
    mark = tmp_path / "mark"
    cmd = [sys.executable, "-c", _DRIVER, str(mark), where, "run", str(seq), "--out", str(out), "--overwrite", *RUN]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while not mark.exists():  # the event: the run reached the point to interrupt
            if proc.poll() is not None:
                pytest.fail(f"the run ended before the mark (rc {proc.returncode}): {proc.stderr.read()[-2000:]}")
            time.sleep(0.05)
        if where == "writing":
            assert _leftovers(tmp_path, "out"), "the run folder should be half-written in its temporary sibling"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "mslam-ns: interrupted" and "Traceback" not in err, err
    assert _tree(out) == before
    assert _leftovers(tmp_path, "out") == []


# ------------------------------------------------------------------------------------------ README promises
def test_bad_input_exit_code_2_one_line_no_traceback(tmp_path) -> None:
    """As a user sees it: a real process, its exit status and its stderr."""
    exe = Path(sys.executable).with_name("mslam-ns")
    missing = tmp_path / "no such video.mp4"
    r = subprocess.run(
        [str(exe), "run", str(missing), "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(missing) in lines[0] and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path, "out") == []


def test_names_with_spaces_survive_into_frames_txt(tmp_path) -> None:
    """An image folder whose file names hold spaces, into an output folder whose name holds spaces."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "my photos"
    folder.mkdir()
    names = [f"holiday shot {k:02d}.png" for k in range(4)]
    base = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
    for k, n in enumerate(names):
        Image.fromarray(np.roll(base, 2 * k, axis=1)).save(folder / n)
    out = tmp_path / "run output"
    rc = main(
        [
            "run",
            str(folder),
            "--out",
            str(out),
            "--prior",
            "mast3r",
            "--checkpoint",
            str(TINY_CKPT),
            "--img-size",
            "64",
            "--quiet",
        ]
    )
    assert rc == 0
    from mslam_ns.io.rundir import RunDir

    frames = RunDir(out).read_frames()
    assert list(frames.names) == names
    rows = [ln for ln in (out / "frames.txt").read_text().splitlines() if ln and not ln.startswith("#")]
    assert [r.split(maxsplit=5)[5] for r in rows] == names  # the name is the last field, spaces kept
    assert os.path.isfile(out / "trajectory.txt")
