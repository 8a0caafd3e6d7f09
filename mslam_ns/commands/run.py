"""`mslam-ns run` and `mslam-ns demo`: drive a `SlamSystem` over a sequence and write a run folder.

The run folder's files and formats: `mslam_ns.io.rundir.RunDir`. Everything is built in a temporary sibling
folder and moved into OUT only when it all succeeded; a non-empty OUT is refused unless --overwrite (then it
is replaced as a whole: no stale files from an earlier run survive).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from mslam_ns.commands.options import RunOptions, load_options, options_to_dict, to_slam_config
from mslam_ns.commands.slam import (
    check_out,
    dataset_intrinsics,
    evaluate_run,
    execute_run,
    make_prior,
    match_count,
    open_dataset,
    record_run,
    resolve_mode,
    run_slam,
    write_run_report,
)
from mslam_ns.io.rundir import RunDir

__all__ = ["run", "demo"]


def run(o: RunOptions) -> int:
    """Run the SLAM on a video, image folder or dataset; write poses of every frame, keyframes and points."""
    check_out(o.out, o.overwrite)
    execute_run(o, o.out)  # --view: the live viewer runs alongside (see commands.slam)
    if not o.quiet:
        _print_summary(RunDir(o.out).read_summary(), o.out)
    return 0


run.options = RunOptions  # type: ignore[attr-defined]  (the CLI parses RunOptions, --config included)


def _print_summary(summary: dict, out: Path) -> None:
    from rich.console import Console

    c = Console()
    t = summary["timings_s"]
    c.print(
        f"[bold]{summary['frames']}[/] frames, [bold]{summary['keyframes']}[/] keyframes, "
        f"{summary['lost_frames']} lost, {summary['restarts']} restarts; "
        f"{summary['fps']['overall']:.2f} frames/s overall "
        f"(prior {t['prior']:.1f} s, tracking {t['tracking']:.1f} s "
        f"= {summary['fps']['frontend_without_prior']:.1f} frames/s without the prior)"
    )
    if summary.get("intrinsics"):
        k = summary["intrinsics"]
        c.print(f"intrinsics ({k['source']}): fx {k['fx']:.1f} fy {k['fy']:.1f} cx {k['cx']:.1f} cy {k['cy']:.1f}")
        g = summary.get("dataset_intrinsics")
        if g and k["source"] == "estimated":
            c.print(f"  dataset's own: fx {g['fx']:.1f} fy {g['fy']:.1f} cx {g['cx']:.1f} cy {g['cy']:.1f}")
    c.print(f"results in {out}/")


def demo(
    out: Path = Path("mslam_demo"),
    frames: int = 120,
    img_size: int = 512,
    width: int = 640,
    height: int = 480,
    oracle_noise: Literal["none", "mast3r", "hard"] = "mast3r",
    mode: Literal["rays", "calib"] = "rays",
    seed: int = 0,
    overwrite: bool = False,
    quiet: bool = False,
) -> int:
    """Generate a synthetic sequence, run the SLAM with the oracle prior, evaluate against its ground truth.

    Args:
        out: output folder (the sequence goes to OUT/sequence, the SLAM results to OUT).
        frames: number of frames of the synthetic sequence.
        img_size: long side of the network image.
        width: synthetic image width.
        height: synthetic image height.
        oracle_noise: noise model of the oracle prior.
        mode: 'rays' (uncalibrated) or 'calib' (the sequence's own intrinsics).
        seed: seed of the scene and of the noise.
        overwrite: replace an existing non-empty OUT.
        quiet: no progress bar.
    """
    from rich.console import Console

    from mslam_ns.io.atomic import atomic_output_dir
    from mslam_ns.io.synthetic import generate_sequence

    console = Console()
    check_out(out, overwrite)
    opts = load_options(
        RunOptions,
        None,
        dataset=str((Path(out) / "sequence").resolve()),
        prior="oracle",
        oracle_noise=oracle_noise,
        seed=seed,
        slam={"mode": mode, "img_size": img_size},
    )
    with atomic_output_dir(out, replace=overwrite) as tmp:
        seq = generate_sequence(tmp / "sequence", frames, width, height, seed)
        source = open_dataset(Path(seq))
        mode_, K = resolve_mode(mode, None, source)
        cfg = to_slam_config(opts.slam, mode_)
        prior_obj = make_prior(source, "oracle", oracle_noise, img_size, seed, None, "cpu")
        if not quiet:
            console.print(
                f"synthetic sequence: {len(source)} frames {width}x{height}, "
                f"oracle prior (noise '{oracle_noise}'), mode '{mode_}'"
            )
        matches: list[int] = []
        system, summary = run_slam(
            source, prior_obj, cfg, K, quiet=quiet, on_step=lambda r: matches.append(match_count(r))
        )
        res = evaluate_run(system, source)
        summary.update(
            {
                "dataset": "synthetic",
                "prior": "oracle",
                "oracle_noise": oracle_noise,
                "ate": res,
                "dataset_intrinsics": dataset_intrinsics(source),
            }
        )
        rd = RunDir(tmp)
        rd.write(record_run(system, summary, opts.conf_thresh, options_to_dict(opts), n_matches=matches))
        rd.write_eval(res)
    write_run_report(out)  # report.png with the ATE panel, titled with OUT's name (after the move: not tmp's)
    _print_summary(summary, out)
    for name, r in res.items():
        console.print(
            f"ATE RMSE {name:19s}: {r['rmse']:.4f} (= {r['rmse_percent_of_path']:.2f}% of the "
            f"{r['path_length']:.2f} path), orientation {r['rot_median_deg']:.2f} deg (median), "
            f"{r['n_matched']} poses"
        )
    f, a = res["frontend_all_frames"]["rmse_percent_of_path"], res["all_frames"]["rmse_percent_of_path"]
    g = summary.get("graph", {})
    console.print(
        f"backend: {g.get('edges', 0)} graph edges ({g.get('loop_edges', 0)} loop closures, "
        f"{g.get('relocalisations', 0)} relocalisations); drift {f:.2f}% -> {a:.2f}% of the path "
        f"({f / max(a, 1e-9):.1f}x less than the frontend alone)"
    )
    if not quiet:
        console.print(f"sequence in {out / 'sequence'}/")
    return 0
