"""The conformance tolerance bites: deliberately reintroducing a classic mistake makes the check fail.

Each test flips ONE of our module constants (LayerNorm eps, GELU flavour, DPT align_corners), reruns the
(1, 2) pass on the fixture, and requires that the conformance check on res11/res21 then fails, while the
unmodified network passes it (test_conformance.py).
"""

from __future__ import annotations

import pytest
import torch

from mslam_ns.model import dpt, layers, load_mast3r
from tests.model._fixtures import atol_for, check, encode_pair, reference, require_root

KEYS = ("res11.pts3d", "res11.conf", "res11.desc", "res11.desc_conf", "res21.pts3d")


def _first_pass(net, ref) -> dict[str, torch.Tensor]:
    (f1, p1, f2, p2), (H, W) = encode_pair(net, ref)
    with torch.inference_mode():
        r1, r2 = net.decode(f1, p1, f2, p2, (H, W))
    return {**{f"res11.{k}": v for k, v in r1.items()}, **{f"res21.{k}": v for k, v in r2.items()}}


def _n_failures(out, ref) -> int:
    n = 0
    for k in KEYS:
        try:
            check(k, out[k], ref[k], atol_for(k))
        except AssertionError:
            n += 1
    return n


@pytest.fixture(scope="module")
def tiny():
    d = require_root() / "tiny_A"
    return d, reference(d)


@pytest.mark.parametrize(
    "attr,value",
    [
        ((layers, "LN_EPS"), 1e-5),  # PyTorch's default eps: moves outputs by ~1e-4
        ((layers, "GELU_APPROX"), "tanh"),  # tanh GELU: ~5e-4
        ((dpt, "ALIGN_CORNERS"), False),  # DPT upsampling: O(1)
    ],
    ids=["layernorm_eps_1e-5", "gelu_tanh", "dpt_align_corners_false"],
)
def test_deliberate_mistake_is_caught(tiny, monkeypatch, attr, value):
    d, ref = tiny
    module, name = attr
    monkeypatch.setattr(module, name, value)
    net = load_mast3r(d / "checkpoint.pth")  # built after the patch (eps is read at construction)
    assert _n_failures(_first_pass(net, ref), ref) >= 1


def test_rope_wrong_pairing_is_caught(tiny, monkeypatch):
    """Rotating adjacent channels (2k, 2k+1) instead of rotate-half partners (k, k + D/2)."""
    d, ref = tiny

    def adjacent_pairs(self, t):  # t [B, N, *heads, d]
        d = t.shape[-1]
        shape = (*self.cos.shape[:-1], *([1] * (t.ndim - 3)), d)
        quarter_sign = torch.tensor([-1.0, 1.0, -1.0, 1.0], dtype=t.dtype).repeat_interleave(d // 4)
        sin = (self.sin * quarter_sign).view(shape)  # unsigned sin table
        swapped = t.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
        pair_sign = torch.tensor([-1.0, 1.0], dtype=t.dtype).repeat(d // 2)
        return t * self.cos.view(shape) + swapped * sin * pair_sign

    monkeypatch.setattr(layers.RopeTables, "apply", adjacent_pairs)
    net = load_mast3r(d / "checkpoint.pth")
    assert _n_failures(_first_pass(net, ref), ref) >= 1
