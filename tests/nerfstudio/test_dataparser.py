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
