"""`mslam-ns export`: nerfstudio / COLMAP / TUM / PLY, read back by nerfstudio's own dataparser and pycolmap.

One synthetic sequence (30 frames 160x120, oracle prior with MASt3R-like noise, calibrated mode so that every
fused point stays on its pixel's ray), one run, exports checked against the run and against ground truth.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mslam_ns.cli import main

pytest.importorskip("nerfstudio")

FRAMES, W, H, IMG_SIZE = 30, 160, 120, 128
MAX_POINTS = 20_000  # small enough that the voxel down-sampling is exercised
# Measured on this sequence: ATE RMSE 0.48% of the path (calib, 'mast3r' noise); bound 1.5x.
ATE_BOUND_PERCENT = 0.75
# Measured: exported depth / GT depth has a 10-90% spread of 3.6% of its median; bound 1.5x.
DEPTH_SPREAD_BOUND = 0.055
# Measured: the depth nerfstudio loads, back-projected through its cameras, is within 0.585 voxels of a seed
# point for 90% of the pixels; in metres (metres_per_slam_unit) its median ratio to the GT depth is 0.972.
NEAR_SEED_VOXELS = 0.88
METRIC_DEPTH_ERROR = 0.042
# Measured (rays mode, estimated intrinsics): points seen from 3 frames later land 0.348 px (median) / 1.85 px
# (90%) from where the ground truth puts them (calibrated: 0.200 / 0.407); bounds 1.5x.
RAYS_MEDIAN_PX = 0.52
RAYS_P90_PX = 2.8


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from mslam_ns.io.synthetic import generate_sequence

    root = tmp_path_factory.mktemp("export")
    seq = generate_sequence(root / "seq", FRAMES, W, H, seed=3)
    out = root / "run"
    assert (
        main(
            [
                "run",
                str(seq),
                "--out",
                str(out),
                "--prior",
                "oracle",
                "--img-size",
                str(IMG_SIZE),
                "--calib",
                str(seq / "calibration.txt"),
                "--motion-filter.enabled",
                "off",  # the bounds below were measured decoding every frame (the filter has its own tests)
                "--quiet",
            ]
        )
        == 0
    )
    return out


@pytest.fixture(scope="module")
def ns_export(run_dir) -> Path:
    out = run_dir.parent / "ns"
    assert (
        main(
            [
                "export",
                str(run_dir),
                "--format",
                "nerfstudio",
                "--out",
                str(out),
                "--num-downscales",
                "2",
                "--depth",
                "--max-points",
                str(MAX_POINTS),
                "--quiet",
            ]
        )
        == 0
    )
    return out


def _parse(folder: Path, parser: str = "nerfstudio-data", **kw):
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    from mslam_ns.nerfstudio.dataparser import MslamDataParserConfig

    cls = NerfstudioDataParserConfig if parser == "nerfstudio-data" else MslamDataParserConfig
    cfg = cls(data=folder, eval_mode="all", load_3D_points=True, downscale_factor=1, **kw)
    return cfg.setup().get_dataparser_outputs("train")


def _nerfstudio_pca_bug_hits(folder: Path, center: str) -> bool:
    """Whether nerfstudio 1.1.5's pca orientation takes its buggy branch on this dataset (it negates
    `oriented_poses[1:3]`, two whole poses, instead of rows 1:3 of all of them)."""
    import torch
    from nerfstudio.cameras.camera_utils import auto_orient_and_center_poses

    meta = json.loads((folder / "transforms.json").read_text())
    poses = torch.tensor([f["transform_matrix"] for f in meta["frames"]], dtype=torch.float32)
    out, T = auto_orient_and_center_poses(poses.clone(), method="pca", center_method=center)
    return not torch.allclose(out, T @ poses, atol=1e-4)


def test_transforms_json_layout(ns_export, run_dir):
    from mslam_ns.io.rundir import RunDir

    meta = json.loads((ns_export / "transforms.json").read_text())
    table = RunDir(run_dir).read_frames()
    tracked = [n for n, lost in zip(table.names, table.lost) if not lost]
    assert [f["original_name"] for f in meta["frames"]] == tracked
    assert all(
        (ns_export / f["file_path"]).is_file() and (ns_export / f["depth_file_path"]).is_file() for f in meta["frames"]
    )
    assert (meta["w"], meta["h"], meta["camera_model"]) == (W, H, "OPENCV")
    for d in (2, 4):
        from PIL import Image

        im = Image.open(ns_export / f"images_{d}" / Path(meta["frames"][0]["file_path"]).name)
        assert im.size == (round(W / d), round(H / d))
    assert meta["applied_transform"] and meta["ply_file_path"] == "sparse_pc.ply"
    # the saved world is the SLAM world (nerfstudio 1.1.5 scales the seed points, not the poses, by
    # applied_scale: the reprojection test below checks they stay together); the factor to metres is recorded
    from mslam_ns.prior.noise import get_noise

    assert meta["applied_scale"] == 1.0
    assert meta["mslam"]["metres_per_slam_unit"] == pytest.approx(1 / get_noise("mast3r").global_scale)
    assert 1000 < meta["mslam"]["points"] <= MAX_POINTS and meta["mslam"]["voxel_size"] > 0


@pytest.mark.parametrize("parser", ["nerfstudio-data", "mslam-data"])
@pytest.mark.parametrize("auto_scale", [True, False])
@pytest.mark.parametrize("center", ["poses", "focus", "none"])
@pytest.mark.parametrize("orientation", ["pca", "up", "vertical", "none"])
def test_nerfstudio_cameras_reproject_seed_points(ns_export, run_dir, orientation, center, auto_scale, parser):
    """Through nerfstudio's own parser (and ours, which wraps it), for every orientation / centre / scale
    option: the rays of the cameras it builds pass through each keyframe's points at the pixels those points
    came from (< 1 px), and its seed points are the exported cloud in the same frame."""
    import torch

    from mslam_ns.io.rundir import RunDir
    from mslam_ns.nerfstudio.export import frame_file_name

    if parser == "nerfstudio-data" and orientation == "pca" and _nerfstudio_pca_bug_hits(ns_export, center):
        pytest.xfail(
            "nerfstudio 1.1.5 bug: auto_orient_and_center_poses(pca) flips poses[1:3], not rows 1:3 "
            "(mslam-data works around it; checked by the mslam-data case)"
        )
    outs = _parse(ns_export, parser, orientation_method=orientation, center_method=center, auto_scale_poses=auto_scale)
    rd = RunDir(run_dir)
    pc, table = rd.read_points(), rd.read_frames()
    T = outs.dataparser_transform.double().numpy()  # [3, 4] our world -> output (with applied_transform)
    s = float(outs.dataparser_scale)
    index = {Path(f).name: i for i, f in enumerate(outs.image_filenames)}
    kf_names = [frame_file_name(n) for n, k in zip(table.names, table.is_keyframe) if k]
    errs = []
    for k, name in enumerate(kf_names):
        sel = np.flatnonzero(pc.keyframe == k)[::7]
        X = s * (pc.xyz[sel].astype(np.float64) @ T[:, :3].T + T[:, 3])
        uv = torch.as_tensor(pc.uv[sel] + 0.5, dtype=torch.float32)  # nerfstudio pixel centres at +0.5
        rays = outs.cameras.generate_rays(torch.full((len(sel), 1), index[name]), coords=uv.flip(-1))
        o, d = rays.origins.double().numpy(), rays.directions.double().numpy()
        v = X - o
        along = (v * d).sum(1)
        assert (along > 0).all()
        perp = np.linalg.norm(v - along[:, None] * d, axis=1)
        errs.append(perp / along * float(outs.cameras.fx[index[name]]))
    e = np.concatenate(errs)
    assert np.percentile(e, 99) < 1.0, f"max {e.max():.3f} px"
    # the seed points: the same world frame (each within a voxel of the full cloud)
    seeds = outs.metadata["points3D_xyz"].double().numpy()
    full = s * (pc.xyz.astype(np.float64) @ T[:, :3].T + T[:, 3])
    voxel = json.loads((ns_export / "transforms.json").read_text())["mslam"]["voxel_size"] * s
    from scipy.spatial import cKDTree

    dist, _ = cKDTree(full).query(seeds[:: max(1, len(seeds) // 3000)])
    assert np.percentile(dist, 99) < np.sqrt(3) * voxel
    assert outs.metadata["points3D_rgb"].shape == (len(seeds), 3)


def test_written_poses_match_ground_truth(ns_export, run_dir):
    from mslam_ns.eval.ate import ate
    from mslam_ns.geometry.conventions import c2w_to_pose7, from_nerfstudio_c2w
    from mslam_ns.io.sources import open_source

    meta = json.loads((ns_export / "transforms.json").read_text())
    src = open_source(json.loads((run_dir / "summary.json").read_text())["dataset"])
    M = from_nerfstudio_c2w(np.array([f["transform_matrix"] for f in meta["frames"]]))
    ts = np.array([f["timestamp"] for f in meta["frames"]])
    r = ate(ts, c2w_to_pose7(M), src.timestamps, src.gt_poses)
    pct = 100 * r.rmse / r.path_length
    print(f"ATE of transforms.json poses: {pct:.3f}% of the path")
    assert r.n_matched == len(meta["frames"]) and pct < ATE_BOUND_PERCENT


def test_depth_maps_follow_ground_truth_up_to_scale(ns_export, run_dir):
    """The exported depth (mm of SLAM units) is the ground-truth depth times one scale."""
    from PIL import Image

    from mslam_ns.io.sources import open_source

    meta = json.loads((ns_export / "transforms.json").read_text())
    src = open_source(json.loads((run_dir / "summary.json").read_text())["dataset"])
    ratios = []
    for i in (0, FRAMES // 2, FRAMES - 1):
        f = meta["frames"][i]
        d = np.asarray(Image.open(ns_export / f["depth_file_path"])).astype(np.float64) / 1000.0
        gt = src.depth(i)
        m = (d > 0) & (gt > 0)
        assert m.mean() > 0.3
        ratios.append(d[m] / gt[m])
    r = np.concatenate(ratios)
    spread = (np.percentile(r, 90) - np.percentile(r, 10)) / np.median(r)
    print(f"depth / GT: median {np.median(r):.4f}, 10-90% spread {100 * spread:.2f}%")
    assert spread < DEPTH_SPREAD_BOUND


def test_colmap_export_reads_back_with_pycolmap(run_dir):
    pycolmap = pytest.importorskip("pycolmap")
    from mslam_ns.geometry.conventions import pose7_to_c2w
    from mslam_ns.io.rundir import RunDir

    out = run_dir.parent / "colmap"
    assert main(["export", str(run_dir), "--format", "colmap", "--out", str(out), "--quiet"]) == 0
    rec = pycolmap.Reconstruction(str(out / "sparse" / "0"))
    rd = RunDir(run_dir)
    table = rd.read_frames()
    _, poses = rd.read_trajectory()
    K, size = rd.intrinsics()
    assert len(rec.images) == int((~table.lost).sum()) and len(rec.points3D) > 1000
    cam = next(iter(rec.cameras.values()))
    assert (cam.width, cam.height) == size
    np.testing.assert_allclose(cam.params, [K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5], rtol=1e-6)
    by_name = {im.name: im for im in rec.images.values()}
    for i, name in enumerate(table.names):
        im = by_name[Path(name).name]
        assert (out / "images" / im.name).is_file()
        M = np.eye(4)
        M[:3, :4] = im.cam_from_world().inverse().matrix()  # COLMAP world-to-camera, inverted
        np.testing.assert_allclose(M, pose7_to_c2w(poses[i]), atol=1e-6)


def test_tum_and_ply_exports(run_dir):
    from mslam_ns.io.writers import read_ply

    for fmt, files in (("tum", ["keyframes.txt", "trajectory.txt"]), ("ply", ["points.ply"])):
        out = run_dir.parent / fmt
        assert (
            main(["export", str(run_dir), "--format", fmt, "--out", str(out), "--max-points", "5000", "--quiet"]) == 0
        )
        assert sorted(p.name for p in out.iterdir()) == files
    xyz, rgb = read_ply(run_dir.parent / "ply" / "points.ply")
    assert 1000 < len(xyz) <= 5000 and rgb is not None
    assert (run_dir.parent / "tum" / "trajectory.txt").read_text() == (run_dir / "trajectory.txt").read_text()


@pytest.mark.parametrize("case", ["not_a_run", "out_not_empty", "input_gone", "out_under_a_file"])
def test_export_bad_input_is_one_line(run_dir, tmp_path, capsys, case):
    import shutil

    out = tmp_path / "out"
    src = run_dir
    if case == "not_a_run":
        src = tmp_path / "junk"
        src.mkdir()
        (src / "a.txt").write_text("x")
    elif case == "out_not_empty":
        out.mkdir()
        (out / "mine.txt").write_text("keep")
    elif case == "out_under_a_file":  # os.access says writable (also as root); the probe file says no
        (tmp_path / "afile").write_text("x")
        out = tmp_path / "afile" / "out"
    else:
        src = tmp_path / "copy"
        shutil.copytree(run_dir, src)
        cfg = (
            (src / "config.yaml")
            .read_text()
            .replace(str(Path(json.loads((run_dir / "summary.json").read_text())["dataset"])), str(tmp_path / "gone"))
        )
        (src / "config.yaml").write_text(cfg)
    rc = main(["export", str(src), "--format", "nerfstudio", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("mslam-ns: error:")
    if case == "out_not_empty":
        assert [p.name for p in out.iterdir()] == ["mine.txt"]
    else:
        assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_depth_nerfstudio_loads_matches_the_geometry(ns_export, run_dir):
    """The depth nerfstudio's DepthDataset loads (PNG * depth_unit_scale_factor * dataparser_scale), back-
    projected through the cameras it builds, lands on its seed points; and times `metres_per_slam_unit` /
    dataparser_scale it is the ground-truth depth in metres."""
    import torch
    from nerfstudio.data.utils.data_utils import get_depth_image_from_path
    from scipy.spatial import cKDTree

    from mslam_ns.io.sources import open_source

    outs = _parse(ns_export, auto_scale_poses=True)
    meta = json.loads((ns_export / "transforms.json").read_text())
    s = float(outs.dataparser_scale)
    seeds = cKDTree(outs.metadata["points3D_xyz"].double().numpy())
    voxel = meta["mslam"]["voxel_size"] * s
    src = open_source(json.loads((run_dir / "summary.json").read_text())["dataset"])
    index = {Path(f).name: i for i, f in enumerate(outs.image_filenames)}
    near, ratios = [], []
    v, u = np.mgrid[0:H, 0:W]
    coords = torch.as_tensor(np.stack([v.ravel(), u.ravel()], 1) + 0.5, dtype=torch.float32)
    for i in (0, FRAMES // 2, FRAMES - 1):
        f = meta["frames"][i]
        scale = outs.metadata["depth_unit_scale_factor"] * s
        d = get_depth_image_from_path(ns_export / f["depth_file_path"], H, W, scale).numpy()[..., 0].ravel()
        cam = index[Path(f["file_path"]).name]
        rays = outs.cameras.generate_rays(torch.full((len(coords), 1), cam), coords=coords)
        o, dirs = rays.origins.double().numpy(), rays.directions.double().numpy()
        fwd = -outs.cameras.camera_to_worlds[cam, :3, 2].double().numpy()  # OpenGL: the camera looks along -z
        m = d > 0
        X = o[m] + dirs[m] * (d[m] / (dirs[m] @ fwd))[:, None]
        near.append(seeds.query(X[::5])[0] / voxel)
        gt = src.depth(i).ravel()
        ok = m & (gt > 0)
        ratios.append(d[ok] / s * meta["mslam"]["metres_per_slam_unit"] / gt[ok])
    near, r = np.concatenate(near), np.concatenate(ratios)
    print(
        f"back-projected depth to the nearest seed point: median {np.median(near):.3f}, "
        f"90% {np.percentile(near, 90):.3f} voxels; depth in metres / GT: median {np.median(r):.4f}"
    )
    assert np.percentile(near, 90) < NEAR_SEED_VOXELS and abs(np.median(r) - 1) < METRIC_DEPTH_ERROR


@pytest.fixture(scope="module")
def lost_run(tmp_path_factory) -> tuple[Path, list[int]]:
    """A 20-frame run whose frames 8-10 are black: tracking is lost there and resumes after."""
    from PIL import Image

    from mslam_ns.io.synthetic import generate_sequence

    root = tmp_path_factory.mktemp("lost")
    seq = generate_sequence(root / "seq", 20, W, H, seed=6)
    names = sorted((seq / "rgb").iterdir())
    black = [8, 9, 10]
    for i in black:
        Image.fromarray(np.zeros_like(np.asarray(Image.open(names[i])))).save(names[i])
    out = root / "run"
    args = ["run", str(seq), "--out", str(out), "--prior", "oracle", "--img-size", str(IMG_SIZE), "--quiet"]
    assert main(args) == 0
    return out, black


@pytest.mark.parametrize("include_lost", [False, True])
def test_lost_frames_are_flagged_and_left_out_unless_asked(lost_run, tmp_path, include_lost):
    from mslam_ns.io.rundir import RunDir
    from mslam_ns.nerfstudio.export import frame_file_name

    run, black = lost_run
    table = RunDir(run).read_frames()
    assert np.flatnonzero(table.lost).tolist() == black  # the black frames, and only they, are lost
    out = tmp_path / "ns"
    args = ["export", str(run), "--out", str(out), "--num-downscales", "0", "--quiet"]
    assert main(args + (["--include-lost"] if include_lost else [])) == 0
    meta = json.loads((out / "transforms.json").read_text())
    names = [f["original_name"] for f in meta["frames"]]
    lost = [f["original_name"] for f in meta["frames"] if f["mslam_lost"]]
    if include_lost:
        assert names == table.names and lost == [table.names[i] for i in black]
    else:
        assert names == [n for i, n in enumerate(table.names) if i not in black] and not lost
    written = sorted(p.name for p in (out / "images").iterdir())
    assert written == sorted(Path(f["file_path"]).name for f in meta["frames"])  # no images of left-out frames
    assert meta["mslam"]["lost_frames_included"] is include_lost
    col = tmp_path / "colmap"
    assert main(["export", str(run), "--format", "colmap", "--out", str(col), "--quiet"]) == 0
    lines = (col / "sparse" / "0" / "images.txt").read_text().splitlines()
    listed = sorted(ln.split()[-1] for ln in lines if ln.strip() and not ln.startswith("#"))
    kept = sorted(frame_file_name(n) for i, n in enumerate(table.names) if i not in black)
    assert listed == kept  # COLMAP: tracked frames only
    assert sorted(p.name for p in (col / "images").iterdir()) == kept


def _cross_view_errors(run: Path, ns: Path, gap: int = 3) -> np.ndarray:
    """Pixel errors of the run's points seen by nerfstudio's cameras on the export in ANOTHER frame (`gap`
    frames after their keyframe), against where the ground truth (true intrinsics, depth and poses) puts
    the surface point of the pixel they came from."""
    from mslam_ns.geometry.conventions import pose7_to_c2w
    from mslam_ns.io.calibration import load_calibration
    from mslam_ns.io.rundir import RunDir
    from mslam_ns.io.sources import open_source
    from mslam_ns.nerfstudio.export import frame_file_name

    rd = RunDir(run)
    src = open_source(rd.read_summary()["dataset"])
    k_true = load_calibration(Path(rd.read_summary()["dataset"]) / "calibration.txt")
    gt = np.asarray(src.gt_poses, dtype=np.float64)
    gt_c2w = gt if gt.shape[-2:] == (4, 4) else pose7_to_c2w(gt)  # T_WC, OpenCV axes
    outs = _parse(ns)
    pc, table = rd.read_points(), rd.read_frames()
    T, s = outs.dataparser_transform.double().numpy(), float(outs.dataparser_scale)
    index = {Path(f).name: i for i, f in enumerate(outs.image_filenames)}
    kf_frames = np.flatnonzero(table.is_keyframe)
    errs = []
    for k, f in enumerate(kf_frames.tolist()):
        j = f + gap
        if j >= len(table.names) or frame_file_name(table.names[j]) not in index:
            continue
        sel = np.flatnonzero(pc.keyframe == k)[::5]
        u, v = pc.uv[sel, 0].astype(np.float64), pc.uv[sel, 1].astype(np.float64)
        depth = src.depth(f)
        d = depth[np.clip(np.rint(v).astype(int), 0, H - 1), np.clip(np.rint(u).astype(int), 0, W - 1)]
        ok = d > 0
        Xc = np.stack([(u - k_true.cx) / k_true.fx * d, (v - k_true.cy) / k_true.fy * d, d], 1)[ok]
        Xw = Xc @ gt_c2w[f][:3, :3].T + gt_c2w[f][:3, 3]
        Xj = (Xw - gt_c2w[j][:3, 3]) @ gt_c2w[j][:3, :3]
        uv_gt = np.stack([k_true.fx * Xj[:, 0] / Xj[:, 2] + k_true.cx, k_true.fy * Xj[:, 1] / Xj[:, 2] + k_true.cy], 1)
        X = s * (pc.xyz[sel][ok].astype(np.float64) @ T[:, :3].T + T[:, 3])  # nerfstudio's world
        c = index[frame_file_name(table.names[j])]
        c2w = outs.cameras.camera_to_worlds[c].double().numpy()
        Xn = (X - c2w[:, 3]) @ c2w[:, :3]  # OpenGL camera axes: x right, y up, looking along -z
        fx, fy = float(outs.cameras.fx[c]), float(outs.cameras.fy[c])
        cx, cy = float(outs.cameras.cx[c]), float(outs.cameras.cy[c])
        uv_ns = np.stack([fx * Xn[:, 0] / -Xn[:, 2] + cx, fy * -Xn[:, 1] / -Xn[:, 2] + cy], 1) - 0.5
        inside = (uv_gt[:, 0] >= 0) & (uv_gt[:, 0] < W) & (uv_gt[:, 1] >= 0) & (uv_gt[:, 1] < H)
        errs.append(np.linalg.norm(uv_ns - uv_gt, axis=1)[inside])
    return np.concatenate(errs)


def test_estimated_intrinsics_export_reprojects_the_seed_points(tmp_path_factory, ns_export, run_dir):
    """Rays mode (no calibration; intrinsics estimated by the SLAM): nerfstudio's cameras on the export see
    each keyframe's points, in a frame other than their own, where the ground truth says they are."""
    from mslam_ns.io.rundir import RunDir
    from mslam_ns.io.synthetic import generate_sequence

    root = tmp_path_factory.mktemp("rays")
    seq = generate_sequence(root / "seq", FRAMES, W, H, seed=3)
    run, ns = root / "run", root / "ns"
    args = ["run", str(seq), "--out", str(run), "--prior", "oracle", "--img-size", str(IMG_SIZE), "--mode", "rays"]
    assert main(args + ["--motion-filter.enabled", "off", "--quiet"]) == 0
    assert main(["export", str(run), "--out", str(ns), "--num-downscales", "0", "--quiet"]) == 0
    assert RunDir(run).read_summary()["intrinsics"]["source"] == "estimated"
    e = _cross_view_errors(run, ns)
    ref = _cross_view_errors(run_dir, ns_export)  # the calibrated run of the same sequence, for comparison
    print(
        f"cross-view reprojection vs ground truth: rays median {np.median(e):.3f} px, 90% {np.percentile(e, 90):.3f};"
        f" calibrated median {np.median(ref):.3f}, 90% {np.percentile(ref, 90):.3f} ({len(e)} points)"
    )
    assert len(e) > 1000 and np.median(e) < RAYS_MEDIAN_PX and np.percentile(e, 90) < RAYS_P90_PX
