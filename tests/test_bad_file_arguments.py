"""A sweep of every command's file arguments with bad inputs, as the README promises: each ends in ONE line
naming the file (exit code 2), nothing is written, nothing is run from an untrusted file, and the user's
existing files are untouched."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mslam_ns.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY_CKPT = REPO / "tests" / "data" / "mast3r" / "tiny_A" / "checkpoint.pth"


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Good and bad inputs, made once (the tests only read them)."""
    import torch

    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    img = d / "img.png"
    Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(img)
    Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(d / "img2.png")
    (d / "notes.txt").write_text("not an image\n")
    (d / "random.pth").write_bytes(rng.integers(0, 255, 4096, dtype=np.uint8).tobytes())
    torch.save({"model": {"w": torch.zeros(2)}, "args": _RunsCode()}, d / "evil.pth")
    (d / "evil.pkl").write_bytes(pickle.dumps(_RunsCode()))
    sd = torch.load(TINY_CKPT, weights_only=False)
    key = next(iter(sd["model"]))
    sd["model"][key] = torch.zeros(3, 3)
    torch.save(sd, d / "wrong_shape.pth")
    (d / "empty.pth").write_bytes(b"")
    (d / "bad_calib.txt").write_text("fx fy cx cy\n")
    (d / "bad_config.yaml").write_text("img_size: [unclosed\n")
    (d / "unknown_config.yaml").write_text("no_such_option: 3\n")
    (d / "gt_garbage.txt").write_text("this is not a trajectory\n")
    (d / "gt.txt").write_text("".join(f"{k / 30:.6f} {k * 0.01} 0 0 0 0 0 1\n" for k in range(10)))
    folder = d / "frames"
    folder.mkdir()
    for k in range(3):
        Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(folder / f"{k}.png")
    (d / "existing").mkdir()
    (d / "existing" / "keep.txt").write_text("the user's file\n")
    (d / "a_file").write_text("a file where a folder is expected\n")
    return {p.name: p for p in d.iterdir()}


CASES = [
    # id, argv ({name} = that input file, {d} = their folder, {ckpt} = a valid checkpoint), what the line names
    (
        "infer: missing image",
        ["infer", "{d}/nope.png", "{img.png}", "--checkpoint", "{ckpt}", "--out", "{d}/o.npz"],
        "nope.png",
    ),
    (
        "infer: folder as image",
        ["infer", "{frames}", "{img.png}", "--checkpoint", "{ckpt}", "--out", "{d}/o.npz"],
        "frames",
    ),
    (
        "infer: text as image",
        ["infer", "{notes.txt}", "{img.png}", "--checkpoint", "{ckpt}", "--out", "{d}/o.npz"],
        "notes.txt",
    ),
    (
        "infer: random-bytes checkpoint",
        ["infer", "{img.png}", "{img2.png}", "--checkpoint", "{random.pth}", "--out", "{d}/o.npz"],
        "random.pth",
    ),
    (
        "infer: code-running checkpoint",
        ["infer", "{img.png}", "{img2.png}", "--checkpoint", "{evil.pth}", "--out", "{d}/o.npz"],
        "evil.pth",
    ),
    (
        "infer: raw pickle checkpoint",
        ["infer", "{img.png}", "{img2.png}", "--checkpoint", "{evil.pkl}", "--out", "{d}/o.npz"],
        "evil.pkl",
    ),
    (
        "infer: wrong-shape checkpoint",
        ["infer", "{img.png}", "{img2.png}", "--checkpoint", "{wrong_shape.pth}", "--out", "{d}/o.npz"],
        "wrong_shape.pth",
    ),
    (
        "infer: empty checkpoint",
        ["infer", "{img.png}", "{img2.png}", "--checkpoint", "{empty.pth}", "--out", "{d}/o.npz"],
        "empty.pth",
    ),
    (
        "infer: out is a folder",
        ["infer", "{img.png}", "{img2.png}", "--checkpoint", "{ckpt}", "--out", "{existing}"],
        "existing",
    ),
    ("download: cache dir is a file", ["download", "--name", "mast3r", "--cache-dir", "{a_file}"], "a_file"),
    ("synth: out is a file", ["synth", "{a_file}", "--frames", "3", "--width", "64", "--height", "48"], "a_file"),
    (
        "synth: out is someone's folder",
        ["synth", "{existing}", "--frames", "3", "--width", "64", "--height", "48"],
        "existing",
    ),
    ("run: missing dataset", ["run", "{d}/missing", "--out", "{d}/out"], "missing"),
    ("run: text file as dataset", ["run", "{notes.txt}", "--out", "{d}/out"], "notes.txt"),
    (
        "run: missing calibration",
        ["run", "{frames}", "--out", "{d}/out", "--calib", "{d}/nope_calib.txt"],
        "nope_calib.txt",
    ),
    ("run: bad calibration", ["run", "{frames}", "--out", "{d}/out", "--calib", "{bad_calib.txt}"], "bad_calib.txt"),
    (
        "run: code-running checkpoint",
        ["run", "{frames}", "--out", "{d}/out", "--prior", "mast3r", "--checkpoint", "{evil.pth}"],
        "evil.pth",
    ),
    (
        "run: random-bytes checkpoint",
        ["run", "{frames}", "--out", "{d}/out", "--prior", "mast3r", "--checkpoint", "{random.pth}"],
        "random.pth",
    ),
    ("run: out is a file", ["run", "{frames}", "--out", "{a_file}"], "a_file"),
    ("run: out is a non-empty folder", ["run", "{frames}", "--out", "{existing}"], "existing"),
    ("run: missing config", ["run", "{frames}", "--out", "{d}/out", "--config", "{d}/nope.yaml"], "nope.yaml"),
    ("run: broken config", ["run", "{frames}", "--out", "{d}/out", "--config", "{bad_config.yaml}"], "bad_config.yaml"),
    (
        "run: unknown config key",
        ["run", "{frames}", "--out", "{d}/out", "--config", "{unknown_config.yaml}"],
        "unknown_config.yaml",
    ),
    ("eval: missing run", ["eval", "{d}/no_run", "--gt", "{gt.txt}"], "no_run"),
    ("eval: not a run folder", ["eval", "{existing}", "--gt", "{gt.txt}"], "existing"),
    ("eval: garbage ground truth", ["eval", "{existing}", "--gt", "{gt_garbage.txt}"], "gt_garbage.txt"),
]


def _fill(argv: list[str], files: dict[str, Path]) -> list[str]:
    d = next(iter(files.values())).parent
    subs = {"{d}": str(d), "{ckpt}": str(TINY_CKPT), **{f"{{{k}}}": str(v) for k, v in files.items()}}
    out = []
    for a in argv:
        for k, v in subs.items():
            a = a.replace(k, v)
        out.append(a)
    return out


def _snapshot(d: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(d)): (p.read_bytes() if p.is_file() else None) for p in sorted(d.rglob("*"))}


@pytest.mark.parametrize(("argv", "names"), [pytest.param(a, n, id=i) for i, a, n in CASES])
def test_bad_file_argument_is_one_line_exit_2_nothing_written(files, argv, names, capsys, monkeypatch) -> None:
    d = next(iter(files.values())).parent
    monkeypatch.chdir(d)  # a pickle that ran code would leave PWNED here
    before = _snapshot(d)
    rc = main(_fill(argv, files))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert len(err) == 1 and err[0].startswith("mslam-ns: error:"), err
    assert names in err[0], err
    assert "weights_only" not in err[0] and "Traceback" not in err[0]
    assert _snapshot(d) == before  # nothing written, nothing removed, the user's files untouched
