"""The reduced-precision path (autocast, used on CUDA) runs end to end without dtype errors.

Checked on CPU with bfloat16 autocast: outputs are finite and close to float32 (loose: bf16 has 8 bits of
mantissa, this is a smoke test of the dtype plumbing, not a conformance test).
"""

from __future__ import annotations

import torch

from tests.model._fixtures import load_net, reference, require_root


def test_bf16_autocast_decode_runs_and_stays_close():
    d = require_root() / "tiny_A"
    ref = reference(d)
    net = load_net(d)
    H, W = (int(v) for v in ref["true_shape1"][0])
    img1, img2 = torch.from_numpy(ref["img1"]), torch.from_numpy(ref["img2"])
    with torch.inference_mode():
        f1, p1 = net.encode(img1)
        f2, p2 = net.encode(img2)
        exact = net.decode_symmetric(f1, p1, f2, p2, (H, W))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            g1, q1 = net.encode(img1)
            g2, q2 = net.encode(img2)
            approx = net.decode_symmetric(g1, q1, g2, q2, (H, W))
    for pe, pa in zip(exact, approx):
        for re, ra in zip(pe, pa):
            for k in ("pts3d", "conf", "desc", "desc_conf"):
                a = ra[k].float()
                assert torch.isfinite(a).all(), k
                err = (a - re[k]).abs().max().item()
                assert err < 0.25 * max(1.0, re[k].abs().max().item()), (k, err)
