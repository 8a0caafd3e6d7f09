"""The decode's memory savings stay in place (tiny fixture network, no timing):

* the full-resolution DPT stages run in row bands and give the same maps as the unbanded computation;
* the chunked head (`Mast3rHead.forward`) equals the plain one (`forward_unchunked`);
* no op of a head builds a map as large as the whole 2x-upsampled feature maps, even on a batch of two
  (the full-resolution stages run one sample at a time, in row bands);
* `decode` and `decode_symmetric` keep only the decoder layers the heads read.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from mslam_ns.model import dpt, heads
from tests.model._fixtures import encode_pair, load_net, reference, require_root


@pytest.fixture(scope="module")
def tiny():
    d = require_root() / "tiny_A"
    net = load_net(d)
    feats, hw = encode_pair(net, reference(d))
    return net, feats, hw


class _MaxOutput(TorchDispatchMode):
    """Largest new op output (elements; views and in-place results excluded) seen while active."""

    def __init__(self) -> None:
        super().__init__()
        self.max_numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {
            a.untyped_storage().data_ptr() for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)
        }
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.max_numel = max(self.max_numel, t.numel())
        return out


@pytest.mark.parametrize("align_corners", [True, False])
def test_banded_upsample_conv_equals_unbanded(monkeypatch, align_corners):
    monkeypatch.setattr(dpt, "ALIGN_CORNERS", align_corners)
    g = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(6, 5, 3, padding=1).to(memory_format=torch.channels_last)
    x = torch.randn(2, 6, 7, 9, generator=g).to(memory_format=torch.channels_last)
    with torch.inference_mode():
        full = dpt._up2(x)
        assert torch.allclose(dpt.up2_rows(x, 0, 14), full, atol=1e-6)
        part = dpt.up2_rows(x, 3, 8, 1, 1)
        assert (part[:, :, 0] == 0).all() and (part[:, :, -1] == 0).all()
        assert torch.allclose(part[:, :, 1:-1], full[:, :, 3:8], atol=1e-6)
        ref = F.relu(conv(full))
        for rows in (1, 2, 5, 14):
            got = dpt.conv3x3_on_up2(x, conv, tail=F.relu, rows=rows)
            assert got.shape == ref.shape
            assert torch.allclose(got, ref, atol=1e-6), rows


def test_chunked_head_equals_unchunked_and_builds_no_full_map(tiny, monkeypatch):
    net, (f1, p1, f2, p2), (H, W) = tiny
    p = net.cfg.patch_size
    with torch.inference_mode():
        a, _ = net.decode_tokens(f1, p1, f2, p2, (H // p, W // p))
        b, _ = net.decode_tokens(f2, p2, f1, p1, (H // p, W // p))
        d1 = [torch.cat((x, y)) for x, y in zip(a, b)]  # a batch of two, as decode_symmetric's
        head = net.downstream_head1
        ref = head.forward_unchunked(d1, (H, W))
        default = head(d1, (H, W))
        # force several row bands and several patch-row chunks at this tiny size
        monkeypatch.setattr(dpt, "BAND_BYTES", 16 * 1024)
        monkeypatch.setattr(heads, "LOCAL_CHUNK_BYTES", 1)
        mode = _MaxOutput()
        with mode:
            chunked = head(d1, (H, W))
    for got in (default, chunked):
        assert got.keys() == ref.keys()
        for k, v in ref.items():
            assert got[k].shape == v.shape, k
            assert torch.allclose(got[k], v, rtol=1e-5, atol=1e-5), k
    # unchunked, the DPT builds 2 x 256 ch at H/2 x W/2 and 2 x 128 ch at H x W (128 and 256 elements a
    # pixel), and head.0's whole output alone is 2 x 128 ch at H/2 x W/2 (64 a pixel)
    assert mode.max_numel < 64 * H * W


def test_decode_keeps_only_the_layers_the_heads_read(tiny):
    net, (f1, p1, f2, p2), (H, W) = tiny
    p = net.cfg.patch_size
    needed = {0, *net.cfg.dpt_hooks, net.cfg.dec_depth}
    assert len(needed) < net.cfg.dec_depth + 1  # the check below means something
    with torch.inference_mode():
        d1, d2 = net.decode_tokens(f1, p1, f2, p2, (H // p, W // p), keep=net.head_layers())
    for d in (d1, d2):
        assert [i for i, t in enumerate(d) if t is not None] == sorted(needed)

    seen: list[list] = []
    hooks = [
        getattr(net, name).register_forward_pre_hook(lambda m, args: seen.append(list(args[0])))
        for name in ("downstream_head1", "downstream_head2")
    ]
    try:
        with torch.inference_mode():
            net.decode(f1, p1, f2, p2, (H, W))
            assert len(seen) == 2
            net.decode_symmetric(f1, p1, f2, p2, (H, W))
    finally:
        for h in hooks:
            h.remove()
    assert len(seen) == 4  # 2 for decode, then one head call per view on the batch of both orderings
    B = f1.shape[0]
    for n, tokens in enumerate(seen):
        assert [i for i, t in enumerate(tokens) if t is not None] == sorted(needed)
        assert all(t.shape[0] == (B if n < 2 else 2 * B) for t in tokens if t is not None)
