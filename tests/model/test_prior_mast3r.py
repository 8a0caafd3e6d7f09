"""Mast3rPrior through the TwoViewPrior interface reproduces the official SLAM-style results."""

from __future__ import annotations

import pytest
import torch

from mslam_ns.model import load_retrieval
from mslam_ns.prior.base import PairPrediction
from mslam_ns.prior.mast3r import Mast3rPrior
from tests.model._fixtures import atol_for, check, load_net, reference, require_root


@pytest.fixture(scope="module")
def setup():
    d = require_root() / "tiny_A"
    ref = reference(d)
    net = load_net(d)
    prior = Mast3rPrior(net, load_retrieval(d / "retrieval.pth", net))
    # the prior takes [3, H, W] images in [0, 1]; the fixture's uint8 images give exactly img1/img2
    imgs = [torch.from_numpy(ref[f"img{i}_u8"]).permute(2, 0, 1).float() / 255 for i in (1, 2)]
    encs = [prior.encode(im, index=i) for i, im in enumerate(imgs)]
    return ref, prior, encs


def _check_pair(pred: PairPrediction, ref, a: str, b: str, keys=("X", "C", "D", "Q")) -> None:
    names = {"X": "pts3d", "C": "conf", "D": "desc", "Q": "desc_conf"}
    for view, name in ((pred.ii, a), (pred.ji, b)):
        for k in keys:
            r = ref[f"{name}.{names[k]}"][0]
            check(f"{name}.{names[k]}", getattr(view, k), r, atol_for(names[k]))


def test_encode_matches_encoder_output(setup):
    ref, prior, encs = setup
    feat, pos = encs[0].data
    assert encs[0].shape == (64, 96) and encs[0].index == 0
    check("enc.feat1", feat[None], ref["enc.feat1"])
    check("enc.pos1", pos[None], ref["enc.pos1"])


def test_decode_gives_res11_res21(setup):
    ref, prior, encs = setup
    _check_pair(prior.decode(encs[0], encs[1]), ref, "res11", "res21")


def test_decode_symmetric_gives_all_four(setup):
    ref, prior, encs = setup
    first, second = prior.decode_symmetric(encs[0], encs[1])
    _check_pair(first, ref, "res11", "res21")
    _check_pair(second, ref, "res22", "res12")


def test_decode_mono(setup):
    ref, prior, encs = setup
    _check_pair(prior.decode_mono(encs[0]), ref, "mono.res11", "mono.res21", keys=("X", "C"))


def test_retrieval_features_are_the_topk_tokens(setup):
    ref, prior, encs = setup
    f = prior.retrieval_features(encs[1])
    check("retr.topk_feat2", f[None], ref["retr.topk_feat2"])
    assert Mast3rPrior(prior.net).retrieval_features(encs[1]) is None


def test_sizes_must_match(setup):
    ref, prior, encs = setup
    other = prior.encode(torch.rand(3, 32, 48), index=5)
    with pytest.raises(ValueError, match="sizes differ"):
        prior.decode(encs[0], other)


def test_decode_symmetric_batch_is_each_pair_decoded_alone(setup):
    """A new keyframe against three candidates in ONE decoder call (batch 6) gives each pair's
    `decode_symmetric` results (and the official ones for the fixture pair)."""
    ref, prior, encs = setup
    batch = prior.decode_symmetric_batch(encs[0], [encs[1], encs[0], encs[1]])
    assert len(batch) == 3
    _check_pair(batch[0][0], ref, "res11", "res21")
    _check_pair(batch[0][1], ref, "res22", "res12")
    for (first, second), enc_j in zip(batch, (encs[1], encs[0], encs[1])):
        alone = prior.decode_symmetric(encs[0], enc_j)
        for got, want in ((first, alone[0]), (second, alone[1])):
            for vg, vw in ((got.ii, want.ii), (got.ji, want.ji)):
                for k in ("X", "C", "D", "Q"):
                    a, b = getattr(vg, k), getattr(vw, k)
                    assert a.shape == b.shape and a.dtype == torch.float32
                    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))
    with pytest.raises(ValueError, match="image sizes differ"):
        prior.decode_symmetric_batch(encs[0], [encs[1], prior.encode(torch.zeros(3, 32, 48), index=9)])
