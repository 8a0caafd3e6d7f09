"""A sweep of every command's file arguments with bad inputs, as the README promises: each ends in ONE line
naming the file (exit code 2), nothing is written, nothing is run from an untrusted file, and the user's
existing files are untouched."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mslam_ns.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY_CKPT = REPO / "tests" / "data" / "mast3r" / "tiny_A" / "checkpoint.pth"
TINY_RETRIEVAL = REPO / "tests" / "data" / "mast3r" / "tiny_A" / "retrieval.pth"


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Good and bad inputs, made once (the tests only read them)."""
    import torch

    from mslam_ns.model.checkpoint import read_checkpoint

    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    img = d / "img.png"
    Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(img)
    Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(d / "img2.png")
    (d / "notes.txt").write_text("not an image\n")
    (d / "random.pth").write_bytes(rng.integers(0, 255, 4096, dtype=np.uint8).tobytes())
    torch.save({"model": {"w": torch.zeros(2)}, "args": _RunsCode()}, d / "evil.pth")
    (d / "evil.pkl").write_bytes(pickle.dumps(_RunsCode()))
    sd = read_checkpoint(TINY_CKPT)
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
    (d / "random.bin").write_bytes(rng.integers(0, 255, 4096, dtype=np.uint8).tobytes())
    np.save(d / "small_codebook.npy", rng.standard_normal((4, 3)).astype(np.float32))  # 3-d words
    whole = pickle.dumps({"state": {"centroids": rng.standard_normal((64, 8)).astype(np.float32)}})
    (d / "cut.pkl").write_bytes(whole[: len(whole) // 2])  # a pickle cut off halfway
    (d / "existing").mkdir()
    (d / "existing" / "keep.txt").write_text("the user's file\n")
    (d / "a_file").write_text("a file where a folder is expected\n")
    # a real (tiny) run folder, for the commands that read one
    assert main(["synth", str(d / "seq"), "--frames", "8", "--width", "64", "--height", "48"]) == 0
    assert main(["run", str(d / "seq"), "--out", str(d / "run"), "--img-size", "64", "--quiet"]) == 0
    return {p.name: p for p in d.iterdir()}


# `run --prior mast3r` with the fixture network and its retrieval head (so that a codebook is used)
MAST3R_RUN = ["run", "{frames}", "--out", "{d}/out", "--prior", "mast3r", "--checkpoint", "{ckpt}"] + [
    "--retrieval-checkpoint",
    "{ret}",
    "--img-size",
    "64",
]

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
    (
        "run: codebook for the oracle prior",
        ["run", "{frames}", "--out", "{d}/out", "--codebook", "{small_codebook.npy}"],
        "small_codebook.npy",
    ),
    (
        "run: checkpoint for the oracle prior",
        ["run", "{frames}", "--out", "{d}/out", "--checkpoint", "{ckpt}"],
        "checkpoint.pth",
    ),
    (
        "run: codebook without a retrieval head",
        ["run", "{frames}", "--out", "{d}/out", "--prior", "mast3r", "--checkpoint", "{ckpt}"]
        + ["--codebook", "{small_codebook.npy}"],
        "small_codebook.npy",
    ),
    ("run: random-bytes codebook", [*MAST3R_RUN, "--codebook", "{random.bin}"], "random.bin"),
    ("run: code-running codebook", [*MAST3R_RUN, "--codebook", "{evil.pkl}"], "evil.pkl"),
    ("run: damaged codebook pickle", [*MAST3R_RUN, "--codebook", "{cut.pkl}"], "cut.pkl"),
    ("run: codebook of the wrong dimension", [*MAST3R_RUN, "--codebook", "{small_codebook.npy}"], "small_codebook.npy"),
    ("run: missing codebook", [*MAST3R_RUN, "--codebook", "{d}/nope.pkl"], "nope.pkl"),
    (
        "run: random-bytes retrieval checkpoint",
        ["run", "{frames}", "--out", "{d}/out", "--prior", "mast3r", "--checkpoint", "{ckpt}"]
        + ["--retrieval-checkpoint", "{random.pth}"],
        "random.pth",
    ),
    (
        "run: code-running retrieval checkpoint",
        ["run", "{frames}", "--out", "{d}/out", "--prior", "mast3r", "--checkpoint", "{ckpt}"]
        + ["--retrieval-checkpoint", "{evil.pth}"],
        "evil.pth",
    ),
    (
        "run: missing retrieval checkpoint",
        ["run", "{frames}", "--out", "{d}/out", "--prior", "mast3r", "--checkpoint", "{ckpt}"]
        + ["--retrieval-checkpoint", "{d}/nope_ret.pth"],
        "nope_ret.pth",
    ),
    (
        "run: a CUDA device this machine lacks",
        ["run", "{frames}", "--out", "{d}/out", "--device", "cuda:99"],
        "cuda:99",
    ),
    (
        "run: a tracking grid stride below 1",
        ["run", "{frames}", "--out", "{d}/out", "--tracking.pixel-stride", "0"],
        "pixel-stride 0",
    ),
    (
        "run: a network precision for the oracle prior",
        ["run", "{seq}", "--out", "{d}/out", "--precision", "bf16"],
        "--precision bf16",
    ),
    ("run: fp16 network on a CPU", [*MAST3R_RUN, "--precision", "fp16"], "--precision fp16"),
    ("run: CUDA graphs on a CPU", [*MAST3R_RUN, "--cuda-graphs"], "--cuda-graphs"),
    ("run: CUDA graphs for the oracle prior", ["run", "{seq}", "--out", "{d}/out", "--cuda-graphs"], "oracle prior"),
    ("export: missing run", ["export", "{d}/no_run", "--out", "{d}/exported"], "no_run"),
    ("export: not a run folder", ["export", "{existing}", "--out", "{d}/exported"], "existing"),
    ("export: out is a file", ["export", "{run}", "--format", "ply", "--out", "{a_file}"], "a_file"),
    ("export: out is a non-empty folder", ["export", "{run}", "--format", "ply", "--out", "{existing}"], "existing"),
    ("view: missing run", ["view", "{d}/no_run"], "no_run"),
    ("view: not a run folder", ["view", "{existing}"], "existing"),
    ("view: a file as run", ["view", "{notes.txt}"], "notes.txt"),
    ("eval: missing run", ["eval", "{d}/no_run", "--gt", "{gt.txt}"], "no_run"),
    ("eval: not a run folder", ["eval", "{existing}", "--gt", "{gt.txt}"], "existing"),
    ("eval: garbage ground truth", ["eval", "{existing}", "--gt", "{gt_garbage.txt}"], "gt_garbage.txt"),
]


def _fill(argv: list[str], files: dict[str, Path]) -> list[str]:
    d = next(iter(files.values())).parent
    subs = {"{d}": str(d), "{ckpt}": str(TINY_CKPT), "{ret}": str(TINY_RETRIEVAL)}
    subs.update({f"{{{k}}}": str(v) for k, v in files.items()})
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


# Through the installed `mslam-ns` script (logging set up as for a user, so a warning or an INFO line printed
# before the error would show): still exactly one line on stderr, exit code 2.
ENTRY_POINT_CASES = [
    "run: random-bytes codebook",
    "run: codebook of the wrong dimension",
    "run: codebook for the oracle prior",
    "run: random-bytes checkpoint",
    "export: missing run",
]


@pytest.mark.parametrize("case", ENTRY_POINT_CASES)
def test_bad_argument_through_the_installed_entry_point_is_one_line(files, case) -> None:
    argv = {i: a for i, a, _ in CASES}[case]
    names = {i: n for i, _, n in CASES}[case]
    exe = Path(sys.executable).with_name("mslam-ns")
    assert exe.is_file(), f"{exe}: the package's console script is not installed (pip install -e .)"
    d = next(iter(files.values())).parent
    before = _snapshot(d)
    env = {**os.environ, "MSLAM_NS_WEIGHTS_URL": "http://127.0.0.1:9", "OMP_WAIT_POLICY": "PASSIVE"}
    r = subprocess.run([str(exe), *_fill(argv, files)], cwd=d, capture_output=True, text=True, env=env, timeout=300)
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr
    assert len(err) == 1 and err[0].startswith("mslam-ns: error:") and names in err[0], err
    assert _snapshot(d) == before


def test_spill_files_hold_plain_data_and_a_planted_pickle_is_refused(tmp_path, monkeypatch) -> None:
    """The SLAM's scratch folder may sit where the user says (`memory.spill_dir`): its files are read back with
    `weights_only=True`, so a file there that would run code is refused instead of run."""
    import torch

    from mslam_ns.slam.backend import EdgeMatches
    from mslam_ns.slam.spill import SpillStore, pack_half, unpack_half

    monkeypatch.chdir(tmp_path)
    store = SpillStore(tmp_path / "spill")
    rng = np.random.default_rng(1)
    m = EdgeMatches(torch.arange(6, dtype=torch.int32), torch.ones(6, dtype=torch.bool), torch.rand(6), 0.5)
    payload = {"X": torch.rand(4, 3), "rgb": rng.integers(0, 255, (2, 2, 3), dtype=np.uint8), "m": m, "t": (1, "a")}
    store.write("kf0", pack_half(payload))
    raw = torch.load(store.path / "kf0.pt", weights_only=True)  # plain data: loads without any allow-list
    assert isinstance(raw, dict)
    back = unpack_half(store.read("kf0"))
    assert torch.allclose(back["X"], payload["X"], rtol=1e-3) and back["X"].dtype == torch.float32
    assert np.array_equal(back["rgb"], payload["rgb"]) and back["t"] == (1, "a")
    assert isinstance(back["m"], EdgeMatches) and torch.equal(back["m"].idx, m.idx) and back["m"].frac == 0.5
    torch.save({"X": _RunsCode()}, store.path / "kf0.pt")  # planted over our file
    with pytest.raises(pickle.UnpicklingError):
        store.read("kf0")
    assert not (tmp_path / "PWNED").exists()
    store.close()
