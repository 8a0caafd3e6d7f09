"""The product path end to end: a video file through the MASt3R prior (our network on the official-format tiny
checkpoint) into `mslam-ns run`. The tiny checkpoint's weights are random, so this proves the plumbing (video
timestamps, pre-processing, encode-once / decode, tracking or loss handling, outputs), not accuracy."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from mslam_ns.cli import main
from tests.model._fixtures import fixture_dirs

av = pytest.importorskip("av", reason="PyAV (the video extra) is needed for video input")


def _tiny_checkpoint() -> Path:
    for d in fixture_dirs():
        if (d / "checkpoint.pth").is_file():
            return d / "checkpoint.pth"
    pytest.fail("no MASt3R fixture checkpoint found (tests/data/mast3r/tiny_A or MSLAM_MAST3R_FIXTURES)")


def _write_room_video(path: Path, n: int, w: int = 128, h: int = 96, pts_ms: list[int] | None = None) -> None:
    from mslam_ns.io.synth_scene import SyntheticRoom, default_intrinsics
    from mslam_ns.io.synth_trajectory import make_trajectory

    room, intr, traj = SyntheticRoom(0), default_intrinsics(w, h), make_trajectory(n)
    c = av.open(str(path), "w")
    s = c.add_stream("libx264", rate=30)
    s.width, s.height, s.pix_fmt = w, h, "yuv420p"
    s.codec_context.time_base = Fraction(1, 1000)
    for k in range(n):
        rgb, _ = room.render(traj.poses[k], intr)
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts, frame.time_base = pts_ms[k], Fraction(1, 1000)
        for p in s.encode(frame):
            c.mux(p)
    for p in s.encode():
        c.mux(p)
    c.close()


def test_video_through_mast3r_prior(tmp_path):
    ckpt = _tiny_checkpoint()
    n = 8
    pts_ms = [0, 40, 80, 130, 170, 210, 260, 300]  # irregular: the output must keep the container's times
    video = tmp_path / "clip.mp4"
    _write_room_video(video, n, pts_ms=pts_ms)
    out = tmp_path / "out"
    rc = main(
        [
            "run",
            str(video),
            "--out",
            str(out),
            "--prior",
            "mast3r",
            "--checkpoint",
            str(ckpt),
            "--retrieval-checkpoint",
            str(ckpt.parent / "retrieval.pth"),
            "--img-size",
            "96",
            "--quiet",
        ]
    )
    assert rc == 0
    rows = [l.split() for l in (out / "trajectory.txt").read_text().splitlines() if not l.startswith("#")]
    assert len(rows) == n  # every frame gets a pose, tracked or not
    np.testing.assert_allclose([float(r[0]) for r in rows], np.array(pts_ms) / 1000.0, atol=1e-6)
    assert np.isfinite(np.array(rows, dtype=np.float64)).all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["prior"] == "mast3r" and summary["frames"] == n and summary["keyframes"] >= 1
    assert summary["graph"]["retrieval"] is True  # the retrieval head feeds the keyframe database
    assert summary["image_transform"]["source_size"] == [128, 96]
    names = [l.split(maxsplit=5)[5] for l in (out / "frames.txt").read_text().splitlines() if not l.startswith("#")]
    assert names[0].startswith("frame_") and len(set(names)) == n


@pytest.mark.parametrize("kind", ["wrong_shape", "code_pickle", "not_a_checkpoint"])
def test_bad_codebook_or_retrieval_checkpoint_is_one_line(tmp_path, capsys, kind):
    """A codebook of the wrong shape, a pickle that would run code, or a retrieval checkpoint that is not one:
    one line naming the file, exit 2, no output folder, nothing run from the file."""
    import pickle

    ckpt = _tiny_checkpoint()
    video = tmp_path / "clip.mp4"
    _write_room_video(video, 3, pts_ms=[0, 33, 66])
    retrieval, codebook = ckpt.parent / "retrieval.pth", tmp_path / "codebook.pkl"
    marker = tmp_path / "ran"
    if kind == "wrong_shape":
        np.save(tmp_path / "codebook.npy", np.zeros((16, 7), np.float32))  # features are 64-d
        codebook = tmp_path / "codebook.npy"
    elif kind == "code_pickle":

        class Evil:
            def __reduce__(self):
                return (open, (str(marker), "w"))

        codebook.write_bytes(pickle.dumps(Evil()))
    else:
        retrieval = tmp_path / "retrieval.pth"
        retrieval.write_bytes(b"not a checkpoint at all" * 10)
    out = tmp_path / "out"
    args = ["run", str(video), "--out", str(out), "--prior", "mast3r", "--checkpoint", str(ckpt)]
    args += ["--retrieval-checkpoint", str(retrieval), "--img-size", "96", "--quiet"]
    if kind != "not_a_checkpoint":
        args += ["--codebook", str(codebook)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    bad = retrieval if kind == "not_a_checkpoint" else codebook
    assert len(err) == 1 and str(bad) in err[0], err
    assert not out.exists() and not marker.exists()


def test_precision_bf16_reaches_the_network(tmp_path):
    """`--precision bf16`: the run works, records the setting, and its points are the autocast network's (they
    differ from the float32 run's, by about the drift tests/model/test_autocast.py bounds)."""
    from mslam_ns.io.writers import read_ply

    ckpt = _tiny_checkpoint()
    video = tmp_path / "clip.mp4"
    _write_room_video(video, 4, pts_ms=[0, 33, 66, 100])
    pts = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        args = ["run", str(video), "--out", str(out), "--prior", "mast3r", "--checkpoint", str(ckpt)]
        assert main([*args, "--img-size", "96", "--precision", precision, "--quiet"]) == 0
        assert f"precision: {precision}" in (out / "config.yaml").read_text()
        pts[precision] = read_ply(out / "points.ply")[0]
    a, b = pts["fp32"], pts["bf16"]
    assert len(a) > 1000 and abs(len(a) - len(b)) < 0.05 * len(a)  # measured 6144 and 6144
    n = min(len(a), len(b))
    rel = np.linalg.norm(a[:n] - b[:n], axis=1) / np.linalg.norm(a[:n], axis=1)
    assert 2e-3 < np.median(rel) < 0.015, np.median(rel)  # measured 0.0059
