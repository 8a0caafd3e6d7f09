"""The `mslam-data` dataparser: registered through nerfstudio's entry point, light to import, and turning
a dataset folder / run folder / processed folder into nerfstudio's own outputs (cached)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nerfstudio")

IMG = 128


def test_registered_through_the_entry_point():
    from nerfstudio.plugins.registry_dataparser import discover_dataparsers

    from mslam_ns.nerfstudio.dataparser import MslamDataParser, MslamDataParserConfig

    parsers, descriptions = discover_dataparsers()
    assert isinstance(parsers["mslam-data"], MslamDataParserConfig)
    assert parsers["mslam-data"]._target is MslamDataParser and "mslam" in descriptions["mslam-data"]


def test_entry_point_module_is_light():
    """nerfstudio imports it at the start of every ns-* command: no SLAM, model, kernels or open3d."""
    code = (
        "import sys, mslam_ns.nerfstudio.dataparser; heavy = [m for m in sys.modules if m.startswith("
        "('mslam_ns.slam', 'mslam_ns.model', 'mslam_ns.cuda', 'mslam_ns.prior', 'open3d'))]; print(heavy)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"


@pytest.fixture(scope="module")
def seq(tmp_path_factory) -> Path:
    from mslam_ns.io.synthetic import generate_sequence

    return generate_sequence(tmp_path_factory.mktemp("dp") / "seq", 20, 160, 120, seed=2)


def _outputs(data: Path, cache: Path, split: str = "train", **kw):
    from mslam_ns.nerfstudio.dataparser import MslamDataParserConfig

    cfg = MslamDataParserConfig(data=data, prior="oracle", img_size=IMG, cache_dir=cache, downscale_factor=1, **kw)
    return cfg.setup().get_dataparser_outputs(split)


def test_dataset_folder_runs_the_slam_once_then_uses_the_cache(seq, tmp_path):
    cache = tmp_path / "cache"
    outs = _outputs(seq, cache)
    ev = _outputs(seq, cache, split="val")
    assert len(outs.image_filenames) + len(ev.image_filenames) == 20  # nerfstudio's 90/10 split
    assert len(ev.image_filenames) >= 1
    pts = outs.metadata["points3D_xyz"]
    assert pts.shape[1] == 3 and len(pts) > 1000 and outs.metadata["points3D_rgb"].dtype.is_floating_point is False
    (folder,) = [p for p in cache.iterdir() if (p / "transforms.json").is_file()]
    # the seed points are the cached dataset's sparse_pc.ply, moved with the poses into nerfstudio's frame
    from mslam_ns.geometry.conventions import to_nerfstudio_points
    from mslam_ns.io.writers import read_ply

    ours = to_nerfstudio_points(read_ply(folder / "sparse_pc.ply")[0])  # saved -> our world (an involution)
    T, sc = outs.dataparser_transform.double().numpy(), float(outs.dataparser_scale)
    np.testing.assert_allclose(pts.double().numpy(), sc * (ours @ T[:, :3].T + T[:, 3]), atol=1e-4)
    # per-point confidence and keyframe for the splats (opacities, following keyframe corrections)
    conf, kf = outs.metadata["points3D_confidence"], outs.metadata["points3D_keyframe"]
    assert conf.shape == (len(pts),) and kf.shape == (len(pts),)
    assert float(conf.min()) > 1.5  # only confident points are exported (conf_thresh 1.5)
    n_kf = len((folder / "mslam_run" / "keyframes.txt").read_text().split("\n")) - 1
    assert int(kf.min()) >= 0 and len(set(kf.tolist())) >= min(3, n_kf) and int(kf.max()) < n_kf + 1
    stamp = (folder / "mslam_run" / "summary.json").stat().st_mtime_ns
    again = _outputs(seq, cache)
    assert (folder / "mslam_run" / "summary.json").stat().st_mtime_ns == stamp  # the cached run was used
    np.testing.assert_allclose(again.cameras.camera_to_worlds, outs.cameras.camera_to_worlds)


def test_run_folder_and_processed_folder(seq, tmp_path):
    from mslam_ns.cli import main

    run = tmp_path / "run"
    assert main(["run", str(seq), "--out", str(run), "--prior", "oracle", "--img-size", str(IMG), "--quiet"]) == 0
    outs = _outputs(run, tmp_path / "cache", eval_mode="all")
    assert len(outs.image_filenames) == 20
    ns = tmp_path / "ns"
    assert main(["export", str(run), "--out", str(ns), "--num-downscales", "0", "--quiet"]) == 0
    outs2 = _outputs(ns, tmp_path / "unused", eval_mode="all")
    assert not (tmp_path / "unused").exists()  # a ready dataset is read in place
    np.testing.assert_allclose(outs2.cameras.camera_to_worlds, outs.cameras.camera_to_worlds, atol=1e-5)
    meta = json.loads((ns / "transforms.json").read_text())
    assert len(meta["frames"]) == 20


def test_bad_data_is_a_one_line_value_error(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        _outputs(tmp_path / "nope", tmp_path / "cache")


def test_ns_train_offers_mslam_data():
    """nerfstudio's own `ns-train` lists the dataparser with its options (and still starts with it installed)."""
    import os

    ns_train = Path(sys.executable).parent / "ns-train"
    r = subprocess.run(
        [str(ns_train), "splatfacto", "mslam-data", "--help"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert r.returncode == 0, r.stderr
    for flag in ("--prior", "--slam-config", "--cache-dir", "--orientation-method", "--auto-scale-poses"):
        assert flag in r.stdout, flag


def test_a_json_file_is_read_itself(tmp_path):
    """`--data x/foo.json`: nerfstudio reads foo.json (its frames), not x/transforms.json."""
    from tests.nerfstudio._ns_dataset import write_ns_dataset

    write_ns_dataset(tmp_path / "ds", frames=12)
    meta = json.loads((tmp_path / "ds" / "transforms.json").read_text())
    meta["frames"] = meta["frames"][:5]
    (tmp_path / "ds" / "foo.json").write_text(json.dumps(meta))
    outs = _outputs(tmp_path / "ds" / "foo.json", tmp_path / "unused", eval_mode="all")
    assert [Path(f).name for f in outs.image_filenames] == [Path(f["file_path"]).name for f in meta["frames"]]
    assert len(outs.metadata["points3D_xyz"]) > 100 and not (tmp_path / "unused").exists()


@pytest.mark.parametrize("jitter", [0.0, 1e-6])
def test_a_pan_from_one_place_is_scaled_by_its_points(tmp_path, jitter):
    """A tripod pan: every camera centre at one place (nerfstudio's auto_scale_poses divides by zero) or
    within a micrometre of it (its scale would blow the points up a million times): the points fill +/- 1,
    every camera stays at the centre, and points and cameras are scaled together (nothing else changes)."""
    import torch

    from tests.nerfstudio._ns_dataset import write_ns_dataset

    write_ns_dataset(tmp_path / "ds", frames=12)
    meta = json.loads((tmp_path / "ds" / "transforms.json").read_text())
    rng = np.random.default_rng(0)
    for f in meta["frames"]:
        m = np.array(f["transform_matrix"])
        m[:3, 3] = meta["frames"][0]["transform_matrix"][0][3], 0.2, -0.1
        m[:3, 3] += jitter * rng.standard_normal(3)
        f["transform_matrix"] = m.tolist()
    (tmp_path / "ds" / "pan.json").write_text(json.dumps(meta))
    outs = _outputs(tmp_path / "ds" / "pan.json", tmp_path / "unused", eval_mode="all")
    pts = outs.metadata["points3D_xyz"]
    assert torch.isfinite(pts).all() and abs(float(pts.abs().max()) - 1.0) < 1e-5
    centres = outs.cameras.camera_to_worlds[:, :3, 3]
    assert float(centres.abs().max()) < 1e-5  # centred (and jitter * scale stays tiny)
    # the same scene, nerfstudio's own scale left out: points and cameras scaled together (the ratio is kept)
    plain = _outputs(tmp_path / "ds" / "pan.json", tmp_path / "unused", eval_mode="all", auto_scale_poses=False)
    s = float(plain.metadata["points3D_xyz"].abs().max())
    np.testing.assert_allclose(pts.numpy() * s, plain.metadata["points3D_xyz"].numpy(), atol=1e-4 * s)
    assert abs(outs.dataparser_scale * s - plain.dataparser_scale) < 1e-5 * plain.dataparser_scale


def _cached(cache: Path) -> list[Path]:
    return sorted(p for p in cache.iterdir() if (p / "transforms.json").is_file())


def test_run_folder_cache_follows_content_and_settings(seq, tmp_path):
    """A run folder's dataset is cached by the run's content, its input frames and --num-frames-target (which
    it honours): unchanged reuses the cached folder, a new target, a changed run or new input images make a
    new one."""
    import shutil

    from PIL import Image

    from mslam_ns.cli import main

    run, cache = tmp_path / "run", tmp_path / "cache"
    seq = Path(shutil.copytree(seq, tmp_path / "seq"))  # its images are edited below
    assert main(["run", str(seq), "--out", str(run), "--prior", "oracle", "--img-size", str(IMG), "--quiet"]) == 0
    assert len(_outputs(run, cache, eval_mode="all", num_frames_target=20).image_filenames) == 20
    (first,) = _cached(cache)
    stamp = (first / "transforms.json").stat().st_mtime_ns
    _outputs(run, cache, eval_mode="all", num_frames_target=20)
    assert _cached(cache) == [first] and (first / "transforms.json").stat().st_mtime_ns == stamp
    assert len(_outputs(run, cache, eval_mode="all", num_frames_target=8).image_filenames) == 8
    assert len(_cached(cache)) == 2
    with open(run / "edges.txt", "a") as f:  # new run content (a comment: still a valid run)
        f.write("# edited\n")
    assert len(_outputs(run, cache, eval_mode="all", num_frames_target=8).image_filenames) == 8
    assert len(_cached(cache)) == 3
    frame = sorted((seq / "rgb").iterdir())[0]  # the exported images would come from these files
    with Image.open(frame) as im:
        flipped = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    flipped.save(frame)
    outs = _outputs(run, cache, eval_mode="all", num_frames_target=8)
    assert len(_cached(cache)) == 4
    with Image.open(outs.image_filenames[0]) as im:
        np.testing.assert_array_equal(np.asarray(im.convert("RGB")), np.asarray(flipped.convert("RGB")))


def test_slam_cache_follows_input_content_and_settings(seq, tmp_path):
    """A dataset folder run through the SLAM: a changed frame or another SLAM setting is a new cache entry;
    the same input and settings are the same entry (its run folder untouched)."""
    import shutil

    from PIL import Image

    data, cache = tmp_path / "seq", tmp_path / "cache"
    shutil.copytree(seq, data)
    _outputs(data, cache)
    (first,) = _cached(cache)
    stamp = (first / "mslam_run" / "summary.json").stat().st_mtime_ns
    _outputs(data, cache)
    assert _cached(cache) == [first] and (first / "mslam_run" / "summary.json").stat().st_mtime_ns == stamp
    frame = sorted((data / "rgb").iterdir())[7]
    img = np.asarray(Image.open(frame)).copy()
    img[:8, :8] = 255 - img[:8, :8]
    Image.fromarray(img).save(frame)
    _outputs(data, cache)
    assert len(_cached(cache)) == 2
    from mslam_ns.nerfstudio.dataparser import MslamDataParserConfig

    MslamDataParserConfig(data=data, prior="oracle", img_size=96, cache_dir=cache).setup().get_dataparser_outputs()
    assert len(_cached(cache)) == 3


def _tiny_checkpoint() -> Path:
    from tests.model._fixtures import fixture_dirs

    for d in fixture_dirs():
        if (d / "checkpoint.pth").is_file():
            return d / "checkpoint.pth"
    pytest.skip("no MASt3R fixture checkpoint (tests/data/mast3r/tiny_A)")


def _small_seq(root: Path) -> Path:
    from mslam_ns.io.synthetic import generate_sequence

    return generate_sequence(root / "small", 12, 128, 96, seed=5)


def test_image_folder_through_the_dataparser(tmp_path):
    """A plain image folder (no depth, no ground truth) runs the MASt3R prior (the tiny fixture network:
    random weights, so only the plumbing is checked) and comes back as nerfstudio outputs of its tracked
    frames, with the folder's own file names and size."""
    from mslam_ns.nerfstudio.dataparser import MslamDataParserConfig

    small = _small_seq(tmp_path)
    cfg = MslamDataParserConfig(
        data=small / "rgb",
        prior="mast3r",
        checkpoint=_tiny_checkpoint(),
        calib=small / "calibration.txt",
        img_size=96,
        cache_dir=tmp_path / "cache",
        downscale_factor=1,
        eval_mode="all",
        auto_scale_poses=False,  # random weights: the tracked poses may all sit at the origin
    )
    outs = cfg.setup().get_dataparser_outputs("train")
    (folder,) = _cached(tmp_path / "cache")
    run = json.loads((folder / "mslam_run" / "summary.json").read_text())
    names = {p.name for p in (small / "rgb").iterdir()}
    got = [Path(f).name for f in outs.image_filenames]
    assert 1 <= len(got) <= 12 and set(got) <= names and run["frames"] == 12
    assert (int(outs.cameras.width[0]), int(outs.cameras.height[0])) == (128, 96)


def test_video_through_ns_process_data(tmp_path):
    """A video file: decoded by PyAV, every frame written (with --include-lost) with the container's times."""
    av = pytest.importorskip("av")
    from PIL import Image

    from mslam_ns.nerfstudio.process_data import ProcessMslam, process

    small = _small_seq(tmp_path)
    video = tmp_path / "clip.mp4"
    c = av.open(str(video), "w")
    s = c.add_stream("libx264", rate=10)
    s.width, s.height, s.pix_fmt = 128, 96, "yuv420p"
    for f in sorted((small / "rgb").iterdir()):
        for pkt in s.encode(av.VideoFrame.from_ndarray(np.asarray(Image.open(f).convert("RGB")), format="rgb24")):
            c.mux(pkt)
    for pkt in s.encode():
        c.mux(pkt)
    c.close()
    out = tmp_path / "out"
    p = ProcessMslam(
        data=video,
        output_dir=out,
        prior="mast3r",
        checkpoint=_tiny_checkpoint(),
        calib=small / "calibration.txt",
        img_size=96,
        num_downscales=1,
        include_lost=True,
    )
    process(p)
    meta = json.loads((out / "transforms.json").read_text())
    assert len(meta["frames"]) == 12 and (meta["w"], meta["h"]) == (128, 96)
    np.testing.assert_allclose([f["timestamp"] for f in meta["frames"]], np.arange(12) / 10.0, atol=1e-6)
    assert all(Image.open(out / f["file_path"]).size == (128, 96) for f in meta["frames"])
    assert not meta["frames"][0]["mslam_lost"]
