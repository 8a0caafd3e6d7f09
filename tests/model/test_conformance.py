"""Our MASt3R vs the official implementation's recorded arrays (every array of io.npz), per fixture dir."""

from __future__ import annotations

import pytest
import torch

from tests.model._fixtures import (
    atol_for,
    check,
    encode_pair,
    fixture_params,
    load_net,
    meta,
    network_outputs,
    reference,
)

INPUTS = ("img1_u8", "img2_u8", "img1", "img2", "true_shape1", "true_shape2")


@pytest.mark.parametrize("fixdir", fixture_params())
def test_every_recorded_array_conforms(fixdir):
    ref = reference(fixdir)
    ours = network_outputs(fixdir)
    expected = [k for k in ref if k not in INPUTS]
    missing = [k for k in expected if k not in ours]
    assert not missing, f"arrays we did not produce: {missing}"
    failures = []
    for k in expected:
        try:
            check(k, ours[k], ref[k], atol_for(k))
        except AssertionError as e:
            failures.append(str(e))
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("fixdir", fixture_params())
def test_fixture_meta_matches_our_config(fixdir):
    """Sizes derived by our constructor parser agree with the fixture's meta.json."""
    from mslam_ns.model import parse_model_string

    m = meta(fixdir)
    cfg = parse_model_string(m["ckpt_args_model"])
    assert list(cfg.dpt_hooks) == m["dpt_hooks"]
    assert (cfg.enc_embed_dim, cfg.dec_embed_dim, cfg.enc_depth, cfg.dec_depth) == (
        m["enc_embed_dim"],
        m["dec_embed_dim"],
        m["enc_depth"],
        m["dec_depth"],
    )
    assert cfg.rope_freq == m["rope_freq"] and cfg.local_feat_dim == m["local_feat_dim"]


@pytest.mark.parametrize("fixdir", fixture_params())
def test_batched_symmetric_decode_matches_both_orderings(fixdir):
    """decode_symmetric (one batch-2 call) reproduces res11/21/22/12."""
    ref = reference(fixdir)
    net = load_net(fixdir)
    (f1, p1, f2, p2), (H, W) = encode_pair(net, ref)
    with torch.inference_mode():
        (r11, r21), (r22, r12) = net.decode_symmetric(f1, p1, f2, p2, (H, W))
    for name, r in (("res11", r11), ("res21", r21), ("res22", r22), ("res12", r12)):
        for k, v in r.items():
            check(f"{name}.{k}", v, ref[f"{name}.{k}"], atol_for(k))


@pytest.mark.parametrize("fixdir", fixture_params())
def test_outputs_satisfy_activation_invariants(fixdir):
    ours = network_outputs(fixdir)
    assert float(ours["res11.conf"].min()) >= 1.0
    assert float(ours["res11.desc_conf"].min()) > 0.0
    norms = ours["res21.desc"].norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
