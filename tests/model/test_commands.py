"""`mslam-ns infer` end to end on the tiny fixture: PNG files in, npz out, values = the official ones."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mslam_ns.cli import UserError
from mslam_ns.commands.infer import infer
from tests.model._fixtures import check, reference, require_root


@pytest.fixture(scope="module")
def fixture_pair(tmp_path_factory):
    d = require_root() / "tiny_A"
    ref = reference(d)
    tmp = tmp_path_factory.mktemp("infer")
    paths = []
    for i in (1, 2):
        p = tmp / f"img{i}.png"
        Image.fromarray(ref[f"img{i}_u8"]).save(p)
        paths.append(p)
    return d, ref, paths


def test_infer_writes_the_four_predictions(tmp_path, fixture_pair):
    d, ref, (p1, p2) = fixture_pair
    out = tmp_path / "sub" / "pair.npz"
    # 96x64 images with size=96: pre-processing is the identity, so the inputs are the fixture's
    assert infer(p1, p2, checkpoint=d / "checkpoint.pth", out=out, size=96) == 0
    with np.load(out) as z:
        assert z["X"].shape == (4, 64, 96, 3) and z["D"].shape == (4, 64, 96, 24)
        for i, name in enumerate(("res11", "res21", "res22", "res12")):
            check(f"{name}.pts3d", z["X"][i], ref[f"{name}.pts3d"][0])
            check(f"{name}.conf", z["C"][i], ref[f"{name}.conf"][0])
            check(f"{name}.desc", z["D"][i], ref[f"{name}.desc"][0], 5e-6)
            check(f"{name}.desc_conf", z["Q"][i], ref[f"{name}.desc_conf"][0])
    assert [p.name for p in out.parent.iterdir()] == ["pair.npz"]  # no temporary left behind


def test_infer_bad_inputs_are_one_line_errors(tmp_path, fixture_pair):
    d, ref, (p1, p2) = fixture_pair
    out = tmp_path / "pair.npz"
    with pytest.raises(UserError, match="nope.png: image file not found"):
        infer(tmp_path / "nope.png", p2, checkpoint=d / "checkpoint.pth", out=out, size=96)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"junk")
    with pytest.raises(UserError, match="bad.pth"):
        infer(p1, p2, checkpoint=bad, out=out, size=96)
    assert not out.exists()
