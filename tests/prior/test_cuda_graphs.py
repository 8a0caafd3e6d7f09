"""`--cuda-graphs`: the network's calls captured once per signature and replayed (`prior/cuda_graphs.py`).

On the CPU the capture is `eager_capture`, the twin that keeps everything of the graphed path except the
recording itself (static input buffers filled by copy, static outputs refreshed by a replay, copies
returned); the CUDA test records real graphs and compares them with the plain network.
"""

from __future__ import annotations

import logging

import pytest
import torch

from mslam_ns.prior.cuda_graphs import GraphedCall, cuda_capture, eager_capture
from mslam_ns.prior.mast3r import AMP_DTYPES, Mast3rPrior
from tests.model._fixtures import load_net, reference, require_root


def _affine(key, x, y):
    return {"s": x * key + y, "t": (x - y, y.sum())}


def test_replays_see_the_new_inputs_and_return_copies():
    calls = []

    def fn(key, x, y):
        calls.append(key)
        return _affine(key, x, y)

    g = GraphedCall(fn, eager_capture)
    x, y = torch.randn(5), torch.randn(5)
    first = g(2.0, x, y)
    assert g.captured == 1 and len(calls) == 3 + 1  # 2 warm-ups + the capture, then one replay
    keep = {"s": first["s"].clone(), "t0": first["t"][0].clone()}
    x2, y2 = torch.randn(5), torch.randn(5)
    second = g(2.0, x2, y2)
    assert g.captured == 1  # same signature: replayed, not captured again
    for got, want in ((first, _affine(2.0, x, y)), (second, _affine(2.0, x2, y2))):
        assert torch.equal(got["s"], want["s"]) and torch.equal(got["t"][0], want["t"][0])
        assert torch.equal(got["t"][1], want["t"][1])
    # the first result was not overwritten by the second replay (returned tensors are copies)
    assert torch.equal(first["s"], keep["s"]) and torch.equal(first["t"][0], keep["t0"])
    assert isinstance(second["t"], tuple)
    # a new key or a new shape is a new capture
    g(3.0, x, y)
    g(2.0, torch.randn(7), torch.randn(7))
    assert g.captured == 3
    assert torch.equal(g(3.0, x2, y2)["s"], 3.0 * x2 + y2)


def test_a_failed_capture_runs_that_signature_eagerly(caplog):
    def refuse(fn, static):
        raise RuntimeError("operation not permitted when stream is capturing")

    g = GraphedCall(_affine, refuse, "the test call")
    x, y = torch.randn(4), torch.randn(4)
    with caplog.at_level(logging.WARNING):
        out = g(1.5, x, y)
        again = g(1.5, y, x)
    assert torch.equal(out["s"], 1.5 * x + y) and torch.equal(again["s"], 1.5 * y + x)
    assert g.captured == 0
    assert sum("the test call" in r.getMessage() for r in caplog.records) == 1  # logged once


@pytest.fixture(scope="module")
def tiny():
    d = require_root() / "tiny_A"
    ref = reference(d)
    imgs = [torch.from_numpy(ref[f"img{i}_u8"]).permute(2, 0, 1).float() / 255 for i in (1, 2)]
    # a third image: the second pair's inputs differ from the first's in every pixel
    imgs.append(imgs[0].flip(-1).roll(7, dims=-2))
    return load_net(d), imgs


def _run(prior: Mast3rPrior, imgs):
    encs = [prior.encode(im, index=i) for i, im in enumerate(imgs)]
    return (
        encs,
        [prior.decode(encs[0], encs[1]), prior.decode_mono(encs[2])],
        [
            prior.decode_symmetric(encs[0], encs[1]),
            prior.decode_symmetric(encs[2], encs[0]),
        ],
    )


def _views(asym, sym):
    for p in (*asym, *(q for pair in sym for q in pair)):
        yield from (p.ii, p.ji)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_graphed_prior_equals_the_plain_one(tiny, precision):
    net, imgs = tiny
    plain = Mast3rPrior(net, amp_dtype=AMP_DTYPES[precision])
    graphed = Mast3rPrior(net, amp_dtype=AMP_DTYPES[precision], cuda_graphs=True, graph_capture=eager_capture)
    e0, a0, s0 = _run(plain, imgs)
    e1, a1, s1 = _run(graphed, imgs)
    assert {k: g.captured for k, g in graphed.graphs.items()} == {"encode": 1, "decode": 1, "decode_symmetric": 1}
    for x, y in zip(e0, e1):
        assert torch.equal(x.data[0], y.data[0]) and torch.equal(x.data[1], y.data[1])
    for v0, v1 in zip(_views(a0, s0), _views(a1, s1)):
        for k in ("X", "C", "D", "Q"):
            assert torch.equal(getattr(v0, k), getattr(v1, k)), k
    # replays of different inputs differ (the static buffers were refilled, not stale)
    assert not torch.equal(a1[0].ii.X, a1[1].ii.X) and not torch.equal(s1[0][0].ii.X, s1[1][0].ii.X)


def test_cuda_graphs_need_a_cuda_network(tiny):
    with pytest.raises(ValueError, match="CUDA device"):
        Mast3rPrior(tiny[0], cuda_graphs=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_real_cuda_graphs_equal_the_plain_network(tiny, precision):
    net = load_net(require_root() / "tiny_A").cuda()
    imgs = tiny[1]
    plain = Mast3rPrior(net, amp_dtype=AMP_DTYPES[precision])
    graphed = Mast3rPrior(net, amp_dtype=AMP_DTYPES[precision], cuda_graphs=True)
    assert graphed.graphs["decode"].capture is cuda_capture
    _, a0, s0 = _run(plain, imgs)
    _, a1, s1 = _run(graphed, imgs)
    _, a2, s2 = _run(graphed, imgs)  # replays only
    assert {k: g.captured for k, g in graphed.graphs.items()} == {"encode": 1, "decode": 1, "decode_symmetric": 1}
    tol = 1e-5 if precision == "fp32" else 2e-2
    for v0, v1, v2 in zip(_views(a0, s0), _views(a1, s1), _views(a2, s2)):
        for k in ("X", "C", "D", "Q"):
            ref = getattr(v0, k)
            for v in (v1, v2):
                assert torch.allclose(getattr(v, k), ref, rtol=tol, atol=tol), (k, precision)
