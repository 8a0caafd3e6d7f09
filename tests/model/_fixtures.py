"""Shared helpers for the MASt3R tests: locate the official fixtures, run our network on them once."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
#: The conformance fixtures, made by running the official MASt3R code (see tests/data/mast3r/README.md).
FIXTURE_ROOT = REPO / "tests" / "data" / "mast3r"


def mast3r_fixture_root() -> Path:
    """``tests/data/mast3r``; a missing or incomplete copy FAILS the test (it is part of the repository)."""
    needed = ("tiny_A/io.npz", "tiny_A/checkpoint.pth", "tiny_A/meta.json", "preprocess/expected.npz")
    missing = [n for n in needed if not (FIXTURE_ROOT / n).is_file()]
    if missing:
        pytest.fail(
            f"MASt3R conformance fixtures missing from {FIXTURE_ROOT}: {', '.join(missing)} "
            "(they are part of the repository: restore tests/data/mast3r)",
            pytrace=False,
        )
    return FIXTURE_ROOT


def fixture_dirs() -> list[Path]:
    """tiny_A plus every directory in ``$MSLAM_MAST3R_FIXTURES`` (os.pathsep-separated)."""
    dirs: list[Path] = [mast3r_fixture_root() / "tiny_A"]
    for d in os.environ.get("MSLAM_MAST3R_FIXTURES", "").split(os.pathsep):
        if d.strip():
            dirs.append(Path(d.strip()))
    return dirs


def fixture_params() -> list:
    """One pytest param per fixture directory (collected even when the data is missing, so the test fails)."""
    extra = [Path(d.strip()) for d in os.environ.get("MSLAM_MAST3R_FIXTURES", "").split(os.pathsep) if d.strip()]
    return [pytest.param(d, id=d.name) for d in [FIXTURE_ROOT / "tiny_A", *extra]]


def require_root() -> Path:
    return mast3r_fixture_root()


def meta(d: Path) -> dict:
    return json.loads((d / "meta.json").read_text())


@functools.lru_cache(maxsize=4)
def reference(d: Path) -> dict[str, np.ndarray]:
    with np.load(d / "io.npz") as z:
        return {k: z[k] for k in z.files}


def check(name: str, ours: torch.Tensor | np.ndarray, ref: np.ndarray, atol: float = 1e-5) -> None:
    """Assert conformance: same shape/dtype kind and max |ours - ref| <= atol * max(1, max |ref|).

    The tolerance scales with the array's magnitude only above 1: float32 rounding error grows with the
    values (decoder tokens reach ~16 with ~3e-5 abs differences), while O(1) outputs get the plain 1e-5
    (5e-6 for descriptors) of the fixture README. Deliberate mistakes move outputs by >= 1.6e-4
    (sensitivity.json), far above every allowance here.
    """
    a = ours.detach().cpu().numpy() if isinstance(ours, torch.Tensor) else np.asarray(ours)
    assert a.shape == ref.shape, f"{name}: shape {a.shape} != reference {ref.shape}"
    if ref.dtype.kind in "iu":
        assert np.array_equal(a, ref), f"{name}: integer array differs"
        return
    assert np.all(np.isfinite(a)), f"{name}: non-finite values"
    err = float(np.max(np.abs(a.astype(np.float64) - ref.astype(np.float64)))) if a.size else 0.0
    tol = atol * max(1.0, float(np.max(np.abs(ref))) if ref.size else 1.0)
    assert err <= tol, f"{name}: max abs error {err:.3g} > tolerance {tol:.3g}"


def atol_for(name: str) -> float:
    return 5e-6 if name.endswith(".desc") else 1e-5


@functools.lru_cache(maxsize=2)
def load_net(d: Path):
    """Our network loaded from the fixture's checkpoint (cached: tests must not modify it)."""
    from mslam_ns.model import load_mast3r

    return load_mast3r(d / "checkpoint.pth")


def encode_pair(net, ref: dict[str, np.ndarray]) -> tuple[tuple[torch.Tensor, ...], tuple[int, int]]:
    """The fixture's two images through ``net``'s encoder: ((f1, p1, f2, p2), (H, W)), inference mode."""
    H, W = (int(v) for v in ref["true_shape1"][0])
    with torch.inference_mode():
        f1, p1 = net.encode(torch.from_numpy(ref["img1"]))
        f2, p2 = net.encode(torch.from_numpy(ref["img2"]))
    return (f1, p1, f2, p2), (H, W)


def run_network(d: Path) -> dict[str, torch.Tensor]:
    """Run OUR implementation on fixture dir ``d`` the way the fixture's calls were made; keys as in io.npz."""
    from mslam_ns.model import load_retrieval

    io = reference(d)
    net = load_net(d)
    out: dict[str, torch.Tensor] = {}
    H, W = (int(v) for v in io["true_shape1"][0])
    p = net.cfg.patch_size
    with torch.inference_mode():
        enc = {}
        for i in (1, 2):
            tr: dict[str, torch.Tensor] = {}
            feat, pos = net.encode(torch.from_numpy(io[f"img{i}"]), tr)
            enc[i] = (feat, pos)
            out[f"enc.patch_embed{i}"] = tr["patch_embed"]
            out[f"enc.blocks_out{i}"] = tr["blocks_out"]
            out[f"enc.feat{i}"], out[f"enc.pos{i}"] = feat, pos
        (f1, p1), (f2, p2) = enc[1], enc[2]
        tr = {}
        d1, d2 = net.decode_tokens(f1, p1, f2, p2, (H // p, W // p), tr)
        out["dec.d12.embed1"], out["dec.d12.embed2"] = tr["embed1"], tr["embed2"]
        out["dec.d12.tokens1"], out["dec.d12.tokens2"] = torch.stack(d1[1:]), torch.stack(d2[1:])
        for i, (head, toks) in enumerate(((net.downstream_head1, d1), (net.downstream_head2, d2)), start=1):
            dpt, local = head.raw(toks, (H, W))
            out[f"head.d12.dpt_raw{i}"], out[f"head.d12.local_raw{i}"] = dpt, local
        # the four SLAM results, each ordering decoded separately (as the fixture's calls)
        for name_a, name_b, fa, pa, fb, pb in (("res11", "res21", f1, p1, f2, p2), ("res22", "res12", f2, p2, f1, p1)):
            ra, rb = net.decode(fa, pa, fb, pb, (H, W))
            for k in ra:
                out[f"{name_a}.{k}"], out[f"{name_b}.{k}"] = ra[k], rb[k]
        ma, mb = net.decode(f1, p1, f1, p1, (H, W))
        for k in ("pts3d", "conf"):
            out[f"mono.res11.{k}"], out[f"mono.res21.{k}"] = ma[k], mb[k]
        if (d / "retrieval.pth").is_file():
            rh = load_retrieval(d / "retrieval.pth", net)
            for i in (1, 2):
                r = rh(enc[i][0])
                out[f"retr.feat{i}"], out[f"retr.attn{i}"] = r.feat, r.attn
                out[f"retr.topk_feat{i}"], out[f"retr.topk_attn{i}"] = r.topk_feat, r.topk_attn
                out[f"retr.topk_idx{i}"], out[f"retr.global{i}"] = r.topk_idx, r.global_desc
    return out


@functools.lru_cache(maxsize=4)
def network_outputs(d: Path) -> dict[str, torch.Tensor]:
    return run_network(d)
