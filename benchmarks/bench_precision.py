"""Reduced-precision network (`--precision bf16 | fp16`): drift from float32 and speed, in the same run.

One 640x480 synthetic pair (frames 0 and 3 of a sequence) at the network size 512x384 goes through the
symmetric decode in float32 and under autocast; printed per output of the four views:
- pts3d: median and 95th percentile of |X_amp - X_fp32| / |X_fp32| per pixel;
- conf, desc_conf: median relative difference;
- desc: median and 95th percentile of 1 - cos(D_amp, D_fp32);
- matching (IPM + refinement, tracking's direction) on the float32 outputs vs on the autocast ones: the
  fraction of pixels matched to the same pixel, within 1 pixel, and whose valid flag flips;
- encoder ms per image and symmetric decode ms per pair in both precisions, and their ratio.

The full ViT-L config with random weights by default (N(0, 0.02), as `bench_network.py`); ``--checkpoint``
measures a real one. Random weights are not trained weights: their activations have other statistics, so
these drifts are the arithmetic's, not a promise about the trained network's.

    .venv/bin/python benchmarks/bench_precision.py [--device cuda] [--amp bf16] [--checkpoint FILE]
    .venv/bin/python benchmarks/bench_precision.py --smoke     # tiny config (checks the script)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mslam_ns.prior.mast3r import AMP_DTYPES  # noqa: E402


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _best_ms(fn, dev: torch.device, repeats: int) -> float:
    out = []
    for _ in range(repeats):
        _sync(dev)
        t = time.perf_counter()
        fn()
        _sync(dev)
        out.append(1e3 * (time.perf_counter() - t))
    return min(out)


def drift(exact, approx) -> dict[str, float]:
    """Drift figures of one view's prediction (`ViewPrediction` fp32 vs autocast)."""
    X, Xa = exact.X.double(), approx.X.double()
    rel = torch.linalg.vector_norm(Xa - X, dim=-1) / torch.linalg.vector_norm(X, dim=-1).clamp_min(1e-12)
    cos = (exact.D.double() * approx.D.double()).sum(-1)
    out = {
        "pts3d_rel_median": float(rel.median()),
        "pts3d_rel_p95": float(rel.quantile(0.95)),
        "conf_rel_median": float(((approx.C - exact.C).abs() / exact.C.abs().clamp_min(1e-12)).median()),
        "desc_conf_rel_median": float(((approx.Q - exact.Q).abs() / exact.Q.abs().clamp_min(1e-12)).median()),
        "desc_1mcos_median": float((1 - cos).median()),
        "desc_1mcos_p95": float((1 - cos).quantile(0.95)),
    }
    return out


def matching_agreement(p_exact, p_approx) -> dict[str, float]:
    """Tracking's matching (frame i = view 1, keyframe pixels from view 2) on both predictions."""
    from mslam_ns.slam.matching import match

    def run(p):
        return match(p.ii.X[None], p.ji.X[None], p.ii.D.float()[None], p.ji.D.float()[None])

    (ie, ve), (ia, va) = run(p_exact), run(p_approx)
    W = p_exact.ii.X.shape[1]
    du = (ie % W - ia % W).abs()
    dv = (ie // W - ia // W).abs()
    both = ve & va
    n = max(int(both.sum()), 1)
    return {
        "match_same_pixel": float(((ie == ia) & both).sum()) / n,
        "match_within_1px": float(((du <= 1) & (dv <= 1) & both).sum()) / n,
        "valid_flips": float((ve != va).float().mean()),
        "valid_fp32": float(ve.float().mean()),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--amp", choices=[k for k in AMP_DTYPES if k != "fp32"], default="bf16")
    ap.add_argument("--checkpoint", type=Path, default=None, help="a MASt3R checkpoint (default: random weights)")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--smoke", action="store_true", help="a tiny config at 160x120 (checks the script)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)

    from benchmarks.bench_network import bench_config, init_random_
    from mslam_ns.io.sources import open_source
    from mslam_ns.io.synthetic import generate_sequence
    from mslam_ns.model import build_mast3r, load_mast3r
    from mslam_ns.model.preprocess import preprocess_image, to_unit_float
    from mslam_ns.prior.mast3r import Mast3rPrior

    if a.checkpoint is not None:
        net = load_mast3r(a.checkpoint, device=dev)
        weights = str(a.checkpoint)
    else:
        net = build_mast3r(bench_config(a.smoke), dev)
        init_random_(net)
        weights = "random N(0, 0.02)" + (" (tiny config)" if a.smoke else "")
    size = 160 if a.smoke else 512
    with tempfile.TemporaryDirectory() as d:
        src = open_source(generate_sequence(Path(d) / "seq", 4, 640, 480, 0))
        imgs = [to_unit_float(preprocess_image(src[k].image, size=size)[0]) for k in (0, 3)]
    H, W = imgs[0].shape[1:]
    res: dict = {"device": str(dev), "amp": a.amp, "weights": weights, "H": H, "W": W, "torch": torch.__version__}
    print(f"{dev} ({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'CPU'}), {weights}, {W}x{H}")

    preds, times = {}, {}
    for name, dtype in (("fp32", None), (a.amp, AMP_DTYPES[a.amp])):
        prior = Mast3rPrior(net, amp_dtype=dtype)
        encs = [prior.encode(im, k) for k, im in enumerate(imgs)]
        preds[name] = prior.decode_symmetric(*encs)
        times[name] = (
            _best_ms(lambda p=prior: [p.encode(im, 0) for im in imgs], dev, a.repeats) / 2,
            _best_ms(lambda p=prior, e=encs: p.decode_symmetric(*e), dev, a.repeats),
        )
    views = {"11": (0, "ii"), "21": (0, "ji"), "22": (1, "ii"), "12": (1, "ji")}
    for v, (k, part) in views.items():
        dr = drift(getattr(preds["fp32"][k], part), getattr(preds[a.amp][k], part))
        res[f"view{v}"] = dr
        print(
            f"  view {v}: pts3d |dX|/|X| median {dr['pts3d_rel_median']:.2e} p95 {dr['pts3d_rel_p95']:.2e}   "
            f"conf {dr['conf_rel_median']:.2e}   desc_conf {dr['desc_conf_rel_median']:.2e}   "
            f"desc 1-cos median {dr['desc_1mcos_median']:.2e} p95 {dr['desc_1mcos_p95']:.2e}"
        )
    m = matching_agreement(preds["fp32"][0], preds[a.amp][0])
    res["matching"] = m
    print(
        f"  matching on {a.amp} vs fp32 outputs: same pixel {100 * m['match_same_pixel']:.1f}%, within 1 px "
        f"{100 * m['match_within_1px']:.1f}%, valid flag flips {100 * m['valid_flips']:.2f}% "
        f"(fp32 valid {100 * m['valid_fp32']:.1f}%)"
    )
    (e32, d32), (ea, da) = times["fp32"], times[a.amp]
    res.update({"encoder_ms": {"fp32": e32, a.amp: ea}, "decode_symmetric_ms": {"fp32": d32, a.amp: da}})
    print(
        f"  encoder {e32:.1f} ms/image fp32, {ea:.1f} ms {a.amp} ({e32 / ea:.2f}x);   symmetric decode "
        f"{d32:.1f} ms/pair fp32, {da:.1f} ms {a.amp} ({d32 / da:.2f}x)"
    )
    if a.json is not None:
        a.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
